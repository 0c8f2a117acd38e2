"""Rows of fixed length T from tokenized examples: packed (several per row) or padded (one per row).

Every row-building function returns the same int32 ``[R, T]`` arrays:

* ``input_ids``: tokens (``pad_id`` on padding).
* ``loss_mask``: 1 on scored tokens (see ``tokenize``), 0 on padding.
* ``segment_ids``: 1..k for the k examples of a row, 0 on padding. Attention must only connect
  tokens with equal, non-zero segment ids (and causally): then no example sees another.
* ``positions``: 0, 1, ... restarting at every example (RoPE positions); 0 on padding.
* ``attention_mask``: ``segment_ids != 0`` (1 on real tokens), the Hugging Face convention.
* ``example_index``: the ``TokenizedExample.index`` that each token belongs to, -1 on padding, so
  per-example sums (of −log p, of scored tokens) can be recovered from per-token values.

Packing is sequential first-fit in the given order: an example goes into the current row if it fits,
else starts a new one; ``bucket_order`` sorts by length inside fixed windows first, deterministically,
so rows and padded batches waste less space while the order stays reproducible.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from elasticity.data.tokenize import TokenizedExample

KEYS = ("input_ids", "loss_mask", "segment_ids", "positions", "attention_mask", "example_index")
PAD_SIDES = ("right", "left")


def empty_rows(n_rows: int, max_length: int, pad_id: int = 0) -> dict[str, np.ndarray]:
  """All-padding rows: the layout every function here fills in."""
  shape = (n_rows, max_length)
  return {
      "input_ids": np.full(shape, pad_id, np.int32),
      "loss_mask": np.zeros(shape, np.int32),
      "segment_ids": np.zeros(shape, np.int32),
      "positions": np.zeros(shape, np.int32),
      "attention_mask": np.zeros(shape, np.int32),
      "example_index": np.full(shape, -1, np.int32),
  }


def _check_fits(ex: TokenizedExample, max_length: int) -> None:
  if ex.length > max_length:
    raise ValueError(f"example {ex.index} has {ex.length} tokens, more than the row length "
                     f"{max_length}; tokenize with max_length={max_length} and a truncation policy")


def bucket_order(lengths: Sequence[int], window: int) -> list[int]:
  """Indices sorted by length (descending, stable) inside consecutive windows of ``window`` items.

  Deterministic: only the lengths and the window decide the order. ``window=1`` keeps the order.
  """
  if window < 1:
    raise ValueError(f"window must be >= 1, got {window}")
  out: list[int] = []
  for start in range(0, len(lengths), window):
    idx = range(start, min(start + window, len(lengths)))
    out.extend(sorted(idx, key=lambda i: -lengths[i]))
  return out


def plan_rows(lengths: Sequence[int], max_length: int) -> list[list[int]]:
  """Sequential packing: positions of ``lengths`` grouped into rows of total length <= T."""
  rows: list[list[int]] = []
  used = max_length + 1
  for i, n in enumerate(lengths):
    if n > max_length:
      raise ValueError(f"item {i} has {n} tokens, more than the row length {max_length}")
    if used + n > max_length:
      rows.append([])
      used = 0
    rows[-1].append(i)
    used += n
  return rows


def fill_packed(out: dict[str, np.ndarray], row: int, examples: Sequence[TokenizedExample]) -> None:
  """Write ``examples`` one after another into row ``row`` of ``out``."""
  t = 0
  for seg, ex in enumerate(examples, 1):
    n = ex.length
    sl = slice(t, t + n)
    out["input_ids"][row, sl] = ex.input_ids
    out["loss_mask"][row, sl] = ex.loss_mask
    out["segment_ids"][row, sl] = seg
    out["positions"][row, sl] = np.arange(n, dtype=np.int32)
    out["attention_mask"][row, sl] = 1
    out["example_index"][row, sl] = ex.index
    t += n
  if t > out["input_ids"].shape[1]:
    raise ValueError(f"row {row}: {t} tokens do not fit in {out['input_ids'].shape[1]}")


def fill_padded(out: dict[str, np.ndarray], row: int, ex: TokenizedExample, pad_side: str) -> None:
  """Write one example into row ``row``, padded on ``pad_side``."""
  if pad_side not in PAD_SIDES:
    raise ValueError(f"pad_side must be one of {PAD_SIDES}, got {pad_side!r}")
  n, t = ex.length, out["input_ids"].shape[1]
  if n > t:
    raise ValueError(f"example {ex.index} has {n} tokens, more than the row length {t}")
  sl = slice(0, n) if pad_side == "right" else slice(t - n, t)
  out["input_ids"][row, sl] = ex.input_ids
  out["loss_mask"][row, sl] = ex.loss_mask
  out["segment_ids"][row, sl] = 1
  out["positions"][row, sl] = np.arange(n, dtype=np.int32)
  out["attention_mask"][row, sl] = 1
  out["example_index"][row, sl] = ex.index


def pack(examples: Sequence[TokenizedExample], max_length: int, *,
         pad_id: int = 0) -> dict[str, np.ndarray]:
  """Pack examples (in the given order) into as many rows of length ``max_length`` as needed."""
  for ex in examples:
    _check_fits(ex, max_length)
  plan = plan_rows([ex.length for ex in examples], max_length)
  out = empty_rows(len(plan), max_length, pad_id)
  for r, members in enumerate(plan):
    fill_packed(out, r, [examples[i] for i in members])
  return out


def pad_batch(examples: Sequence[TokenizedExample], max_length: int | None = None, *,
              pad_side: str = "right", pad_id: int = 0) -> dict[str, np.ndarray]:
  """One example per row, padded to ``max_length`` (default: the longest example)."""
  t = max_length if max_length is not None else max((ex.length for ex in examples), default=1)
  out = empty_rows(len(examples), t, pad_id)
  for r, ex in enumerate(examples):
    fill_padded(out, r, ex, pad_side)
  return out
