"""Objectives against closed forms: loss values and gradients of SFT, DPO, SimPO and KTO.

Model-level cases use a zero-layer model (embedding → RMSNorm → untied head): its log-probs are a
softmax regression on normalised embeddings, whose loss and head gradient are written out in numpy.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from elasticity.models import ModelConfig, create_model
from elasticity.train.losses import (Objective, dpo_losses, kto_losses, objective_from_config,
                                     reference_logps, simpo_losses)

CFG0 = ModelConfig(family="llama", vocab_size=11, hidden_size=6, intermediate_size=8, num_layers=0,
                   num_heads=2, num_kv_heads=1, head_dim=3, rms_norm_eps=1e-6)


def sig(x):
  return 1.0 / (1.0 + np.exp(-x))


def zero_layer_reference(model, ids):
  """numpy: normalised inputs h [B, T, D], softmax p [B, T, V] of the next token, from the weights."""
  emb = np.asarray(model.embed[...], np.float64)
  w = np.asarray(model.lm_head[...], np.float64)
  e = emb[ids]
  h = e / np.sqrt(np.mean(e * e, axis=-1, keepdims=True) + CFG0.rms_norm_eps)
  logits = h @ w
  p = np.exp(logits - logits.max(-1, keepdims=True))
  return h, p / p.sum(-1, keepdims=True)


def seq_logp_and_grad(model, ids, mask):
  """Σ_t log p(ids_t | ids_{t-1}) over mask and its gradient w.r.t. the head, per row (numpy)."""
  h, p = zero_layer_reference(model, ids)
  b, t = ids.shape
  logps, grads = np.zeros(b), np.zeros((b, CFG0.hidden_size, CFG0.vocab_size))
  for r in range(b):
    for s in range(1, t):
      if mask[r, s]:
        logps[r] += np.log(p[r, s - 1, ids[r, s]])
        onehot = np.eye(CFG0.vocab_size)[ids[r, s]]
        grads[r] += np.outer(h[r, s - 1], onehot - p[r, s - 1])
  return logps, grads


def head_grad(obj, model, batch, ref_model=None):
  graphdef, params = nnx.split(model)

  def f(params):
    sums = obj(nnx.merge(graphdef, params), batch, ref_model)
    s, n = sums["loss"]
    return s / n
  loss, g = jax.value_and_grad(f)(params)
  return float(loss), np.asarray(g["lm_head"][...])


def test_sft_loss_and_gradient_match_softmax_regression():
  model = create_model(CFG0, seed=3)
  rng = np.random.default_rng(0)
  ids = rng.integers(0, CFG0.vocab_size, (3, 7))
  attn = np.ones((3, 7), np.int32)
  attn[2, 5:] = 0
  loss_mask = np.zeros((3, 7), np.int32)
  loss_mask[0, 3:] = 1           # prompt of 3 tokens
  loss_mask[1, 1:] = 1           # no prompt
  loss_mask[2, 2:5] = 1          # response then padding
  batch = {"input_ids": jnp.asarray(ids, jnp.int32), "attention_mask": jnp.asarray(attn),
           "loss_mask": jnp.asarray(loss_mask)}
  loss, g = head_grad(Objective("sft", chunk_size=2), model, batch)
  logps, grads = seq_logp_and_grad(model, ids, loss_mask)
  n = loss_mask.sum()
  assert n == 4 + 6 + 3
  # float32 vs float64 numpy, 0 layers: 2·√(6 + 11 + 13 tokens)·u = 6.5e-7 ⇒ 1e-5 kept (measured 2.2e-9); grads: atol for ~0 entries
  np.testing.assert_allclose(loss, -logps.sum() / n, rtol=1e-5)
  np.testing.assert_allclose(g, -grads.sum(0) / n, rtol=1e-4, atol=1e-6)


def test_sft_normalizes_by_tokens_not_by_rows():
  """Two rows with 1 and 9 response tokens: the loss is Σ/10, not the mean of per-row means."""
  model = create_model(CFG0, seed=4)
  ids = np.arange(20).reshape(2, 10) % CFG0.vocab_size
  loss_mask = np.zeros((2, 10), np.int32)
  loss_mask[0, 9] = 1
  loss_mask[1, 1:] = 1
  sums = Objective("sft")(model, {"input_ids": jnp.asarray(ids, jnp.int32),
                                  "loss_mask": jnp.asarray(loss_mask)})
  s, n = sums["loss"]
  logps, _ = seq_logp_and_grad(model, ids, loss_mask)
  assert float(n) == 10
  np.testing.assert_allclose(float(s), -logps.sum(), rtol=1e-5)


def test_dpo_closed_form():
  pc, pr, rc, rr, beta = -3.0, -5.0, -4.0, -4.0, 0.1
  (loss,), (rew_c,), (rew_r,) = dpo_losses(*map(lambda x: jnp.asarray([x]), (pc, pr, rc, rr)), beta)
  delta = (pc - rc) - (pr - rr)
  # closed forms: a few float32 scalar ops, ≲ 5u = 3e-7 ⇒ 1e-6 (values), 1e-5 (grads) kept (measured ≤ 1e-7)
  np.testing.assert_allclose(loss, np.log1p(np.exp(-beta * delta)), rtol=1e-6)
  np.testing.assert_allclose([rew_c, rew_r], [beta * 1.0, -beta * 1.0], rtol=1e-6)
  g = jax.grad(lambda a, b: dpo_losses(a, b, rc, rr, beta)[0], argnums=(0, 1))(pc, pr)
  np.testing.assert_allclose(g, [-beta * sig(-beta * delta), beta * sig(-beta * delta)], rtol=1e-5)


def test_simpo_closed_form():
  pc, pr, nc, nr, beta, gamma = -6.0, -4.0, 3.0, 1.0, 2.0, 0.5
  z = beta * pc / nc - beta * pr / nr - gamma          # −4 + 8 − 0.5 = 3.5
  loss = simpo_losses(jnp.asarray(pc), jnp.asarray(pr), nc, nr, beta, gamma)[0]
  np.testing.assert_allclose(loss, np.log1p(np.exp(-z)), rtol=1e-6)
  g = jax.grad(lambda a, b: simpo_losses(a, b, nc, nr, beta, gamma)[0], argnums=(0, 1))(pc, pr)
  np.testing.assert_allclose(g, [-sig(-z) * beta / nc, sig(-z) * beta / nr], rtol=1e-5)


@pytest.mark.parametrize("label", [1, 0])
def test_kto_closed_form(label):
  p, ref, z0, beta, wd, wu = -2.0, -2.5, 0.2, 0.5, 1.5, 0.7
  u = (p - ref) - z0
  loss = kto_losses(jnp.asarray(p), jnp.asarray(ref), jnp.asarray(label), jnp.asarray(z0), beta, wd, wu)[0]
  g = jax.grad(lambda x: kto_losses(x, ref, label, z0, beta, wd, wu)[0])(p)
  if label:
    np.testing.assert_allclose(loss, wd * (1 - sig(beta * u)), rtol=1e-6)
    np.testing.assert_allclose(g, -wd * beta * sig(beta * u) * sig(-beta * u), rtol=1e-5)
  else:
    np.testing.assert_allclose(loss, wu * (1 - sig(-beta * u)), rtol=1e-6)
    np.testing.assert_allclose(g, wu * beta * sig(beta * u) * sig(-beta * u), rtol=1e-5)
  # z0 is a reference point, not a path for gradients.
  gz = jax.grad(lambda z: kto_losses(jnp.asarray(p), ref, label, z, beta, wd, wu)[0])(jnp.asarray(z0))
  assert float(gz) == 0.0


def _pair_batch(rng):
  b, t = 2, 6
  batch = {}
  for side in ("chosen_", "rejected_"):
    batch[side + "input_ids"] = jnp.asarray(rng.integers(0, CFG0.vocab_size, (b, t)), jnp.int32)
    lm = np.zeros((b, t), np.int32)
    lm[:, 2:] = 1
    batch[side + "loss_mask"] = jnp.asarray(lm)
  return batch


def test_dpo_on_model_with_itself_as_reference():
  """Policy = reference: every reward is 0, loss = log 2, gradient = −β/2 (∇π_c − ∇π_r) per pair."""
  model, ref = create_model(CFG0, seed=5), create_model(CFG0, seed=5)
  batch = _pair_batch(np.random.default_rng(1))
  beta = 0.3
  loss, g = head_grad(Objective("dpo", beta=beta), model, batch, ref)
  np.testing.assert_allclose(loss, np.log(2.0), rtol=1e-6)
  lm = np.asarray(batch["chosen_loss_mask"])
  _, gc = seq_logp_and_grad(model, np.asarray(batch["chosen_input_ids"]), lm)
  _, gr = seq_logp_and_grad(model, np.asarray(batch["rejected_input_ids"]), lm)
  np.testing.assert_allclose(g, -beta * 0.5 * (gc - gr).sum(0) / 2, rtol=1e-4, atol=1e-6)


def test_dpo_precomputed_reference_equals_on_the_fly():
  model, ref = create_model(CFG0, seed=6), create_model(CFG0, seed=7)
  batch = _pair_batch(np.random.default_rng(2))
  obj = Objective("dpo", beta=0.2)
  on_the_fly = head_grad(obj, model, batch, ref)
  pre = {**batch, **reference_logps(obj, ref, batch)}
  assert not obj.needs_reference_model(pre.keys())
  once = head_grad(obj, model, pre, None)
  np.testing.assert_allclose(on_the_fly[0], once[0], rtol=1e-6)   # the same reference forward, stored: measured 0
  np.testing.assert_allclose(on_the_fly[1], once[1], rtol=1e-5, atol=1e-7)
  with pytest.raises(ValueError, match="ref_chosen_logps"):
    obj(model, batch, None)


def test_simpo_and_kto_on_model_match_closed_form():
  model, ref = create_model(CFG0, seed=8), create_model(CFG0, seed=9)
  batch = _pair_batch(np.random.default_rng(3))
  lm = np.asarray(batch["chosen_loss_mask"])
  pc, _ = seq_logp_and_grad(model, np.asarray(batch["chosen_input_ids"]), lm)
  pr, _ = seq_logp_and_grad(model, np.asarray(batch["rejected_input_ids"]), lm)
  s, n = Objective("simpo", beta=2.0, gamma=0.3)(model, batch)["loss"]
  z = 2.0 * pc / 4 - 2.0 * pr / 4 - 0.3
  np.testing.assert_allclose(float(s / n), np.mean(np.log1p(np.exp(-z))), rtol=1e-5)

  kbatch = {"input_ids": batch["chosen_input_ids"], "loss_mask": batch["chosen_loss_mask"],
            "label": jnp.asarray([1, 0])}
  refp, _ = seq_logp_and_grad(ref, np.asarray(batch["chosen_input_ids"]), lm)
  s, n = Objective("kto", beta=0.5, desirable_weight=1.0, undesirable_weight=2.0)(model, kbatch, ref)["loss"]
  r = pc - refp
  want = [1.0 - sig(0.5 * r[0]), 2.0 - 2.0 * sig(-0.5 * r[1])]
  np.testing.assert_allclose(float(s / n), np.mean(want), rtol=1e-5)


def test_objective_config_names_bad_keys():
  with pytest.raises(ValueError, match="objective.name"):
    objective_from_config({"name": "ppo"})
  with pytest.raises(ValueError, match="betta"):
    objective_from_config({"name": "dpo", "betta": 0.1})


def test_kto_reference_point_is_the_mean_kl_over_real_rows_only():
  """z0 = max(0, mean over rows with example_mask 1 of π(kl) − ref(kl)); a padding row (mask 0) moves
  neither z0 nor the loss, and rewards are split by label."""
  model = create_model(CFG0, seed=10)
  rng = np.random.default_rng(4)
  b, t = 3, 6
  ids, kl_ids = rng.integers(0, CFG0.vocab_size, (2, b, t))
  lm = np.zeros((b, t), np.int32)
  lm[:, 2:] = 1
  p, _ = seq_logp_and_grad(model, ids, lm)
  pk, _ = seq_logp_and_grad(model, kl_ids, lm)
  ref, rk = p + np.array([0.5, -1.0, 7.0]), pk - np.array([1.0, 3.0, 50.0])
  batch = {"input_ids": jnp.asarray(ids, jnp.int32), "loss_mask": jnp.asarray(lm),
           "kl_input_ids": jnp.asarray(kl_ids, jnp.int32), "kl_loss_mask": jnp.asarray(lm),
           "ref_logps": jnp.asarray(ref, jnp.float32), "ref_kl_logps": jnp.asarray(rk, jnp.float32),
           "label": jnp.asarray([1.0, 0.0, 1.0]), "example_mask": jnp.asarray([1.0, 1.0, 0.0])}
  beta, wd, wu = 0.5, 1.0, 1.5
  sums = Objective("kto", beta=beta, desirable_weight=wd, undesirable_weight=wu)(model, batch)
  z0 = 2.0                                   # mean of 1 and 3; the padding row's 50 stays out
  np.testing.assert_allclose(float(sums["kl_z0"][0]), z0, rtol=1e-5)
  r = p - ref                                # −0.5, 1.0 (the padding row: −7)
  want = [wd * (1 - sig(beta * (r[0] - z0))), wu * (1 - sig(beta * (z0 - r[1])))]
  s, n = sums["loss"]
  assert float(n) == 2.0
  np.testing.assert_allclose(float(s / n), np.mean(want), rtol=1e-5)
  for name, want_reward in (("reward_desirable", beta * r[0]), ("reward_undesirable", beta * r[1])):
    s, n = sums[name]
    assert float(n) == 1.0
    np.testing.assert_allclose(float(s), want_reward, rtol=1e-5)
  # a microbatch of padding rows only: z0 = 0, nothing counted, nothing NaN
  empty = Objective("kto")(model, {**batch, "example_mask": jnp.zeros(3)})
  assert float(empty["kl_z0"][0]) == 0.0 and float(empty["loss"][1]) == 0.0
  assert all(np.isfinite(float(v[0])) for v in empty.values())


def test_kto_with_kl_rows_needs_both_reference_fields():
  kto = Objective("kto")
  assert kto.needs_reference_model({"input_ids", "ref_logps"}) is False
  assert kto.needs_reference_model({"input_ids", "kl_input_ids", "ref_logps"}) is True
  assert kto.needs_reference_model({"input_ids", "kl_input_ids", "ref_logps", "ref_kl_logps"}) is False
