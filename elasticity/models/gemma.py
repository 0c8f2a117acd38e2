"""Gemma family: Gemma 1 (``GemmaForCausalLM``), Gemma 2 (``Gemma2ForCausalLM``), Gemma 3 text-only
(``Gemma3ForCausalLM``, ``model_type: gemma3_text``).

Quirks: RMSNorm scales by (1 + w); embeddings are multiplied by √hidden_size (rounded to the compute
dtype, as the reference does); tanh-approximated GeGLU; tied embeddings; head_dim 256 and multi-query
attention on Gemma-2B. Gemma 2: attention-logit soft-capping (50) and final-logit soft-capping (30),
alternating sliding-window / global layers (layer 0 sliding), sandwich norms, attention scale
``query_pre_attn_scalar ** -0.5``. Gemma 3: q/k RMSNorms, a local RoPE base (10k) for sliding layers and
the global base (1M, optionally linearly scaled) for global ones, one global layer in six.
"""

from __future__ import annotations

from typing import Any

from elasticity.models.config import FULL, SLIDING, ModelConfig, RopeConfig
from elasticity.models.hf_config import layer_types_from, read_common, read_rope, write_common

MODEL_TYPES = ("gemma", "gemma2", "gemma3_text")
ARCHITECTURES = {"gemma": "GemmaForCausalLM", "gemma2": "Gemma2ForCausalLM",
                 "gemma3_text": "Gemma3ForCausalLM"}
FAMILY = {"gemma": "gemma", "gemma2": "gemma2", "gemma3_text": "gemma3"}
MODEL_TYPE = {v: k for k, v in FAMILY.items()}


def _activation(d: dict[str, Any]) -> str:
  name = d.get("hidden_activation") or d.get("hidden_act") or "gelu_pytorch_tanh"
  if name not in ("gelu_pytorch_tanh", "gelu", "gelu_tanh"):
    raise ValueError(f"hidden_activation {name!r} is not supported for Gemma")
  # transformers runs Gemma 1 checkpoints that say "gelu" with the tanh approximation as well.
  return "gelu_tanh"


def config_from_hf(d: dict[str, Any]) -> ModelConfig:
  model_type = d["model_type"]
  common = read_common(d, tie_default=True)
  n = common["num_layers"]
  kw: dict[str, Any] = dict(family=FAMILY[model_type], activation=_activation(d), norm_plus_one=True,
                            embed_scale=True, qkv_bias=bool(d.get("attention_bias", False)),
                            o_bias=bool(d.get("attention_bias", False)))
  if model_type == "gemma":
    kw["rope"] = read_rope(d)
  elif model_type == "gemma2":
    types = layer_types_from(d, n, lambda i: i % 2 == 0)
    kw.update(rope=read_rope(d), sandwich_norms=True, layer_types=types,
              sliding_window=int(d.get("sliding_window", 4096)),
              query_pre_attn_scalar=float(d.get("query_pre_attn_scalar", 256)),
              attn_logit_softcap=d.get("attn_logit_softcapping", 50.0),
              final_logit_softcap=d.get("final_logit_softcapping", 30.0))
  else:
    pattern = int(d.get("sliding_window_pattern", d.get("_sliding_window_pattern", 6)))
    types = layer_types_from(d, n, lambda i: bool((i + 1) % pattern))
    if isinstance(d.get("rope_parameters"), dict) and FULL in d["rope_parameters"]:
      rope, local = read_rope(d, FULL), read_rope(d, SLIDING)
    else:
      rope = RopeConfig.from_hf(d.get("rope_scaling"), d.get("rope_theta", 1_000_000.0))
      local = RopeConfig(theta=float(d.get("rope_local_base_freq", 10000.0)))
    kw.update(rope=rope, local_rope=local, sandwich_norms=True, qk_norm=True, layer_types=types,
              sliding_window=int(d.get("sliding_window", 4096)),
              query_pre_attn_scalar=float(d.get("query_pre_attn_scalar", 256)),
              attn_logit_softcap=d.get("attn_logit_softcapping"),
              final_logit_softcap=d.get("final_logit_softcapping"))
  return ModelConfig(**kw, **common)


def config_to_hf(cfg: ModelConfig) -> dict[str, Any]:
  model_type = MODEL_TYPE[cfg.family]
  d = write_common(cfg, model_type, ARCHITECTURES[model_type])
  d.update(hidden_activation="gelu_pytorch_tanh", attention_bias=cfg.qkv_bias)
  d.pop("hidden_act", None)
  if cfg.family in ("gemma2", "gemma3"):
    d.update(layer_types=list(cfg.layer_types), sliding_window=cfg.sliding_window,
             query_pre_attn_scalar=_int_if_whole(cfg.query_pre_attn_scalar
                                                 if cfg.query_pre_attn_scalar is not None
                                                 else cfg.head_dim),
             attn_logit_softcapping=cfg.attn_logit_softcap,
             final_logit_softcapping=cfg.final_logit_softcap)
  if cfg.family == "gemma3":
    d["rope_parameters"] = {FULL: cfg.rope.to_hf(), SLIDING: cfg.local_rope.to_hf()}
  return d


def _int_if_whole(x: float | None):
  return int(x) if x is not None and float(x).is_integer() else x
