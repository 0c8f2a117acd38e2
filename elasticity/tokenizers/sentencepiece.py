"""The SentencePiece backend: a ``.model`` file through ``sentencepiece`` itself (Llama 1/2 ids exactly)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from elasticity.tokenizers.base import NoChatTemplate, copy_into, pad_fallback, with_bos


class SentencePieceTokenizer(NoChatTemplate):
  """A SentencePiece ``.model`` file through ``sentencepiece`` itself (Llama 1/2 ids exactly)."""

  def __init__(self, model_file: str | os.PathLike):
    import sentencepiece as spm  # pylint: disable=import-outside-toplevel
    self.path = Path(model_file)
    self.sp = spm.SentencePieceProcessor(model_file=str(self.path))
    self.vocab_size = int(self.sp.vocab_size())
    self.bos_id = self.sp.bos_id() if self.sp.bos_id() >= 0 else None
    self.eos_id = self.sp.eos_id() if self.sp.eos_id() >= 0 else None
    pad = self.sp.pad_id()
    self.pad_id = pad_fallback(pad if pad >= 0 else None, self.eos_id)
    self.add_bos_token = self.bos_id is not None
    self._special = {i for i in range(self.vocab_size)
                     if self.sp.is_control(i) or self.sp.is_unknown(i)}

  def save(self, out_dir: str | os.PathLike) -> None:
    copy_into(out_dir, {"tokenizer.model": self.path})

  @property
  def bos_token(self) -> str | None:
    return None if self.bos_id is None else self.sp.id_to_piece(self.bos_id)

  @property
  def has_chat_template(self) -> bool:
    return False

  def encode(self, text: str, *, add_bos: bool = False) -> list[int]:
    return with_bos(list(self.sp.encode(text)), add_bos, self.bos_id)

  def decode(self, ids: Sequence[int], *, skip_special: bool = True) -> str:
    ids = [int(i) for i in ids]
    if skip_special:
      return self.sp.decode([i for i in ids if i not in self._special])
    out, run = [], []
    for i in ids:
      if i in self._special:
        if run:
          out.append(self.sp.decode(run))
          run = []
        out.append(self.sp.id_to_piece(i))
      else:
        run.append(i)
    if run:
      out.append(self.sp.decode(run))
    return "".join(out)

  def apply_chat_template(self, messages: list[dict], *,
                          add_generation_prompt: bool) -> str | None:
    del messages, add_generation_prompt
    return None
