"""Deterministic subsets: the same records for the same ``(seed, n)`` on every machine and platform.

The order of ``n`` items under ``seed`` sorts the indices by ``sha256(f"{seed}:{index}")``: no RNG
library, no platform, no library version can change it. Consequences that experiments rely on:

* ``take(records, n, seed)`` is a prefix of ``take(records, m, seed)`` for ``n < m`` (the paper's
  1k/2k/5k/10k positive sets are nested).
* ``split_disjoint(records, sizes, seed)`` cuts consecutive slices of that one order, so the slices
  (forward/inverse data, θ1/θ2/θ3 slices) are disjoint by construction.
* Slices drawn from different pools (positive and negative reviews) never overlap anyway; a run named
  like the paper's ``Q1-2000-Q2-500`` is ``parse_counts`` + one ``take`` per pool.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping, Sequence
from typing import TypeVar

import numpy as np

T = TypeVar("T")


def order(n: int, seed: int) -> np.ndarray:
  """A permutation of ``range(n)`` that depends only on ``(n, seed)`` (int64 indices)."""
  if n < 0:
    raise ValueError(f"n must be >= 0, got {n}")
  if not isinstance(seed, (int, np.integer)) or isinstance(seed, bool):
    raise TypeError(f"seed must be an int, got {type(seed).__name__}")
  keys = [hashlib.sha256(f"{int(seed)}:{i}".encode()).digest() for i in range(n)]
  return np.array(sorted(range(n), key=keys.__getitem__), dtype=np.int64)


def take_indices(total: int, n: int, seed: int) -> np.ndarray:
  """The indices (into a sequence of length ``total``) that ``take`` selects, in selection order."""
  if not 0 <= n <= total:
    raise ValueError(f"cannot take {n} of {total} records")
  return order(total, seed)[:n]


def take(records: Sequence[T], n: int, seed: int) -> list[T]:
  """``n`` records chosen by ``seed`` (in the seeded order, not the source order)."""
  return [records[int(i)] for i in take_indices(len(records), n, seed)]


def split_disjoint(records: Sequence[T], sizes: Sequence[int] | Mapping[str, int],
                   seed: int) -> list[list[T]] | dict[str, list[T]]:
  """Disjoint slices of the given sizes (a list, or a dict keyed like ``sizes``).

  Slice ``j`` is ``order[sum(sizes[:j]) : sum(sizes[:j+1])]``, so slices never share a record and
  each slice only depends on the sizes before it.
  """
  named = isinstance(sizes, Mapping)
  counts = list(sizes.values()) if named else list(sizes)
  if any(int(c) < 0 for c in counts):
    raise ValueError(f"sizes must be >= 0, got {counts}")
  total = sum(int(c) for c in counts)
  if total > len(records):
    raise ValueError(f"slices of sizes {counts} need {total} records; only {len(records)}")
  perm = order(len(records), seed)
  out, start = [], 0
  for c in counts:
    out.append([records[int(i)] for i in perm[start:start + int(c)]])
    start += int(c)
  return dict(zip(sizes.keys(), out)) if named else out


_COUNTS = re.compile(r"([A-Za-z]+\d*)-(\d+)")


def parse_counts(spec: str) -> dict[str, int]:
  """``"Q1-2000-Q2-500"`` -> ``{"Q1": 2000, "Q2": 500}`` (the paper's run-name convention).

  A model name in front (``"tinyllama-2T-imdb-Q1-2000-Q2-500"``) is allowed; only the trailing
  ``Q<k>-<n>`` pairs are read.
  """
  m = re.search(r"(Q\d+-\d+)(-Q\d+-\d+)*$", spec)
  if not m:
    raise ValueError(f"{spec!r} has no trailing Q<k>-<n> counts (e.g. 'Q1-2000-Q2-500')")
  out: dict[str, int] = {}
  for name, count in _COUNTS.findall(m.group(0)):
    if name in out:
      raise ValueError(f"{spec!r} names {name} twice")
    out[name] = int(count)
  return out
