"""Joint-training rates under the mixture code, their gradients, and Theorem 4.2's exact slopes,
against direct (loop-over-leaves) computations and finite differences."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from elasticity.compression import CompressionReport
from elasticity.theory import TokenTree, joint_rates, make_world, mixture_rates, normalized_rate
from elasticity.theory.law import rates_and_slopes, theta_closed_form


def _direct_rates(seq_sets, sizes, vocab, budget=None):
  """Bits/token of each dataset under the (budgeted) mixture code, with plain dicts and loops."""
  dists = []
  for seqs, w in seq_sets:
    d = {}
    for s, x in zip(seqs, w):
      d[tuple(s)] = d.get(tuple(s), 0.0) + x / sum(w)
    dists.append(d)
  total = sum(sizes)
  mix = {}
  for d, n in zip(dists, sizes):
    for s, p in d.items():
      mix[s] = mix.get(s, 0.0) + n * p / total
  ranked = sorted([s for s in mix if mix[s] > 0], key=lambda s: -mix[s])
  kept = set(ranked if budget is None else ranked[:budget])
  esc = sum(m for s, m in mix.items() if s not in kept)
  n_len = len({len(s) for s in mix if mix[s] > 0})
  out = []
  for d in dists:
    bits = tokens = 0.0
    for s, p in d.items():
      tokens += p * len(s)
      if s in kept:
        bits += -p * math.log2(mix[s])
      else:
        bits += p * (-math.log2(esc) + len(s) * math.log2(vocab) + math.log2(n_len))
    out.append(bits / tokens)
  return np.array(out)


def _random_sets(rng, n_sets=3, vocab=4):
  sets = []
  for _ in range(n_sets):
    n = int(rng.integers(3, 25))
    seqs = [rng.integers(0, vocab, size=int(rng.integers(1, 5))).tolist() for _ in range(n)]
    sets.append((seqs, rng.random(n) + 0.05))
  return sets


@pytest.mark.parametrize("seed", range(8))
@pytest.mark.parametrize("budget", [None, 5])
def test_mixture_rates_equal_direct_computation(seed, budget):
  rng = np.random.default_rng(seed)
  sets = _random_sets(rng)
  sizes = rng.random(3) * 10 + 0.1
  trees = {f"d{i}": TokenTree.from_sequences(s, w, vocab_size=4) for i, (s, w) in enumerate(sets)}
  got = joint_rates(trees, {f"d{i}": sizes[i] for i in range(3)}, budget=budget)
  np.testing.assert_allclose(got.bits_per_token, _direct_rates(sets, sizes, 4, budget), rtol=1e-10)


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 10_000), st.sampled_from([None, 3, 8]), st.integers(0, 2))
def test_gradient_matches_finite_differences(seed, budget, j):
  rng = np.random.default_rng(seed)
  masses = rng.random((3, 20)) * (rng.random((3, 20)) < 0.6)
  masses[:, 0] += 0.01
  masses /= masses.sum(axis=1, keepdims=True)
  lengths = rng.integers(1, 5, size=20)
  sizes = rng.random(3) * 5 + 0.5
  r = mixture_rates(masses, sizes, lengths, 7, budget=budget)
  h = 1e-6
  up, dn = sizes.copy(), sizes.copy()
  up[j] += h
  dn[j] -= h
  r_up = mixture_rates(masses, up, lengths, 7, budget=budget)
  r_dn = mixture_rates(masses, dn, lengths, 7, budget=budget)
  from elasticity.theory.mixture import joint_code
  if not np.array_equal(joint_code(masses, up, budget).kept, joint_code(masses, dn, budget).kept):
    return   # the kept set changes inside the step: the slope is one-sided there
  fd = (r_up.bits_per_token - r_dn.bits_per_token) / (2 * h)
  np.testing.assert_allclose(r.grad[:, j], fd, rtol=1e-5, atol=1e-8)


def _disjoint_masses(rng, n=(30, 10, 15)):
  m = np.zeros((3, sum(n)))
  start = 0
  for i, ni in enumerate(n):
    x = rng.pareto(1.5, ni) + 1
    m[i, start:start + ni] = x / x.sum()
    start += ni
  return m


def test_unbounded_disjoint_both_rates_rise_equally():
  """No budget, disjoint D_t: dL_i/dl = 1/((k+1+l) ln 2) bits per sequence for D_p and D_a alike."""
  m = _disjoint_masses(np.random.default_rng(0))
  lengths = np.full(m.shape[1], 4)
  for k, l in [(10, 0.0), (100, 0.01), (1000, 0.3)]:
    row = rates_and_slopes(m, lengths, 8, k, l)
    want = 1.0 / ((k + 1 + l) * math.log(2) * 4)
    assert row.dgamma_p == pytest.approx(want, rel=1e-9)
    assert row.dgamma_a == pytest.approx(want, rel=1e-9)
    assert row.ratio == pytest.approx(1.0)
    assert not row.signs_hold


def test_near_p_ratio_tends_to_minus_k_and_envelope_vanishes():
  """D_t on D_p's support, unbounded: dγ_a/dl / dγ_p/dl → −k and k·dL_p + dL_a → 0 as l → 0."""
  rng = np.random.default_rng(1)
  m = _disjoint_masses(rng)
  r = rng.random(30)
  m[2] = 0
  m[2, :30] = r / r.sum()
  lengths = np.full(m.shape[1], 3)
  for k in (10, 100, 1000):
    row = rates_and_slopes(m, lengths, 8, k, 0.0)
    assert row.signs_hold
    assert row.ratio == pytest.approx(-k, rel=1e-9)
    assert abs(row.envelope) < 1e-9
    # closed forms at l = 0 (docs §5.2): dL_p = −1/(k(k+1)), dL_a = 1/(k+1) nats per sequence
    assert row.dgamma_a * 3 * math.log(2) == pytest.approx(1 / (k + 1), rel=1e-9)
    assert row.dgamma_p * 3 * math.log(2) == pytest.approx(-1 / (k * (k + 1)), rel=1e-9)


