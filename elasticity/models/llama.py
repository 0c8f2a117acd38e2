"""Llama family (``LlamaForCausalLM``): Llama 2, Llama 3/3.1, TinyLlama, SmolLM2.

Quirks: multi-head (Llama 2) or grouped-query attention (Llama 3, TinyLlama, SmolLM2); Llama 3's
``rope_type: llama3`` frequency scaling with ``rope_theta`` 500000; tied embeddings (SmolLM2, Llama 3.2);
optional ``attention_bias`` (q/k/v/o) and explicit ``head_dim``.
"""

from __future__ import annotations

from typing import Any

from elasticity.models.config import ModelConfig
from elasticity.models.hf_config import read_common, read_rope, write_common

MODEL_TYPES = ("llama",)
ARCHITECTURE = "LlamaForCausalLM"


def config_from_hf(d: dict[str, Any]) -> ModelConfig:
  bias = bool(d.get("attention_bias", False))
  return ModelConfig(family="llama", rope=read_rope(d), qkv_bias=bias, o_bias=bias,
                     activation=_activation(d.get("hidden_act", "silu")),
                     **read_common(d, tie_default=False))


def config_to_hf(cfg: ModelConfig) -> dict[str, Any]:
  d = write_common(cfg, "llama", ARCHITECTURE)
  d.update(attention_bias=cfg.qkv_bias, mlp_bias=False, hidden_act="silu")
  return d


def _activation(name: str) -> str:
  if name != "silu":
    raise ValueError(f"hidden_act {name!r} is not supported for Llama (only 'silu')")
  return "silu"
