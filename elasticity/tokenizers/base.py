"""The `Tokenizer` protocol every backend implements, and the small helpers the backends share.

Conventions (all backends): ``encode`` adds BOS only when asked; ``pad_id`` falls back to ``eos_id``
and then to 0; ``save(out_dir)`` writes files that `load_tokenizer` reads back as the same tokenizer.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol, runtime_checkable


@runtime_checkable
class Tokenizer(Protocol):
  """What the project needs from a tokenizer."""

  vocab_size: int
  bos_id: int | None
  eos_id: int | None
  pad_id: int
  add_bos_token: bool

  def save(self, out_dir: str | os.PathLike) -> None:
    """Write the tokenizer's files into ``out_dir`` so that `load_tokenizer(out_dir)` reloads it."""
    ...

  def encode(self, text: str, *, add_bos: bool = False) -> list[int]:
    """Ids of ``text``; BOS first only when ``add_bos`` (and the tokenizer has one)."""
    ...

  def decode(self, ids: Sequence[int], *, skip_special: bool = True) -> str:
    """Text of ``ids``; special tokens dropped when ``skip_special``."""
    ...

  def apply_chat_template(self, messages: list[dict], *,
                          add_generation_prompt: bool) -> str | None:
    """The conversation rendered as text by the tokenizer's own template; None without one."""
    ...

  @property
  def has_chat_template(self) -> bool:
    ...

  @property
  def bos_token(self) -> str | None:
    """The BOS token's text (to tell whether a rendered template already starts with it)."""
    ...


def pad_fallback(pad_id: int | None, eos_id: int | None) -> int:
  if pad_id is not None:
    return int(pad_id)
  if eos_id is not None:
    return int(eos_id)
  return 0


def copy_into(out_dir: str | os.PathLike, files: dict[str, Path]) -> None:
  """Copy ``{name in out_dir: source file}``, creating ``out_dir``."""
  out = Path(out_dir)
  out.mkdir(parents=True, exist_ok=True)
  for name, src in files.items():
    shutil.copyfile(src, out / name)


def with_bos(ids: list[int], add_bos: bool, bos_id: int | None) -> list[int]:
  if add_bos and bos_id is not None:
    return [bos_id] + ids
  return ids



class NoChatTemplate:
  """For tokenizer formats that carry no chat template (llama2.c, SentencePiece, tiktoken files)."""

  @property
  def has_chat_template(self) -> bool:
    return False

  def apply_chat_template(self, messages: list[dict], *,
                          add_generation_prompt: bool) -> str | None:
    del messages, add_generation_prompt
    return None
