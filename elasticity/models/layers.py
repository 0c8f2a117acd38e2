"""Shared Flax NNX layers of the decoder-only families: RMSNorm, RoPE, grouped-query attention, gated MLP.

Einsum axis letters, used by every einsum in the models:
  B batch, T query positions, S key positions, D model width, N query heads, K key/value heads,
  G query heads per key/value head (N = K·G), Q = G·T folded query rows, H head dimension,
  F MLP width, V vocabulary.

Every parameter carries ``logical_axes`` metadata (``vocab``, ``embed``, ``heads``, ``kv_heads``,
``head_dim``, ``mlp``, ``norm``); `elasticity.sharding` maps those names to mesh axes.
Parameters are stored in ``param_dtype`` and cast to the compute ``dtype`` where used; norms,
softmax and RoPE tables are computed in float32.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from elasticity.models import attention as attn_impls
from elasticity.models.attention import MaskSpec
from elasticity.models.config import ModelConfig, RopeConfig

Array = jax.Array
_init = nnx.initializers.normal(stddev=0.02)


def dense(x: Array, w: Array, n_in: int = 1) -> Array:
  """Contract the last ``n_in`` axes of x with the first ``n_in`` axes of w, as one 2-D GEMM.

  E.g. "BTD,DNH->BTNH" (n_in=1) or "BTNH,NHD->BTD" (n_in=2). Flattening to [B·T, in] × [in, out]
  matters on XLA:CPU: the weight gradients of 3-D einsums contract over two axes (B, T) and get
  transposed copies, which doubled the MLP's backward time in bench/train_step.py.
  """
  lead, contract = x.shape[:x.ndim - n_in], x.shape[x.ndim - n_in:]
  assert contract == w.shape[:n_in], (x.shape, w.shape)
  k = 1
  for d in contract:
    k *= d
  y = x.reshape(-1, k) @ w.reshape(k, -1)
  return y.reshape(*lead, *w.shape[n_in:])


def param(rngs: nnx.Rngs, shape, axes, dtype, init=_init) -> nnx.Param:
  """A parameter with logical axis names (one name per dimension)."""
  assert len(shape) == len(axes), (shape, axes)
  return nnx.Param(init(rngs.params(), shape, dtype), logical_axes=tuple(axes))


class RMSNorm(nnx.Module):
  """RMSNorm in float32. Llama: ``w * normed.astype(x.dtype)``; Gemma (plus_one): ``(normed * (1+w))``."""

  def __init__(self, dim: int, eps: float, plus_one: bool, *, param_dtype, rngs: nnx.Rngs):
    init = nnx.initializers.zeros if plus_one else nnx.initializers.ones
    self.scale = param(rngs, (dim,), ("norm",), param_dtype, init)
    self.eps = eps
    self.plus_one = plus_one

  def __call__(self, x: Array) -> Array:
    xf = x.astype(jnp.float32)
    normed = xf * jax.lax.rsqrt(jnp.mean(xf * xf, axis=-1, keepdims=True) + self.eps)
    w = self.scale[...]
    if self.plus_one:
      return (normed * (1.0 + w.astype(jnp.float32))).astype(x.dtype)
    return w.astype(x.dtype) * normed.astype(x.dtype)


def rope_tables(rope: RopeConfig, head_dim: int, positions: Array) -> tuple[Array, Array]:
  """cos, sin of shape [B, T, H] (float32) for rotate-half RoPE at integer ``positions`` [B, T]."""
  inv_freq = jnp.asarray(rope.inv_freq(head_dim))
  freqs = positions.astype(jnp.float32)[..., None] * inv_freq  # [B, T, H/2]
  emb = jnp.concatenate([freqs, freqs], axis=-1)
  return jnp.cos(emb), jnp.sin(emb)


def apply_rope(x: Array, cos: Array, sin: Array) -> Array:
  """Rotate-half RoPE on x [B, T, heads, H]; tables cast to x's dtype as `transformers` does."""
  cos = cos[:, :, None, :].astype(x.dtype)
  sin = sin[:, :, None, :].astype(x.dtype)
  half = x.shape[-1] // 2
  rotated = jnp.concatenate([-x[..., half:], x[..., :half]], axis=-1)
  return x * cos + rotated * sin


