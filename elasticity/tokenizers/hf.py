"""The Hugging Face backend: a ``transformers`` tokenizer (a folder, a hub snapshot or a GGUF file)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from elasticity.tokenizers.base import pad_fallback, with_bos


class HFTokenizer:
  """Wraps a ``transformers`` tokenizer (a folder, a hub snapshot or a GGUF file)."""

  def __init__(self, tok: Any):
    self.hf = tok
    self.vocab_size = len(tok)
    self.bos_id = tok.bos_token_id
    self.eos_id = tok.eos_token_id
    self.pad_id = pad_fallback(tok.pad_token_id, self.eos_id)
    probe = tok("a", add_special_tokens=True)["input_ids"]
    self.add_bos_token = bool(self.bos_id is not None and probe and probe[0] == self.bos_id)

  @classmethod
  def from_pretrained(cls, path: str | os.PathLike, **kw) -> "HFTokenizer":
    from transformers import AutoTokenizer  # pylint: disable=import-outside-toplevel
    path = Path(path)
    if path.suffix == ".gguf":
      return cls(AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name, **kw))
    return cls(AutoTokenizer.from_pretrained(str(path), **kw))

  def save(self, out_dir: str | os.PathLike) -> None:
    """``save_pretrained``: a Hugging Face tokenizer folder (also for one read from a GGUF file)."""
    self.hf.save_pretrained(str(out_dir))

  @property
  def bos_token(self) -> str | None:
    return self.hf.bos_token

  @property
  def has_chat_template(self) -> bool:
    return bool(getattr(self.hf, "chat_template", None))

  def encode(self, text: str, *, add_bos: bool = False) -> list[int]:
    ids = list(self.hf.encode(text, add_special_tokens=False))
    return with_bos(ids, add_bos, self.bos_id)

  def decode(self, ids: Sequence[int], *, skip_special: bool = True) -> str:
    return self.hf.decode([int(i) for i in ids], skip_special_tokens=skip_special)

  def apply_chat_template(self, messages: list[dict], *,
                          add_generation_prompt: bool) -> str | None:
    if not self.has_chat_template:
      return None
    return self.hf.apply_chat_template(
        messages, tokenize=False, add_generation_prompt=add_generation_prompt)
