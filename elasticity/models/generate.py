"""Batched sampling with the KV cache: greedy, temperature and nucleus (top-p), stop tokens.

Prompts of unequal length are left-padded into one batch; the prefill and every decoding step run
inside one jitted function of ``(graphdef, state, ...)`` (a ``lax.while_loop`` that ends as soon as
every row has produced a stop token or ``max_new_tokens``). Jitted functions are cached per model
structure and sampling settings, so repeated calls with the same shapes do not recompile.

Sampling draws from the (temperature-scaled, nucleus-cut) softmax by its inverse CDF, in two levels
(blocks of ``CDF_BLOCK`` tokens, then a token inside the chosen block): two uniforms a row instead of
the Gumbel-max trick's one per vocabulary entry, whose random bits cost more than the lm head on CPU
(``bench/sampling.py``). Both are exact draws from the same distribution; the two-level CDF loses
only tokens below float32 resolution of their block's running sum (≈ 6e-8 of a block's mass each).
``method="gumbel"`` keeps the earlier sampler (the same seed then gives the earlier continuations).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from elasticity.models.transformer import CausalLM

Array = jax.Array


@dataclasses.dataclass(frozen=True)
class SamplingConfig:
  max_new_tokens: int = 64
  temperature: float = 0.0          # 0 = greedy
  top_p: float = 1.0
  stop_tokens: tuple[int, ...] = ()
  method: str = "inverse_cdf"       # or "gumbel" (the sampler before 2026-12-05)


METHODS = ("inverse_cdf", "gumbel")
CDF_BLOCK = 256


@dataclasses.dataclass
class Generation:
  tokens: list[list[int]]           # new tokens per row, stop token included if one was produced
  stopped: list[bool]               # whether each row ended on a stop token
  # With ``return_hidden``: per row, the final-normed activations [len(tokens), D] whose logits each
  # new token was drawn from (row k = the state after the prompt and tokens[:k]); else None.
  hidden: list[np.ndarray] | None = None


def left_pad(prompts: Sequence[Sequence[int]], pad_id: int, multiple: int = 8) -> tuple[np.ndarray, np.ndarray]:
  """int32 ids and bool mask [B, P], left-padded; P rounded up to ``multiple`` to limit recompiles."""
  if not prompts or any(len(p) == 0 for p in prompts):
    raise ValueError("every prompt needs at least one token (e.g. BOS)")
  p = max(len(x) for x in prompts)
  p = -(-p // multiple) * multiple
  ids = np.full((len(prompts), p), pad_id, np.int32)
  mask = np.zeros((len(prompts), p), bool)
  for r, x in enumerate(prompts):
    ids[r, p - len(x):] = x
    mask[r, p - len(x):] = True
  return ids, mask


def _pick(key: Array, weights: Array) -> Array:
  """Index [B] drawn with probability ∝ the non-negative ``weights`` [B, n] (one uniform a row)."""
  cdf = jnp.cumsum(weights, axis=-1)
  u = (1.0 - jax.random.uniform(key, (weights.shape[0], 1), cdf.dtype)) * cdf[:, -1:]   # (0, total]
  return jnp.sum(cdf < u, axis=-1, dtype=jnp.int32)      # the first index whose cdf reaches u


def inverse_cdf_draw(key: Array, probs: Array) -> Array:
  """Token ids [B] drawn from ``probs`` [B, V]: a block of `CDF_BLOCK` tokens by its mass, then a
  token inside it (zero-probability tokens are never drawn)."""
  b, v = probs.shape
  blocks = -(-v // CDF_BLOCK)
  p = jnp.pad(probs, ((0, 0), (0, blocks * CDF_BLOCK - v))).reshape(b, blocks, CDF_BLOCK)
  k_block, k_token = jax.random.split(key)
  j = _pick(k_block, jnp.sum(p, axis=-1))
  inner = jnp.take_along_axis(p, j[:, None, None], axis=1)[:, 0]
  return j * CDF_BLOCK + _pick(k_token, inner)


def sample_logits(logits: Array, key: Array, temperature: float, top_p: float,
                  method: str = "inverse_cdf") -> Array:
  """Next tokens [B] from float32 logits [B, V]."""
  if temperature <= 0.0:
    return jnp.argmax(logits, axis=-1).astype(jnp.int32)
  if method not in METHODS:
    raise ValueError(f"sampling method {method!r} is not one of {METHODS}")
  logits = logits / temperature
  order = None
  if top_p < 1.0:
    order = jnp.argsort(-logits, axis=-1)
    sorted_logits = jnp.take_along_axis(logits, order, axis=-1)
    probs = jax.nn.softmax(sorted_logits, axis=-1)
    before = jnp.cumsum(probs, axis=-1) - probs           # mass strictly before each token
    logits = jnp.where(before < top_p, sorted_logits, -jnp.inf)
  if method == "gumbel":
    choice = jax.random.categorical(key, logits, axis=-1)
  else:
    choice = inverse_cdf_draw(key, jax.nn.softmax(logits, axis=-1))
  if order is not None:
    choice = jnp.take_along_axis(order, choice[:, None], axis=-1)[:, 0]
  return choice.astype(jnp.int32)


def _compiled(graphdef, sampling: SamplingConfig, pad_id: int, hidden: bool = False):
  """The jitted decoder; ``hidden`` also returns [B, max_new_tokens, D] activations (the policy's
  state before each new token, which `elasticity.eval.kl` turns into its logits without a second
  forward). The sampled tokens do not depend on ``hidden`` (tests/test_generate.py)."""
  return _decoder(graphdef, sampling, int(pad_id), bool(hidden))


@functools.lru_cache(maxsize=32)
def _decoder(graphdef, sampling: SamplingConfig, pad_id: int, hidden: bool):
  stops = jnp.asarray(sampling.stop_tokens or (-1,), jnp.int32)

  def run(state, ids, mask, key):
    model = nnx.merge(graphdef, state)
    b, p = ids.shape
    n = sampling.max_new_tokens
    cache = model.init_cache(b, p + n)
    h, cache = model.hidden_states(ids, attention_mask=mask, cache=cache)
    logits = model.logits_from_hidden(h[:, -1])
    out = jnp.full((b, n), pad_id, jnp.int32)
    done = jnp.zeros((b,), bool)
    stopped = jnp.zeros((b,), bool)
    # One slot past the end: the last step's state (which draws nothing) lands there and is dropped.
    hs = jnp.zeros((b, n + 1, h.shape[-1]), h.dtype).at[:, 0].set(h[:, -1]) if hidden else None

    def cond(carry):
      i, _, _, _, done, _, _, _ = carry
      return (i < n) & ~jnp.all(done)

    def body(carry):
      i, logits, cache, out, done, stopped, key, hs = carry
      key, sub = jax.random.split(key)
      tok = sample_logits(logits, sub, sampling.temperature, sampling.top_p, sampling.method)
      active = ~done
      tok = jnp.where(active, tok, pad_id)
      out = out.at[:, i].set(tok)
      is_stop = jnp.any(tok[:, None] == stops[None, :], axis=-1) & active
      stopped = stopped | is_stop
      done = done | is_stop
      h, cache = model.hidden_states(tok[:, None], attention_mask=active[:, None], cache=cache)
      if hidden:
        hs = jax.lax.dynamic_update_slice_in_dim(hs, h[:, -1:], i + 1, axis=1)
      return i + 1, model.logits_from_hidden(h[:, -1]), cache, out, done, stopped, key, hs

    carry = (jnp.zeros((), jnp.int32), logits, cache, out, done, stopped, key, hs)
    i, _, _, out, done, stopped, _, hs = jax.lax.while_loop(cond, body, carry)
    return (out, stopped, i, hs[:, :n]) if hidden else (out, stopped, i)

  return jax.jit(run)


def decoding_fn(graphdef, sampling: SamplingConfig, pad_id: int):
  """The jitted ``(state, ids, mask, key) -> (tokens, stopped, steps)`` that `generate` runs (cached;
  `elasticity.aot` lowers it for a TPU slice)."""
  return _compiled(graphdef, sampling, pad_id)


def generate(model: CausalLM, prompts: Sequence[Sequence[int]], *, max_new_tokens: int = 64,
             temperature: float = 0.0, top_p: float = 1.0, stop_tokens: Sequence[int] = (),
             pad_id: int | None = None, seed: int = 0, method: str = "inverse_cdf",
             return_hidden: bool = False) -> Generation:
  """Continue each token-id prompt; returns the new tokens (cut after the first stop token).
  ``method``: the sampler (`METHODS`; ignored when greedy). ``return_hidden``: also each new token's
  final-normed activations (`Generation.hidden`)."""
  if max_new_tokens < 1:
    raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
  if not 0.0 < top_p <= 1.0:
    raise ValueError(f"top_p must be in (0, 1], got {top_p}")
  if method not in METHODS:
    raise ValueError(f"sampling method {method!r} is not one of {METHODS}")
  cfg = model.config
  pad = pad_id if pad_id is not None else (cfg.pad_token_id if cfg.pad_token_id is not None else 0)
  sampling = SamplingConfig(max_new_tokens, float(temperature), float(top_p),
                            tuple(int(t) for t in stop_tokens), method)
  ids, mask = left_pad(prompts, pad)
  graphdef, state = nnx.split(model)
  res = _compiled(graphdef, sampling, pad, return_hidden)(state, ids, mask, jax.random.key(seed))
  out, stopped, steps = np.asarray(res[0]), np.asarray(res[1]), int(res[2])
  hs = np.asarray(res[3]) if return_hidden else None
  tokens = []
  for r in range(len(prompts)):
    row = out[r, :steps].tolist()
    if stopped[r]:
      row = row[:next(i for i, t in enumerate(row) if t in sampling.stop_tokens) + 1]
    tokens.append(row)
  hidden = [hs[r, :len(t)] for r, t in enumerate(tokens)] if return_hidden else None
  return Generation(tokens=tokens, stopped=stopped.tolist(), hidden=hidden)
