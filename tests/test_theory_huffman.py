"""Huffman code lengths against a brute-force optimal prefix code; Theorem 3.4's quantities against a
direct computation."""

from __future__ import annotations

import collections
import itertools
import math

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from elasticity.theory import TokenTree, expected_code_length, huffman_code_lengths

probs_st = st.lists(st.floats(1e-4, 1.0), min_size=2, max_size=40).map(
    lambda xs: np.asarray(xs) / np.sum(xs))


def _brute_optimum(p: np.ndarray) -> float:
  """min Σ p_i ℓ_i over integer lengths with Σ 2^{-ℓ_i} <= 1 (Kraft–McMillan: every such vector is
  a prefix code), by enumeration."""
  n = len(p)
  best = math.inf
  for lengths in itertools.product(range(1, n), repeat=n):
    if sum(2.0 ** -x for x in lengths) <= 1 + 1e-12:
      best = min(best, float(np.dot(p, lengths)))
  return best


@pytest.mark.parametrize("seed", range(12))
def test_huffman_is_optimal_on_small_distributions(seed):
  rng = np.random.default_rng(seed)
  n = int(rng.integers(2, 7))
  p = rng.dirichlet(np.full(n, 0.5))
  lengths = huffman_code_lengths(p)
  assert lengths.dtype.kind == "i"
  assert float(p @ lengths) == pytest.approx(_brute_optimum(p), abs=1e-12)


@settings(max_examples=80, deadline=None)
@given(probs_st)
def test_kraft_equality_and_entropy_bound(p):
  lengths = huffman_code_lengths(p)
  assert sum(2.0 ** -int(x) for x in lengths) == pytest.approx(1.0, abs=1e-12)   # a full binary tree
  h = float(-(p * np.log2(p)).sum())
  e = float(p @ lengths)
  assert h - 1e-9 <= e < h + 1


def test_known_lengths_and_edge_cases():
  assert huffman_code_lengths([0.5, 0.25, 0.125, 0.125]).tolist() == [1, 2, 3, 3]
  assert huffman_code_lengths([1.0]).tolist() == [0]
  with pytest.raises(ValueError, match="probability 1"):
    huffman_code_lengths([0.5, -0.1])


def test_expected_code_length_against_direct_computation():
  rng = np.random.default_rng(3)
  seqs = rng.integers(0, 3, size=(400, 5)).tolist()
  tree = TokenTree.from_sequences(seqs)
  for depth in (1, 2, 3, 5):
    c = expected_code_length(tree, depth, length=7)
    layers = 0.0
    for l in range(1, depth + 1):
      counts = collections.Counter(tuple(s[:l]) for s in seqs)
      q = np.array(list(counts.values())) / len(seqs)
      layers += float(-(q * np.log2(q)).sum())
    counts = collections.Counter(tuple(s[:depth]) for s in seqs)
    q = np.array(list(counts.values())) / len(seqs)
    h = float(-(q * np.log2(q)).sum())
    blocks = math.ceil(7 / depth)
    assert c.blocks == blocks
    assert c.layer_entropy_sum == pytest.approx(layers)
    assert c.paper_ideal == blocks * math.ceil(layers)
    assert c.entropy == pytest.approx(blocks * h)
    assert c.entropy - 1e-9 <= c.huffman < c.entropy + blocks      # within one bit per block
