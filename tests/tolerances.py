"""Float32 tolerances derived from the rounding-error model, written once (issue 21).

Two float32 computations of the same maths that differ only in summation order (scanned vs unrolled
layers, ours vs `transformers`, chunked vs whole, sharded vs one device, another CPU's vector width)
do not agree bitwise; how far apart they may be follows from the arithmetic, not from one host's
observed difference. The model (Higham & Mary, "A new approach to probabilistic rounding error
analysis", SISC 2019): a value reached through ``depth`` chained reductions of ``n_terms`` terms each
passes N = n_terms·depth roundings, and its relative error is about √N·u (u = 2⁻²⁴, float32's unit
roundoff), λ√N·u with high probability; two such computations differ by up to twice that. A bitwise
assertion stays bitwise only where both sides are the same program on the same inputs (resume,
snapshots, re-scoring, restacking parameters).
"""

from __future__ import annotations

import math

U = 2.0 ** -24   # float32 unit roundoff (half of machine epsilon 2**-23)


def f32_tol(n_terms: int, depth: int = 1, margin: float = 2.0) -> float:
  """Relative tolerance ``margin · √(n_terms · depth) · u`` between two float32 orderings.

  ``margin`` 2 is the two sides' errors adding (λ = 1: right for normwise errors over many elements,
  which average); an elementwise maximum or a sum with cancellation takes a larger one, said where
  it is used.
  """
  return margin * math.sqrt(n_terms * depth) * U


def stack_depth(layers: int) -> int:
  """Chained reductions on a path through a decoder stack of ``layers`` layers and its head.

  9 a layer (pre-attention norm, q/k/v projection, q·k scores, softmax sum, p·v, output projection,
  pre-MLP norm, gate/up projection, down projection) + 2 (final norm, LM head).
  """
  return 9 * layers + 2
