"""Flax NNX ports of the paper's model families.

    from elasticity.convert import load_pretrained, save_pretrained
    model = load_pretrained(path, dtype=jnp.float32)   # HF dir, .gguf, or llama2.c .bin (+ tokenizer=)
    logits = model(input_ids)                          # int32 [B, T] → float32 [B, T, V]
    save_pretrained(model, out_dir)                    # HF directory transformers loads

The checkpoint functions (`load_pretrained`, `save_pretrained`, `load_config`, `checkpoint_kind`) live
in `elasticity.convert`, which imports this package; this package never imports it.
"""

from __future__ import annotations

from elasticity.models.config import FULL, SLIDING, ModelConfig, RopeConfig
from elasticity.models.registry import (abstract_model, config_from_hf, config_to_hf, create_model,
                                        supported_model_types)
from elasticity.models.transformer import CausalLM

__all__ = ["CausalLM", "ModelConfig", "RopeConfig", "FULL", "SLIDING", "create_model", "abstract_model",
           "config_from_hf", "config_to_hf", "supported_model_types"]
