"""Which tokens the compression rate scores, and the fixed-shape batches it scores them in.

`tokenize` runs `elasticity.data.tokenize` with the measurement's policy: the prompt is cut from the
left when a record exceeds ``max_length``; a record whose response alone does not fit (or, without
BOS, does not fit with one token of context) is skipped and counted (never half-scored: its bytes
could not be coded by the scored tokens); a record whose first response token has no context (empty
prompt, no BOS) is an error, since its code length is undefined.

`plan` groups the tokenized examples into batches of ``batch_size`` rows, sorted by length inside
windows (deterministic), either one example per row padded to the smallest of a few ``buckets``
(`elasticity.data.buckets`) that holds the batch's longest (few distinct shapes, little padding), or
packed several per row (``elasticity.data`` packing: segment ids 1..k, positions restarting per example). Each planned
batch knows its shape key — row length, segments per row (rounded up to a power of two) and the
*capacity*: how many scored positions per batch shard the kernel keeps after compaction, the most
any batch of that shape needs (rounded up to a multiple of 8) — so the kernel compiles once per key.
`Planned.arrays()` builds the numpy rows in the layout of `elasticity.data.packing`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from absl import logging

from elasticity import data
from elasticity.data.buckets import length_buckets
from elasticity.data.packing import empty_rows, fill_packed, fill_padded
from elasticity.data.records import where
from elasticity.tokenizers import as_tokenizer


def tokenize(tokenizer: Any, examples: Iterable[Mapping[str, Any]], *, max_length: int,
             template: str = "plain", add_bos: bool | None = None, add_eos: bool = False,
             system: str | None = None) -> tuple[list[data.TokenizedExample], int, int]:
  """Records tokenized for measurement: ``(kept examples, skipped records, prompt-truncated kept)``."""
  tokenizer = as_tokenizer(tokenizer)
  records = examples if isinstance(examples, Sequence) else list(examples)
  toks = data.tokenize(records, tokenizer, template=template, max_length=max_length,
                       policy="truncate_prompt_left", add_bos=add_bos, add_eos=add_eos,
                       system=system)
  rep = toks.report
  # A response that fills max_length exactly leaves its prompt cut to nothing: without BOS its first
  # token then has no context, so it does not fit either, and is skipped with the cut ones. An empty
  # prompt in the record itself (not made empty by the cut) is the caller's error.
  cut = set(rep.response_truncated) | (set(rep.first_token_unscored) & set(rep.prompt_truncated))
  unscored = sorted(set(rep.first_token_unscored) - cut)
  if unscored:
    i = unscored[0]
    file, rec = where(records[i], i)
    raise data.DataError(
        file, rec, "prompt", "empty prompt and no BOS: the first response token has no context, so "
        f"its code length is undefined ({len(unscored)} such record(s)); pass "
        "add_bos=True or give the records a prompt")
  if cut:
    i = min(cut)
    file, rec = where(records[i], i)
    logging.warning("%s, record %s: response (with one token of context) longer than max_length=%d; "
                    "skipping %d such record(s)", file, rec, max_length, len(cut))
  kept = [ex for ex in toks if ex.index not in cut]
  return kept, len(cut) + len(rep.dropped), sum(1 for ex in kept if ex.prompt_truncated)


@dataclass(frozen=True)
class Planned:
  """One batch: its rows (each a list of examples), shape and compilation key."""
  rows: tuple[tuple[data.TokenizedExample, ...], ...]
  batch_size: int
  length: int
  packed: bool
  num_segments: int = 1
  capacity: int = 0

  @property
  def examples(self) -> list[data.TokenizedExample]:
    return [ex for row in self.rows for ex in row]

  @property
  def key(self) -> tuple[int, int]:
    return (self.length, self.num_segments)

  def arrays(self, *, pad_id: int = 0, padding_side: str = "right") -> dict[str, np.ndarray]:
    """``[batch_size, length]`` arrays (keys of `elasticity.data.packing.KEYS`)."""
    out = empty_rows(self.batch_size, self.length, pad_id)
    for r, row in enumerate(self.rows):
      if self.packed:
        fill_packed(out, r, row)
      else:
        fill_padded(out, r, row[0], padding_side)
    return out


def _pow2(n: int) -> int:
  return 1 << (max(n, 1) - 1).bit_length()


def plan(tokenized: Sequence[data.TokenizedExample], *, batch_size: int, max_length: int,
         packing: bool = False, buckets: Sequence[int] | None = None, window: int | None = None,
         shards: int = 1, trim_last: bool = False) -> list[Planned]:
  """Batches over ``tokenized`` (see the module docstring); ``shards`` = batch shards of the mesh.

  Rows are padded up to a multiple of ``shards``; the capacity of a shape is the most scored
  positions any of its batches puts on one shard. ``trim_last``: the last batch, when partial, has
  only the rows it needs (rounded up to ``shards``) instead of ``batch_size`` with empty ones — one
  more compiled shape, paid once by a `Scorer` that measures many times (an experiment's evaluation
  points: 2 × 100 Δγ records in batches of 16 carry 24 empty rows otherwise).
  """
  if batch_size < 1:
    raise ValueError(f"batch_size must be >= 1, got {batch_size}")
  window = window or 64 * batch_size
  lengths = [ex.length for ex in tokenized]
  for ex in tokenized:
    if ex.length > max_length:
      raise ValueError(f"example {ex.index} has {ex.length} tokens, more than max_length {max_length}")
  order = data.bucket_order(lengths, window)
  if packing:
    members = data.plan_rows([lengths[i] for i in order], max_length)
    rows = [tuple(tokenized[order[i]] for i in m) for m in members]
  else:
    rows = [(tokenized[i],) for i in order]
  buckets = tuple(sorted(set(buckets or length_buckets(max_length))))
  rows_per_batch = -(-batch_size // shards) * shards
  batches = []
  for start in range(0, len(rows), batch_size):
    chunk = tuple(rows[start:start + batch_size])
    n_rows = rows_per_batch
    if trim_last and len(chunk) < batch_size:
      n_rows = -(-len(chunk) // shards) * shards
    per_shard = n_rows // shards
    if packing:
      length = max_length
    else:
      longest = max(r[0].length for r in chunk)
      length = next((b for b in buckets if b >= longest), None)
      if length is None:
        raise ValueError(f"example {chunk[0][0].index} has {longest} tokens, more than the largest "
                         f"bucket {buckets[-1]}")
    scored = [sum(ex.n_loss_tokens for ex in row) for row in chunk]
    scored += [0] * (n_rows - len(chunk))
    need = max(sum(scored[g * per_shard:(g + 1) * per_shard]) for g in range(shards))
    batches.append(Planned(chunk, n_rows, length, packing,
                           _pow2(max(len(r) for r in chunk)) if packing else 1, need))
  capacity: dict[tuple[int, int], int] = {}
  for b in batches:
    cap = min(-(-max(b.capacity, 1) // 8) * 8, b.batch_size // shards * b.length)
    capacity[b.key] = max(capacity.get(b.key, 0), cap)
  return [Planned(b.rows, b.batch_size, b.length, b.packed, b.num_segments, capacity[b.key])
          for b in batches]


__all__ = ["Planned", "plan", "tokenize"]
