"""KL(π‖π_ref) on generated positions: against float64 references (numpy on full logits, torch)."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from elasticity import sharding as shd
from elasticity.eval.kl import KLReport, kl_on_generations, kl_to_reference
from elasticity.convert import load_pretrained
from elasticity.models import ModelConfig, abstract_model
from elasticity.models.config import FULL, SLIDING

from tolerances import f32_tol, stack_depth

# Gemma 2 pieces (sliding window, attention and final soft-caps) so the soft-cap path is covered.
CFG = ModelConfig(family="gemma2", vocab_size=61, hidden_size=32, intermediate_size=48, num_layers=2,
                  num_heads=4, num_kv_heads=2, head_dim=8, norm_plus_one=True, embed_scale=True,
                  activation="gelu_tanh", sandwich_norms=True, sliding_window=3,
                  layer_types=(SLIDING, FULL), attn_logit_softcap=5.0, final_logit_softcap=4.0)
LENGTHS = [9, 4, 13, 6, 2]
STARTS = [3, 1, 7, 6, 1]          # 6 = an empty completion (scores nothing)


def sharp_model(cfg, seed, std=0.3):
  """A random model (numpy normal(std) weights, norms included) far from uniform; drawn on the host,
  so no initialiser is compiled."""
  graphdef, abstract = nnx.split(abstract_model(cfg))
  rng = np.random.default_rng(seed)
  return nnx.merge(graphdef, jax.tree.map(
      lambda x: jnp.asarray(rng.normal(0.0, std, x.shape), x.dtype), abstract))


def full_logits(model, seqs):
  """[N, T, V] logits of the sequences right-padded into one batch (one jitted forward)."""
  graphdef, state = nnx.split(model)
  t = max(map(len, seqs))
  ids, mask = np.zeros((len(seqs), t), np.int32), np.zeros((len(seqs), t), bool)
  for r, x in enumerate(seqs):
    ids[r, :len(x)], mask[r, :len(x)] = x, True
  return np.asarray(_forward(graphdef)(state, ids, mask))


@functools.cache
def _forward(graphdef):
  return jax.jit(lambda state, ids, mask: nnx.merge(graphdef, state)(ids, attention_mask=mask))


def ragged(vocab, lengths, seed=0):
  rng = np.random.default_rng(seed)
  return [rng.integers(0, vocab, size=n).tolist() for n in lengths]


def log_softmax64(logits):
  z = np.asarray(logits, np.float64)
  z = z - z.max(-1, keepdims=True)
  return z - np.log(np.exp(z).sum(-1, keepdims=True))


def reference_kl(logits_p, logits_q, seqs, starts):
  """Per-sequence Σ_t Σ_v p (log p − log q) in float64 from each model's full logits (sequence i's
  logits are ``logits[i][:len(seq_i)]``), at the positions t − 1 that predict completion tokens t."""
  out = []
  for a, b, x, s in zip(logits_p, logits_q, seqs, starts):
    t = np.arange(s - 1, len(x) - 1)
    lp, lq = log_softmax64(a[t]), log_softmax64(b[t])
    out.append(float(np.sum(np.exp(lp) * (lp - lq))))
  return np.array(out)


@pytest.fixture(scope="module")
def pair():
  return sharp_model(CFG, 1), sharp_model(CFG, 2)


def test_matches_numpy_float64_on_full_logits(pair):
  p, q = pair
  seqs = ragged(CFG.vocab_size, LENGTHS)
  want = reference_kl(full_logits(p, seqs), full_logits(q, seqs), seqs, STARTS)
  rep = kl_to_reference(p, q, seqs, STARTS, chunk_size=4, batch_size=2)
  assert rep.tokens == sum(n - s for n, s in zip(LENGTHS, STARTS)) == 16
  assert rep.per_sequence_tokens == (6, 3, 6, 0, 1)
  assert want.sum() > 1.0                                 # far from zero: the test can fail
  # vs float64 on the same logits: the KL's Σ over 61 vocab × ≤ 6 tokens, 2·√(61·6)·u = 2.3e-6 ⇒ 1e-5 kept (measured 1.7e-7)
  np.testing.assert_allclose(rep.per_sequence, want, rtol=1e-5, atol=1e-7)
  np.testing.assert_allclose(rep.mean, want.sum() / 16, rtol=1e-5)
  assert rep.per_sequence[3] == 0.0
  # Sums and counts merge; the mean is one division of the merged sums.
  a, b = KLReport(1.5, 3, (1.5,), (3,)), KLReport(0.5, 1, (0.5,), (1,))
  assert a.merge(b) == KLReport(2.0, 4, (1.5, 0.5), (3, 1)) and a.merge(b).mean == 0.5


def test_chunking_batching_and_padding_do_not_change_the_result(pair):
  p, q = pair
  lengths, starts = [7, 3, 8, 5], [2, 1, 5, 5]            # one length bucket: few compilations
  seqs = ragged(CFG.vocab_size, lengths, seed=5)
  base = kl_to_reference(p, q, seqs, starts, chunk_size=10 ** 6, batch_size=len(seqs))
  want = reference_kl(full_logits(p, seqs), full_logits(q, seqs), seqs, starts)
  np.testing.assert_allclose(base.per_sequence, want, rtol=1e-5, atol=1e-7)
  for chunk, batch in [(1, 1), (3, 3)]:
    got = kl_to_reference(p, q, seqs, starts, chunk_size=chunk, batch_size=batch)
    # chunk/batch reorder the forward: 2·√(61·stack_depth(2))·u = 4.2e-6 (was 1e-6; measured 2.5e-7)
    np.testing.assert_allclose(got.per_sequence, base.per_sequence, rtol=f32_tol(61, stack_depth(2)), atol=1e-7,
                               err_msg=f"chunk {chunk}, batch {batch}")
    assert got.tokens == base.tokens == 10


def test_kl_of_a_model_to_itself_is_zero_and_kl_is_not_symmetric(pair):
  p, q = pair
  seqs = ragged(CFG.vocab_size, LENGTHS)
  same = kl_to_reference(p, p, seqs, STARTS, chunk_size=4, batch_size=2)
  assert same.tokens == 16 and abs(same.sum_kl) < 1e-6
  pq = kl_to_reference(p, q, seqs, STARTS, chunk_size=4, batch_size=2)
  qp = kl_to_reference(q, p, seqs, STARTS, chunk_size=4, batch_size=2)
  assert pq.sum_kl > 1.0 and qp.sum_kl > 1.0 and abs(pq.sum_kl - qp.sum_kl) > 1e-2


def test_kl_on_generation_rows(pair):
  p, q = pair
  seqs = ragged(CFG.vocab_size, LENGTHS)
  rows = [{"prompt_ids": x[:s], "completion_ids": x[s:]} for x, s in zip(seqs, STARTS)]
  assert (kl_on_generations(p, q, rows, chunk_size=4, batch_size=2)   # bitwise: it calls kl_to_reference on the same inputs
          == kl_to_reference(p, q, seqs, STARTS, chunk_size=4, batch_size=2))


def test_matches_torch_float64_transformers_models(tmp_path):
  """Independent forward: two random tiny HF Gemma 2 models (final soft-cap 3), torch float64."""
  import torch

  from hf_reference import tiny_hf_model
  refs = [tiny_hf_model("gemma2", seed=s) for s in (0, 1)]
  ours = []
  for k, m in enumerate(refs):
    m.save_pretrained(tmp_path / str(k))
    ours.append(load_pretrained(tmp_path / str(k)))
  seqs = ragged(refs[0].config.vocab_size, [12, 5, 9], seed=2)
  starts = [4, 2, 1]
  logits = []
  for m in refs:
    m = m.double()
    with torch.no_grad():
      logits.append([m(input_ids=torch.tensor([x])).logits[0].numpy() for x in seqs])
  want = reference_kl(logits[0], logits[1], seqs, starts)
  rep = kl_to_reference(ours[0], ours[1], seqs, starts, chunk_size=8, batch_size=2)
  assert want.sum() > 1.0
  # vs torch float64: ours is float32 through stack_depth(3), 6·√(96·29)·u = 1.9e-5 rel per logit, averaging over the KL's
  # sum ⇒ 2·√(96·29)·u = 6.3e-6 ⇒ 1e-5 kept (measured 2.5e-7)
  np.testing.assert_allclose(rep.per_sequence, want, rtol=1e-5)
  np.testing.assert_allclose(rep.mean, want.sum() / rep.tokens, rtol=1e-5)


def test_kl_terms_against_float64_and_far_apart_logits():
  """`kl_terms` (E_p[d] + log E_p[exp(−d)]) equals Σ p (log p − log q) in float64, also when the
  reference's logits exceed the policy's by more than exp's float32 range (no overflow)."""
  from elasticity.eval.kl import kl_terms
  rng = np.random.default_rng(3)
  zp = rng.normal(0, 3, (6, 200))
  zr = zp + rng.normal(0, 0.3, zp.shape)
  zr[0, 7] = zp[0].max() + 120.0                          # q puts its mass where p has little
  zr[1] = zp[1]                                           # identical rows: exactly 0 in exact arithmetic
  lp, lq = log_softmax64(zp), log_softmax64(zr)
  want = np.sum(np.exp(lp) * (lp - lq), -1)
  got = np.asarray(kl_terms(jnp.asarray(zp, jnp.float32), jnp.asarray(zr, jnp.float32)))
  assert np.all(np.isfinite(got)) and want[0] > 50 and want[1] == 0.0
  # float32 inputs: 2·√200·u of the logits' magnitude (≤ 12) per term ⇒ 1e-5 absolute kept
  np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-5)


