"""The one log-probability kernel: log p(token_t | tokens_<t) without ever holding [B, T, V] logits.

Both the compression-rate measurement (`elasticity.compression`) and every training objective
(`elasticity.train.losses`) call `token_logprobs`. The model's final-normed activations [B, T, D] are
projected onto the vocabulary one sequence chunk at a time inside a `lax.map`; each chunk's body is
rematerialised (`jax.checkpoint`), so the forward keeps only [B, chunk, V] float32 logits alive and the
backward recomputes them chunk by chunk (the vocabulary tiling of MaxText, by sequence chunks).

Training SFT takes a shortcut with the same numbers: `weighted_nll` fuses the vocabulary projection,
the cross-entropy and its gradient (`fused_weighted_nll`, a `jax.custom_vjp`): each chunk's logits
are computed once, in the forward, which also produces the gradients with respect to the activations
and the unembedding (the "fused linear cross-entropy" of Liger-Kernel). That is 3 vocabulary-sized
GEMMs per step instead of 4 (forward, rematerialised forward, two backward) and one softmax instead
of two, at the same memory bound. It applies where the loss is a weighted sum of token NLLs; the
preference objectives, whose per-sequence cotangents are known only in the backward, use
`token_logprobs`.

Conventions: ``lp[:, t]`` is log p(ids[:, t] | ids[:, <t]) for t ≥ 1 and 0 at t = 0; it is only
meaningful where ``valid`` (returned) is true: t ≥ 1, and the previous slot belongs to the same packed
segment (``segment_ids``) or is a real token (``attention_mask``).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from elasticity.models.layers import dense
from elasticity.models.transformer import CausalLM, softcap

Array = jax.Array


def chunked_target_logprobs(h: Array, w: Array, targets: Array, *, chunk_size: int = 128,
                            final_softcap: float | None = None) -> Array:
  """log softmax(h @ w)[targets] per position: h [B, T, D], w [D, V], targets [B, T] → [B, T] f32."""
  hs, ts, _, unsplit = _chunked(h, targets, jnp.zeros(targets.shape, jnp.float32), chunk_size)

  @jax.checkpoint
  def one(args):
    hc, tc = args
    return -_chunk_nll(hc, w, tc, final_softcap)[1]
  return unsplit(jax.lax.map(one, (hs, ts)))


def token_logprobs(model: CausalLM, input_ids: Array, *, attention_mask: Array | None = None,
                   positions: Array | None = None, segment_ids: Array | None = None,
                   chunk_size: int = 128) -> tuple[Array, Array]:
  """Per-token log-probabilities of ``input_ids`` under ``model`` and where they are defined.

  Returns ``(lp, valid)``, both [B, T]: ``lp[:, t] = log p(ids[t] | ids[<t])`` (float32) and
  ``valid[:, t]`` true where that prediction has a real context (see the module docstring).
  """
  input_ids = jnp.asarray(input_ids, jnp.int32)
  h = model.hidden_states(input_ids, attention_mask, positions, segment_ids)
  targets = input_ids[:, 1:]
  lp = chunked_target_logprobs(h[:, :-1], model.output_embedding(), targets, chunk_size=chunk_size,
                               final_softcap=model.config.final_logit_softcap)
  lp = jnp.pad(lp, ((0, 0), (1, 0)))
  valid = target_validity(input_ids.shape, attention_mask, segment_ids)
  return jnp.where(valid, lp, 0.0), valid


def target_validity(shape, attention_mask: Array | None = None, segment_ids: Array | None = None
                    ) -> Array:
  """[B, T] bool: token t has a real context (t ≥ 1, same packed segment, real previous token)."""
  b, t = shape
  valid = jnp.concatenate([jnp.zeros((b, 1), bool), jnp.ones((b, t - 1), bool)], axis=1)
  if segment_ids is not None:
    seg = jnp.asarray(segment_ids)
    same = jnp.concatenate([jnp.zeros((b, 1), bool), seg[:, 1:] == seg[:, :-1]], axis=1)
    valid &= same & (seg != 0)
  if attention_mask is not None:
    m = jnp.asarray(attention_mask).astype(bool)
    prev = jnp.concatenate([jnp.zeros((b, 1), bool), m[:, :-1]], axis=1)
    valid &= m & prev
  return valid


def _chunked(h: Array, targets: Array, weights: Array, chunk_size: int):
  """[B, T, ...] → [n, B, c, ...] sequence chunks (T padded to a multiple of c with weight 0)."""
  b, t, d = h.shape
  c = max(1, min(chunk_size, t))
  pad = (-t) % c
  if pad:
    h = jnp.pad(h, ((0, 0), (0, pad), (0, 0)))
    targets = jnp.pad(targets, ((0, 0), (0, pad)))
    weights = jnp.pad(weights, ((0, 0), (0, pad)))
  n = (t + pad) // c
  split = lambda x: x.reshape((b, n, c) + x.shape[2:]).swapaxes(0, 1)
  unsplit = lambda x: x.swapaxes(0, 1).reshape((b, n * c) + x.shape[3:])[:, :t]
  return split(h), split(targets), split(weights), unsplit


def _chunk_nll(hc: Array, w: Array, tc: Array, final_softcap: float | None):
  """(logits after the soft-cap, NLL per position, logsumexp) of one chunk, float32."""
  logits = softcap(dense(hc.astype(w.dtype), w).astype(jnp.float32), final_softcap)
  lse = jax.nn.logsumexp(logits, axis=-1)
  picked = jnp.take_along_axis(logits, tc[..., None], axis=-1)[..., 0]
  return logits, lse - picked, lse


@functools.partial(jax.custom_vjp, nondiff_argnums=(4, 5))
def fused_weighted_nll(h: Array, w: Array, targets: Array, weights: Array, chunk_size: int = 128,
                       final_softcap: float | None = None) -> Array:
  """Σ weights · −log softmax(h @ w)[targets]: h [B, T, D], w [D, V], targets/weights [B, T] → f32 [].

  Equal in value and gradient to ``-(chunked_target_logprobs(h, w, targets) * weights).sum()``; the
  gradient is computed in the forward pass (module docstring), so differentiating costs one
  vocabulary projection less. Gradients flow to ``h``, ``w`` and ``weights``.
  """
  hs, ts, ws, _ = _chunked(h, targets, weights, chunk_size)

  def one(args):
    hc, tc, wc = args
    return jnp.sum(_chunk_nll(hc, w, tc, final_softcap)[1] * wc)
  return jnp.sum(jax.lax.map(one, (hs, ts, ws)))


def _fused_fwd(h, w, targets, weights, chunk_size, final_softcap):
  hs, ts, ws, unsplit = _chunked(h, targets, weights.astype(jnp.float32), chunk_size)
  v = w.shape[-1]

  def body(dw, args):
    hc, tc, wc = args
    logits, nll, lse = _chunk_nll(hc, w, tc, final_softcap)
    probs = jnp.exp(logits - lse[..., None])
    hit = jax.lax.broadcasted_iota(jnp.int32, logits.shape, logits.ndim - 1) == tc[..., None]
    dz = jnp.where(hit, probs - 1.0, probs)               # d NLL / d logits
    if final_softcap:
      dz = dz * (1.0 - jnp.square(logits / final_softcap))
    dz = (dz * wc[..., None]).astype(w.dtype)
    dh = dense(dz, w.T).astype(h.dtype)                   # BcV,VD->BcD
    hf = hc.astype(w.dtype).reshape(-1, hc.shape[-1])
    dw = dw + jnp.matmul(hf.T, dz.reshape(-1, v), preferred_element_type=jnp.float32)
    return dw, (jnp.sum(nll * wc), dh, nll)

  dw, (losses, dhs, nlls) = jax.lax.scan(body, jnp.zeros(w.shape, jnp.float32), (hs, ts, ws))
  return jnp.sum(losses), (unsplit(dhs), dw.astype(w.dtype), unsplit(nlls))


def _fused_bwd(chunk_size, final_softcap, res, g):
  del chunk_size, final_softcap
  dh, dw, nll = res
  return (g.astype(dh.dtype) * dh, g.astype(dw.dtype) * dw, None, g * nll)


fused_weighted_nll.defvjp(_fused_fwd, _fused_bwd)


def weighted_nll(model: CausalLM, input_ids: Array, weights: Array, *,
                 attention_mask: Array | None = None, positions: Array | None = None,
                 segment_ids: Array | None = None, chunk_size: int = 128) -> tuple[Array, Array]:
  """(Σ_t weights_t · −log p(ids_t | ids_<t), Σ_t weights_t) over valid t, via the fused head.

  ``weights`` [B, T] (e.g. the response mask) weigh token t's prediction; positions that are not
  `target_validity` count as 0. The same numbers as `token_logprobs`, cheaper to differentiate.
  """
  input_ids = jnp.asarray(input_ids, jnp.int32)
  h = model.hidden_states(input_ids, attention_mask, positions, segment_ids)
  valid = target_validity(input_ids.shape, attention_mask, segment_ids)
  wt = jnp.where(valid, jnp.asarray(weights, jnp.float32), 0.0)
  s = fused_weighted_nll(h[:, :-1], model.output_embedding(), input_ids[:, 1:], wt[:, 1:],
                         chunk_size, model.config.final_logit_softcap)
  return s, jnp.sum(wt)
