"""Token trees (Def. 3.1) and pruning (Def. 3.3) against brute-force prefix counting."""

from __future__ import annotations

import collections
import time

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from elasticity.theory import TokenTree

seqs_st = st.lists(st.lists(st.integers(0, 4), min_size=1, max_size=6), min_size=1, max_size=30)


def _brute_prefix_masses(seqs, weights, depth):
  """Mass of every node at depth <= ``depth`` the slow way: a dict of truncated tuples."""
  total = sum(weights)
  out = collections.defaultdict(float)
  for s, w in zip(seqs, weights):
    out[tuple(s[:depth])] += w / total
  return dict(out)


def test_empirical_frequencies_and_weights():
  seqs = [[1, 2, 3], [1, 2], [1, 2, 3], [4]]
  tree = TokenTree.from_sequences(seqs)
  got = dict(zip(tree.sequences(), tree.leaf_masses()))
  assert got == pytest.approx({(1, 2, 3): 0.5, (1, 2): 0.25, (4,): 0.25})
  tree = TokenTree.from_sequences([[1, 2, 3], [1, 2], [4]], weights=[5.0, 3.0, 2.0])
  assert dict(zip(tree.sequences(), tree.leaf_masses())) == pytest.approx(
      {(1, 2, 3): 0.5, (1, 2): 0.3, (4,): 0.2})
  assert tree.node_mass([1]) == pytest.approx(0.8)
  assert tree.node_mass([1, 2]) == pytest.approx(0.8)
  assert tree.node_mass([1, 2, 3]) == pytest.approx(0.5)
  assert tree.prune(1).leaf_masses() == pytest.approx([0.8, 0.2])


@settings(max_examples=60, deadline=None)
@given(seqs_st, st.data())
def test_prune_matches_brute_force_and_preserves_mass(seqs, data):
  weights = data.draw(st.lists(st.floats(0.01, 10.0), min_size=len(seqs), max_size=len(seqs)))
  tree = TokenTree.from_sequences(seqs, weights=weights)
  counts = []
  for d in range(1, 8):
    pruned = tree.prune(d)
    assert pruned.leaf_masses().sum() == pytest.approx(1.0)
    want = _brute_prefix_masses(seqs, weights, d)
    got = dict(zip(pruned.sequences(), pruned.leaf_masses()))
    assert set(got) == set(want)
    for key, mass in want.items():
      assert got[key] == pytest.approx(mass, rel=1e-9, abs=1e-12)
      # an inner node's mass is the sum of its children's (the leaves below it in the full tree)
      assert tree.node_mass(key) == pytest.approx(mass, rel=1e-9, abs=1e-12) or len(key) < d
    counts.append(pruned.n_leaves)
  assert counts == sorted(counts)            # monotone in depth
  assert counts[-1] == tree.n_leaves         # deep enough: the tree itself


def test_union_aligns_leaves():
  a = TokenTree.from_sequences([[0, 1], [0, 2]], weights=[3, 1])
  b = TokenTree.from_sequences([[0, 2], [5]], weights=[1, 1])
  leaves, masses, lengths = TokenTree.union([a, b])
  rows = [tuple(int(x) for x in r[:n]) for r, n in zip(leaves, lengths)]
  got_a = dict(zip(rows, masses[0]))
  got_b = dict(zip(rows, masses[1]))
  assert got_a == pytest.approx({(0, 1): 0.75, (0, 2): 0.25, (5,): 0.0})
  assert got_b == pytest.approx({(0, 1): 0.0, (0, 2): 0.5, (5,): 0.5})


def test_hundred_thousand_sequences():
  rng = np.random.default_rng(0)
  seqs = rng.integers(0, 50, size=(100_000, 8))
  t0 = time.perf_counter()
  tree = TokenTree.from_sequences(seqs)
  pruned = tree.prune(2)
  elapsed = time.perf_counter() - t0
  assert tree.n_leaves == len({tuple(r) for r in seqs.tolist()})
  assert pruned.n_leaves == len({tuple(r[:2]) for r in seqs.tolist()})
  assert elapsed < 10.0


@pytest.mark.parametrize("seqs, weights, match", [
    ([], None, "no sequences"),
    ([[1], []], None, "sequence 1 is empty"),
    ([[1], [-2]], None, "sequence 1 has a negative"),
    ([[1], [2]], [1.0], "1 weights for 2 sequences"),
    ([[1], [2]], [1.0, float("nan")], "weight of sequence 1"),
    ([[1], [2]], [0.0, 0.0], "sum to zero"),
])
def test_bad_input(seqs, weights, match):
  with pytest.raises(ValueError, match=match):
    TokenTree.from_sequences(seqs, weights=weights)
