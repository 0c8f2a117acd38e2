"""The decoder-only causal LM shared by all families (Llama, Qwen2, Gemma 1/2/3), as a Flax NNX module.

``model(input_ids, attention_mask=None, positions=None, segment_ids=None)`` → logits [B, T, V].
The pieces are exposed for memory-bounded consumers (the compression kernel and the losses never
materialise [B, T, V] logits): ``hidden_states`` gives the final-normed [B, T, D] activations,
``output_embedding`` the [D, V] unembedding matrix and ``logits_from_hidden`` applies it (with
Gemma 2's final soft-cap).

Masking rules: causal on row slots; ``attention_mask`` [B, T] (1 = real token) removes padding keys
(either side); ``segment_ids`` [B, T] (0 = padding) keeps packed examples from attending to each
other; ``positions`` [B, T] are RoPE positions. Defaults: positions count real tokens
(``cumsum(attention_mask) - 1``) or restart at each new segment.

Training memory: ``model.remat`` names a `jax.checkpoint` policy applied to each decoder layer in
the cache-free forward (``REMAT_POLICIES``; None = keep all activations). It is a static attribute, so
set it before ``nnx.split``.

Decoding uses a functional KV cache (a pytree from ``init_cache``) so that ``generate`` can jit a pure
function of ``(graphdef, state, cache)``.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from elasticity.models.config import ModelConfig
from elasticity.models.layers import MLP, Attention, RMSNorm, dense, param, rope_tables
from elasticity.models.layers import attention_mask as make_mask

Array = jax.Array

# Per-layer rematerialisation policies, by name: "full" keeps only each layer's input, "dots" also
# keeps the outputs of weight matmuls (no batch dims), "dots_all" those of every matmul.
REMAT_POLICIES = {
    "full": jax.checkpoint_policies.nothing_saveable,
    "dots": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
    "dots_all": jax.checkpoint_policies.dots_saveable,
}


def _remat_layer(layer: "DecoderLayer", policy: str, x, cos, sin, mask):
  """One layer's forward under `jax.checkpoint` with a named policy (no cache)."""
  if policy not in REMAT_POLICIES:
    raise ValueError(f"remat policy {policy!r} is not one of {sorted(REMAT_POLICIES)} (or None)")
  graphdef, state = nnx.split(layer)

  @functools.partial(jax.checkpoint, policy=REMAT_POLICIES[policy])
  def run(state, x, cos, sin, mask):
    return nnx.merge(graphdef, state)(x, cos, sin, mask)[0]
  return run(state, x, cos, sin, mask)


