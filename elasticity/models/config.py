"""One frozen configuration dataclass for every decoder-only family the project ports.

Families differ only in switches (bias, tied embeddings, Gemma's (1+w) norm and √d embedding scale,
sandwich norms, q/k norms, soft-capping, sliding-window layers, RoPE scaling); the per-family files
(`llama.py`, `qwen2.py`, `gemma.py`) translate Hugging Face `config.json` dictionaries to and from it.
"""

from __future__ import annotations

import dataclasses
import json
import math
from typing import Any

import numpy as np

FULL = "full_attention"
SLIDING = "sliding_attention"


@dataclasses.dataclass(frozen=True)
class RopeConfig:
  """Rotary embedding of one attention kind: base and HF-style scaling (`default`, `linear`, `llama3`)."""
  theta: float = 10000.0
  rope_type: str = "default"
  factor: float = 1.0
  low_freq_factor: float = 1.0
  high_freq_factor: float = 4.0
  original_max_position_embeddings: int = 8192

  SUPPORTED = ("default", "linear", "llama3")

  @classmethod
  def from_hf(cls, params: dict[str, Any] | None, theta: float | None = None) -> "RopeConfig":
    params = dict(params or {})
    rope_type = params.get("rope_type", params.get("type", "default")) or "default"
    if rope_type not in cls.SUPPORTED:
      raise ValueError(f"rope_type {rope_type!r} is not supported; supported: {cls.SUPPORTED}")
    theta = params.get("rope_theta", theta if theta is not None else 10000.0)
    kw: dict[str, Any] = {"theta": float(theta), "rope_type": rope_type}
    if rope_type in ("linear", "llama3"):
      kw["factor"] = float(params["factor"])
    if rope_type == "llama3":
      kw["low_freq_factor"] = float(params["low_freq_factor"])
      kw["high_freq_factor"] = float(params["high_freq_factor"])
      kw["original_max_position_embeddings"] = int(params["original_max_position_embeddings"])
    return cls(**kw)

  def to_hf(self) -> dict[str, Any]:
    out: dict[str, Any] = {"rope_type": self.rope_type, "rope_theta": self.theta}
    if self.rope_type in ("linear", "llama3"):
      out["factor"] = self.factor
    if self.rope_type == "llama3":
      out.update(low_freq_factor=self.low_freq_factor, high_freq_factor=self.high_freq_factor,
                 original_max_position_embeddings=self.original_max_position_embeddings)
    return out

  def inv_freq(self, head_dim: int) -> np.ndarray:
    """Inverse frequencies [head_dim/2] in float32, computed as `transformers` does."""
    exponent = np.arange(0, head_dim, 2, dtype=np.int64).astype(np.float32) / np.float32(head_dim)
    inv = (np.float32(1.0) / (np.float32(self.theta) ** exponent)).astype(np.float32)
    if self.rope_type == "linear":
      inv = inv / np.float32(self.factor)
    elif self.rope_type == "llama3":
      low_wavelen = self.original_max_position_embeddings / self.low_freq_factor
      high_wavelen = self.original_max_position_embeddings / self.high_freq_factor
      wavelen = 2 * math.pi / inv
      scaled = np.where(wavelen > low_wavelen, inv / self.factor, inv)
      smooth = (self.original_max_position_embeddings / wavelen - self.low_freq_factor) / (
          self.high_freq_factor - self.low_freq_factor)
      smoothed = (1 - smooth) * scaled / self.factor + smooth * scaled
      medium = ~(wavelen < high_wavelen) & ~(wavelen > low_wavelen)
      inv = np.where(medium, smoothed, scaled)
    return inv.astype(np.float32)


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  """Architecture of a decoder-only causal LM (all supported families)."""
  family: str                      # llama | qwen2 | gemma | gemma2 | gemma3
  vocab_size: int
  hidden_size: int
  intermediate_size: int
  num_layers: int
  num_heads: int
  num_kv_heads: int
  head_dim: int
  rms_norm_eps: float = 1e-6
  rope: RopeConfig = RopeConfig()
  local_rope: RopeConfig | None = None     # Gemma 3: RoPE of sliding-window layers
  tie_embeddings: bool = False
  qkv_bias: bool = False
  o_bias: bool = False
  activation: str = "silu"                  # silu | gelu_tanh
  norm_plus_one: bool = False               # Gemma: RMSNorm scales by (1 + w)
  embed_scale: bool = False                 # Gemma: embeddings times √hidden_size
  sandwich_norms: bool = False              # Gemma 2/3: post-attention and pre/post-MLP norms
  qk_norm: bool = False                     # Gemma 3: RMSNorm on q and k heads
  query_pre_attn_scalar: float | None = None  # attention scale = this ** -0.5 (default head_dim)
  attn_logit_softcap: float | None = None
  final_logit_softcap: float | None = None
  sliding_window: int | None = None
  layer_types: tuple[str, ...] = ()         # per layer: FULL or SLIDING; empty = all FULL
  max_position_embeddings: int = 2048
  bos_token_id: int | None = None
  eos_token_id: tuple[int, ...] = ()
  pad_token_id: int | None = None
  # the source config.json, kept verbatim for export; not part of equality or hashing, so a model read
  # from a llama2.c file and its own HF export are the same structure (one compiled step serves both)
  hf_config_json: str = dataclasses.field(default="", compare=False)

  def __post_init__(self):
    if self.num_heads % self.num_kv_heads:
      raise ValueError(f"num_heads={self.num_heads} is not a multiple of num_kv_heads={self.num_kv_heads}")
    if self.layer_types and len(self.layer_types) != self.num_layers:
      raise ValueError(f"layer_types has {len(self.layer_types)} entries for {self.num_layers} layers")
    for t in self.layer_types:
      if t not in (FULL, SLIDING):
        raise ValueError(f"layer type {t!r} is not one of {(FULL, SLIDING)}")
    if self.activation not in ("silu", "gelu_tanh"):
      raise ValueError(f"activation {self.activation!r} is not one of ('silu', 'gelu_tanh')")

  @property
  def attn_scale(self) -> float:
    base = self.query_pre_attn_scalar if self.query_pre_attn_scalar is not None else self.head_dim
    return float(base) ** -0.5

  def layer_type(self, i: int) -> str:
    return self.layer_types[i] if self.layer_types else FULL

  def window(self, i: int) -> int | None:
    """Sliding window of layer i (keys with q - k < window are visible), or None for full attention."""
    return self.sliding_window if self.layer_type(i) == SLIDING else None

  def rope_for(self, i: int) -> RopeConfig:
    if self.layer_type(i) == SLIDING and self.local_rope is not None:
      return self.local_rope
    return self.rope

  def replace(self, **kw) -> "ModelConfig":
    return dataclasses.replace(self, **kw)

  @property
  def hf_config(self) -> dict[str, Any]:
    """The Hugging Face config this one was read from ({} when built by hand)."""
    return json.loads(self.hf_config_json) if self.hf_config_json else {}