def test_smollm2_against_a_sharpened_copy_stays_within_float64_reach(smollm2_gguf):
  """SmolLM2-135M (49,152 tokens) against a copy with a sharper final norm and noisy last MLPs
  (KL 10–17 nats a sequence): per sequence within 1e-5 of float64 on full-forward logits (measured
  ≤ 4.4e-6). A 3-D [shards, chunk, V] reduction layout was 4–6e-5 off here on XLA:CPU."""
  base = load_pretrained(smollm2_gguf)
  graphdef, state = nnx.split(base)
  rng = np.random.default_rng(0)

  def sharpen(path, x):
    k = jax.tree_util.keystr(path)
    if "final_norm" in k:
      return x * 1.4
    if any(f"[{i}]['mlp']['down']" in k for i in (28, 29)):
      return x + jnp.asarray(rng.normal(0, 0.02, x.shape), x.dtype)
    return x

  policy = nnx.merge(graphdef, jax.tree_util.tree_map_with_path(sharpen, state))
  seqs = [rng.integers(100, 20000, n).tolist() for n in (40, 56, 33, 50)]
  starts = [8, 8, 4, 10]
  want = reference_kl([full_logits(policy, [x])[0] for x in seqs],
                      [full_logits(base, [x])[0] for x in seqs], seqs, starts)
  got = kl_to_reference(policy, base, seqs, starts, batch_size=2)
  assert want.min() > 5.0
  np.testing.assert_allclose(got.per_sequence, want, rtol=1e-5)


