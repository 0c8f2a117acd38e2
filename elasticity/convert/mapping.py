"""The pure mapping between Hugging Face tensor names/layouts and the Flax parameter tree.

Each entry says which HF tensor fills which Flax path and how its layout changes:
  ``q``   [N·H, D] → [D, N, H]   (q/k/v projections; K heads for k and v)
  ``o``   [D, N·H] → [N, H, D]
  ``t``   [out, in] → [in, out]  (MLP projections, lm_head)
  ``b``   [N·H]    → [N, H]      (q/k/v biases)
  ``id``  unchanged               (embeddings, norms, o bias)
Family quirks enter only through the config: Gemma 2/3's ``post_attention_layernorm`` is the
post-attention norm (the MLP's pre-norm is ``pre_feedforward_layernorm``), while for Llama/Qwen it is
the MLP's pre-norm.
"""

from __future__ import annotations

from typing import Iterator, NamedTuple

import numpy as np

from elasticity.models.config import ModelConfig


class Entry(NamedTuple):
  hf_name: str
  path: tuple
  kind: str          # q | o | t | b | id
  heads: int = 0     # for q / o / b


def entries(cfg: ModelConfig) -> Iterator[Entry]:
  """Every parameter of ``cfg``'s model, with its HF name, Flax path and layout change."""
  n, k = cfg.num_heads, cfg.num_kv_heads
  yield Entry("model.embed_tokens.weight", ("embed",), "id")
  for i in range(cfg.num_layers):
    p, L = f"model.layers.{i}.", ("layers", i)
    yield Entry(p + "input_layernorm.weight", L + ("attn_norm", "scale"), "id")
    for name, heads in (("q", n), ("k", k), ("v", k)):
      yield Entry(p + f"self_attn.{name}_proj.weight", L + ("attn", name), "q", heads)
      if cfg.qkv_bias:
        yield Entry(p + f"self_attn.{name}_proj.bias", L + ("attn", f"{name}_bias"), "b", heads)
    yield Entry(p + "self_attn.o_proj.weight", L + ("attn", "o"), "o", n)
    if cfg.o_bias:
      yield Entry(p + "self_attn.o_proj.bias", L + ("attn", "o_bias"), "id")
    if cfg.qk_norm:
      yield Entry(p + "self_attn.q_norm.weight", L + ("attn", "q_norm", "scale"), "id")
      yield Entry(p + "self_attn.k_norm.weight", L + ("attn", "k_norm", "scale"), "id")
    if cfg.sandwich_norms:
      yield Entry(p + "post_attention_layernorm.weight", L + ("post_attn_norm", "scale"), "id")
      yield Entry(p + "pre_feedforward_layernorm.weight", L + ("mlp_norm", "scale"), "id")
      yield Entry(p + "post_feedforward_layernorm.weight", L + ("post_mlp_norm", "scale"), "id")
    else:
      yield Entry(p + "post_attention_layernorm.weight", L + ("mlp_norm", "scale"), "id")
    for name in ("gate", "up", "down"):
      yield Entry(p + f"mlp.{name}_proj.weight", L + ("mlp", name), "t")
  yield Entry("model.norm.weight", ("final_norm", "scale"), "id")
  if not cfg.tie_embeddings:
    yield Entry("lm_head.weight", ("lm_head",), "t")


def to_flax(e: Entry, w: np.ndarray) -> np.ndarray:
  """HF layout → Flax layout."""
  if e.kind == "q":
    out, d = w.shape
    return w.reshape(e.heads, out // e.heads, d).transpose(2, 0, 1)
  if e.kind == "o":
    d, inner = w.shape
    return w.reshape(d, e.heads, inner // e.heads).transpose(1, 2, 0)
  if e.kind == "t":
    return w.T
  if e.kind == "b":
    return w.reshape(e.heads, -1)
  return w


def to_hf(e: Entry, w: np.ndarray) -> np.ndarray:
  """Flax layout → HF layout (the exact inverse of `to_flax`)."""
  if e.kind == "q":
    d, heads, h = w.shape
    return w.transpose(1, 2, 0).reshape(heads * h, d)
  if e.kind == "o":
    heads, h, d = w.shape
    return w.transpose(2, 0, 1).reshape(d, heads * h)
  if e.kind == "t":
    return w.T
  if e.kind == "b":
    return w.reshape(-1)
  return w


def hf_shape(e: Entry, flax_shape: tuple[int, ...]) -> tuple[int, ...]:
  """The HF tensor shape that maps onto a Flax parameter of ``flax_shape``."""
  return tuple(to_hf(e, np.empty(flax_shape, np.int8)).shape)
