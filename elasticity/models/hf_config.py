"""Reading and writing the fields every Hugging Face decoder config shares (v4 and v5 layouts).

Published checkpoints use ``rope_theta`` + ``rope_scaling`` (transformers 4.x); transformers 5.x writes
``rope_parameters`` (per layer type for Gemma 3). Both are read; v5's layout is written.
"""

from __future__ import annotations

import json
from typing import Any

from elasticity.models.config import FULL, ModelConfig, RopeConfig


def _eos(value) -> tuple[int, ...]:
  if value is None:
    return ()
  return tuple(int(v) for v in value) if isinstance(value, (list, tuple)) else (int(value),)


def read_common(d: dict[str, Any], *, tie_default: bool) -> dict[str, Any]:
  """ModelConfig keyword arguments shared by all families."""
  try:
    heads = int(d["num_attention_heads"])
    out = dict(
        vocab_size=int(d["vocab_size"]),
        hidden_size=int(d["hidden_size"]),
        intermediate_size=int(d["intermediate_size"]),
        num_layers=int(d["num_hidden_layers"]),
        num_heads=heads,
    )
  except KeyError as e:
    raise ValueError(f"config is missing required field {e.args[0]!r}") from None
  out["num_kv_heads"] = int(d.get("num_key_value_heads") or heads)
  out["head_dim"] = int(d.get("head_dim") or out["hidden_size"] // heads)
  out["rms_norm_eps"] = float(d.get("rms_norm_eps", 1e-6))
  out["max_position_embeddings"] = int(d.get("max_position_embeddings", 2048))
  out["tie_embeddings"] = bool(d.get("tie_word_embeddings", tie_default))
  out["bos_token_id"] = d.get("bos_token_id")
  out["eos_token_id"] = _eos(d.get("eos_token_id"))
  out["pad_token_id"] = d.get("pad_token_id")
  out["hf_config_json"] = json.dumps(d, sort_keys=True)
  if d.get("mlp_bias"):
    raise ValueError("mlp_bias=True is not supported")
  return out


def read_rope(d: dict[str, Any], layer_type: str | None = None) -> RopeConfig:
  """The RoPE of one layer type from a v5 ``rope_parameters`` or v4 ``rope_theta``/``rope_scaling``."""
  params = d.get("rope_parameters")
  if params and layer_type is not None and layer_type in params:
    return RopeConfig.from_hf(params[layer_type])
  if params and "rope_type" in params or params and "rope_theta" in params:
    return RopeConfig.from_hf(params)
  return RopeConfig.from_hf(d.get("rope_scaling"), d.get("rope_theta", 10000.0))


def layer_types_from(d: dict[str, Any], n: int, default_sliding) -> tuple[str, ...]:
  """``layer_types`` if present, else ``default_sliding(i)`` decides each layer's kind."""
  if d.get("layer_types"):
    return tuple(d["layer_types"])
  return tuple("sliding_attention" if default_sliding(i) else FULL for i in range(n))


def write_common(cfg: ModelConfig, model_type: str, architecture: str) -> dict[str, Any]:
  """The shared fields of a v5 config.json, starting from the source config when there is one."""
  d = cfg.hf_config
  for legacy in ("rope_theta", "rope_scaling", "rope_local_base_freq", "torch_dtype"):
    d.pop(legacy, None)
  eos = list(cfg.eos_token_id)
  d.update(
      model_type=model_type,
      architectures=[architecture],
      vocab_size=cfg.vocab_size,
      hidden_size=cfg.hidden_size,
      intermediate_size=cfg.intermediate_size,
      num_hidden_layers=cfg.num_layers,
      num_attention_heads=cfg.num_heads,
      num_key_value_heads=cfg.num_kv_heads,
      head_dim=cfg.head_dim,
      rms_norm_eps=cfg.rms_norm_eps,
      max_position_embeddings=cfg.max_position_embeddings,
      tie_word_embeddings=cfg.tie_embeddings,
      bos_token_id=cfg.bos_token_id,
      eos_token_id=(eos[0] if len(eos) == 1 else eos) if eos else None,
      pad_token_id=cfg.pad_token_id,
      rope_parameters=cfg.rope.to_hf(),
  )
  return d
