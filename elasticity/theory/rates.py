"""The per-token support of a pruned token tree, for the normalized compression rate γ^{D_i/D}.

The paper writes γ^{D_i/D} = γ − log M, M the number of leaves of the pruned token tree.
`normalized_rate` (bits/token − the per-token log₂ of the support) and ``NORMALIZATIONS`` (which M)
are defined once, beside the measured kernel's report (`elasticity.compression.report`, where the
pruned tree of depth 1 has V leaves: log₂ V), and re-exported here for the theory lab. What this
module adds is the support of a tree of M leaves pruned at depth d: a uniform code over them costs
log₂(M)/d bits a token (`log2_support_per_token`); docs/theory.md §3.
"""

from __future__ import annotations

import math

from elasticity.compression.report import NORMALIZATIONS, normalized_rate


def log2_support_per_token(n_leaves: int, tokens_per_leaf: float) -> float:
  """log₂(M) / (tokens a leaf stands for): the per-token rate of the uniform code over M leaves."""
  if n_leaves < 1 or tokens_per_leaf <= 0:
    raise ValueError(f"log2_support_per_token: need n_leaves >= 1 and tokens_per_leaf > 0, got "
                     f"{n_leaves}, {tokens_per_leaf}")
  return math.log2(n_leaves) / tokens_per_leaf


__all__ = ["NORMALIZATIONS", "log2_support_per_token", "normalized_rate"]
