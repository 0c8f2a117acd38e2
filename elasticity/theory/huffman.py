"""Binary Huffman code lengths and Theorem 3.4's expected code length of the compression protocol.

Def. 3.3's protocol prunes τ_D to depth d and Huffman-codes the pruned tree's leaves; a sequence of
|x| tokens is sent as ⌈|x|/d⌉ blocks of d tokens. Theorem 3.4 states the ideal expected code length

    E[L(x)] = ⌈|x|/d⌉ · ⌈ −Σ_{l=1..d} Σ_j p_lj log₂ p_lj ⌉          (p_lj: mass of node j at layer l)

`expected_code_length` reports it next to what the protocol actually costs with a Huffman code of the
depth-d leaves, ⌈|x|/d⌉ · Σ_j p_dj ℓ_j, and the entropy bound ⌈|x|/d⌉ · H(p_d·); docs/theory.md §2
derives all three and how they compare (Huffman ∈ [H, H + 1) per block; the paper's sum over layers
is ≥ H, since the entropy of the layers grows down the tree).
"""

from __future__ import annotations

import heapq
import math
from dataclasses import dataclass

import numpy as np

from elasticity.theory.tree import TokenTree


def _entropy_bits(p: np.ndarray) -> float:
  p = p[p > 0]
  return max(0.0, float(-(p * np.log2(p)).sum()))


def huffman_code_lengths(probs) -> np.ndarray:
  """Integer code lengths of a binary Huffman code for ``probs`` (in the given order).

  Ties are broken by insertion order, so the result is deterministic. One symbol gets length 0 (there
  is nothing to send). Zero probabilities are allowed (they get the longest codes). O(n log n).
  """
  p = np.asarray(probs, np.float64).reshape(-1)
  n = p.shape[0]
  if n == 0:
    raise ValueError("huffman_code_lengths: no probabilities")
  if not np.isfinite(p).all() or (p < 0).any():
    i = int(np.flatnonzero(~np.isfinite(p) | (p < 0))[0])
    raise ValueError(f"huffman_code_lengths: probability {i} is {p[i]!r} (need finite and >= 0)")
  if n == 1:
    return np.zeros(1, np.int64)
  # Merge the two lightest nodes n - 1 times; parent[] records the merge tree, depths follow from it.
  parent = np.full(2 * n - 1, -1, np.int64)
  heap = [(float(p[i]), i, i) for i in range(n)]
  heapq.heapify(heap)
  nxt = n
  while len(heap) > 1:
    w1, _, a = heapq.heappop(heap)
    w2, _, b = heapq.heappop(heap)
    parent[a] = parent[b] = nxt
    heapq.heappush(heap, (w1 + w2, nxt, nxt))
    nxt += 1
  depth = np.zeros(2 * n - 1, np.int64)
  for node in range(2 * n - 3, -1, -1):   # parents have larger ids than their children
    depth[node] = depth[parent[node]] + 1
  return depth[:n].copy()


@dataclass(frozen=True)
class CodeLengths:
  """Expected code lengths (bits) of a sequence of ``length`` tokens under the depth-``depth`` protocol."""

  depth: int
  length: int
  blocks: int                 # ⌈length / depth⌉
  paper_ideal: float          # Theorem 3.4: blocks · ⌈−Σ_{l≤d} Σ_j p_lj log₂ p_lj⌉
  huffman: float              # blocks · Σ_j p_dj ℓ_j, ℓ the Huffman lengths of the depth-d leaves
  entropy: float              # blocks · H(depth-d leaves): no prefix code does better per block
  layer_entropy_sum: float    # −Σ_{l≤d} Σ_j p_lj log₂ p_lj (before the ceiling)
  leaf_entropy: float         # H(depth-d leaves), one block

  def to_dict(self) -> dict:
    return dict(self.__dict__)


def expected_code_length(tree: TokenTree, depth: int, length: int) -> CodeLengths:
  """Theorem 3.4's ideal expected code length of a length-``length`` sequence under the protocol of
  pruning ``tree`` to ``depth``, next to the actual Huffman cost and the entropy bound (bits)."""
  if not isinstance(length, (int, np.integer)) or length < 1:
    raise ValueError(f"expected_code_length: length must be a positive integer, got {length!r}")
  pruned = tree.prune(depth)
  blocks = math.ceil(length / depth)
  layer_sum = sum(_entropy_bits(tree.layer_masses(l)) for l in range(1, depth + 1))
  leaf_p = pruned.leaf_masses()
  h = _entropy_bits(leaf_p)
  huff = float(leaf_p @ huffman_code_lengths(leaf_p))
  return CodeLengths(depth=int(depth), length=int(length), blocks=blocks,
                     paper_ideal=float(blocks * math.ceil(layer_sum - 1e-12)),
                     huffman=blocks * huff, entropy=blocks * h, layer_entropy_sum=layer_sum,
                     leaf_entropy=h)
