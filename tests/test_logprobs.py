"""The chunked log-prob kernel equals log_softmax of full logits, in value and gradient."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from elasticity.logprobs import token_logprobs
from elasticity.models import ModelConfig, create_model

CFG = ModelConfig(family="gemma2", vocab_size=131, hidden_size=32, intermediate_size=48, num_layers=2,
                  num_heads=4, num_kv_heads=2, head_dim=8, final_logit_softcap=4.0,
                  norm_plus_one=True, activation="gelu_tanh")


def reference(model, ids, mask):
  logits = model(ids, attention_mask=mask)
  lp = jax.nn.log_softmax(logits[:, :-1], axis=-1)
  lp = jnp.take_along_axis(lp, ids[:, 1:, None], axis=-1)[..., 0]
  valid = (mask[:, 1:] & mask[:, :-1]).astype(bool)
  return jnp.pad(jnp.where(valid, lp, 0.0), ((0, 0), (1, 0)))


@pytest.mark.parametrize("chunk", [1, 5, 16, 64])
def test_value_and_grad_match_full_logits(chunk):
  model = create_model(CFG, seed=1)
  rng = np.random.default_rng(0)
  ids = jnp.asarray(rng.integers(0, CFG.vocab_size, (3, 17)), jnp.int32)
  mask = jnp.asarray(np.arange(17)[None, :] < np.array([[17], [9], [4]]))
  want = reference(model, ids, mask)
  got, valid = token_logprobs(model, ids, attention_mask=mask, chunk_size=chunk)
  # Chunking reorders the head (32 terms) and log-sum-exp (131): 5·(√131 + 4·√32)·u = 1.0e-5 abs, |logit| ≤ 4 (measured 4.8e-7)
  np.testing.assert_allclose(got, want, atol=1e-5)
  assert int(valid.sum()) == 16 + 8 + 3

  graphdef, state = nnx.split(model)
  def loss(state, fn):
    m = nnx.merge(graphdef, state)
    return -fn(m).sum()
  g_ref = jax.grad(loss)(state, lambda m: reference(m, ids, mask))
  g_got = jax.grad(loss)(state, lambda m: token_logprobs(m, ids, attention_mask=mask, chunk_size=chunk)[0])
  for a, b in zip(jax.tree.leaves(g_ref), jax.tree.leaves(g_got)):
    np.testing.assert_allclose(a, b, atol=1e-5, rtol=1e-4)   # backward sums over 48 tokens too; kept (measured 9.5e-7 abs)


def test_packed_segments_do_not_predict_across_examples():
  model = create_model(CFG, seed=2)
  a, b = np.array([5, 6, 7, 8]), np.array([9, 10, 11])
  packed = jnp.asarray(np.concatenate([a, b, [0]])[None], jnp.int32)
  seg = jnp.asarray([[1, 1, 1, 1, 2, 2, 2, 0]])
  lp, valid = token_logprobs(model, packed, segment_ids=seg, chunk_size=3)
  assert valid.tolist() == [[False, True, True, True, False, True, True, False]]
  lp_a, _ = token_logprobs(model, jnp.asarray(a[None], jnp.int32))
  lp_b, _ = token_logprobs(model, jnp.asarray(b[None], jnp.int32))
  np.testing.assert_allclose(lp[0, :4], lp_a[0], atol=1e-5)   # as above: another row layout, 1e-5 kept (measured 0)
  np.testing.assert_allclose(lp[0, 4:7], lp_b[0], atol=1e-5)


@pytest.mark.parametrize("dtype,tol", [(jnp.float32, 2e-5), (jnp.bfloat16, 2e-2)])
@pytest.mark.parametrize("chunk,cap", [(16, None), (7, 3.0), (64, None)])
def test_fused_nll_value_and_grads_match_autodiff(chunk, cap, dtype, tol):
  from elasticity.logprobs import chunked_target_logprobs, fused_weighted_nll
  k = jax.random.split(jax.random.PRNGKey(0), 4)
  h = jax.random.normal(k[0], (3, 37, 24)).astype(dtype)
  w = (0.3 * jax.random.normal(k[1], (24, 101))).astype(dtype)
  t = jax.random.randint(k[2], (3, 37), 0, 101)
  wt = jax.random.uniform(k[3], (3, 37)) * (jax.random.uniform(k[3], (3, 37)) > 0.3)

  def ref(h, w, wt):
    return -jnp.sum(chunked_target_logprobs(h, w, t, chunk_size=chunk, final_softcap=cap) * wt)

  def fused(h, w, wt):
    return fused_weighted_nll(h, w, t, wt, chunk, cap)

  want, want_g = jax.value_and_grad(ref, argnums=(0, 1, 2))(h, w, wt)
  got, got_g = jax.jit(jax.value_and_grad(fused, argnums=(0, 1, 2)))(h, w, wt)
  assert abs(float(got) - float(want)) <= tol * abs(float(want))
  assert float(fused(h, w, wt)) == pytest.approx(float(got), rel=1e-6)   # primal without grad; 2·√(24+101)·u = 1.3e-6 ≈ 1e-6 kept (measured 1.0e-7)
  for name, a, b in zip(("h", "w", "weights"), got_g, want_g):
    a, b = np.asarray(a, np.float32), np.asarray(b, np.float32)
    assert a.dtype == b.dtype
    err = np.max(np.abs(a - b)) / (np.max(np.abs(b)) + 1e-12)
    assert err < tol, f"d/d{name}: relative error {err:.2e}"


def test_weighted_nll_equals_token_logprobs_on_a_model():
  from elasticity.logprobs import weighted_nll
  model = create_model(CFG, seed=3)
  gd, params = nnx.split(model)
  rng = np.random.default_rng(2)
  ids = jnp.asarray(rng.integers(0, CFG.vocab_size, (2, 20)), jnp.int32)
  mask = jnp.asarray(np.arange(20)[None] < np.array([[20], [13]]), jnp.int32)
  loss_mask = jnp.asarray(rng.integers(0, 2, (2, 20)), jnp.float32)

  def via_logprobs(p):
    lp, valid = token_logprobs(nnx.merge(gd, p), ids, attention_mask=mask, chunk_size=8)
    return -jnp.sum(lp * jnp.where(valid, loss_mask, 0.0))

  def fused(p):
    return weighted_nll(nnx.merge(gd, p), ids, loss_mask, attention_mask=mask, chunk_size=8)[0]

  want, gw = jax.value_and_grad(via_logprobs)(params)
  got, gf = jax.value_and_grad(fused)(params)
  assert float(got) == pytest.approx(float(want), rel=1e-5)   # the loss: 2·√(131·21)·u = 6.3e-6 ⇒ 1e-5 kept (measured 8.2e-8)
  for a, b in zip(jax.tree.leaves(gf), jax.tree.leaves(gw)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-6)   # gradients: atol covers near-zero entries; kept (7.2e-7 abs)
  _, count = weighted_nll(model, ids, loss_mask, attention_mask=mask)
  valid = np.asarray(mask[:, 1:] & mask[:, :-1], bool)
  assert float(count) == float(np.asarray(loss_mask)[:, 1:][valid].sum())
