"""Networks in a synthetic world (`elasticity.theory.network`): the kernel's code lengths against a
float64 numpy log-softmax of the model's logits, the exact rates and shares against brute force, the
weighted batches against the joint objective's weights, training lowers the joint loss, sampling
follows the model."""

from __future__ import annotations

import functools

import jax
import numpy as np
import pytest
from flax import nnx

from elasticity.theory.network import NetConfig, Network, with_bos
from elasticity.theory.worlds import NAMES, make_world

NET = NetConfig(hidden=16, layers=1, heads=2, batch=16, rows_a=4, rows_t=4, eval_chunk=128)


@pytest.fixture(scope="module")
def world():
  return make_world(vocab_size=7, length=4, n_leaves_p=40, n_leaves_a=8, n_leaves_t=10,
                    t_mode="independent", seed=3)


@pytest.fixture(scope="module")
def net(world):
  return Network(world, NET, seed=0)


@functools.cache
def _logits_fn(graphdef):
  return jax.jit(lambda params, ids: nnx.merge(graphdef, params)(ids))


def logits(net: Network, params, ids: np.ndarray) -> np.ndarray:
  """The model's full logits [n, T+1, V+1] (its plain forward, not the kernel), float64; rows are
  padded to a multiple of 64 so a few shapes compile."""
  n = ids.shape[0]
  padded = np.pad(ids, ((0, -n % 64), (0, 0)), constant_values=net.bos)
  return np.asarray(_logits_fn(net.graphdef)(params, padded), np.float64)[:n]


def reference_bits(net: Network, params, tokens: np.ndarray) -> np.ndarray:
  """−Σ_t log₂ p(x_t | BOS, x_<t) from the model's full logits, log-softmax in float64 numpy."""
  ids = with_bos(tokens, net.bos)
  logits_ = logits(net, params, ids)                               # [n, T+1, V+1]
  top = logits_.max(-1)
  lp = logits_ - (np.log(np.exp(logits_ - top[..., None]).sum(-1)) + top)[..., None]
  t = tokens.shape[1]
  picked = np.take_along_axis(lp[:, :t, :], ids[:, 1:, None], axis=-1)[..., 0]
  return -picked.sum(1) / np.log(2.0)


def test_sequence_bits_match_reference(world, net):
  params = net.init_params(1)
  tokens = np.concatenate([world.leaves[n] for n in NAMES]).astype(np.int32)
  got = net.sequence_bits(params, tokens)                         # 58 rows: one chunk, padded
  # kernel vs full logits, float64 log-softmax: elementwise 6·√(16·stack_depth(1))·u = 4.7e-6 ⇒ 2e-5 kept (measured 1.2e-7 rel)
  np.testing.assert_allclose(got, reference_bits(net, params, tokens), rtol=2e-5, atol=2e-5)
  assert got.shape == (58,)


def test_rates_and_shares_brute_force(world, net):
  params = net.init_params(2)
  r = net.rates(params)
  t = world.length
  for name in NAMES:
    bits = reference_bits(net, params, world.leaves[name].astype(np.int32))
    bpt = float(world.probs[name] @ bits) / t
    # rates: the same per-sequence bits, averaged: 2·√(16·11)·u = 1.6e-6 ⇒ 1e-5 kept (measured 6e-8); shares exp2 it, ×~10 ⇒ 1e-4
    assert r["bits_per_token"][name] == pytest.approx(bpt, rel=1e-5)
    assert r["gamma"][name] == pytest.approx(bpt - np.log2(len(world.probs[name])) / t, rel=1e-5, abs=1e-6)
    assert r["share"][name] == pytest.approx(float(np.exp2(-bits).sum()), rel=1e-4)
  # The shares of disjoint supports are probabilities of disjoint events: they sum below 1.
  assert 0 < sum(r["share"].values()) < 1


def test_all_sequences_sum_to_one(world, net):
  """The model's distribution over all V^T world sequences sums to 1 minus the mass on BOS tokens
  (never a world token): the shares are exact probabilities, not scores."""
  params = net.init_params(3)
  v, t = world.vocab_size, world.length
  grid = np.stack(np.meshgrid(*[np.arange(v)] * t, indexing="ij"), -1).reshape(-1, t).astype(np.int32)
  total = float(np.exp2(-net.sequence_bits(params, grid)).sum())
  ids = np.full((1, t + 1), net.bos, np.int32)
  assert 0.5 < total < 1.0
  first = logits(net, params, ids)[0, 0]
  p_bos_first = np.exp(first[-1] - np.log(np.exp(first).sum()))
  assert total <= 1.0 - p_bos_first + 1e-5


def test_batches_weight_the_joint_objective(net):
  ids, mask = net.batches((100.0, 1.0, 0.5), steps=3, seed=0)
  assert ids.shape == (3, 16, 5) and mask.shape == (3, 16, 5)
  assert (ids[:, :, 0] == net.bos).all() and (mask[:, :, 0] == 0).all()
  w = mask[0, :, 1]
  first = ids[0, :, 1]                 # the dataset's prefix token: 0, 1, 2
  per = np.array([w[first == i].sum() for i in range(3)])
  np.testing.assert_allclose(per / per.sum(), np.array([100, 1, 0.5]) / 101.5, rtol=1e-6)
  assert [int((first == i).sum()) for i in range(3)] == [8, 4, 4]
  again, _ = net.batches((100.0, 1.0, 0.5), steps=3, seed=0)
  other, _ = net.batches((100.0, 1.0, 0.0), steps=3, seed=0)
  np.testing.assert_array_equal(ids, again)
  np.testing.assert_array_equal(ids, other)          # common random numbers across sizes
  with pytest.raises(ValueError, match="sizes"):
    net.batches((1.0, -1.0, 0.0), steps=1, seed=0)


def test_training_lowers_the_joint_rate(world, net):
  params = net.init_params(4)
  before = net.rates(params)["bits_per_token"]
  after = net.rates(net.train(params, (10.0, 1.0, 0.0), steps=30, lr=1e-2, seed=0))["bits_per_token"]
  joint = lambda r: (10 * r["p"] + r["a"]) / 11
  assert joint(after) < joint(before) - 0.1
  # Fine-tuning on D_a alone moves the model's mass onto D_a's support.
  share0 = net.rates(params)["share"]["a"]
  aligned = net.train(params, (0.0, 1.0, 0.0), steps=30, lr=1e-2, seed=1)
  assert net.rates(aligned)["share"]["a"] > 3 * share0


def test_sample_follows_the_model(world, net):
  params = net.train(net.init_params(5), (1.0, 1.0, 1.0), steps=20, lr=1e-2, seed=2)
  draws = net.sample(params, 4000, seed=0)
  assert draws.shape == (4000, world.length) and draws.max() < world.vocab_size
  ids = np.full((1, world.length + 1), net.bos, np.int32)
  first = logits(net, params, ids)[0, 0, :world.vocab_size]
  p = np.exp(first - first.max())
  p /= p.sum()
  freq = np.bincount(draws[:, 0], minlength=world.vocab_size) / 4000
  np.testing.assert_allclose(freq, p, atol=4 * np.sqrt(p * (1 - p) / 4000).max() + 1e-3)
  np.testing.assert_array_equal(draws, net.sample(params, 4000, seed=0))


def test_bad_config():
  with pytest.raises(ValueError, match="network config.rows_a"):
    NetConfig(batch=8, rows_a=4, rows_t=4).validate()
  with pytest.raises(ValueError, match="network config.normalization"):
    NetConfig(normalization="bytes").validate()
