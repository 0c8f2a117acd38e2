"""Fixed-shape numpy batches over tokenized examples, for SFT, DPO, KTO and compression measurement.

Every batch has the same shape, ``[batch_size, max_length]`` (jit compiles once): the last batch is
filled with all-padding rows, marked by ``row_valid = 0``. Each example appears in exactly one row
of exactly one batch; padding carries ``loss_mask = 0`` and ``example_index = -1``, so sums over a
whole epoch count every example once. Keys are those of ``packing.KEYS`` plus ``row_valid [B]``.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np

from elasticity.data.packing import (PAD_SIDES, bucket_order, empty_rows, fill_packed, fill_padded,
                                     plan_rows)
from elasticity.data.labelled import LabelledExample
from elasticity.data.tokenize import PreferencePair, TokenizedExample


def _ordered(examples: Sequence, lengths: list[int], bucket_window: int | None) -> list[int]:
  if bucket_window is None:
    return list(range(len(examples)))
  return bucket_order(lengths, bucket_window)


def batches(tokenized: Sequence[TokenizedExample], batch_size: int, max_length: int, *,
            pack: bool = False, pad_side: str = "right", pad_id: int = 0,
            bucket_window: int | None = None) -> Iterator[dict[str, np.ndarray]]:
  """Batches of ``batch_size`` rows of ``max_length`` tokens.

  Args:
    tokenized: examples from ``tokenize`` (each at most ``max_length`` tokens).
    batch_size: rows per batch.
    max_length: row length T.
    pack: several examples per row (sequential first-fit) instead of one.
    pad_side: ``"right"`` or ``"left"`` (unpacked only; packed rows are right-padded).
    pad_id: token written on padding (never scored, never attended).
    bucket_window: sort by length inside windows of this many examples first (deterministic).
  """
  if batch_size < 1:
    raise ValueError(f"batch_size must be >= 1, got {batch_size}")
  if pad_side not in PAD_SIDES:
    raise ValueError(f"pad_side must be one of {PAD_SIDES}, got {pad_side!r}")
  lengths = [ex.length for ex in tokenized]
  for ex in tokenized:
    if ex.length > max_length:
      raise ValueError(f"example {ex.index} has {ex.length} tokens, more than max_length "
                       f"{max_length}; tokenize with max_length and a truncation policy")
  order = _ordered(tokenized, lengths, bucket_window)
  if pack:
    rows = [[tokenized[order[i]] for i in members]
            for members in plan_rows([lengths[i] for i in order], max_length)]
  else:
    rows = [[tokenized[i]] for i in order]
  for start in range(0, len(rows), batch_size):
    chunk = rows[start:start + batch_size]
    out = empty_rows(batch_size, max_length, pad_id)
    for r, members in enumerate(chunk):
      if pack:
        fill_packed(out, r, members)
      else:
        fill_padded(out, r, members[0], pad_side)
    out["row_valid"] = (np.arange(batch_size) < len(chunk)).astype(np.int32)
    yield out


def preference_batches(pairs: Sequence[PreferencePair], batch_size: int, max_length: int, *,
                       pad_side: str = "right", pad_id: int = 0
                       ) -> Iterator[dict[str, dict[str, np.ndarray] | np.ndarray]]:
  """DPO batches: ``{"chosen": rows, "rejected": rows, "row_valid": [B]}``, row i of both halves
  from the same pair (same prompt tokens), one pair per row."""
  if batch_size < 1:
    raise ValueError(f"batch_size must be >= 1, got {batch_size}")
  for start in range(0, len(pairs), batch_size):
    chunk = pairs[start:start + batch_size]
    halves = {}
    for side in ("chosen", "rejected"):
      out = empty_rows(batch_size, max_length, pad_id)
      for r, pair in enumerate(chunk):
        fill_padded(out, r, getattr(pair, side), pad_side)
      halves[side] = out
    halves["row_valid"] = (np.arange(batch_size) < len(chunk)).astype(np.int32)
    yield halves


def labelled_batches(examples: Sequence[LabelledExample], batch_size: int, max_length: int, *,
                     pad_side: str = "right", pad_id: int = 0
                     ) -> Iterator[dict[str, dict[str, np.ndarray] | np.ndarray]]:
  """KTO batches: ``{"example": rows, "kl": rows, "label": [B], "row_valid": [B]}``, row i of both
  halves from the same example (its completion, and its KL sequence), one example per row.

  ``label`` is 1 (desirable) or 0 (undesirable), 0 on padding rows.
  """
  if batch_size < 1:
    raise ValueError(f"batch_size must be >= 1, got {batch_size}")
  if pad_side not in PAD_SIDES:
    raise ValueError(f"pad_side must be one of {PAD_SIDES}, got {pad_side!r}")
  for start in range(0, len(examples), batch_size):
    chunk = examples[start:start + batch_size]
    out: dict[str, dict[str, np.ndarray] | np.ndarray] = {}
    for part in ("example", "kl"):
      rows = empty_rows(batch_size, max_length, pad_id)
      for r, ex in enumerate(chunk):
        fill_padded(rows, r, getattr(ex, part), pad_side)
      out[part] = rows
    label = np.zeros(batch_size, np.int32)
    label[:len(chunk)] = [int(ex.label) for ex in chunk]
    out["label"] = label
    out["row_valid"] = (np.arange(batch_size) < len(chunk)).astype(np.int32)
    yield out
