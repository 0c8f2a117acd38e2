"""The tiktoken backend: Llama 3 and Qwen v1 ``.tiktoken`` ranks files, GPT-2's encoder.json + vocab.bpe."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from elasticity.tokenizers.base import NoChatTemplate, copy_into, pad_fallback, with_bos

LLAMA3_PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}|"
                  r" ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
QWEN_PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}|"
                r" ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
GPT2_PATTERN = (r"'(?:[sdmt]|ll|ve|re)| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|"
                r"\s+(?!\S)|\s+")


def _llama3_specials(n_ranks: int) -> dict[str, int]:
  names = ["<|begin_of_text|>", "<|end_of_text|>", "<|reserved_special_token_0|>",
           "<|reserved_special_token_1|>", "<|reserved_special_token_2|>",
           "<|reserved_special_token_3|>", "<|start_header_id|>", "<|end_header_id|>",
           "<|reserved_special_token_4|>", "<|eot_id|>"]
  names += [f"<|reserved_special_token_{i}|>" for i in range(5, 256 - 5)]
  return {name: n_ranks + i for i, name in enumerate(names)}


def _qwen_specials(n_ranks: int) -> dict[str, int]:
  names = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"] + [f"<|extra_{i}|>" for i in range(205)]
  return {name: n_ranks + i for i, name in enumerate(names)}


class TiktokenTokenizer(NoChatTemplate):
  """A ``tiktoken.Encoding`` with the project's conventions (Llama 3, Qwen v1, GPT-2 files)."""

  def __init__(self, encoding: Any, *, bos: str | None, eos: str | None,
               add_bos_token: bool, name: str, files: Sequence[str | os.PathLike] = ()):
    self.enc = encoding
    self.name = name
    self.files = tuple(Path(f) for f in files)
    self.vocab_size = int(encoding.n_vocab)
    specials = encoding._special_tokens  # pylint: disable=protected-access
    self._special_ids = frozenset(specials.values())
    self._bos = bos
    self.bos_id = specials[bos] if bos is not None else None
    self.eos_id = specials[eos] if eos is not None else None
    self.pad_id = pad_fallback(None, self.eos_id)
    self.add_bos_token = add_bos_token

  @classmethod
  def llama3(cls, path: str | os.PathLike) -> "TiktokenTokenizer":
    import tiktoken  # pylint: disable=import-outside-toplevel
    from tiktoken.load import load_tiktoken_bpe  # pylint: disable=import-outside-toplevel
    ranks = load_tiktoken_bpe(str(path))
    enc = tiktoken.Encoding(name=Path(path).stem, pat_str=LLAMA3_PATTERN, mergeable_ranks=ranks,
                            special_tokens=_llama3_specials(len(ranks)))
    return cls(enc, bos="<|begin_of_text|>", eos="<|end_of_text|>", add_bos_token=True,
               name="llama3", files=[path])

  @classmethod
  def qwen(cls, path: str | os.PathLike) -> "TiktokenTokenizer":
    import tiktoken  # pylint: disable=import-outside-toplevel
    from tiktoken.load import load_tiktoken_bpe  # pylint: disable=import-outside-toplevel
    ranks = load_tiktoken_bpe(str(path))
    enc = tiktoken.Encoding(name=Path(path).stem, pat_str=QWEN_PATTERN, mergeable_ranks=ranks,
                            special_tokens=_qwen_specials(len(ranks)))
    return cls(enc, bos=None, eos="<|endoftext|>", add_bos_token=False, name="qwen", files=[path])

  @classmethod
  def gpt2(cls, folder: str | os.PathLike) -> "TiktokenTokenizer":
    import tiktoken  # pylint: disable=import-outside-toplevel
    from tiktoken import load as tiktoken_load  # pylint: disable=import-outside-toplevel
    folder = Path(folder)
    ranks = tiktoken_load.data_gym_to_mergeable_bpe_ranks(str(folder / "vocab.bpe"), str(folder / "encoder.json"))
    enc = tiktoken.Encoding(name="gpt2", pat_str=GPT2_PATTERN, mergeable_ranks=ranks,
                            special_tokens={"<|endoftext|>": len(ranks)})
    # GPT-2's BOS and EOS are both <|endoftext|>; it is not prepended by convention.
    return cls(enc, bos="<|endoftext|>", eos="<|endoftext|>", add_bos_token=False, name="gpt2",
               files=[folder / "encoder.json", folder / "vocab.bpe"])

  def save(self, out_dir: str | os.PathLike) -> None:
    """The source files under their own names (one ``.tiktoken``; GPT-2's encoder.json + vocab.bpe)."""
    if not self.files:
      raise ValueError(f"tiktoken tokenizer {self.name!r} was built in memory: no files to save")
    copy_into(out_dir, {f.name: f for f in self.files})

  @property
  def bos_token(self) -> str | None:
    return self._bos


  def encode(self, text: str, *, add_bos: bool = False) -> list[int]:
    return with_bos(self.enc.encode(text, allowed_special="all"), add_bos, self.bos_id)

  def decode(self, ids: Sequence[int], *, skip_special: bool = True) -> str:
    ids = [int(i) for i in ids]
    if skip_special:
      ids = [i for i in ids if i not in self._special_ids]
    return self.enc.decode(ids)


def tiktoken_file(path: Path, flavor: str | None) -> TiktokenTokenizer:
  if flavor is None:
    with open(path, "rb") as f:
      n = sum(1 for line in f if line.strip())
    flavor = {128000: "llama3", 151643: "qwen"}.get(n)
    if flavor is None:
      raise ValueError(f"{path}: {n} ranks; cannot tell Llama 3 (128000) from Qwen (151643): "
                       "pass flavor='llama3' or flavor='qwen'")
  if flavor == "llama3":
    return TiktokenTokenizer.llama3(path)
  if flavor == "qwen":
    return TiktokenTokenizer.qwen(path)
  raise ValueError(f"{path}: unknown tiktoken flavor {flavor!r} (llama3, qwen)")
