"""The rebound statistics that decide the experiment's question, each with a 95% bootstrap interval.

Arms of one panel (`elasticity.experiments.rebound.report`), all on the same held-out prompts and the
same seeds, so every comparison is paired (`elasticity.report.intervals.bootstrap`):

- **aligned**: stage 1 on n⁺ > 0 examples, then n⁻ stage-2 examples;
- **control** (n⁺ = 0): the base model given the same n⁻ stage-2 examples;
- **neutral**: the same schedule and budget on data without sentiment (stage ``neutral``), from the
  aligned model and from the base.

With ``d`` the direction of stage 1 (+1 when it trains toward the positive label, ``pos_first``; −1 for
``neg_first``), B the base model's score, S1 the score after stage 1 and S(n) after n stage-2 examples:

- `stage1_check`: the gain d·(S1 − B) and its paired standard error over prompts; stage 1 aligned when
  the gain is at least two standard errors (else the report says "stage 1 did not align: rebound not
  testable");
- `undone`: the fraction of the stage-1 gain undone, (S1 − S(n)) / (S1 − B) (0: still as aligned as after
  stage 1, 1: back at the base); under neutral data the same ratio is "the fraction of the stage-1 gain
  lost under neutral data";
- `crossing`: the smallest n at which an arm's score is back at the base level, d·(S(n) − B) ≤ 0,
  linearly interpolated between the grid point before and the first one at or past it (∞: not reached);
- `versus_control`: the aligned arm's drop from its own start minus the control's,
  (S1 − S(n)) − (B − C(n)), times d (positive: the aligned model moves more than the base does under
  the same data), and the level difference d·(S(n) − C(n));
- `dose`: two aligned arms (n⁺ low and high) after the same n: the high arm's drop minus the low arm's,
  and the difference of their fractions undone (the paper: more stage-1 data, faster rebound);
- `correlation`: Pearson r between Δγ and the score over the evaluated points (one per seed and grid
  point), raw and with the stage-2 count's trend removed (each n level's mean subtracted from both:
  the within-level, i.e. partial, correlation), each with an interval from resampling the points.

Inputs are ``[seeds, prompts]`` arrays of per-prompt scores (``score_values`` in the rows).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np

from elasticity.report.intervals import Interval, bootstrap, paired_se

ALIGNED_SE = 2.0          # stage 1 aligned: gain >= ALIGNED_SE standard errors


def direction(order: str | None) -> float:
  return -1.0 if order == "neg_first" else 1.0


def stage1_check(base, stage1, d: float = 1.0) -> dict[str, float | bool]:
  """{"gain", "se", "aligned"}: d·(S1 − B), its paired s.e. over prompts, and gain ≥ 2 s.e."""
  diff, se = paired_se(base, stage1)
  gain = d * diff
  return {"gain": gain, "se": se, "aligned": bool(not math.isnan(se) and gain >= ALIGNED_SE * se
                                                 and gain > 0)}


def _ratio(num: float, den: float) -> float:
  return num / den if den != 0 else math.nan


def undone(base, stage1, at, **kw) -> Interval:
  """(S1 − S(n)) / (S1 − B) with its interval (nan resamples where the gain is 0 are counted)."""
  return bootstrap(lambda b, s1, s: _ratio(s1.mean() - s.mean(), s1.mean() - b.mean()),
                   [base, stage1, at], **kw)


def crossing_point(ns: Sequence[float], levels: Sequence[float], base: float, d: float) -> float:
  """The first n (interpolated) with d·(level − base) ≤ 0; ``levels[0]`` is the arm's start (n = 0)."""
  prev_n, prev_v = None, None
  for n, v in zip(ns, levels):
    gap = d * (v - base)
    if gap <= 0:
      if prev_n is None:
        return float(n)
      return float(prev_n + (n - prev_n) * prev_v / (prev_v - gap))
    prev_n, prev_v = n, gap
  return math.inf