def causal_block(t: int) -> int:
  """Query block length for causal block skipping over ``t`` slots (``t`` itself = no skipping).

  Blocks of at least 128 slots, at most 8 blocks: at T = 256 the attention matmuls and softmax do
  75% of the full work (62.5% at 512, 56% at 2048); fwd+bwd of the attention core on CPU went from
  47 to 29 ms per layer at 8 × 256 (Llama-20M shapes).
  """
  if t < 256:
    return t
  return max(128, -(-t // 8))


class Attention(nnx.Module):
  """Grouped-query self-attention with optional q/k/v bias, q/k norms and logit soft-capping.

  ``impl`` (static) picks the attention core: "xla" (below), "cudnn" or "splash"
  (`elasticity.models.attention`).
  """

  def __init__(self, cfg: ModelConfig, *, dtype, param_dtype, rngs: nnx.Rngs, impl: str = "xla"):
    d, n, k, h = cfg.hidden_size, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
    self.q = param(rngs, (d, n, h), ("embed", "heads", "head_dim"), param_dtype)
    self.k = param(rngs, (d, k, h), ("embed", "kv_heads", "head_dim"), param_dtype)
    self.v = param(rngs, (d, k, h), ("embed", "kv_heads", "head_dim"), param_dtype)
    self.o = param(rngs, (n, h, d), ("heads", "head_dim", "embed"), param_dtype)
    zeros = nnx.initializers.zeros
    if cfg.qkv_bias:
      self.q_bias = param(rngs, (n, h), ("heads", "head_dim"), param_dtype, zeros)
      self.k_bias = param(rngs, (k, h), ("kv_heads", "head_dim"), param_dtype, zeros)
      self.v_bias = param(rngs, (k, h), ("kv_heads", "head_dim"), param_dtype, zeros)
    if cfg.o_bias:
      self.o_bias = param(rngs, (d,), ("embed",), param_dtype, zeros)
    if cfg.qk_norm:
      self.q_norm = RMSNorm(h, cfg.rms_norm_eps, cfg.norm_plus_one, param_dtype=param_dtype, rngs=rngs)
      self.k_norm = RMSNorm(h, cfg.rms_norm_eps, cfg.norm_plus_one, param_dtype=param_dtype, rngs=rngs)
    self.cfg = cfg
    self.dtype = dtype
    self.impl = attn_impls.check_impl(impl)

  def __call__(self, x: Array, cos: Array, sin: Array, mask: MaskSpec,
               cache: dict[str, Any] | None = None, window=None
               ) -> tuple[Array, dict[str, Any] | None]:
    """x [B,T,D]; ``mask`` for S = T keys (or the cache length); ``window`` the layer's sliding
    window (None: full attention; a traced scalar only on the XLA path). Returns ([B,T,D], cache)."""
    cfg, dt = self.cfg, self.dtype
    x = x.astype(dt)
    q = dense(x, self.q[...].astype(dt))            # BTD,DNH->BTNH
    k = dense(x, self.k[...].astype(dt))            # BTD,DKH->BTKH
    v = dense(x, self.v[...].astype(dt))            # BTD,DKH->BTKH
    if cfg.qkv_bias:
      q = q + self.q_bias[...].astype(dt)
      k = k + self.k_bias[...].astype(dt)
      v = v + self.v_bias[...].astype(dt)
    if cfg.qk_norm:
      q, k = self.q_norm(q), self.k_norm(k)
    q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
    if cache is not None:
      # The cache is kept heads-first [B, K, S, H], the layout the attention matmuls read, so a
      # decoding step transposes only its new [B, T, K, H] keys, never the whole cache.
      idx = cache["index"]
      k = jax.lax.dynamic_update_slice_in_dim(
          cache["k"], k.transpose(0, 2, 1, 3).astype(cache["k"].dtype), idx, axis=2)
      v = jax.lax.dynamic_update_slice_in_dim(
          cache["v"], v.transpose(0, 2, 1, 3).astype(cache["v"].dtype), idx, axis=2)
      cache = {**cache, "k": k, "v": v}
      k, v = k.astype(dt), v.astype(dt)
    if self.impl != "xla" and cache is None:
      kernel = attn_impls.cudnn if self.impl == "cudnn" else attn_impls.splash
      if window is not None and not isinstance(window, int):
        raise ValueError(f"attention_impl={self.impl!r} needs a static sliding window per layer")
      out = kernel(q, k, v, mask, window, cfg.attn_scale, cfg.attn_logit_softcap, dt)
    else:
      out = self._xla(q, k, v, mask.dense(window), cache is None, heads_first=cache is not None)
    y = dense(out, self.o[...].astype(dt), n_in=2)  # BTNH,NHD->BTD
    if cfg.o_bias:
      y = y + self.o_bias[...].astype(dt)
    return y, cache

  def _xla(self, q: Array, k: Array, v: Array, mask: Array, aligned: bool,
           heads_first: bool = False) -> Array:
    """The "xla" core; ``aligned``: query slot i is key slot i (no cache) so blocks can skip;
    ``heads_first``: k/v are [B, K, S, H] (the KV cache's layout), else [B, S, K, H]."""
    if heads_first:
      return self._attend(q, k, v, mask, heads_first=True)
    t, s = q.shape[1], k.shape[1]
    c = causal_block(t)
    if aligned and t == s and c < t:
      # Causal block skipping: query block [i, i+c) attends only to keys [0, i+c); the mask still
      # applies inside. Each block's softmax is complete (it sees every key it may attend to).
      return jnp.concatenate([self._attend(q[:, i:i + c], k[:, :i + c], v[:, :i + c],
                                           mask[:, i:i + c, :i + c]) for i in range(0, t, c)], axis=1)
    return self._attend(q, k, v, mask)

  def _attend(self, q: Array, k: Array, v: Array, mask: Array, heads_first: bool = False) -> Array:
    """softmax(q kᵀ) v for q [B,T,N,H], k/v [B,S,K,H] (or [B,K,S,H] if ``heads_first``), mask
    [B,T,S] → [B,T,N,H]."""
    cfg, dt = self.cfg, self.dtype
    # Fold the G query heads of each KV head into the query axis (Q = G·T) so that both attention
    # matmuls are plain batched GEMMs over (B, K); XLA:CPU runs this 2.5× faster than a 5-D einsum.
    b, t, n, h = q.shape
    if not heads_first:
      k, v = k.transpose(0, 2, 1, 3), v.transpose(0, 2, 1, 3)        # [B, K, S, H]
    kh, s = k.shape[1], k.shape[2]
    g = n // kh
    q = q.reshape(b, t, kh, g, h).transpose(0, 2, 3, 1, 4).reshape(b, kh, g * t, h)
    scores = jnp.einsum("BKQH,BKSH->BKQS", q, k, preferred_element_type=jnp.float32)
    scores = scores.reshape(b, kh, g, t, s) * jnp.float32(cfg.attn_scale)
    if cfg.attn_logit_softcap:
      cap = jnp.float32(cfg.attn_logit_softcap)
      scores = jnp.tanh(scores / cap) * cap
    scores = jnp.where(mask[:, None, None, :, :], scores, jnp.finfo(jnp.float32).min)
    probs = jax.nn.softmax(scores, axis=-1).astype(dt).reshape(b, kh, g * t, s)
    out = jnp.einsum("BKQS,BKSH->BKQH", probs, v)
    return out.reshape(b, kh, g, t, h).transpose(0, 3, 1, 2, 4).reshape(b, t, n, h)


class MLP(nnx.Module):
  """Gated MLP: down(act(gate(x)) * up(x)) with SiLU (Llama, Qwen) or tanh-GELU (Gemma)."""

  def __init__(self, cfg: ModelConfig, *, dtype, param_dtype, rngs: nnx.Rngs):
    d, f = cfg.hidden_size, cfg.intermediate_size
    self.gate = param(rngs, (d, f), ("embed", "mlp"), param_dtype)
    self.up = param(rngs, (d, f), ("embed", "mlp"), param_dtype)
    self.down = param(rngs, (f, d), ("mlp", "embed"), param_dtype)
    self.activation = cfg.activation
    self.dtype = dtype

  def __call__(self, x: Array) -> Array:
    dt = self.dtype
    x = x.astype(dt)
    g = dense(x, self.gate[...].astype(dt))         # BTD,DF->BTF
    u = dense(x, self.up[...].astype(dt))           # BTD,DF->BTF
    act = jax.nn.silu(g) if self.activation == "silu" else jax.nn.gelu(g, approximate=True)
    return dense(act * u, self.down[...].astype(dt))  # BTF,FD->BTD


def attention_mask(q_slots: Array, k_slots: Array, k_valid: Array | None, window: int | None,
                   q_segments: Array | None = None, k_segments: Array | None = None) -> Array:
  """Boolean [B, T, S] mask: causal on slot indices, padding, packed segments, sliding window.

  q_slots [B, T] and k_slots [S] are row slot indices (not RoPE positions), so left padding and
  cached decoding share one rule; k_valid [B, S] marks real (non-padding) keys.
  """
  return MaskSpec(q_slots, k_slots, k_valid, q_segments, k_segments).dense(window)
