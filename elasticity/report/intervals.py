"""95% intervals for the reports: a seeded percentile bootstrap over prompts (and over seeds where there
are several), for any statistic of one or more paired ``[seeds, prompts]`` arrays.

Every array handed to one `bootstrap` call is resampled with the **same** indices: the same seeds and,
within them, the same prompts, so a difference between two arms evaluated on the same prompts with the
same seeds (aligned − control, a stage-1 gain, …) is a paired comparison. With one seed the resampling is
over prompts only (the classic case, `scipy.stats.bootstrap` with ``method="percentile"``); with several,
a two-stage (hierarchical) bootstrap: seeds with replacement, then prompts with replacement.

A statistic may return ``nan`` on a resample (e.g. a crossing that is never reached is returned as
``inf``, a ratio over a zero gain as ``nan``): ``inf`` sorts to the top and is reported as an open
upper end; ``nan`` resamples are dropped and counted (`Interval.undefined`).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence

import numpy as np

LEVEL = 0.95
RESAMPLES = 2000


@dataclasses.dataclass(frozen=True)
class Interval:
  """A point estimate (the statistic on the data as measured) and its percentile interval."""
  estimate: float
  lo: float
  hi: float
  undefined: int = 0            # resamples on which the statistic was undefined (nan)
  resamples: int = 0

  def __str__(self) -> str:
    return fmt_interval(self)


def fmt_interval(iv: Interval | None, digits: int = 3) -> str:
  """``0.12 [0.05, 0.19]``; ``∞`` for an open end; ``–`` for none."""
  if iv is None or iv.estimate is None:
    return "–"

  def f(x: float) -> str:
    if math.isinf(x):
      return "∞" if x > 0 else "−∞"
    if math.isnan(x):
      return "nan"
    return f"{x:.{digits}g}"
  return f"{f(iv.estimate)} [{f(iv.lo)}, {f(iv.hi)}]"


def _as_2d(a) -> np.ndarray:
  a = np.asarray(a, dtype=np.float64)
  if a.ndim == 1:
    a = a[None, :]
  if a.ndim != 2 or a.shape[1] == 0 or a.shape[0] == 0:
    raise ValueError(f"bootstrap: want a non-empty [seeds, prompts] array, got shape {a.shape}")
  return a


def bootstrap(stat: Callable[..., float], arrays: Sequence, *, resamples: int = RESAMPLES,
              level: float = LEVEL, seed: int = 0) -> Interval:
  """The percentile interval of ``stat(*arrays)`` under the paired resampling of the module docstring.

  ``arrays``: ``[seeds, prompts]`` arrays (a 1-D array is one seed) of one shape, with seeds and
  prompts in the same order in each.
  """
  arrs = [_as_2d(a) for a in arrays]
  shape = arrs[0].shape
  for a in arrs:
    if a.shape != shape:
      raise ValueError(f"bootstrap: paired arrays must share one shape, got {[x.shape for x in arrs]}")
  s, p = shape
  rng = np.random.default_rng(seed)
  estimate = float(stat(*arrs))
  values = np.empty(resamples)
  for b in range(resamples):
    si = rng.integers(0, s, size=s) if s > 1 else np.zeros(1, dtype=np.int64)
    pi = rng.integers(0, p, size=(s, p))
    values[b] = float(stat(*[a[si[:, None], pi] for a in arrs]))
  ok = values[~np.isnan(values)]
  if not len(ok):
    return Interval(estimate, math.nan, math.nan, resamples, resamples)
  alpha = (1.0 - level) / 2
  lo, hi = np.quantile(ok, [alpha, 1 - alpha], method="linear") if not np.isinf(ok).any() else (
      _quantile_inf(ok, alpha), _quantile_inf(ok, 1 - alpha))
  return Interval(estimate, float(lo), float(hi), int(len(values) - len(ok)), resamples)


def _quantile_inf(values: np.ndarray, q: float) -> float:
  """A quantile that may be ±inf (values sorted; the order statistic at the linear position)."""
  v = np.sort(values)
  pos = q * (len(v) - 1)
  lo, hi = int(math.floor(pos)), int(math.ceil(pos))
  if lo == hi or v[lo] == v[hi]:
    return float(v[lo])
  if np.isinf(v[lo]) or np.isinf(v[hi]):
    return float(v[hi] if pos - lo > 0.5 else v[lo])
  return float(v[lo] + (pos - lo) * (v[hi] - v[lo]))


def mean_interval(values, *, resamples: int = RESAMPLES, level: float = LEVEL, seed: int = 0) -> Interval:
  """The mean over seeds and prompts of a ``[seeds, prompts]`` array, with its bootstrap interval."""
  return bootstrap(lambda a: float(a.mean()), [values], resamples=resamples, level=level, seed=seed)


def seed_interval(values: Sequence[float], *, resamples: int = RESAMPLES, level: float = LEVEL,
                  seed: int = 0) -> Interval | None:
  """The mean of per-seed values with a bootstrap interval over seeds (``None`` for no values; a single
  value has no interval: lo = hi = the value)."""
  vals = [float(v) for v in values if v is not None and not math.isnan(float(v))]
  if not vals:
    return None
  if len(vals) == 1:
    return Interval(vals[0], vals[0], vals[0], 0, 0)
  return bootstrap(lambda a: float(a.mean()), [np.asarray(vals)[None, :]], resamples=resamples,
                   level=level, seed=seed)


def paired_se(a, b) -> tuple[float, float]:
  """(mean of b − a, its standard error over prompts): per prompt, averaged over seeds first."""
  d = _as_2d(b).mean(axis=0) - _as_2d(a).mean(axis=0)
  if len(d) < 2:
    return float(d.mean()), math.nan
  return float(d.mean()), float(d.std(ddof=1) / math.sqrt(len(d)))


__all__ = ["Interval", "LEVEL", "RESAMPLES", "bootstrap", "fmt_interval", "mean_interval", "paired_se",
           "seed_interval"]