def crossing(base, curve: Mapping[int, np.ndarray], d: float = 1.0, **kw) -> Interval:
  """The n at which an arm (``{n: [seeds, prompts]}``, with its start at n = 0) is back at the base
  level B (module docstring), with its interval (∞ when not reached)."""
  ns = sorted(curve)
  arrays = [base] + [curve[n] for n in ns]

  def stat(b, *pts):
    return crossing_point(ns, [p.mean() for p in pts], float(b.mean()), d)
  return bootstrap(stat, arrays, **kw)


def versus_control(base, stage1, at, control, d: float = 1.0, **kw) -> dict[str, Interval]:
  """{"drop_difference": d·((S1 − S(n)) − (B − C(n))), "level_difference": d·(S(n) − C(n))}."""
  return {
      "drop_difference": bootstrap(
          lambda b, s1, s, c: d * ((s1.mean() - s.mean()) - (b.mean() - c.mean())),
          [base, stage1, at, control], **kw),
      "level_difference": bootstrap(lambda s, c: d * (s.mean() - c.mean()), [at, control], **kw),
  }


def dose(base, stage1_lo, at_lo, stage1_hi, at_hi, d: float = 1.0, **kw) -> dict[str, Interval]:
  """More stage-1 data, faster rebound? Two aligned arms (n⁺ low and high) after the same n examples:
  {"drop_difference": d·((S1_hi − S_hi(n)) − (S1_lo − S_lo(n))), "undone_difference": the high arm's
  fraction of its gain undone minus the low arm's} (positive: the arm with more stage-1 data falls
  more; the second measure removes the larger start's longer way down)."""
  def frac(b, s1, s):
    return _ratio(s1.mean() - s.mean(), s1.mean() - b.mean())
  return {
      "drop_difference": bootstrap(
          lambda s1l, sl, s1h, sh: d * ((s1h.mean() - sh.mean()) - (s1l.mean() - sl.mean())),
          [stage1_lo, at_lo, stage1_hi, at_hi], **kw),
      "undone_difference": bootstrap(
          lambda b, s1l, sl, s1h, sh: frac(b, s1h, sh) - frac(b, s1l, sl),
          [base, stage1_lo, at_lo, stage1_hi, at_hi], **kw),
  }


def within_level(values: np.ndarray, levels: np.ndarray) -> np.ndarray:
  """``values`` with each level's mean subtracted."""
  out = np.asarray(values, dtype=np.float64).copy()
  for lv in np.unique(levels):
    m = levels == lv
    out[m] -= out[m].mean()
  return out


def pearson(x: np.ndarray, y: np.ndarray) -> float:
  x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
  if len(x) < 3:
    return math.nan
  x, y = x - x.mean(), y - y.mean()
  den = math.sqrt(float((x * x).sum()) * float((y * y).sum()))
  return float((x * y).sum() / den) if den > 0 else math.nan


def correlation(x: Sequence[float], y: Sequence[float], levels: Sequence[float],
                **kw) -> dict[str, Interval | int]:
  """Raw and within-level Pearson r of ``x`` and ``y`` over points (each with its ``level``), with
  intervals from resampling the points; levels with a single point carry no within-level information
  and are left out of the within-level r."""
  x, y, lv = (np.asarray(a, dtype=np.float64) for a in (x, y, levels))
  counts = {v: int((lv == v).sum()) for v in np.unique(lv)}
  keep = np.array([counts[v] > 1 for v in lv], dtype=bool)

  def within(a, b, c):
    return pearson(within_level(a[0], c[0]), within_level(b[0], c[0]))
  raw = bootstrap(lambda a, b: pearson(a[0], b[0]), [x[None], y[None]], **kw)
  part = (bootstrap(within, [x[keep][None], y[keep][None], lv[keep][None]], **kw)
          if keep.sum() >= 3 else None)
  return {"raw": raw, "within": part, "points": int(len(x)), "within_points": int(keep.sum())}


__all__ = ["ALIGNED_SE", "correlation", "crossing", "crossing_point", "direction", "pearson",
           "stage1_check", "undone", "versus_control", "within_level"]
