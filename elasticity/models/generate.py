"""Batched sampling with the KV cache: greedy, temperature and nucleus (top-p), stop tokens.

Prompts of unequal length are left-padded into one batch; the prefill and every decoding step run
inside one jitted function of ``(graphdef, state, ...)`` (a ``lax.while_loop`` that ends as soon as
every row has produced a stop token or ``max_new_tokens``). Jitted functions are cached per model
structure and sampling settings, so repeated calls with the same shapes do not recompile.
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


@dataclasses.dataclass
class Generation:
  tokens: list[list[int]]           # new tokens per row, stop token included if one was produced
  stopped: list[bool]               # whether each row ended on a stop token


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


def sample_logits(logits: Array, key: Array, temperature: float, top_p: float) -> Array:
  """Next tokens [B] from float32 logits [B, V]."""
  if temperature <= 0.0:
    return jnp.argmax(logits, axis=-1).astype(jnp.int32)
  logits = logits / temperature
  if top_p < 1.0:
    order = jnp.argsort(-logits, axis=-1)
    sorted_logits = jnp.take_along_axis(logits, order, axis=-1)
    probs = jax.nn.softmax(sorted_logits, axis=-1)
    before = jnp.cumsum(probs, axis=-1) - probs           # mass strictly before each token
    sorted_logits = jnp.where(before < top_p, sorted_logits, -jnp.inf)
    choice = jax.random.categorical(key, sorted_logits, axis=-1)
    return jnp.take_along_axis(order, choice[:, None], axis=-1)[:, 0].astype(jnp.int32)
  return jax.random.categorical(key, logits, axis=-1).astype(jnp.int32)


@functools.lru_cache(maxsize=32)
def _compiled(graphdef, sampling: SamplingConfig, pad_id: int):
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

    def cond(carry):
      i, _, _, _, done, _, _ = carry
      return (i < n) & ~jnp.all(done)

    def body(carry):
      i, logits, cache, out, done, stopped, key = carry
      key, sub = jax.random.split(key)
      tok = sample_logits(logits, sub, sampling.temperature, sampling.top_p)
      active = ~done
      tok = jnp.where(active, tok, pad_id)
      out = out.at[:, i].set(tok)
      is_stop = jnp.any(tok[:, None] == stops[None, :], axis=-1) & active
      stopped = stopped | is_stop
      done = done | is_stop
      h, cache = model.hidden_states(tok[:, None], attention_mask=active[:, None], cache=cache)
      return i + 1, model.logits_from_hidden(h[:, -1]), cache, out, done, stopped, key

    carry = (jnp.zeros((), jnp.int32), logits, cache, out, done, stopped, key)
    i, _, _, out, done, stopped, _ = jax.lax.while_loop(cond, body, carry)
    return out, stopped, i

  return jax.jit(run)


def decoding_fn(graphdef, sampling: SamplingConfig, pad_id: int):
  """The jitted ``(state, ids, mask, key) -> (tokens, stopped, steps)`` that `generate` runs (cached;
  `elasticity.aot` lowers it for a TPU slice)."""
  return _compiled(graphdef, sampling, pad_id)


def generate(model: CausalLM, prompts: Sequence[Sequence[int]], *, max_new_tokens: int = 64,
             temperature: float = 0.0, top_p: float = 1.0, stop_tokens: Sequence[int] = (),
             pad_id: int | None = None, seed: int = 0) -> Generation:
  """Continue each token-id prompt; returns the new tokens (cut after the first stop token)."""
  if max_new_tokens < 1:
    raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
  if not 0.0 < top_p <= 1.0:
    raise ValueError(f"top_p must be in (0, 1], got {top_p}")
  cfg = model.config
  pad = pad_id if pad_id is not None else (cfg.pad_token_id if cfg.pad_token_id is not None else 0)
  sampling = SamplingConfig(max_new_tokens, float(temperature), float(top_p),
                            tuple(int(t) for t in stop_tokens))
  ids, mask = left_pad(prompts, pad)
  graphdef, state = nnx.split(model)
  out, stopped, steps = _compiled(graphdef, sampling, pad)(state, ids, mask, jax.random.key(seed))
  out, stopped, steps = np.asarray(out), np.asarray(stopped), int(steps)
  tokens = []
  for r in range(len(prompts)):
    row = out[r, :steps].tolist()
    if stopped[r]:
      row = row[:next(i for i, t in enumerate(row) if t in sampling.stop_tokens) + 1]
    tokens.append(row)
  return Generation(tokens=tokens, stopped=stopped.tolist())
