"""Joint training on D = ∪ D_i: the code of the size-weighted mixture, each D_i's rate under it, and
the rates' exact gradients in the dataset sizes.

The joint model's leaf masses are the size-weighted mixture m = Σ_j |D_j| p_j / Σ_j |D_j| (the
minimizer of Σ_j |D_j| · CE(p_j, q) over all codes q: Gibbs). A model of finite capacity keeps a
**budget** of M leaves: the M heaviest leaves of m (ties by leaf order) get their own code words, and
every other leaf shares one escape word of probability E = Σ_{s∉S} m_s (again the optimum of the
joint objective for that set S), after which it is sent by a fallback code that does not depend on the
data: |x| · log₂ V bits for the tokens plus log₂(number of lengths) for the length. With no budget
every leaf is kept (the unbounded model). D_i's code length in bits per sequence is

    L_i = −Σ_{s∈S} p_i(s) log₂ m_s − P_i^out log₂ E + Σ_{s∉S} p_i(s) c(s),    P_i^out = Σ_{s∉S} p_i(s)

and its rate γ_i = L_i / E_{p_i}[|x|] bits per token. Lumping the escaped leaves into one leaf u*
(p̃_j(u*) = P_j^out), for a fixed S, with N = Σ_j |D_j|,

    ∂L_i/∂|D_j| = [1 − Σ_u p̃_i(u) p̃_j(u) / m̃(u)] / (N ln 2)        bits per sequence,

derived in docs/theory.md §4; the fallback term does not move. The normalized rate subtracts the
per-token log₂ of a support (`elasticity.theory.rates`): ``own`` = D_i's own leaves, ``joint`` = the
joint code's words (|S|, plus one for the escape), ``vocab`` = V^{|x|}, i.e. log₂ V a token.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from elasticity.theory.rates import NORMALIZATIONS, log2_support_per_token, normalized_rate
from elasticity.theory.tree import TokenTree

LN2 = math.log(2.0)


@dataclass(frozen=True)
class JointCode:
  """The joint model's code: the mixture, the kept leaves S and the escape mass."""

  mixture: np.ndarray     # [N] m_s
  kept: np.ndarray        # [N] bool, s ∈ S
  escape: float           # E = Σ_{s∉S} m_s

  @property
  def n_words(self) -> int:
    """Code words of the joint model: the kept leaves, plus the escape word when it has mass."""
    return int(self.kept.sum()) + (1 if self.escape > 0 else 0)


def _check_masses(masses: np.ndarray, sizes: np.ndarray) -> None:
  if masses.ndim != 2 or sizes.shape != (masses.shape[0],):
    raise ValueError(f"mixture: masses must be [datasets, leaves] and sizes [datasets]; got "
                     f"{masses.shape} and {sizes.shape}")
  if (masses < 0).any() or not np.isfinite(masses).all():
    raise ValueError("mixture: leaf masses must be finite and >= 0")
  if (sizes < 0).any() or not np.isfinite(sizes).all() or sizes.sum() <= 0:
    raise ValueError(f"mixture: dataset sizes must be finite, >= 0 and not all 0; got {sizes}")


def joint_code(masses, sizes, budget: int | None = None) -> JointCode:
  """The mixture of ``masses`` [D, N] weighted by ``sizes`` [D], with the ``budget`` heaviest leaves
  kept (``None``: all of them)."""
  masses = np.asarray(masses, np.float64)
  sizes = np.asarray(sizes, np.float64)
  _check_masses(masses, sizes)
  m = sizes @ masses / sizes.sum()
  support = m > 0
  if budget is None or budget >= int(support.sum()):
    kept = support
  else:
    if budget < 1:
      raise ValueError(f"joint_code: budget must be >= 1 leaf, got {budget}")
    order = np.argsort(-m, kind="stable")
    kept = np.zeros_like(support)
    kept[order[:budget]] = True
  return JointCode(mixture=m, kept=kept, escape=float(m[~kept].sum()))


