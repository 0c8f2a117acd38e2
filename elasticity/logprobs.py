"""The one log-probability kernel: log p(token_t | tokens_<t) without ever holding [B, T, V] logits.

Both the compression-rate measurement (`elasticity.compression`) and every training objective
(`elasticity.train.losses`) call `token_logprobs`. The model's final-normed activations [B, T, D] are
projected onto the vocabulary one sequence chunk at a time inside a `lax.map`; each chunk's body is
rematerialised (`jax.checkpoint`), so the forward keeps only [B, chunk, V] float32 logits alive and the
backward recomputes them chunk by chunk (the vocabulary tiling of MaxText, by sequence chunks).

Conventions: ``lp[:, t]`` is log p(ids[:, t] | ids[:, <t]) for t ≥ 1 and 0 at t = 0; it is only
meaningful where ``valid`` (returned) is true: t ≥ 1, and the previous slot belongs to the same packed
segment (``segment_ids``) or is a real token (``attention_mask``).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from elasticity.models.layers import dense
from elasticity.models.transformer import CausalLM, softcap

Array = jax.Array


def chunked_target_logprobs(h: Array, w: Array, targets: Array, *, chunk_size: int = 128,
                            final_softcap: float | None = None) -> Array:
  """log softmax(h @ w)[targets] per position: h [B, T, D], w [D, V], targets [B, T] → [B, T] f32."""
  b, t, d = h.shape
  c = max(1, min(chunk_size, t))
  pad = (-t) % c
  if pad:
    h = jnp.pad(h, ((0, 0), (0, pad), (0, 0)))
    targets = jnp.pad(targets, ((0, 0), (0, pad)))
  n = (t + pad) // c
  hs = h.reshape(b, n, c, d).swapaxes(0, 1)           # [n, B, c, D]
  ts = targets.reshape(b, n, c).swapaxes(0, 1)        # [n, B, c]

  @jax.checkpoint
  def one(args):
    hc, tc = args
    logits = dense(hc.astype(w.dtype), w).astype(jnp.float32)           # BTD,DV->BTV
    logits = softcap(logits, final_softcap)
    picked = jnp.take_along_axis(logits, tc[..., None], axis=-1)[..., 0]
    return picked - jax.nn.logsumexp(logits, axis=-1)

  out = jax.lax.map(one, (hs, ts))                    # [n, B, c]
  return out.swapaxes(0, 1).reshape(b, n * c)[:, :t]


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
  b, t = input_ids.shape
  valid = jnp.concatenate([jnp.zeros((b, 1), bool), jnp.ones((b, t - 1), bool)], axis=1)
  if segment_ids is not None:
    seg = jnp.asarray(segment_ids)
    same = jnp.concatenate([jnp.zeros((b, 1), bool), seg[:, 1:] == seg[:, :-1]], axis=1)
    valid &= same & (seg != 0)
  if attention_mask is not None:
    m = jnp.asarray(attention_mask).astype(bool)
    prev = jnp.concatenate([jnp.zeros((b, 1), bool), m[:, :-1]], axis=1)
    valid &= m & prev
  return jnp.where(valid, lp, 0.0), valid
