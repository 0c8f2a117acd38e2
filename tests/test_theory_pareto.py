"""Pareto / lognormal / exponential maximum-likelihood fits: parameters recovered from samples of
known distributions, the right model preferred, closed-form MLEs checked against direct optimization;
and the real-tree pipeline on a slice of Alpaca."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from elasticity.theory import TokenTree
from elasticity.theory.pareto import fit_all, fit_counts, vuong_z


def test_continuous_fits_recover_parameters_and_match_scipy():
  rng = np.random.default_rng(0)
  x = (1 - rng.random(50_000)) ** (-1 / 1.7) * 3.0
  fits = {f.model: f for f in fit_all(x)}
  assert fits["pareto"].params["alpha"] == pytest.approx(1.7, rel=0.03)
  assert min(fits.values(), key=lambda f: f.aic).model == "pareto"
  # the closed-form log-likelihoods equal scipy's densities at the same parameters
  a, xm = fits["pareto"].params["alpha"], fits["pareto"].params["x_min"]
  assert fits["pareto"].loglik == pytest.approx(stats.pareto(a, scale=xm).logpdf(x).sum(), rel=1e-10)
  mu, sig = fits["lognormal"].params["mu"], fits["lognormal"].params["sigma"]
  assert fits["lognormal"].loglik == pytest.approx(
      stats.lognorm(sig, scale=math.exp(mu)).logpdf(x).sum(), rel=1e-10)
  # ... and scipy's own MLE of the lognormal (location fixed at 0) agrees
  s_hat, _, scale_hat = stats.lognorm.fit(x, floc=0)
  assert sig == pytest.approx(s_hat, rel=1e-6) and mu == pytest.approx(math.log(scale_hat), abs=1e-6)
  y = np.exp(rng.normal(1.0, 0.5, 20_000))
  assert min(fit_all(y), key=lambda f: f.aic).model == "lognormal"


@pytest.mark.parametrize("c_min", [1, 3])
def test_count_fits_recover_pareto_shape(c_min):
  rng = np.random.default_rng(c_min)
  x = (1 - rng.random(20_000)) ** (-1 / 1.3) * (c_min - 0.5)   # Pareto above c_min − ½, binned
  counts = np.rint(x).astype(np.int64)
  fits = {f.model: f for f in fit_counts(counts, c_min)}
  assert fits["pareto"].params["alpha"] == pytest.approx(1.3, rel=0.04)
  assert fits["pareto"].loglik > fits["exponential"].loglik + 1000
  assert fits["pareto"].ks < 0.02
  assert vuong_z(counts, fits["pareto"], fits["exponential"]) > 2


def test_count_fits_prefer_the_generating_model():
  rng = np.random.default_rng(5)
  ln = np.rint(np.exp(rng.normal(1.5, 1.0, 20_000))).astype(np.int64)
  ln = ln[ln >= 1]
  fits = {f.model: f for f in fit_counts(ln, 1)}
  assert min(fits.values(), key=lambda f: f.aic).model == "lognormal"
  assert fits["lognormal"].params["mu"] == pytest.approx(1.5, abs=0.05)
  assert vuong_z(ln, fits["pareto"], fits["lognormal"]) < -2
  ex = np.rint(rng.exponential(5.0, 20_000) + 0.5).astype(np.int64)
  fits = {f.model: f for f in fit_counts(ex, 1)}
  assert min(fits.values(), key=lambda f: f.aic).model == "exponential"
  assert fits["exponential"].params["lambda"] == pytest.approx(0.2, rel=0.03)


def test_bad_input():
  with pytest.raises(ValueError, match="positive"):
    fit_all([1.0, -2.0, 3.0])
  with pytest.raises(ValueError, match="distinct"):
    fit_counts([2, 2, 2, 2], 1)


def test_real_tree_rows_on_alpaca(shared):
  from elasticity.theory.pareto_real import depth_rows, load_named_tokenizer, load_texts, prefix_tree
  texts = load_texts("alpaca", limit=300)
  tok = load_named_tokenizer("gpt2")
  tree = prefix_tree(texts, tok, 3)
  assert isinstance(tree, TokenTree)
  ids = [tuple(tok.encode(t[:400])[:1]) for t in texts]
  first = {}
  for i in ids:
    first[i] = first.get(i, 0) + 1
  rows = depth_rows(tree, [1, 3], len(texts), tail_min_count=3)
  assert rows[0]["nodes"] == len(first)
  assert rows[0]["max_count"] == max(first.values())
  assert rows[0]["all"]["n"] == len(first) and rows[0]["all"]["pareto"]["alpha"] > 0
