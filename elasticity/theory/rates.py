"""The normalized compression rate γ^{D_i/D}, defined once for the theory and the measured kernel.

The paper writes γ^{D_i/D} = γ − log M, M the number of leaves of the pruned token tree: the rate of
a code that knows nothing beyond the tree's support (uniform over its M leaves) is subtracted. Per
token, a uniform code over M leaves of depth d costs log₂(M)/d bits a token, so

    normalized_rate(bits_per_token, log2_support) = bits_per_token − log2_support

with ``log2_support`` the per-token log₂ of the support: log₂ V for a next-token model over a
vocabulary of V tokens (`elasticity.compression`: the pruned tree of depth 1 has V leaves), log₂(M)/d
for a tree of M leaves pruned at depth d. Which M (the dataset's own leaves, the joint tree's, the
vocabulary's V^d) is a choice the paper leaves open: ``NORMALIZATIONS`` names them; docs/theory.md §3.
"""

from __future__ import annotations

import math

import numpy as np

# own: the leaves of D_i's own (pruned) tree; joint: the leaves of the joint model's (pruned) tree;
# vocab: every sequence of d tokens over the vocabulary (V^d leaves: log₂ V per token).
NORMALIZATIONS = ("own", "joint", "vocab")


def normalized_rate(bits_per_token, log2_support):
  """γ^{D_i/D} = bits/token − (per-token log₂ of the support). Scalars or numpy arrays."""
  if np.ndim(bits_per_token) == 0 and np.ndim(log2_support) == 0:
    return float(bits_per_token) - float(log2_support)
  return np.asarray(bits_per_token, np.float64) - np.asarray(log2_support, np.float64)


def log2_support_per_token(n_leaves: int, tokens_per_leaf: float) -> float:
  """log₂(M) / (tokens a leaf stands for): the per-token rate of the uniform code over M leaves."""
  if n_leaves < 1 or tokens_per_leaf <= 0:
    raise ValueError(f"log2_support_per_token: need n_leaves >= 1 and tokens_per_leaf > 0, got "
                     f"{n_leaves}, {tokens_per_leaf}")
  return math.log2(n_leaves) / tokens_per_leaf
