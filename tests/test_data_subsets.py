"""Tests for data.subsets: pinned indices (a platform change must show), nesting, disjointness."""

from __future__ import annotations

import hashlib

import pytest

from conftest import require
from elasticity import data


def test_order_is_pinned():
  # sha256("<seed>:<index>") order; these exact values must never change.
  assert data.order(10, 0).tolist() == [7, 4, 9, 3, 8, 2, 6, 0, 5, 1]
  assert data.order(10, 42).tolist() == [1, 0, 6, 4, 7, 9, 5, 8, 3, 2]
  assert data.take_indices(25000, 5, 42).tolist() == [13026, 3116, 13956, 6697, 23389]
  assert data.take(list(range(100)), 5, 0) == [87, 46, 15, 44, 99]
  # And they are what the documented rule gives.
  keys = sorted(range(10), key=lambda i: hashlib.sha256(f"42:{i}".encode()).digest())
  assert data.order(10, 42).tolist() == keys


def test_order_is_a_permutation_and_seed_matters():
  for n in (0, 1, 17, 1000):
    assert sorted(data.order(n, 3).tolist()) == list(range(n))
  assert data.order(50, 1).tolist() != data.order(50, 2).tolist()
  with pytest.raises(TypeError):
    data.order(5, "1")


def test_take_is_nested_and_checks_size():
  recs = [{"i": i} for i in range(500)]
  small, large = data.take(recs, 100, 7), data.take(recs, 300, 7)
  assert large[:100] == small
  assert len({r["i"] for r in large}) == 300
  with pytest.raises(ValueError, match="cannot take 501"):
    data.take(recs, 501, 7)


def test_split_disjoint():
  recs = list(range(1000))
  a, b, c = data.split_disjoint(recs, [300, 200, 100], seed=5)
  assert (len(a), len(b), len(c)) == (300, 200, 100)
  assert not (set(a) & set(b) or set(a) & set(c) or set(b) & set(c))
  assert a == data.take(recs, 300, 5)  # the first slice is the plain take
  named = data.split_disjoint(recs, {"forward": 300, "inverse": 200}, seed=5)
  assert named["forward"] == a and named["inverse"] == b
  with pytest.raises(ValueError, match="need 1100"):
    data.split_disjoint(recs, [600, 500], seed=5)


def test_parse_counts():
  assert data.parse_counts("Q1-2000-Q2-500") == {"Q1": 2000, "Q2": 500}
  assert data.parse_counts("tinyllama-2T-imdb-Q1-1000") == {"Q1": 1000}
  with pytest.raises(ValueError):
    data.parse_counts("imdb-2000")


def test_rebound_slices_from_a_run_name():
  """``Q1-2000-Q2-500`` on IMDb: positive and negative training slices, disjoint and pinned."""
  from elasticity import paths
  require(paths.shared_path("data", "imdb"))
  counts = data.parse_counts("Q1-2000-Q2-500")
  pos = data.take(data.load_dataset("imdb", split="train", label="pos"), counts["Q1"], seed=42)
  neg = data.take(data.load_dataset("imdb", split="train", label="neg"), counts["Q2"], seed=42)
  assert len(pos) == 2000 and len(neg) == 500
  assert {r["label"] for r in pos} == {"pos"} and {r["label"] for r in neg} == {"neg"}
  assert not {("pos", r["id"]) for r in pos} & {("neg", r["id"]) for r in neg}
  assert [(r["id"], r["rating"]) for r in pos[:3]] == [(3116, 10), (6697, 10), (415, 7)]
