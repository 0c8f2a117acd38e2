"""The attention core, behind a switch: XLA einsums, cuDNN flash attention, or TPU splash attention.

``attention_impl`` (a static attribute of every `Attention` module, set with
`CausalLM.set_attention_impl`):

* ``"xla"`` (default, the CPU path): grouped-query einsums with causal block skipping and a dense
  boolean mask; supports every mask and soft-capping, and the KV cache.
* ``"cudnn"``: ``jax.nn.dot_product_attention(implementation="cudnn")`` (flash attention on NVIDIA
  GPUs). Causal and sliding-window masks are the kernel's own (``is_causal``, ``local_window_size``);
  padding and packed segments enter as a dense mask (which cuDNN turns into a bias). No
  attention-logit soft-capping (Gemma 2).
* ``"splash"``: the Pallas splash-attention kernel on TPU (``interpret=True`` runs it anywhere,
  slowly). Causal and sliding-window masks are the kernel's block-sparse masks; padding and packed
  segments are segment ids (padding keys get segment 0). Soft-capping is supported. Rows must be a
  multiple of 128 slots (the kernel's block size).

Decoding with a KV cache (one query slot against the cache) always takes the XLA path: it is
memory-bound, and the kernels' causal masks assume aligned query and key slots.

Einsum letters as in `elasticity.models.layers`: B, T, S, N, K, G, Q, H.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp

Array = jax.Array

IMPLEMENTATIONS = ("xla", "cudnn", "splash")

# The `implementation=` that "cudnn" passes to `jax.nn.dot_product_attention` (tests set "xla" to
# run the same call on CPU).
_DPA_IMPLEMENTATION = {"cudnn": "cudnn"}
# Splash kernels run in Pallas interpret mode when this is True (tests on CPU).
SPLASH_INTERPRET = False
SPLASH_BLOCK = 128


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class MaskSpec:
  """What the attention of one forward may see, before it is made dense.

  q_slots [B, T] and k_slots [S] are row slot indices (causality); k_valid [B, S] marks real keys
  (None: all real); q_segments [B, T] / k_segments [B, S] are packed-segment ids (None: one segment).
  ``cached``: decoding against a KV cache (query slots do not start at 0).
  """
  q_slots: Array
  k_slots: Array
  k_valid: Array | None = None
  q_segments: Array | None = None
  k_segments: Array | None = None
  cached: bool = dataclasses.field(default=False, metadata=dict(static=True))

  def dense(self, window) -> Array:
    """Boolean [B, T, S]: causal, padding, segments and ``window`` (int, traced int or None)."""
    diff = self.q_slots[:, :, None] - self.k_slots[None, None, :]
    allowed = diff >= 0
    if self.k_valid is not None:
      allowed &= self.k_valid[:, None, :]
    if window is not None:
      allowed &= diff < window
    if self.q_segments is not None:
      allowed &= self.q_segments[:, :, None] == self.k_segments[:, None, :]
    return allowed

  def extra(self) -> Array | None:
    """Boolean [B, T, S] of padding and segments only (None when there are neither)."""
    allowed = None
    if self.k_valid is not None:
      allowed = jnp.broadcast_to(self.k_valid[:, None, :], self.q_slots.shape + self.k_slots.shape)
    if self.q_segments is not None:
      seg = self.q_segments[:, :, None] == self.k_segments[:, None, :]
      allowed = seg if allowed is None else allowed & seg
    return allowed


def check_impl(impl: str) -> str:
  if impl not in IMPLEMENTATIONS:
    raise ValueError(f"attention_impl {impl!r} is not one of {IMPLEMENTATIONS}")
  return impl


# -- cuDNN ----------------------------------------------------------------------------------------
def cudnn(q: Array, k: Array, v: Array, spec: MaskSpec, window: int | None, scale: float,
          softcap: float | None, dtype) -> Array:
  """The "cudnn" implementation for q [B,T,N,H], k/v [B,T,K,H] (no cache) → [B,T,N,H]."""
  if softcap:
    raise ValueError(f"attention_impl='cudnn' does not support attention-logit soft-capping "
                     f"(attn_logit_softcap={softcap}); use attention_impl='xla'")
  if q.shape[1] != k.shape[1]:
    raise ValueError(f"attention_impl='cudnn': the causal mask needs as many query as key slots "
                     f"(got {q.shape[1]} and {k.shape[1]})")
  extra = spec.extra()
  out = jax.nn.dot_product_attention(
      q.astype(dtype), k.astype(dtype), v.astype(dtype),
      mask=None if extra is None else extra[:, None], scale=float(scale), is_causal=True,
      local_window_size=None if window is None else (window - 1, 0),
      implementation=_DPA_IMPLEMENTATION["cudnn"])
  return out.astype(dtype)


# -- splash (TPU) ---------------------------------------------------------------------------------
@functools.lru_cache(maxsize=64)
def _splash_kernel(t: int, g: int, window: int | None, softcap: float | None, interpret: bool):
  from jax.experimental.pallas.ops.tpu import splash_attention as sa  # pylint: disable=import-outside-toplevel
  if window is None:
    one = sa.CausalMask((t, t))
  else:
    one = sa.LocalMask((t, t), window_size=(window - 1, 0), offset=0)
  blk = SPLASH_BLOCK
  sizes = sa.BlockSizes(block_q=blk, block_kv=blk, block_kv_compute=blk, block_q_dkv=blk,
                        block_kv_dkv=blk, block_kv_dkv_compute=blk, block_q_dq=blk, block_kv_dq=blk)
  # Built while tracing the model: its mask tables must be constants, not tracers of that trace.
  with jax.ensure_compile_time_eval():
    return sa.make_splash_mqa(sa.MultiHeadMask([one] * g), block_sizes=sizes, head_shards=1,
                              q_seq_shards=1, attn_logits_soft_cap=softcap, interpret=interpret)


def splash(q: Array, k: Array, v: Array, spec: MaskSpec, window: int | None, scale: float,
           softcap: float | None, dtype) -> Array:
  """The "splash" implementation for q [B,T,N,H], k/v [B,T,K,H] (no cache) → [B,T,N,H]."""
  from jax.experimental.pallas.ops.tpu import splash_attention as sa  # pylint: disable=import-outside-toplevel
  b, t, n, h = q.shape
  kh, s = k.shape[2], k.shape[1]
  if t != s or t % SPLASH_BLOCK:
    raise ValueError(f"attention_impl='splash' needs as many query as key slots, a multiple of "
                     f"{SPLASH_BLOCK} (got {t} and {s})")
  if spec.q_segments is not None:
    q_seg, k_seg = spec.q_segments, spec.k_segments
  elif spec.k_valid is not None:
    q_seg = k_seg = spec.k_valid.astype(jnp.int32)   # padding: segment 0, real tokens: segment 1
  else:
    q_seg = k_seg = jnp.ones((b, t), jnp.int32)
  if spec.q_segments is not None and spec.k_valid is not None:
    k_seg = jnp.where(spec.k_valid, k_seg, 0)
  g = n // kh
  kernel = _splash_kernel(t, g, window, float(softcap) if softcap else None, SPLASH_INTERPRET)
  # The kernel does not scale: scale q. One MQA kernel per (row, KV head) over its G query heads.
  qs = (q.astype(jnp.float32) * scale).astype(dtype)
  qs = qs.reshape(b, t, kh, g, h).transpose(0, 2, 3, 1, 4)          # [B, K, G, T, H]
  ks, vs = k.astype(dtype).transpose(0, 2, 1, 3), v.astype(dtype).transpose(0, 2, 1, 3)

  def one_row(q_r, k_r, v_r, qs_r, ks_r):
    seg = sa.SegmentIds(q=qs_r, kv=ks_r)
    return jax.vmap(lambda qq, kk, vv: kernel(qq, kk, vv, segment_ids=seg))(q_r, k_r, v_r)
  out = jax.vmap(one_row)(qs, ks, vs, q_seg, k_seg)                   # [B, K, G, T, H]
  return out.transpose(0, 3, 1, 2, 4).reshape(b, t, n, h).astype(dtype)