class DecoderLayer(nnx.Module):
  """Pre-norm block; Gemma 2/3 add post-attention and pre/post-MLP ("sandwich") norms."""

  def __init__(self, cfg: ModelConfig, index: int, *, dtype, param_dtype, rngs: nnx.Rngs):
    norm = lambda: RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, cfg.norm_plus_one,
                           param_dtype=param_dtype, rngs=rngs)
    self.attn_norm = norm()
    self.attn = Attention(cfg, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    self.mlp_norm = norm()
    self.mlp = MLP(cfg, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    if cfg.sandwich_norms:
      self.post_attn_norm = norm()
      self.post_mlp_norm = norm()
    self.sandwich = cfg.sandwich_norms
    self.index = index

  def __call__(self, x, cos, sin, mask, cache=None):
    h, cache = self.attn(self.attn_norm(x), cos, sin, mask, cache)
    if self.sandwich:
      h = self.post_attn_norm(h)
    x = x + h
    h = self.mlp(self.mlp_norm(x))
    if self.sandwich:
      h = self.post_mlp_norm(h)
    return x + h, cache


def default_positions(attention_mask: Array | None, segment_ids: Array | None, shape) -> Array:
  """RoPE positions when none are given: count real tokens, restart per packed segment."""
  b, t = shape
  idx = jnp.broadcast_to(jnp.arange(t, dtype=jnp.int32), (b, t))
  if segment_ids is not None:
    prev = jnp.concatenate([jnp.full((b, 1), -1, segment_ids.dtype), segment_ids[:, :-1]], axis=1)
    starts = jnp.where(segment_ids != prev, idx, 0)
    return idx - jax.lax.cummax(starts, axis=1)
  if attention_mask is not None:
    return jnp.maximum(jnp.cumsum(attention_mask.astype(jnp.int32), axis=1) - 1, 0)
  return idx


class CausalLM(nnx.Module):
  """A decoder-only language model; see the module docstring for the call conventions."""

  def __init__(self, cfg: ModelConfig, *, dtype=jnp.float32, param_dtype=jnp.float32,
               rngs: nnx.Rngs | None = None):
    rngs = rngs if rngs is not None else nnx.Rngs(0)
    self.config = cfg
    self.dtype = dtype
    self.embed = param(rngs, (cfg.vocab_size, cfg.hidden_size), ("vocab", "embed"), param_dtype)
    self.layers = nnx.List([
        DecoderLayer(cfg, i, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        for i in range(cfg.num_layers)])
    self.final_norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, cfg.norm_plus_one,
                              param_dtype=param_dtype, rngs=rngs)
    if not cfg.tie_embeddings:
      self.lm_head = param(rngs, (cfg.hidden_size, cfg.vocab_size), ("embed", "vocab"), param_dtype)
    self.remat: str | None = None

  # -- pieces -------------------------------------------------------------------------------------
  def embed_tokens(self, input_ids: Array) -> Array:
    x = jnp.take(self.embed[...], input_ids, axis=0).astype(self.dtype)
    if self.config.embed_scale:
      x = x * jnp.asarray(self.config.hidden_size ** 0.5, dtype=self.dtype)
    return x

  def output_embedding(self) -> Array:
    """The [D, V] unembedding matrix in the compute dtype (the embedding's transpose when tied)."""
    w = self.embed[...].T if self.config.tie_embeddings else self.lm_head[...]
    return w.astype(self.dtype)

  def logits_from_hidden(self, h: Array, w: Array | None = None) -> Array:
    """[..., D] final-normed activations → [..., V] logits (float32), with the final soft-cap."""
    w = self.output_embedding() if w is None else w
    logits = dense(h.astype(w.dtype), w).astype(jnp.float32)            # ...D,DV->...V
    return softcap(logits, self.config.final_logit_softcap)

  def hidden_states(self, input_ids: Array, attention_mask: Array | None = None,
                    positions: Array | None = None, segment_ids: Array | None = None,
                    cache: dict[str, Any] | None = None):
    """Final-normed activations [B, T, D]; with ``cache`` returns ``(h, new_cache)``."""
    cfg = self.config
    input_ids = jnp.asarray(input_ids, jnp.int32)
    b, t = input_ids.shape
    if attention_mask is not None:
      attention_mask = jnp.asarray(attention_mask).astype(bool)
    if segment_ids is not None:
      segment_ids = jnp.asarray(segment_ids, jnp.int32)
    if cache is None:
      slots = jnp.broadcast_to(jnp.arange(t, dtype=jnp.int32), (b, t))
      k_slots = jnp.arange(t, dtype=jnp.int32)
      if attention_mask is not None:
        k_valid = attention_mask
      elif segment_ids is not None:
        k_valid = segment_ids != 0
      else:
        k_valid = jnp.ones((b, t), bool)
      if positions is None:
        positions = default_positions(attention_mask, segment_ids, (b, t))
    else:
      if segment_ids is not None:
        raise ValueError("segment_ids (packed rows) are not supported with a KV cache")
      new_valid = attention_mask if attention_mask is not None else jnp.ones((b, t), bool)
      idx = cache["index"]
      slots = jnp.broadcast_to(idx + jnp.arange(t, dtype=jnp.int32), (b, t))
      k_slots = jnp.arange(cache["mask"].shape[1], dtype=jnp.int32)
      k_valid = jax.lax.dynamic_update_slice_in_dim(cache["mask"], new_valid, idx, axis=1)
      if positions is None:
        counts = jnp.cumsum(new_valid.astype(jnp.int32), axis=1)
        positions = jnp.maximum(cache["next_position"][:, None] + counts - 1, 0)
    positions = jnp.asarray(positions, jnp.int32)

    masks = {}
    for w in {cfg.window(i) for i in range(cfg.num_layers)}:
      seg = segment_ids if cache is None else None
      masks[w] = make_mask(slots, k_slots, k_valid, w, seg, seg)
    tables = {}
    for i in range(cfg.num_layers):
      rope = cfg.rope_for(i)
      if rope not in tables:
        tables[rope] = rope_tables(rope, cfg.head_dim, positions)

    x = self.embed_tokens(input_ids)
    new_layers = []
    for i, layer in enumerate(self.layers):
      cos, sin = tables[cfg.rope_for(i)]
      layer_cache = None
      if cache is not None:
        layer_cache = {**cache["layers"][i], "index": cache["index"]}
      elif self.remat:
        x = _remat_layer(layer, self.remat, x, cos, sin, masks[cfg.window(i)])
        continue
      x, layer_cache = layer(x, cos, sin, masks[cfg.window(i)], layer_cache)
      if cache is not None:
        new_layers.append({"k": layer_cache["k"], "v": layer_cache["v"]})
    h = self.final_norm(x)
    if cache is None:
      return h
    new_cache = {
        "index": cache["index"] + t,
        "mask": k_valid,
        "next_position": cache["next_position"] + jnp.sum(new_valid, axis=1, dtype=jnp.int32),
        "layers": new_layers,
    }
    return h, new_cache

  def __call__(self, input_ids: Array, attention_mask: Array | None = None,
               positions: Array | None = None, segment_ids: Array | None = None) -> Array:
    """Logits [B, T, V] (float32)."""
    h = self.hidden_states(input_ids, attention_mask, positions, segment_ids)
    return self.logits_from_hidden(h)

  def init_cache(self, batch_size: int, max_length: int, dtype=None) -> dict[str, Any]:
    """An empty KV cache for ``max_length`` slots (prompt plus new tokens)."""
    cfg = self.config
    dtype = dtype or self.dtype
    shape = (batch_size, max_length, cfg.num_kv_heads, cfg.head_dim)
    return {
        "index": jnp.zeros((), jnp.int32),
        "mask": jnp.zeros((batch_size, max_length), bool),
        "next_position": jnp.zeros((batch_size,), jnp.int32),
        "layers": [{"k": jnp.zeros(shape, dtype), "v": jnp.zeros(shape, dtype)}
                   for _ in range(cfg.num_layers)],
    }



def softcap(x: Array, cap: float | None) -> Array:
  if not cap:
    return x
  cap = jnp.asarray(cap, x.dtype)
  return jnp.tanh(x / cap) * cap
