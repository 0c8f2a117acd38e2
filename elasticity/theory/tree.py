"""Token trees (Def. 3.1) and their pruning (Def. 3.3), as sorted arrays of leaves with masses.

The token tree τ_D of a dataset D is the prefix tree of its token sequences: a leaf per distinct
sequence, with mass its probability (given weights, or its empirical frequency), and an inner node's
mass the sum of its children's. A sequence that is a prefix of another ends in a leaf of its own (an
implicit end-of-sequence child), so the leaves are exactly the distinct sequences.

Representation: the distinct sequences as rows of an int64 array padded with ``PAD`` (-1), sorted
lexicographically, and a float64 mass per row summing to 1. Pruning to depth d (the top d layers)
truncates every row to d columns and adds the masses of rows that become equal; the leaves of the
pruned tree are the depth-d nodes and the sequences that ended above depth d. Everything is numpy
(``np.unique`` over rows), so 10^5 sequences build and prune in well under a second.

    tree = TokenTree.from_sequences([[1, 2, 3], [1, 2], [4]], weights=[0.5, 0.3, 0.2])
    tree.prune(1).leaf_masses()      # array([0.8, 0.2]): the nodes "1" and "4"
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

PAD = -1


def _as_padded(seqs, where: str) -> tuple[np.ndarray, np.ndarray]:
  """Rows of token ids → (padded int64 array [N, L], lengths [N]); a clear error for bad input."""
  if isinstance(seqs, np.ndarray) and seqs.ndim == 2:
    arr = seqs
    if arr.shape[0] == 0 or arr.shape[1] == 0:
      raise ValueError(f"{where}: no sequences (array of shape {arr.shape})")
    if not np.issubdtype(arr.dtype, np.integer):
      raise ValueError(f"{where}: token ids must be integers, got dtype {arr.dtype}")
    arr = arr.astype(np.int64)
    if (arr < 0).any():
      i = int(np.argwhere(arr < 0)[0, 0])
      raise ValueError(f"{where}: sequence {i} has a negative token id")
    return arr, np.full(arr.shape[0], arr.shape[1], np.int64)
  seqs = list(seqs)
  if not seqs:
    raise ValueError(f"{where}: no sequences")
  lengths = np.empty(len(seqs), np.int64)
  for i, s in enumerate(seqs):
    n = len(s)
    if n == 0:
      raise ValueError(f"{where}: sequence {i} is empty")
    lengths[i] = n
  arr = np.full((len(seqs), int(lengths.max())), PAD, np.int64)
  for i, s in enumerate(seqs):
    row = np.asarray(s)
    if not np.issubdtype(row.dtype, np.integer):
      raise ValueError(f"{where}: sequence {i} holds non-integer token ids ({row.dtype})")
    if (row < 0).any():
      raise ValueError(f"{where}: sequence {i} has a negative token id")
    arr[i, :len(row)] = row
  return arr, lengths


@dataclass(frozen=True)
class TokenTree:
  """The leaves of a token tree: distinct sequences (``PAD``-padded rows, sorted) and their masses."""

  leaves: np.ndarray        # int64 [N, L], PAD after each sequence's end
  masses: np.ndarray        # float64 [N], > 0, sums to 1
  lengths: np.ndarray       # int64 [N], tokens in each leaf's sequence
  vocab_size: int           # V (given, or 1 + the largest token id)

  @classmethod
  def from_sequences(cls, seqs: Sequence[Sequence[int]] | np.ndarray, weights=None,
                     vocab_size: int | None = None) -> "TokenTree":
    """The token tree of ``seqs``; leaf masses from ``weights`` (normalized) or empirical counts.

    Repeated sequences add their weights. ``vocab_size`` defaults to 1 + the largest token id.
    """
    arr, lengths = _as_padded(seqs, "TokenTree.from_sequences")
    if weights is None:
      w = np.ones(arr.shape[0], np.float64)
    else:
      w = np.asarray(weights, np.float64).reshape(-1)
      if w.shape[0] != arr.shape[0]:
        raise ValueError(f"TokenTree.from_sequences: {w.shape[0]} weights for {arr.shape[0]} sequences")
      bad = np.flatnonzero(~np.isfinite(w) | (w < 0))
      if bad.size:
        raise ValueError(f"TokenTree.from_sequences: weight of sequence {int(bad[0])} is {w[bad[0]]!r} "
                         "(weights must be finite and >= 0)")
    top = int(arr.max())
    if vocab_size is None:
      vocab_size = top + 1
    elif top >= vocab_size:
      raise ValueError(f"TokenTree.from_sequences: token id {top} >= vocab_size {vocab_size}")
    return cls._build(arr, w, vocab_size)

  @classmethod
  def _build(cls, arr: np.ndarray, w: np.ndarray, vocab_size: int) -> "TokenTree":
    keep = w > 0
    if not keep.any():
      raise ValueError("TokenTree: the weights sum to zero (no leaf has mass)")
    arr, w = arr[keep], w[keep]
    uniq, inv = np.unique(arr, axis=0, return_inverse=True)
    mass = np.bincount(inv.reshape(-1), weights=w, minlength=uniq.shape[0])
    mass = mass / mass.sum()
    lengths = (uniq != PAD).sum(axis=1).astype(np.int64)
    return cls(leaves=uniq, masses=mass, lengths=lengths, vocab_size=int(vocab_size))

  # ------------------------------------------------------------------------------------------------

  @property
  def n_leaves(self) -> int:
    return int(self.masses.shape[0])

  @property
  def depth(self) -> int:
    """The longest sequence's length (the tree's number of layers)."""
    return int(self.lengths.max())

  def leaf_masses(self) -> np.ndarray:
    """Leaf masses in the (lexicographic) leaf order; they sum to 1."""
    return self.masses.copy()

  def sequences(self) -> list[tuple[int, ...]]:
    """The leaves as tuples of token ids, in leaf order."""
    return [tuple(int(t) for t in row[:n]) for row, n in zip(self.leaves, self.lengths)]

  def mean_length(self) -> float:
    """E[|x|]: the expected number of tokens of a leaf under the leaf masses."""
    return float(self.masses @ self.lengths)

  def prune(self, depth: int) -> "TokenTree":
    """The tree's top ``depth`` layers (Def. 3.3): leaves are the depth-``depth`` nodes (and the
    sequences ending above them), each with the summed mass of the leaves below it."""
    if not isinstance(depth, (int, np.integer)) or depth < 1:
      raise ValueError(f"TokenTree.prune: depth must be a positive integer, got {depth!r}")
    if depth >= self.leaves.shape[1]:
      return self
    return self._build(self.leaves[:, :depth], self.masses, self.vocab_size)

  def layer_masses(self, layer: int) -> np.ndarray:
    """Masses of the nodes at ``layer`` (1-based), with sequences that ended above it as their own
    nodes, so every layer's masses sum to 1: the leaf masses of ``prune(layer)``."""
    return self.prune(layer).leaf_masses()

  def node_mass(self, prefix: Sequence[int]) -> float:
    """The mass of the node reached by ``prefix``: the total mass of the leaves below it."""
    p = np.asarray(prefix, np.int64)
    if p.size == 0:
      return 1.0
    if p.size > self.leaves.shape[1]:
      return 0.0
    hit = (self.leaves[:, :p.size] == p).all(axis=1)
    return float(self.masses[hit].sum())

  @staticmethod
  def union(trees: Sequence["TokenTree"]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Align several trees on the union of their leaves: (leaves [N, L], masses [D, N], lengths [N]).

    Row i of ``masses`` is tree i's leaf distribution over the union (zero off its support).
    """
    if not trees:
      raise ValueError("TokenTree.union: no trees")
    width = max(t.leaves.shape[1] for t in trees)
    rows = [np.pad(t.leaves, ((0, 0), (0, width - t.leaves.shape[1])), constant_values=PAD)
            for t in trees]
    uniq, inv = np.unique(np.concatenate(rows), axis=0, return_inverse=True)
    inv = inv.reshape(-1)
    masses = np.zeros((len(trees), uniq.shape[0]))
    start = 0
    for i, t in enumerate(trees):
      masses[i] = np.bincount(inv[start:start + t.n_leaves], weights=t.masses, minlength=uniq.shape[0])
      start += t.n_leaves
    return uniq, masses, (uniq != PAD).sum(axis=1).astype(np.int64)
