"""Qwen family (``Qwen2ForCausalLM``): Qwen1.5, Qwen2, Qwen2.5.

Quirks: bias on the q/k/v projections (none on o); tied embeddings on the small sizes; optional
sliding-window attention on layers ``>= max_window_layers`` when ``use_sliding_window`` is set.
"""

from __future__ import annotations

from typing import Any

from elasticity.models.config import SLIDING, ModelConfig
from elasticity.models.hf_config import layer_types_from, read_common, read_rope, write_common
from elasticity.models.llama import _activation

MODEL_TYPES = ("qwen2",)
ARCHITECTURE = "Qwen2ForCausalLM"


def config_from_hf(d: dict[str, Any]) -> ModelConfig:
  common = read_common(d, tie_default=False)
  sliding = bool(d.get("use_sliding_window", False))
  max_window_layers = int(d.get("max_window_layers", common["num_layers"]))
  types = layer_types_from(d, common["num_layers"], lambda i: sliding and i >= max_window_layers)
  window = d.get("sliding_window") if SLIDING in types else None
  return ModelConfig(family="qwen2", rope=read_rope(d), qkv_bias=True, o_bias=False,
                     activation=_activation(d.get("hidden_act", "silu")),
                     layer_types=types if SLIDING in types else (),
                     sliding_window=int(window) if window else None, **common)


def config_to_hf(cfg: ModelConfig) -> dict[str, Any]:
  d = write_common(cfg, "qwen2", ARCHITECTURE)
  d.update(hidden_act="silu", use_sliding_window=cfg.sliding_window is not None,
           sliding_window=cfg.sliding_window,
           layer_types=list(cfg.layer_types) or ["full_attention"] * cfg.num_layers)
  return d
