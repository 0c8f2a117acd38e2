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

Layer layouts: ``scan_layers=False`` keeps the layers as a list (``layers[i]``, HF's layout);
``scan_layers=True`` stores one `DecoderLayer` whose parameters carry a leading ``layers`` axis and
runs the stack as one `jax.lax.scan` (one layer compiled, not L). `elasticity.models.scan` converts
between them (``stack_layers`` / ``unstack_layers``, bitwise the same weights); the two forwards
agree to float32 rounding (about 1e-7 relative; XLA fuses a scan body differently).

Training memory: ``model.remat`` names a `jax.checkpoint` policy applied to each decoder layer in
the cache-free forward (``REMAT_POLICIES``; None = keep all activations), inside the scan body when
scanned. It is a static attribute, so set it before ``nnx.split``; so is the attention core
(`set_attention_impl`: "xla", "cudnn", "splash").

Decoding uses a functional KV cache (a pytree from ``init_cache``) so that ``generate`` can jit a pure
function of ``(graphdef, state, cache)``.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from elasticity.models import scan
from elasticity.models.attention import MaskSpec, check_impl
from elasticity.models.config import ModelConfig
from elasticity.models.layers import MLP, Attention, RMSNorm, dense, param, rope_tables

Array = jax.Array

# Per-layer rematerialisation policies, by name: "full" keeps only each layer's input, "dots" also
# keeps the outputs of weight matmuls (no batch dims), "dots_all" those of every matmul.
REMAT_POLICIES = {
    "full": jax.checkpoint_policies.nothing_saveable,
    "dots": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
    "dots_all": jax.checkpoint_policies.dots_saveable,
}


def remat_policy(name: str):
  if name not in REMAT_POLICIES:
    raise ValueError(f"remat policy {name!r} is not one of {sorted(REMAT_POLICIES)} (or None)")
  return REMAT_POLICIES[name]


def _remat_layer(layer: "DecoderLayer", policy: str, x, cos, sin, mask, window):
  """One layer's forward under `jax.checkpoint` with a named policy (no cache)."""
  graphdef, state = nnx.split(layer)

  @functools.partial(jax.checkpoint, policy=remat_policy(policy))
  def run(state, x, cos, sin, mask):
    return nnx.merge(graphdef, state)(x, cos, sin, mask, None, window)[0]
  return run(state, x, cos, sin, mask)


class DecoderLayer(nnx.Module):
  """Pre-norm block; Gemma 2/3 add post-attention and pre/post-MLP ("sandwich") norms."""

  def __init__(self, cfg: ModelConfig, *, dtype, param_dtype, rngs: nnx.Rngs,
               attention_impl: str = "xla"):
    norm = lambda: RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, cfg.norm_plus_one,
                           param_dtype=param_dtype, rngs=rngs)
    self.attn_norm = norm()
    self.attn = Attention(cfg, dtype=dtype, param_dtype=param_dtype, rngs=rngs, impl=attention_impl)
    self.mlp_norm = norm()
    self.mlp = MLP(cfg, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    if cfg.sandwich_norms:
      self.post_attn_norm = norm()
      self.post_mlp_norm = norm()
    self.sandwich = cfg.sandwich_norms

  def __call__(self, x, cos, sin, mask: MaskSpec, cache=None, window=None):
    h, cache = self.attn(self.attn_norm(x), cos, sin, mask, cache, window)
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
               rngs: nnx.Rngs | None = None, scan_layers: bool = False, attention_impl: str = "xla"):
    rngs = rngs if rngs is not None else nnx.Rngs(0)
    self.config = cfg
    self.dtype = dtype
    self.embed = param(rngs, (cfg.vocab_size, cfg.hidden_size), ("vocab", "embed"), param_dtype)
    layers = [DecoderLayer(cfg, dtype=dtype, param_dtype=param_dtype, rngs=rngs,
                           attention_impl=attention_impl) for _ in range(cfg.num_layers)]
    # The same random draws in both layouts: a scanned model is its unrolled twin, stacked.
    self.layers = scan.stack_modules(layers) if scan_layers else nnx.List(layers)
    self.scan_layers = bool(scan_layers)
    self.final_norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, cfg.norm_plus_one,
                              param_dtype=param_dtype, rngs=rngs)
    if not cfg.tie_embeddings:
      self.lm_head = param(rngs, (cfg.hidden_size, cfg.vocab_size), ("embed", "vocab"), param_dtype)
    self.remat: str | None = None
    self.scan_unroll: int = 1     # layers per scan iteration (`lax.scan`'s ``unroll``); static

  # -- switches -----------------------------------------------------------------------------------
  @property
  def attention_impl(self) -> str:
    """The attention core of every layer ("xla", "cudnn" or "splash"; `elasticity.models.attention`)."""
    layer = self.layers if self.scan_layers else self.layers[0]
    return layer.attn.impl

  def set_attention_impl(self, impl: str) -> "CausalLM":
    """Switch every layer's attention core (a static attribute: call it before ``nnx.split``)."""
    check_impl(impl)
    for layer in ([self.layers] if self.scan_layers else list(self.layers)):
      layer.attn.impl = impl
    return self

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
        k_valid = None
      if positions is None:
        positions = default_positions(attention_mask, segment_ids, (b, t))
      spec = MaskSpec(slots, k_slots, k_valid, segment_ids, segment_ids)
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
      spec = MaskSpec(slots, k_slots, k_valid, cached=True)
    positions = jnp.asarray(positions, jnp.int32)

    ropes = list(dict.fromkeys(cfg.rope_for(i) for i in range(cfg.num_layers)))
    tables = [rope_tables(rope, cfg.head_dim, positions) for rope in ropes]
    x = self.embed_tokens(input_ids)
    if self.scan_layers:
      x, new_layers = self._scanned(x, ropes, tables, spec,
                                    None if cache is None else cache["layers"],
                                    None if cache is None else cache["index"])
    else:
      new_layers = []
      for i, layer in enumerate(self.layers):
        cos, sin = tables[ropes.index(cfg.rope_for(i))]
        window = cfg.window(i)
        if cache is None and self.remat:
          x = _remat_layer(layer, self.remat, x, cos, sin, spec, window)
          continue
        layer_cache = None if cache is None else {**cache["layers"][i], "index": cache["index"]}
        x, layer_cache = layer(x, cos, sin, spec, layer_cache, window)
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

  def _scanned(self, x, ropes, tables, spec: MaskSpec, cache_layers, cache_index):
    """The decoder stack as one `lax.scan` over the stacked layer parameters.

    Layers differ only in their RoPE table and sliding window; both travel as scanned indices into
    the (at most two) kinds. A traced window suffices for the XLA core; the kernels need a static
    one, so for them a `lax.switch` picks the layer's kind.
    """
    cfg = self.config
    graphdef, state = nnx.split(self.layers)
    windows = list(dict.fromkeys(cfg.window(i) for i in range(cfg.num_layers)))
    rope_ix = jnp.asarray([ropes.index(cfg.rope_for(i)) for i in range(cfg.num_layers)], jnp.int32)
    win_ix = jnp.asarray([windows.index(cfg.window(i)) for i in range(cfg.num_layers)], jnp.int32)
    if len(ropes) > 1:
      cos_all, sin_all = jnp.stack([c for c, _ in tables]), jnp.stack([s for _, s in tables])
    dynamic_window = self.layers.attn.impl == "xla" or spec.cached
    no_window = jnp.iinfo(jnp.int32).max
    window_values = jnp.asarray([no_window if w is None else w for w in windows], jnp.int32)

    def body(x, xs):
      layer_state, r, w, layer_cache = xs
      layer = nnx.merge(graphdef, layer_state)
      cos, sin = tables[0] if len(ropes) == 1 else (cos_all[r], sin_all[r])
      if layer_cache is not None:
        layer_cache = {**layer_cache, "index": cache_index}
      if len(windows) == 1:
        y, new = layer(x, cos, sin, spec, layer_cache, windows[0])
      elif dynamic_window:
        y, new = layer(x, cos, sin, spec, layer_cache, window_values[w])
      else:
        branches = [functools.partial(lambda win, x, cos, sin: layer(x, cos, sin, spec, None, win)[0],
                                      win) for win in windows]
        y, new = jax.lax.switch(w, branches, x, cos, sin), None
      return y, (None if layer_cache is None else {"k": new["k"], "v": new["v"]})

    if cache_layers is None and self.remat:
      body = jax.checkpoint(body, policy=remat_policy(self.remat), prevent_cse=False)
    x, new_layers = jax.lax.scan(body, x, (state, rope_ix, win_ix, cache_layers),
                                 unroll=getattr(self, "scan_unroll", 1))
    return x, new_layers

  def __call__(self, input_ids: Array, attention_mask: Array | None = None,
               positions: Array | None = None, segment_ids: Array | None = None) -> Array:
    """Logits [B, T, V] (float32)."""
    h = self.hidden_states(input_ids, attention_mask, positions, segment_ids)
    return self.logits_from_hidden(h)

  def init_cache(self, batch_size: int, max_length: int, dtype=None) -> dict[str, Any]:
    """An empty KV cache for ``max_length`` slots (prompt plus new tokens).

    Per-layer ``{"k", "v"}`` [B, K, S, H] (heads first: the layout the attention matmuls read) in a
    list (unrolled layers), or one dict of [L, B, K, S, H] arrays (scanned layers).
    """
    cfg = self.config
    dtype = dtype or self.dtype
    shape = (batch_size, cfg.num_kv_heads, max_length, cfg.head_dim)
    if self.scan_layers:
      stacked = (cfg.num_layers,) + shape
      layers: Any = {"k": jnp.zeros(stacked, dtype), "v": jnp.zeros(stacked, dtype)}
    else:
      layers = [{"k": jnp.zeros(shape, dtype), "v": jnp.zeros(shape, dtype)}
                for _ in range(cfg.num_layers)]
    return {
        "index": jnp.zeros((), jnp.int32),
        "mask": jnp.zeros((batch_size, max_length), bool),
        "next_position": jnp.zeros((batch_size,), jnp.int32),
        "layers": layers,
    }


def softcap(x: Array, cap: float | None) -> Array:
  if not cap:
    return x
  cap = jnp.asarray(cap, x.dtype)
  return jnp.tanh(x / cap) * cap