def test_budget_theta_closed_form_and_envelope():
  """A budget code with D_t disjoint and wholly escaped: Θ(k, l) has the closed form of docs §5.3,
  and Θ → 1 (envelope) at l → 0. Slopes agree with finite differences."""
  world = make_world(n_leaves_p=3000, n_leaves_a=100, n_leaves_t=20000, alpha_t=20.0)
  _, masses = world.union_masses()
  lengths = np.full(masses.shape[1], world.length)
  for k in (10, 100):
    for l in (0.0, 1e-3, 1e-2):
      row = rates_and_slopes(masses, lengths, world.vocab_size, k, l, budget=800)
      assert row.escaped_t == pytest.approx(1.0)
      assert row.kept_stable
      assert row.dgamma_p == pytest.approx(row.dgamma_p_fd, rel=1e-4, abs=1e-10)
      assert row.dgamma_a == pytest.approx(row.dgamma_a_fd, rel=1e-4, abs=1e-10)
      assert row.theta == pytest.approx(theta_closed_form(k, l, row.escaped_p, row.escaped_a), rel=1e-8)
      if l == 0:
        assert row.theta == pytest.approx(1.0, rel=1e-9)
        assert abs(row.envelope) < 1e-9
      # sign condition of docs §5.3: dγ_p/dl < 0 iff P_p^out (1 + l) > P_a^out + l
      assert (row.dgamma_p < 0) == (row.escaped_p * (1 + l) > row.escaped_a + l)


def test_normalizations_shift_rates_by_constants():
  """γ^{D_i/D} under own / joint / vocab M differ by l-independent constants for l > 0, so their
  slopes agree; joint's M jumps at l = 0+ when the unbounded code admits D_t's leaves."""
  m = _disjoint_masses(np.random.default_rng(2))
  lengths = np.full(m.shape[1], 2)
  ls = [1e-3, 1e-2, 0.1]
  rates = {n: np.array([mixture_rates(m, [50, 1, l], lengths, 8, normalization=n).normalized[:2]
                        for l in [0.0] + ls]) for n in ("own", "joint", "vocab")}
  for n in ("joint", "vocab"):
    d = rates[n] - rates["own"]
    np.testing.assert_allclose(d[1:], np.broadcast_to(d[1], d[1:].shape), atol=1e-12)
  jump = (rates["joint"] - rates["own"])[0] - (rates["joint"] - rates["own"])[1]
  want = (math.log2(55) - math.log2(40)) / 2    # M: 40 leaves of D_p ∪ D_a, then 55 with D_t's
  np.testing.assert_allclose(jump, [want, want], rtol=1e-12)


def test_normalized_rate_is_compression_kernels_definition():
  rep = CompressionReport(bits=1234.5, tokens=321, bytes=999, examples=3, vocab_size=512)
  assert normalized_rate(rep.bits_per_token, math.log2(rep.vocab_size)) == pytest.approx(
      rep.normalized, abs=1e-15)
  assert normalized_rate(2.0, 0.5) == 1.5
