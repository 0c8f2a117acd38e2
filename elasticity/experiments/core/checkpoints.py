"""Loading a checkpoint for evaluation: the model and its tokenizer, as every evaluator needs them."""

from __future__ import annotations

from elasticity import convert
from elasticity.tokenizers import load_tokenizer


def load(path: str, tokenizer: str = ""):
  """(model, tokenizer) of the checkpoint ``path``; ``tokenizer`` "" means the checkpoint's own."""
  return convert.load_pretrained(path, tokenizer=tokenizer or None), load_tokenizer(tokenizer or path)
