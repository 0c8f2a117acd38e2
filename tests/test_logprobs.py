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
  np.testing.assert_allclose(got, want, atol=1e-5)
  assert int(valid.sum()) == 16 + 8 + 3

  graphdef, state = nnx.split(model)
  def loss(state, fn):
    m = nnx.merge(graphdef, state)
    return -fn(m).sum()
  g_ref = jax.grad(loss)(state, lambda m: reference(m, ids, mask))
  g_got = jax.grad(loss)(state, lambda m: token_logprobs(m, ids, attention_mask=mask, chunk_size=chunk)[0])
  for a, b in zip(jax.tree.leaves(g_ref), jax.tree.leaves(g_got)):
    np.testing.assert_allclose(a, b, atol=1e-5, rtol=1e-4)


def test_packed_segments_do_not_predict_across_examples():
  model = create_model(CFG, seed=2)
  a, b = np.array([5, 6, 7, 8]), np.array([9, 10, 11])
  packed = jnp.asarray(np.concatenate([a, b, [0]])[None], jnp.int32)
  seg = jnp.asarray([[1, 1, 1, 1, 2, 2, 2, 0]])
  lp, valid = token_logprobs(model, packed, segment_ids=seg, chunk_size=3)
  assert valid.tolist() == [[False, True, True, True, False, True, True, False]]
  lp_a, _ = token_logprobs(model, jnp.asarray(a[None], jnp.int32))
  lp_b, _ = token_logprobs(model, jnp.asarray(b[None], jnp.int32))
  np.testing.assert_allclose(lp[0, :4], lp_a[0], atol=1e-5)
  np.testing.assert_allclose(lp[0, 4:7], lp_b[0], atol=1e-5)
