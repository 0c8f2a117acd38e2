"""Theorem 4.2 computed exactly: γ^{D_p/D}, γ^{D_a/D} and their slopes in l for joint training on
D_p ∪ D_a ∪ D_t with sizes |D_a| · (k, 1, l).

For each (k, l): the normalized rates under the joint code (`elasticity.theory.mixture`), their
analytic slopes in l (the gradient in |D_t| with the kept set S fixed) next to finite differences of
the recomputed rates (S re-chosen), the theorem's sign condition dγ_p/dl < 0 < dγ_a/dl, the ratio
R = (dγ_a/dl)/(dγ_p/dl) against −k, the Θ-constant R/(−k), and the first-order (envelope) residual
k·dL_p/dl + dL_a/dl of the per-sequence code lengths, which vanishes as l → 0 at an interior optimum
of the joint objective. docs/theory.md §5 derives the closed forms `theta_closed_form` checks.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import asdict, dataclass

import numpy as np

from elasticity.theory.mixture import joint_code, mixture_rates

P, A, T = 0, 1, 2


@dataclass(frozen=True)
class LawRow:
  scenario: str
  k: float
  l: float
  gamma_p: float            # γ^{D_p/D}, bits/token, normalized
  gamma_a: float
  dgamma_p: float           # dγ_p/dl, analytic (bits/token per unit l)
  dgamma_a: float
  dgamma_p_fd: float        # finite differences of the recomputed rates
  dgamma_a_fd: float
  signs_hold: bool          # dγ_p/dl < 0 < dγ_a/dl
  ratio: float              # (dγ_a/dl) / (dγ_p/dl)
  theta: float              # ratio / (−k): 1 is Hooke's law with constant 1
  envelope: float           # (k·dL_p/dl + dL_a/dl) / (k·|dL_p/dl| + |dL_a/dl|), per-sequence lengths
  escaped_p: float          # P_p^out, D_p's mass behind the escape word
  escaped_a: float
  escaped_t: float          # P_t^out
  theta_closed: float       # `theta_closed_form` where it applies (D_t disjoint, wholly escaped), else nan
  kept_stable: bool         # the kept set S is the same at l ± h (the analytic slope applies)

  def to_dict(self) -> dict:
    return asdict(self)


def rates_and_slopes(masses, lengths, vocab_size: int, k: float, l: float, *, budget: int | None = None,
                     normalization: str = "own", rel_step: float = 1e-4) -> LawRow:
  """One row of the law table for the distributions ``masses`` [3, N] (D_p, D_a, D_t)."""
  if k <= 0 or l < 0:
    raise ValueError(f"rates_and_slopes: need k > 0 and l >= 0, got k={k}, l={l}")

  def at(ll: float):
    return mixture_rates(masses, [k, 1.0, ll], lengths, vocab_size, budget=budget,
                         normalization=normalization, names=("p", "a", "t"))

  r = at(l)
  h = rel_step * max(l, 1.0)
  if l < h:   # one-sided, second order: (−3 f(l) + 4 f(l + h) − f(l + 2h)) / 2h
    lo, hi = l, l + 2 * h
    fd = (-3 * r.normalized + 4 * at(l + h).normalized - at(hi).normalized) / (2 * h)
  else:       # central: (f(l + h) − f(l − h)) / 2h
    lo, hi = l - h, l + h
    fd = (at(hi).normalized - at(lo).normalized) / (2 * h)
  stable = bool(np.array_equal(_kept(masses, k, lo, budget), _kept(masses, k, hi, budget)))
  dg = r.grad[:, T]                      # ∂γ_i/∂|D_t| in units of |D_a| = ∂γ_i/∂l
  dl_seq = dg * r.mean_length            # per-sequence slopes dL_i/dl
  ratio = dg[A] / dg[P] if dg[P] != 0 else math.nan
  env = (k * dl_seq[P] + dl_seq[A]) / (k * abs(dl_seq[P]) + abs(dl_seq[A]))
  m = np.asarray(masses)
  disjoint = not (m[T] * (m[P] + m[A]) > 0).any()
  esc = r.escaped_mass
  t_escaped = not _kept(m, k, l, budget)[m[T] > 0].any()
  closed = (theta_closed_form(k, l, esc[P], esc[A])
            if budget is not None and disjoint and t_escaped and esc[P] != esc[A] else math.nan)
  return LawRow(scenario="", k=float(k), l=float(l), gamma_p=float(r.normalized[P]),
                gamma_a=float(r.normalized[A]), dgamma_p=float(dg[P]), dgamma_a=float(dg[A]),
                dgamma_p_fd=float(fd[P]), dgamma_a_fd=float(fd[A]),
                signs_hold=bool(dg[P] < 0 < dg[A]), ratio=float(ratio), theta=float(ratio / -k),
                envelope=float(env), escaped_p=float(r.escaped_mass[P]),
                escaped_a=float(esc[A]), escaped_t=float(esc[T]), theta_closed=float(closed),
                kept_stable=stable)


def _kept(masses, k, l, budget):
  return joint_code(masses, [k, 1.0, l], budget).kept


def law_table(scenario: str, masses, lengths, vocab_size: int, ks: Iterable[float], ls: Iterable[float],
              *, budget: int | None = None, normalization: str = "own") -> list[LawRow]:
  """The law's rows for every k in ``ks`` and l in ``ls``."""
  rows = []
  for k in ks:
    for l in ls:
      row = rates_and_slopes(masses, lengths, vocab_size, float(k), float(l), budget=budget,
                             normalization=normalization)
      rows.append(LawRow(**{**row.to_dict(), "scenario": scenario}))
  return rows


def theta_closed_form(k: float, l: float, escaped_p: float, escaped_a: float) -> float:
  """Θ(k, l) of a budget code when D_t is disjoint from D_p, D_a and wholly escaped (docs §5.3):
  Θ = [1 + l(1 − P_a)/(k(P_p − P_a))] / [1 − l(1 − P_p)/(P_p − P_a)]."""
  d = escaped_p - escaped_a
  return (1 + l * (1 - escaped_a) / (k * d)) / (1 - l * (1 - escaped_p) / d)
