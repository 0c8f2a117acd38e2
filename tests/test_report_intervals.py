"""The report's bootstrap intervals and the rebound statistics, each against an independent computation:
scipy.stats.bootstrap for the one-seed interval, a direct enumeration of the two-stage bootstrap's
distribution for several seeds, regression residuals for the within-level correlation, and plain
arithmetic for every ratio and difference."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats as sps

from elasticity.experiments.rebound import stats
from elasticity.report import intervals


def test_one_seed_interval_matches_scipy_percentile_bootstrap():
  rng = np.random.default_rng(3)
  x = rng.binomial(1, 0.7, size=100).astype(float)
  ours = intervals.mean_interval(x, resamples=20000, seed=1)
  ref = sps.bootstrap((x,), np.mean, n_resamples=20000, method="percentile", confidence_level=0.95,
                      random_state=np.random.default_rng(2)).confidence_interval
  assert ours.estimate == pytest.approx(x.mean())
  # two independent Monte Carlo runs of the same interval: they agree to Monte Carlo error
  assert ours.lo == pytest.approx(ref.low, abs=0.011) and ours.hi == pytest.approx(ref.high, abs=0.011)
  # and both sit where the normal approximation puts them
  se = x.std(ddof=1) / math.sqrt(len(x))
  assert ours.lo == pytest.approx(x.mean() - 1.96 * se, abs=0.02)


def test_several_seeds_resample_seeds_then_prompts():
  # two seeds, two prompts: the two-stage bootstrap's distribution of the mean can be enumerated
  a = np.array([[0.0, 1.0], [2.0, 4.0]])
  support = []
  for s in ([0, 0], [0, 1], [1, 0], [1, 1]):
    for p in np.ndindex(2, 2, 2, 2):        # prompt picks of the two drawn seeds
      picks = np.array(p).reshape(2, 2)
      support.append(np.mean([a[s[i], picks[i]] for i in range(2)]))
  support = np.array(support)
  iv = intervals.bootstrap(lambda x: x.mean(), [a], resamples=40000, seed=0)
  assert iv.lo == pytest.approx(np.quantile(support, 0.025), abs=0.13)
  assert iv.hi == pytest.approx(np.quantile(support, 0.975), abs=0.13)
  assert iv.estimate == pytest.approx(1.75)


def test_paired_arrays_share_their_resampling():
  x = np.random.default_rng(0).normal(size=(1, 50))
  iv = intervals.bootstrap(lambda a, b: float((a - b).mean()), [x, x], resamples=200)
  assert iv.lo == iv.hi == iv.estimate == 0.0        # the same prompts in both: the difference is 0
  with pytest.raises(ValueError, match="share one shape"):
    intervals.bootstrap(lambda a, b: 0.0, [x, x[:, :10]])


def test_an_interval_that_is_never_reached_has_an_open_end():
  assert stats.crossing_point([0, 10, 20], [0.8, 0.75, 0.72], 0.7, 1.0) == math.inf
  iv = intervals.bootstrap(lambda a: math.inf, [np.ones(5)], resamples=50)
  assert iv.hi == math.inf and "∞" in intervals.fmt_interval(iv)


def test_stage1_check_is_the_paired_difference_and_its_standard_error():
  rng = np.random.default_rng(1)
  base = rng.binomial(1, 0.6, size=200).astype(float)
  s1 = np.clip(base + rng.binomial(1, 0.3, size=200), 0, 1)
  chk = stats.stage1_check(base, s1)
  d = s1 - base
  assert chk["gain"] == pytest.approx(d.mean())
  assert chk["se"] == pytest.approx(sps.sem(d))
  assert chk["aligned"] == (d.mean() >= 2 * sps.sem(d))
  flipped = stats.stage1_check(base, s1, d=-1.0)        # neg_first: the gain is the other way
  assert flipped["gain"] == pytest.approx(-d.mean()) and not flipped["aligned"]
  same = stats.stage1_check(base, base.copy())
  assert same["gain"] == 0 and not same["aligned"]


def test_undone_fraction_crossing_and_control_difference_by_hand():
  b = np.full((1, 4), 0.5)
  s1 = np.full((1, 4), 0.9)
  s = np.array([[0.7, 0.7, 0.7, 0.7]])
  c = np.array([[0.4, 0.4, 0.4, 0.4]])
  assert stats.undone(b, s1, s, resamples=20).estimate == pytest.approx((0.9 - 0.7) / (0.9 - 0.5))
  vc = stats.versus_control(b, s1, s, c, resamples=20)
  assert vc["drop_difference"].estimate == pytest.approx((0.9 - 0.7) - (0.5 - 0.4))
  assert vc["level_difference"].estimate == pytest.approx(0.7 - 0.4)
  # crossing: 0.9 at 0, 0.6 at 10, 0.3 at 20 against the base 0.5: gap 0.1 → −0.2, at 10 + 10·0.1/0.3
  assert stats.crossing_point([0, 10, 20], [0.9, 0.6, 0.3], 0.5, 1.0) == pytest.approx(10 + 10 / 3)
  assert stats.crossing_point([0, 10], [0.1, 0.6], 0.5, -1.0) == pytest.approx(10 * 0.4 / 0.5)


def test_within_level_correlation_is_the_partial_correlation_on_level_dummies():
  rng = np.random.default_rng(7)
  levels = np.repeat([0, 10, 25, 50, 100, 200], 3).astype(float)
  trend = -np.log1p(levels)
  x = trend + 0.3 * rng.normal(size=len(levels))
  y = 2 * trend + 0.3 * rng.normal(size=len(levels))
  got = stats.correlation(x, y, levels, resamples=500)
  # reference: residuals of least squares on one dummy per level, then Pearson (numpy)
  dummies = (levels[:, None] == np.unique(levels)[None, :]).astype(float)
  rx = x - dummies @ np.linalg.lstsq(dummies, x, rcond=None)[0]
  ry = y - dummies @ np.linalg.lstsq(dummies, y, rcond=None)[0]
  assert got["within"].estimate == pytest.approx(np.corrcoef(rx, ry)[0, 1], abs=1e-12)
  assert got["raw"].estimate == pytest.approx(np.corrcoef(x, y)[0, 1], abs=1e-12)
  assert got["raw"].estimate > 0.9 > abs(got["within"].estimate)   # the shared trend, and only it
  assert got["within"].lo <= got["within"].estimate <= got["within"].hi


def test_seed_interval_of_one_value_has_no_width():
  assert intervals.seed_interval([0.3]) == intervals.Interval(0.3, 0.3, 0.3, 0, 0)
  assert intervals.seed_interval([]) is None
  iv = intervals.seed_interval([0.1, 0.2, 0.3], resamples=500)
  assert iv.estimate == pytest.approx(0.2)
  assert 0.1 <= iv.lo <= iv.estimate <= iv.hi <= 0.3
