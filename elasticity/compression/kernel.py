"""The compression-rate kernel: per-example sums of −log₂ p over the scored (response) tokens, and counts.

Memory and work: the final projection and log-softmax run only on the scored positions, gathered per
batch shard, in chunks (`elasticity.logprobs.chunked_target_logprobs`), so a [B, T, V] float32 logits
tensor is never held whole and prompt or padding positions are never projected. `Scorer`
(`elasticity.compression.scorer`) jits it under a mesh.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from elasticity.compression.report import LN2
from elasticity.logprobs import chunked_target_logprobs
from elasticity.models.transformer import CausalLM

Array = jax.Array


def code_lengths(model: CausalLM, ids: Array, loss_mask: Array, segment_ids: Array,
                 positions: Array, *, num_segments: int = 1, shards: int = 1,
                 capacity: int | None = None, chunk_size: int = 512) -> tuple[Array, Array]:
  """Per-example sums of −log₂ p(token | context) over the ``loss_mask`` tokens, and their counts.

  All inputs are [B, T]; segment ids 1..``num_segments`` mark the examples packed in a row (0 =
  padding); ``positions`` are RoPE positions. A token is scored where ``loss_mask`` is set and the
  token before it belongs to the same example. Returns ``(bits, counts)``, both [B, num_segments]:
  float32 bits and int32 counts of the example with segment id ``s + 1`` in row ``b``.

  Compaction: the vocabulary projection runs on scored positions only. The rows are split into
  ``shards`` groups (the batch shards of the mesh, so the split needs no communication); each
  group's scored positions are gathered into ``capacity`` slots (static; default: all positions)
  and projected ``chunk_size`` slots at a time, so at most [shards, chunk_size, V] float32 logits
  exist at once. ``capacity`` must cover the scored tokens of every group (the caller knows them:
  `elasticity.compression.batches.plan`); the counts returned are those of the slots kept, so a
  shortfall shows as a count mismatch, never silently.
  """
  ids = jnp.asarray(ids, jnp.int32)
  seg = jnp.asarray(segment_ids, jnp.int32)
  b, t = ids.shape
  if b % shards:
    raise ValueError(f"code_lengths: {b} rows do not split into {shards} shards")
  h = model.hidden_states(ids, None, positions, seg)                       # [B, T, D]
  prev = jnp.concatenate([jnp.zeros((b, 1), jnp.int32), seg[:, :-1]], axis=1)
  scored = jnp.asarray(loss_mask, bool) & (seg != 0) & (seg == prev)       # token t from h[t - 1]

  rows, s = b // shards, num_segments
  flat = rows * t                                                          # positions per shard
  n = flat if capacity is None else max(1, min(int(capacity), flat))
  grouped = scored.reshape(shards, flat)
  idx = jax.vmap(lambda m: jnp.nonzero(m, size=n, fill_value=0)[0])(grouped)   # [G, n]
  live = jnp.arange(n)[None, :] < jnp.sum(grouped, axis=1, keepdims=True)
  take = jax.vmap(lambda x, i: x[i])
  h_prev = take(h.reshape(shards, flat, -1), jnp.maximum(idx - 1, 0))      # [G, n, D]
  targets = take(ids.reshape(shards, flat), idx)
  lp = chunked_target_logprobs(h_prev, model.output_embedding(), targets, chunk_size=chunk_size,
                               final_softcap=model.config.final_logit_softcap)
  bits = jnp.where(live, -lp, 0.0) * jnp.float32(1.0 / LN2)
  # Example slot within the shard: (row in shard) · S + segment − 1; dead slots go to a spare one.
  slot = jnp.where(live, (idx // t) * s + take(seg.reshape(shards, flat), idx) - 1, rows * s)
  add = jax.vmap(lambda v, k: jax.ops.segment_sum(v, k, num_segments=rows * s + 1))
  sums = add(bits, slot)[:, :-1].reshape(b, s)
  counts = add(live.astype(jnp.int32), slot)[:, :-1].reshape(b, s)
  return sums, counts


__all__ = ["code_lengths"]