@dataclass(frozen=True)
class JointRates:
  """Each dataset's rate under the joint code (arrays indexed like the datasets)."""

  names: tuple[str, ...]
  bits_per_sequence: np.ndarray
  bits_per_token: np.ndarray
  log2_support: np.ndarray          # per token, under ``normalization``
  normalized: np.ndarray            # γ^{D_i/D} = bits_per_token − log2_support
  mean_length: np.ndarray           # E_{p_i}[|x|]
  escaped_mass: np.ndarray          # P_i^out: D_i's mass sent through the escape word
  grad: np.ndarray                  # [D, D]: ∂ bits_per_token_i / ∂ size_j (S held fixed)
  n_words: int
  normalization: str

  def row(self, name: str) -> dict:
    i = self.names.index(name)
    return {"bits_per_token": float(self.bits_per_token[i]), "normalized": float(self.normalized[i]),
            "log2_support": float(self.log2_support[i]), "escaped_mass": float(self.escaped_mass[i])}


def mixture_rates(masses, sizes, lengths, vocab_size: int, *, budget: int | None = None,
                  normalization: str = "own", names: Sequence[str] | None = None) -> JointRates:
  """Rates (bits/token) of each dataset ``masses[i]`` under the joint code of all of them.

  ``lengths`` [N] are the leaves' token counts; ``vocab_size`` V prices the fallback code.
  """
  if normalization not in NORMALIZATIONS:
    raise ValueError(f"mixture_rates: normalization {normalization!r} is not one of {NORMALIZATIONS}")
  masses = np.asarray(masses, np.float64)
  sizes = np.asarray(sizes, np.float64)
  lengths = np.asarray(lengths, np.float64)
  _check_masses(masses, sizes)
  n_sets, n_leaves = masses.shape
  names = tuple(names) if names is not None else tuple(f"D{i}" for i in range(n_sets))
  code = joint_code(masses, sizes, budget)
  m, kept, esc = code.mixture, code.kept, code.escape
  out = ~kept
  n_len = len(np.unique(lengths[m > 0]))
  fallback = lengths * math.log2(vocab_size) + math.log2(max(n_len, 1))
  with np.errstate(divide="ignore"):
    log_m = np.where(kept & (m > 0), np.log2(np.where(m > 0, m, 1.0)), 0.0)
  p_out = masses[:, out].sum(axis=1)
  bits = -(masses[:, kept] @ log_m[kept]) + masses[:, out] @ fallback[out]
  if esc > 0:
    bits = bits - p_out * math.log2(esc)
  mean_len = masses @ lengths
  bpt = bits / mean_len
  # Gradient: lumped distributions over S ∪ {escape}.
  lump_p = np.concatenate([masses[:, kept], p_out[:, None]], axis=1)
  lump_m = np.concatenate([m[kept], [esc]])
  safe_m = np.where(lump_m > 0, lump_m, 1.0)
  overlap = (lump_p / safe_m) @ lump_p.T          # [i, j] = Σ_u p̃_i(u) p̃_j(u) / m̃(u)
  grad = (1.0 - overlap) / (sizes.sum() * LN2) / mean_len[:, None]
  if normalization == "own":
    log2_sup = np.array([log2_support_per_token(int((masses[i] > 0).sum()), mean_len[i])
                         for i in range(n_sets)])
  elif normalization == "joint":
    log2_sup = np.array([log2_support_per_token(code.n_words, mean_len[i]) for i in range(n_sets)])
  else:
    log2_sup = np.full(n_sets, math.log2(vocab_size))
  return JointRates(names=names, bits_per_sequence=bits, bits_per_token=bpt, log2_support=log2_sup,
                    normalized=normalized_rate(bpt, log2_sup), mean_length=mean_len,
                    escaped_mass=p_out, grad=grad, n_words=code.n_words, normalization=normalization)


def joint_rates(trees: Mapping[str, TokenTree], sizes: Mapping[str, float], *, depth: int | None = None,
                budget: int | None = None, normalization: str = "own") -> JointRates:
  """Joint training on the union of ``trees`` (each pruned to ``depth`` first, if given) with dataset
  sizes ``sizes``: each dataset's rate under the mixture's code, per token of its pruned leaves."""
  names = tuple(trees)
  missing = [n for n in names if n not in sizes]
  if missing or set(sizes) - set(names):
    raise ValueError(f"joint_rates: sizes must name exactly the trees {names}; got {tuple(sizes)}")
  pruned = [trees[n].prune(depth) if depth else trees[n] for n in names]
  _, masses, lengths = TokenTree.union(pruned)
  vocab = max(t.vocab_size for t in pruned)
  return mixture_rates(masses, [float(sizes[n]) for n in names], lengths, vocab, budget=budget,
                       normalization=normalization, names=names)
