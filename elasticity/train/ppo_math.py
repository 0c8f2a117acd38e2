"""PPO's closed-form pieces: per-token rewards, GAE, whitening, the clipped losses, KL control.

Pure functions of [B, T] arrays in the log-prob kernel's convention (`elasticity.logprobs`): column t
is the action "emit token t" taken in the state ``ids[<t]``; ``mask`` [B, T] is 1 on the generated
(response) tokens, which are contiguous in each row, 0 elsewhere. Values follow the same convention:
``values[:, t]`` is V(ids[<t]), the value head on the hidden state at t − 1.

Like `elasticity.train.losses`, the losses return *sums and counts* (summed over response tokens),
so microbatches and devices add up and the step divides once. Tested against an independent NumPy
reference in tests/test_ppo.py.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

Array = jax.Array


def token_rewards(score: Array, logp: Array, ref_logp: Array, mask: Array, kl_coef: Array,
                  score_clip: float = 0.0) -> tuple[Array, Array]:
  """``(rewards [B, T], kl [B, T])``: −kl_coef·(log π − log π_ref) on every response token, plus the
  sequence's ``score`` [B] (clipped to ±score_clip when > 0) on its last response token."""
  m = jnp.asarray(mask, jnp.float32)
  kl = (logp - ref_logp) * m
  if score_clip > 0:
    score = jnp.clip(score, -score_clip, score_clip)
  t = m.shape[1]
  last = jnp.max(jnp.where(m > 0, jnp.arange(t)[None, :], -1), axis=1)           # [B]
  at_last = (jnp.arange(t)[None, :] == last[:, None]) & (m > 0)
  return -kl_coef * kl + jnp.where(at_last, score[:, None], 0.0), kl


def gae(rewards: Array, values: Array, mask: Array, gamma: float, lam: float) -> tuple[Array, Array]:
  """Generalised advantage estimation (Schulman et al. 2016) over each row's response tokens.

  ``δ_t = r_t + γ·V_{t+1} − V_t`` (V after the last response token is 0: the episode ends) and
  ``A_t = δ_t + γλ·A_{t+1}``; returns ``(advantages, returns = A + V)``, 0 off the mask.
  """
  m = jnp.asarray(mask, jnp.float32)
  r, v = rewards * m, values * m
  nxt_v = jnp.pad(v[:, 1:], ((0, 0), (0, 1)))
  nxt_m = jnp.pad(m[:, 1:], ((0, 0), (0, 1)))
  delta = (r + gamma * nxt_v * nxt_m - v) * m

  def body(carry, x):
    d, nm, mm = x
    a = (d + gamma * lam * nm * carry) * mm
    return a, a

  _, adv = jax.lax.scan(body, jnp.zeros(m.shape[0], jnp.float32),
                        (delta.T[::-1], nxt_m.T[::-1], m.T[::-1]))
  adv = adv[::-1].T
  return adv, (adv + v) * m


def masked_mean_var(x: Array, mask: Array) -> tuple[Array, Array]:
  m = jnp.asarray(mask, jnp.float32)
  n = jnp.maximum(jnp.sum(m), 1.0)
  mean = jnp.sum(x * m) / n
  return mean, jnp.sum(jnp.square(x - mean) * m) / n


def whiten(x: Array, mask: Array, shift_mean: bool = True, eps: float = 1e-8) -> Array:
  """``(x − mean) / std`` over the masked entries (the mean kept when not ``shift_mean``)."""
  mean, var = masked_mean_var(x, mask)
  out = (x - mean) * jax.lax.rsqrt(var + eps)
  if not shift_mean:
    out = out + mean
  return out * jnp.asarray(mask, jnp.float32)


def policy_loss_sums(logp: Array, old_logp: Array, adv: Array, mask: Array, clip: float
                     ) -> dict[str, tuple[Array, Array]]:
  """The clipped surrogate, −min(ρA, clip(ρ, 1−ε, 1+ε)A) per token, ρ = exp(log π − log π_old);
  also the clipped fraction and the approximate KL to the rollout policy ½(log ρ)²."""
  m = jnp.asarray(mask, jnp.float32)
  log_ratio = (logp - old_logp) * m
  ratio = jnp.exp(log_ratio)
  pg = -jnp.minimum(ratio * adv, jnp.clip(ratio, 1.0 - clip, 1.0 + clip) * adv)
  n = jnp.sum(m)
  clipped = (jnp.abs(ratio - 1.0) > clip).astype(jnp.float32)
  return {"policy_loss": (jnp.sum(pg * m), n), "clip_frac": (jnp.sum(clipped * m), n),
          "approx_kl": (jnp.sum(0.5 * jnp.square(log_ratio) * m), n)}


def value_loss_sums(values: Array, old_values: Array, returns: Array, mask: Array, clip: float
                    ) -> dict[str, tuple[Array, Array]]:
  """½·max((V − R)², (clip(V, V_old ± ε_v) − R)²) per token (ε_v <= 0: unclipped ½(V − R)²)."""
  m = jnp.asarray(mask, jnp.float32)
  l1 = jnp.square(values - returns)
  if clip > 0:
    vc = old_values + jnp.clip(values - old_values, -clip, clip)
    l1 = jnp.maximum(l1, jnp.square(vc - returns))
  return {"value_loss": (jnp.sum(0.5 * l1 * m), jnp.sum(m))}


def adaptive_kl(kl_coef: float, observed_kl: float, target: float, horizon: float,
                n_steps: int) -> float:
  """Ziegler et al. (2019)'s proportional controller: β ← β·(1 + clip(KL/target − 1, ±0.2)·n/horizon)."""
  err = min(max(observed_kl / target - 1.0, -0.2), 0.2)
  return float(kl_coef * (1.0 + err * n_steps / horizon))
