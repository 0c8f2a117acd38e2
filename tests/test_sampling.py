"""The samplers of `elasticity.models.generate` draw from the softmax they are given: frequencies of
many draws against the probabilities computed independently in NumPy (chi-square), nucleus-cut and
zero-probability tokens never drawn, and the Gumbel sampler kept for earlier runs."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from elasticity.models import generate as gen

V = 700                     # not a multiple of the CDF block: the last block is padded
DRAWS = 40_000


def _logits() -> np.ndarray:
  rng = np.random.default_rng(0)
  x = rng.normal(0.0, 2.0, V).astype(np.float32)
  x[300:512] = -np.inf      # a whole CDF block (256..511) with almost no mass and zero-probability tokens
  x[256:300] = -30.0
  return x


def _np_softmax(x: np.ndarray) -> np.ndarray:
  e = np.exp(x.astype(np.float64) - np.max(x))
  return e / e.sum()


def _draw(method: str, temperature: float = 1.0, top_p: float = 1.0) -> np.ndarray:
  logits = jnp.broadcast_to(jnp.asarray(_logits()), (DRAWS, V))
  fn = jax.jit(lambda k, l: gen.sample_logits(l, k, temperature, top_p, method))
  return np.asarray(fn(jax.random.key(11), logits))


@pytest.mark.parametrize("method", gen.METHODS)
@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_draws_follow_the_softmax(method, temperature):
  p = _np_softmax(_logits() / temperature)
  counts = np.bincount(_draw(method, temperature), minlength=V)
  assert counts[300:512].sum() == 0                       # zero-probability tokens
  keep = p * DRAWS >= 5                                   # chi-square cells with enough mass
  observed = np.append(counts[keep], counts[~keep].sum())
  expected = np.append(p[keep], p[~keep].sum()) * DRAWS
  chi2, pval = stats.chisquare(observed, expected)
  assert pval > 1e-4, (method, chi2, pval)


@pytest.mark.parametrize("method", gen.METHODS)
def test_nucleus_tokens_only(method):
  p = _np_softmax(_logits())
  order = np.argsort(-p, kind="stable")
  before = np.cumsum(p[order]) - p[order]
  nucleus = set(order[before < 0.5].tolist())
  drawn = set(np.unique(_draw(method, top_p=0.5)).tolist())
  assert drawn <= nucleus and len(drawn) == len(nucleus)


def test_inverse_cdf_edges():
  key = jax.random.key(0)
  one_hot = jnp.zeros((4, 513)).at[:, 512].set(1.0)     # all the mass in the padded last block
  assert np.asarray(gen.inverse_cdf_draw(key, one_hot)).tolist() == [512] * 4
  first = jnp.zeros((3, 300)).at[:, 0].set(1.0)
  assert np.asarray(gen.inverse_cdf_draw(key, first)).tolist() == [0] * 3


def test_unknown_method_is_named():
  with pytest.raises(ValueError, match="sampling method 'top_k'"):
    gen.generate(None, [[1]], temperature=1.0, method="top_k")