def test_policy_hidden_skips_the_policy_forward_and_gives_the_same_kl(pair):
  """Given the policy's activations (from the full forward, or from the KV-cache sampler), only the
  reference runs a forward, and the KL equals the two-forward path's."""
  from elasticity.models.generate import generate
  p, q = pair
  seqs = ragged(CFG.vocab_size, LENGTHS)
  both = kl_to_reference(p, q, seqs, STARTS, chunk_size=4, batch_size=2)
  hidden = [np.asarray(p.hidden_states(jnp.asarray([x], jnp.int32)))[0, s - 1:len(x) - 1]
            for x, s in zip(seqs, STARTS)]
  got = kl_to_reference(p, q, seqs, STARTS, chunk_size=4, batch_size=2, policy_hidden=hidden)
  assert got.tokens == both.tokens and got.per_sequence_tokens == both.per_sequence_tokens
  np.testing.assert_allclose(got.per_sequence, both.per_sequence, rtol=f32_tol(61, stack_depth(2)),
                             atol=1e-7)
  # The policy's parameters are read only for its unembedding (lm_head; untied here): garbage in
  # every other one changes nothing.
  graphdef, state = nnx.split(p)
  broken = jax.tree_util.tree_map_with_path(
      lambda path, x: x if "lm_head" in jax.tree_util.keystr(path) else x * 0 + 7.0, state)
  again = kl_to_reference(nnx.merge(graphdef, broken), q, seqs, STARTS, chunk_size=4, batch_size=2,
                          policy_hidden=hidden)
  assert again.per_sequence == got.per_sequence
  # From the sampler: rows of continue-style generations carry the decoder's activations.
  prompts = [x[:s] for x, s in zip(seqs, STARTS) if s < len(x)]
  out = generate(p, prompts, max_new_tokens=5, temperature=1.0, seed=2, return_hidden=True)
  rows = [{"prompt_ids": a, "completion_ids": t, "policy_hidden": h}
          for a, t, h in zip(prompts, out.tokens, out.hidden)]
  want = kl_on_generations(p, q, [{k: r[k] for k in ("prompt_ids", "completion_ids")} for r in rows],
                           chunk_size=4, batch_size=2)
  fast = kl_on_generations(p, q, rows, chunk_size=4, batch_size=2)
  assert want.sum_kl > 1.0
  np.testing.assert_allclose(fast.per_sequence, want.per_sequence, rtol=2e-5, atol=1e-6)
  with pytest.raises(ValueError, match=r"policy_hidden\[1\]: expected floats of shape \(3, 32\)"):
    kl_to_reference(p, q, seqs, STARTS, policy_hidden=[hidden[0], hidden[0], *hidden[2:]])
  with pytest.raises(ValueError, match=r"one array per sequence \(5\), got 4"):
    kl_to_reference(p, q, seqs, STARTS, policy_hidden=hidden[:4])


