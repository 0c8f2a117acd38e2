"""`load_tokenizer(path)` (the backend chosen from the path) and `as_tokenizer(obj)` (what users hand in)."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

from elasticity.tokenizers.base import Tokenizer
from elasticity.tokenizers.hf import HFTokenizer
from elasticity.tokenizers.llama2c import Llama2cTokenizer
from elasticity.tokenizers.sentencepiece import SentencePieceTokenizer
from elasticity.tokenizers.tiktoken import TiktokenTokenizer, tiktoken_file


def load_tokenizer(path: str | os.PathLike, **kw) -> Tokenizer:
  """The tokenizer stored at ``path``; the format is chosen from the path (see module docstring).

  Args:
    path: a folder or a file.
    **kw: ``flavor`` ("llama3"/"qwen") for a ``.tiktoken`` file; anything else goes to
      ``AutoTokenizer.from_pretrained``.
  """
  path = Path(path)
  flavor = kw.pop("flavor", None)
  if not path.exists():
    raise FileNotFoundError(f"no tokenizer at {path}")
  if path.is_dir():
    if (path / "tokenizer.json").exists() or (path / "tokenizer_config.json").exists():
      return HFTokenizer.from_pretrained(path, **kw)
    if (path / "encoder.json").exists() and (path / "vocab.bpe").exists():
      return TiktokenTokenizer.gpt2(path)
    ggufs = sorted(path.glob("*.gguf"))
    if len(ggufs) == 1:
      return HFTokenizer.from_pretrained(ggufs[0], **kw)
    for name, ctor in (("tokenizer.model", SentencePieceTokenizer),
                       ("tokenizer.bin", Llama2cTokenizer)):
      if (path / name).exists():
        return ctor(path / name)
    tiks = sorted(path.glob("*.tiktoken"))
    if len(tiks) == 1:
      return tiktoken_file(tiks[0], flavor)
    raise ValueError(f"{path}: no tokenizer files recognised in this folder")
  suffix = path.suffix.lower()
  if suffix == ".gguf":
    return HFTokenizer.from_pretrained(path, **kw)
  if suffix == ".model":
    return SentencePieceTokenizer(path)
  if suffix == ".bin":
    return Llama2cTokenizer(path)
  if suffix == ".tiktoken":
    return tiktoken_file(path, flavor)
  if path.name in ("encoder.json", "vocab.bpe"):
    return TiktokenTokenizer.gpt2(path.parent)
  if path.name in ("tokenizer.json", "tokenizer_config.json"):
    return HFTokenizer.from_pretrained(path.parent, **kw)
  raise ValueError(f"{path}: unrecognised tokenizer file (.gguf, .model, .bin, .tiktoken, "
                   "encoder.json/vocab.bpe, or a Hugging Face folder)")



def _is_transformers_tokenizer(obj: Any) -> bool:
  """A ``transformers`` tokenizer object (checked without importing transformers if nobody has)."""
  if "transformers" not in sys.modules:
    return False
  from transformers import PreTrainedTokenizerBase  # pylint: disable=import-outside-toplevel
  return isinstance(obj, PreTrainedTokenizerBase)


def as_tokenizer(obj: Any) -> Tokenizer:
  """``obj`` as the project's `Tokenizer`.

  A `Tokenizer` (the project's classes, or any object with the protocol's attributes) is returned as
  is; a ``transformers`` tokenizer (``PreTrainedTokenizerBase``: ``AutoTokenizer.from_pretrained``'s
  result) is wrapped in `HFTokenizer`. Anything else raises TypeError naming the accepted types.
  """
  if isinstance(obj, Tokenizer):
    return obj
  if _is_transformers_tokenizer(obj):
    return HFTokenizer(obj)
  hint = (" (a path: load it with elasticity.tokenizers.load_tokenizer first)"
          if isinstance(obj, (str, os.PathLike)) else "")
  raise TypeError(f"expected a tokenizer: an elasticity.tokenizers.Tokenizer (HFTokenizer, "
                  f"SentencePieceTokenizer, Llama2cTokenizer, TiktokenTokenizer, or an object with its "
                  f"attributes) or a transformers PreTrainedTokenizerBase; got {type(obj).__name__}{hint}")
