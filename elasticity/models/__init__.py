"""Flax NNX ports of the paper's model families; re-exports the checkpoint API of `elasticity.convert`.

    from elasticity.models import load_pretrained, save_pretrained
    model = load_pretrained(path, dtype=jnp.float32)   # HF dir, .gguf, or llama2.c .bin (+ tokenizer=)
    logits = model(input_ids)                          # int32 [B, T] → float32 [B, T, V]
    save_pretrained(model, out_dir)                    # HF directory transformers loads

The checkpoint functions live in `elasticity.convert` (which imports this package's modules) and are
looked up lazily here, so neither package imports the other at import time.
"""

from __future__ import annotations

from typing import Any

from elasticity.models.config import FULL, SLIDING, ModelConfig, RopeConfig
from elasticity.models.registry import (abstract_model, config_from_hf, config_to_hf, create_model,
                                        supported_model_types)
from elasticity.models.transformer import CausalLM

_FROM_CONVERT = ("checkpoint_kind", "load_pretrained", "load_config", "save_pretrained")

__all__ = ["CausalLM", "ModelConfig", "RopeConfig", "FULL", "SLIDING", "create_model", "abstract_model",
           "config_from_hf", "config_to_hf", "supported_model_types", *_FROM_CONVERT]


def __getattr__(name: str) -> Any:
  if name in _FROM_CONVERT:
    import elasticity.convert as convert  # pylint: disable=import-outside-toplevel
    return getattr(convert, name)
  raise AttributeError(f"module 'elasticity.models' has no attribute {name!r}")


def __dir__() -> list[str]:
  return sorted(set(globals()) | set(_FROM_CONVERT))