def test_trim_last_runs_the_last_batch_without_empty_rows_and_gives_the_same_kl(pair, monkeypatch):
  """``trim_last``: 5 scored sequences in batches of 4 run as 4 + 1 rows (4 + 2 over 2 batch
  shards), not 4 + 4; the KL is the padded run's (other row counts reorder nothing a row computes;
  bitwise on the machine this was written on, held to float32 here)."""
  import elasticity.eval.kl as kl_lib
  p, q = pair
  lengths, starts = [9, 4, 13, 6, 7, 5], [3, 1, 7, 6, 2, 1]      # one empty completion: 5 scored
  seqs = ragged(CFG.vocab_size, lengths, seed=7)
  shapes = []
  real = kl_lib.sharded_fn

  def spy(*args, **kwargs):
    fn, b_sh, idx_sh = real(*args, **kwargs)

    def run(params_p, params_r, ids, *rest):
      shapes.append(ids.shape[0])
      return fn(params_p, params_r, ids, *rest)
    return run, b_sh, idx_sh
  monkeypatch.setattr(kl_lib, "sharded_fn", spy)
  one = shd.make_mesh(data=1, fsdp=1, tensor=1, devices=jax.devices()[:1])
  padded = kl_to_reference(p, q, seqs, starts, chunk_size=4, batch_size=4, mesh=one)
  trimmed = kl_to_reference(p, q, seqs, starts, chunk_size=4, batch_size=4, mesh=one, trim_last=True)
  assert shapes == [4, 4, 4, 1]
  assert trimmed.per_sequence_tokens == padded.per_sequence_tokens
  np.testing.assert_allclose(trimmed.per_sequence, padded.per_sequence,
                             rtol=f32_tol(61, stack_depth(2)), atol=1e-7)
  if jax.device_count() < 4:
    return
  shapes.clear()
  two = shd.make_mesh(data=2, fsdp=1, tensor=2, devices=jax.devices()[:4])
  sharded = kl_to_reference(p, q, seqs, starts, chunk_size=4, batch_size=4, mesh=two, trim_last=True)
  assert shapes == [4, 2]
  np.testing.assert_allclose(sharded.per_sequence, padded.per_sequence,
                             rtol=f32_tol(61, stack_depth(2)), atol=1e-7)
  rows = [{"prompt_ids": x[:s], "completion_ids": x[s:]} for x, s in zip(seqs, starts)]
  assert kl_on_generations(p, q, rows, chunk_size=4, batch_size=4, mesh=one, trim_last=True) == trimmed


