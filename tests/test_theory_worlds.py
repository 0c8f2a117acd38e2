"""Synthetic worlds: deterministic, exact probabilities the samplers converge to, an exact classifier."""

from __future__ import annotations

import numpy as np
import pytest

from elasticity.theory import WorldConfig, make_world
from elasticity.theory.worlds import NAMES

SMALL = dict(vocab_size=7, length=4, n_leaves_p=40, n_leaves_a=12, n_leaves_t=20)


def test_deterministic_and_seeded():
  a, b = make_world(**SMALL), make_world(**SMALL)
  c = make_world(**SMALL, seed=1)
  for n in NAMES:
    np.testing.assert_array_equal(a.leaves[n], b.leaves[n])
    np.testing.assert_array_equal(a.probs[n], b.probs[n])
  assert not np.array_equal(a.probs["p"], c.probs["p"])
  np.testing.assert_array_equal(a.sample("p", 50, seed=3).tokens, b.sample("p", 50, seed=3).tokens)
  assert not np.array_equal(a.sample("p", 50, seed=3).tokens, a.sample("p", 50, seed=4).tokens)


def test_structure_disjoint_prefixes_and_pareto_masses():
  w = make_world(**SMALL)
  for i, n in enumerate(NAMES):
    assert (w.leaves[n][:, 0] == i).all()
    assert (w.leaves[n][:, 1:] >= 3).all() and (w.leaves[n] < 7).all()
    assert len({tuple(r) for r in w.leaves[n].tolist()}) == len(w.leaves[n])
    assert w.probs[n].sum() == pytest.approx(1.0)
  # Pareto(α) draws: min/x ratios; a big sample's log-moments match E[log X] = 1/α
  big = make_world(vocab_size=16, length=6, n_leaves_p=100_000, alpha_p=1.5)
  x = big.probs["p"] / big.probs["p"].min()
  assert np.log(x).mean() == pytest.approx(1 / 1.5, rel=0.02)


def test_sampler_frequencies_converge_to_exact_probabilities():
  w = make_world(**SMALL)
  n = 200_000
  for name in ("p", "a"):
    s = w.sample(name, n, seed=0)
    keys = {tuple(r): i for i, r in enumerate(w.leaves[name].tolist())}
    counts = np.zeros(len(keys))
    for r in s.tokens.tolist():
      counts[keys[tuple(r)]] += 1
    p = w.probs[name]
    sigma = np.sqrt(p * (1 - p) / n)
    assert np.all(np.abs(counts / n - p) < 5 * sigma + 1e-12)
    np.testing.assert_allclose(s.log_prob, np.log(w.prob(s.tokens, name)))


def test_joint_sampler_proportions_log_probs_and_exact_classifier():
  w = make_world(**SMALL, k=8.0, l=0.5)
  s = w.sample_joint(60_000, seed=2)
  frac = np.bincount(s.labels, minlength=3) / len(s.labels)
  want = np.array([8.0, 1.0, 0.5]) / 9.5
  assert np.all(np.abs(frac - want) < 5 * np.sqrt(want * (1 - want) / len(s.labels)))
  # log_prob is the mixture's: Σ_i w_i p_i(x), recomputed here leaf by leaf
  mix = sum(wi * np.array([dict(zip(map(tuple, w.leaves[n].tolist()), w.probs[n])).get(tuple(r), 0.0)
                           for r in s.tokens[:200].tolist()]) for wi, n in zip(want, NAMES))
  np.testing.assert_allclose(s.log_prob[:200], np.log(mix))
  assert (w.score(s.tokens) == s.labels).all()           # disjoint prefixes: the label is exact
  off = np.array([[0, 3, 3, 3]]) if (0, 3, 3, 3) not in map(tuple, w.leaves["p"].tolist()) else None
  if off is not None:
    assert w.score(off)[0] == -1 and np.isneginf(w.log_prob(off, "p")[0])


def test_near_p_perturbation_shares_support_and_posterior():
  w = make_world(**SMALL, t_mode="near_p", near_mix=0.25, k=4.0, l=1.0)
  np.testing.assert_array_equal(w.leaves["t"], w.leaves["p"])
  assert not np.allclose(w.probs["t"], w.probs["p"])
  x = w.leaves["p"][:5]
  post = w.posterior(x)
  pp, pt = w.prob(x, "p"), w.prob(x, "t")
  np.testing.assert_allclose(post[:, 0], 4 * pp / (4 * pp + pt))
  np.testing.assert_allclose(post[:, 1], 0.0)


@pytest.mark.parametrize("override, match", [
    (dict(n_leaves_p=10**9), "n_leaves_p"), (dict(alpha_a=0.0), "alpha_a"),
    (dict(t_mode="nearby"), "t_mode"), (dict(vocab_size=3), "vocab_size"), (dict(k=-1.0), "config.k"),
])
def test_bad_config(override, match):
  with pytest.raises(ValueError, match=match):
    make_world(WorldConfig(), **override)


def test_bad_tokens():
  w = make_world(**SMALL)
  with pytest.raises(ValueError, match=r"must be \[n, 4\]"):
    w.prob(np.zeros((2, 3), np.int32), "p")
  with pytest.raises(ValueError, match="row 1"):
    w.prob(np.array([[0, 3, 3, 3], [0, 9, 3, 3]]), "p")
  with pytest.raises(ValueError, match="unknown dataset"):
    w.sample("q", 3)


def test_exact_law_of_a_world():
  """The world's own Theorem 4.2 row: unbounded + disjoint D_t gives dL/dl = 1/((k+1+l) ln 2) a sequence."""
  w = make_world(**SMALL, k=20.0, l=0.05)
  row = w.exact_law()
  assert (row.k, row.l) == (20.0, 0.05)
  want = 1 / ((20 + 1 + 0.05) * np.log(2) * 4)
  assert row.dgamma_p == pytest.approx(want, rel=1e-9)
  assert row.dgamma_a == pytest.approx(want, rel=1e-9)