def test_bad_input_is_named(pair):
  p, _ = pair
  other = sharp_model(ModelConfig(family="llama", vocab_size=50, hidden_size=16, intermediate_size=32,
                                  num_layers=1, num_heads=2, num_kv_heads=1, head_dim=8), 0)
  with pytest.raises(ValueError, match="share the vocabulary.*61 tokens.*50"):
    kl_to_reference(p, other, [[1, 2]], [1])
  with pytest.raises(ValueError, match="sequence 1: completion_start 0"):
    kl_to_reference(p, p, [[1, 2], [3, 4]], [1, 0])
  with pytest.raises(ValueError, match="sequence 0: completion_start 3"):
    kl_to_reference(p, p, [[1, 2]], [3])
  with pytest.raises(ValueError, match="sequence 1: token id 61 outside the vocabulary"):
    kl_to_reference(p, p, [[1, 2], [61, 2]], [1, 1])
  with pytest.raises(ValueError, match="2 sequences but 1 completion_start"):
    kl_to_reference(p, p, [[1, 2], [3, 4]], [1])
  with pytest.raises(ValueError, match="sequence 0: expected a non-empty list"):
    kl_to_reference(p, p, [[]], [1])
  with pytest.raises(ValueError, match="chunk_size must be"):
    kl_to_reference(p, p, [[1, 2]], [1], chunk_size=0)
  with pytest.raises(ValueError, match="row 0: field 'completion_ids'"):
    kl_on_generations(p, p, [{"prompt_ids": [1]}])


def test_sharded_like_the_scorer_one_device_bitwise_eight_devices_within_float32(pair):
  """On a 1-device mesh the evaluator is the unsharded one, bit for bit; on the 8 fake CPU devices
  (rows over fsdp × data, the weights FSDP-sharded, 2-way tensor) the same KL within float32."""
  p, q = pair
  seqs = ragged(CFG.vocab_size, LENGTHS, seed=3)
  base = kl_to_reference(p, q, seqs, STARTS, chunk_size=4, batch_size=2)
  one = kl_to_reference(p, q, seqs, STARTS, chunk_size=4, batch_size=2,
                        mesh=shd.make_mesh(data=1, fsdp=1, tensor=1, devices=jax.devices()[:1]))
  assert one == base
  if jax.device_count() < 8:
    pytest.skip("needs the 8 fake CPU devices of tests/conftest.py")
  mesh = shd.make_mesh(data=2, fsdp=2, tensor=2)
  got = kl_to_reference(p, q, seqs, STARTS, chunk_size=4, batch_size=2, mesh=mesh)
  assert got.tokens == base.tokens == 16 and got.per_sequence_tokens == base.per_sequence_tokens
  want = reference_kl(full_logits(p, seqs), full_logits(q, seqs), seqs, STARTS)
  np.testing.assert_allclose(got.per_sequence, want, rtol=1e-5, atol=1e-7)
  # another partition of the same sums: 2·√(61·stack_depth(2))·u (tolerances.py)
  np.testing.assert_allclose(got.per_sequence, base.per_sequence, rtol=f32_tol(61, stack_depth(2)),
                             atol=1e-7)
  # The policy's activations given: sharded like the gathered slots (rows over the batch axes).
  hidden = [np.asarray(p.hidden_states(jnp.asarray([x], jnp.int32)))[0, s - 1:len(x) - 1]
            for x, s in zip(seqs, STARTS)]
  fast = kl_to_reference(p, q, seqs, STARTS, chunk_size=4, batch_size=2, mesh=mesh,
                         policy_hidden=hidden)
  assert fast.per_sequence_tokens == base.per_sequence_tokens
  np.testing.assert_allclose(fast.per_sequence, want, rtol=1e-5, atol=1e-7)
