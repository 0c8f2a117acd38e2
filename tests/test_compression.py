"""The compression-rate kernel and `measure`: agreement with full logits, invariances, sums not means.

Tiny random models (vocabulary 512) with the real stories260K tokenizer (tok512) on real Alpaca
records from ../shared; the SmolLM2 agreement with transformers is in test_compression_smollm2.py.
"""

from __future__ import annotations

import dataclasses

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from conftest import require
from elasticity import compression, paths
from elasticity.compression import CompressionReport, Scorer, code_lengths, default_mesh, measure
from elasticity.data import DataError, load_dataset
from elasticity.models import ModelConfig, abstract_model, create_model
from elasticity.sharding import make_mesh
from elasticity.tokenizers import load_tokenizer

LLAMA = ModelConfig(family="llama", vocab_size=512, hidden_size=32, intermediate_size=48,
                    num_layers=2, num_heads=4, num_kv_heads=2, head_dim=8)
GEMMA2 = ModelConfig(family="gemma2", vocab_size=512, hidden_size=32, intermediate_size=48,
                     num_layers=2, num_heads=4, num_kv_heads=2, head_dim=8, final_logit_softcap=4.0,
                     norm_plus_one=True, embed_scale=True, activation="gelu_tanh")
RTOL = 1e-5   # bits: 2·√(48·stack_depth(2) + 512 log-sum-exp + ~2000 token sum)·u = 7e-6 ⇒ 1e-5 kept


@pytest.fixture(scope="module")
def tok():
  return load_tokenizer(require(paths.shared_path("models", "stories260K", "tok512.bin")))


@pytest.fixture(scope="module")
def records():
  require(paths.shared_path("data", "alpaca"))
  return load_dataset("alpaca", on_error="skip")[:24]


@pytest.fixture(scope="module")
def model():
  return create_model(LLAMA, seed=0)


_FORWARD = {}


def reference_bits(model, ids: np.ndarray, loss_mask: np.ndarray) -> tuple[float, int]:
  """−Σ log₂ p over loss-masked tokens of one example, from full logits, log-softmax in float64.

  The example is right-padded to a multiple of 64 (causal: padding after it changes nothing) so one
  jitted plain forward serves all examples.
  """
  if id(model) not in _FORWARD:
    graphdef, state = nnx.split(model)
    _FORWARD[id(model)] = (model, state, jax.jit(lambda st, x: nnx.merge(graphdef, st)(x)))
  _, state, forward = _FORWARD[id(model)]
  n = len(ids)
  padded = np.zeros((1, -(-n // 64) * 64), np.int32)
  padded[0, :n] = ids
  logits = np.asarray(forward(state, padded)[0, :n], np.float64)
  top = logits.max(-1)
  lse = np.log(np.exp(logits - top[:, None]).sum(-1)) + top
  lp = logits[np.arange(n - 1), ids[1:]] - lse[:-1]                  # log p(ids[t] | ids[<t]), t ≥ 1
  m = loss_mask[1:].astype(bool)
  return float(-lp[m].sum() / math.log(2)), int(m.sum())


# -- the kernel -----------------------------------------------------------------------------------


@pytest.mark.parametrize("cfg", [LLAMA, GEMMA2], ids=["llama", "gemma2_softcap"])
@pytest.mark.parametrize("shards,capacity,chunk", [(1, None, 512), (2, "tight", 5), (4, "tight", 3)])
def test_kernel_equals_full_logits_per_packed_example(cfg, shards, capacity, chunk):
  model = create_model(cfg, seed=3)
  rng = np.random.default_rng(0)
  lengths = [[6, 5, 3], [13], [4, 4], []]                            # examples packed per row
  t = 16
  ids = np.zeros((4, t), np.int32)
  seg = np.zeros((4, t), np.int32)
  pos = np.zeros((4, t), np.int32)
  mask = np.zeros((4, t), bool)
  examples = {}
  for r, row in enumerate(lengths):
    off = 0
    for s, n in enumerate(row, 1):
      ex_ids = rng.integers(0, cfg.vocab_size, n)
      ex_mask = np.zeros(n, bool)
      ex_mask[rng.integers(0, n):] = True                             # a response: a suffix
      ids[r, off:off + n], seg[r, off:off + n], pos[r, off:off + n] = ex_ids, s, np.arange(n)
      mask[r, off:off + n] = ex_mask
      examples[(r, s - 1)] = reference_bits(model, ex_ids, ex_mask)
      off += n
  mask[3, :] = True                                                  # padding is never scored
  if capacity == "tight":                     # exactly the most scored tokens of any shard
    per_row = [sum(examples[(r, s)][1] for s in range(len(row))) for r, row in enumerate(lengths)]
    k = 4 // shards
    capacity = max(sum(per_row[g * k:(g + 1) * k]) for g in range(shards))
  bits, counts = jax.jit(lambda *a: code_lengths(model, *a, num_segments=4, shards=shards,
                                                 capacity=capacity, chunk_size=chunk))(
      ids, mask, seg, pos)
  bits, counts = np.asarray(bits), np.asarray(counts)
  assert bits.shape == counts.shape == (4, 4)
  for (r, s), (want_bits, want_count) in examples.items():
    assert counts[r, s] == want_count, (r, s)
    np.testing.assert_allclose(bits[r, s], want_bits, rtol=1e-5, atol=1e-5)   # RTOL's bound; atol for near-0 sums
  untouched = np.ones((4, 4), bool)
  for key in examples:
    untouched[key] = False
  assert not bits[untouched].any() and not counts[untouched].any()


def test_kernel_capacity_shortfall_shows_in_counts(model):
  ids = np.arange(1, 17, dtype=np.int32).reshape(1, 16)
  ones = np.ones((1, 16), np.int32)
  run = lambda cap: jax.jit(lambda *a: code_lengths(model, *a, capacity=cap))(
      ids, ones.astype(bool), ones, np.arange(16)[None])
  (_, full), (_, short) = run(None), run(8)
  assert int(full.sum()) == 15 and int(short.sum()) == 8


# -- measure: invariances -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def baseline(model, tok, records):
  return measure(model, tok, records, max_length=512, batch_size=8, buckets=(128, 256, 512))


@pytest.mark.parametrize("variant", [
    dict(batch_size=3),
    dict(batch_size=5, padding_side="left"),
    dict(packing=True),
    dict(packing=True, batch_size=2, chunk_size=7),
    dict(chunk_size=3),
    dict(buckets=None),                                              # the default length buckets
    dict(mesh="one_device"),
    dict(mesh="data2_fsdp2_tensor2"),                                # parameters sharded
    dict(mesh="data2_fsdp2_tensor2_explicit"),                       # Explicit axis types
    dict(batch_size=5, trim_last=True, mesh="one_device"),            # last batch: 1 row, not 5
    dict(batch_size=5, trim_last=True, mesh="data2_fsdp2_tensor2"),   # 4 rows, not 8 (4 batch shards)
], ids=lambda v: ",".join(f"{k}={x}" for k, x in v.items()))
def test_measure_is_invariant(model, tok, records, baseline, variant):
  kw = dict(max_length=512, batch_size=8, buckets=(128, 256, 512))
  kw.update(variant)
  if kw.get("mesh") == "one_device":
    kw["mesh"] = default_mesh(jax.devices()[:1])
  elif kw.get("mesh") == "data2_fsdp2_tensor2":
    kw["mesh"] = make_mesh(data=2, fsdp=2, tensor=2)
  elif kw.get("mesh") == "data2_fsdp2_tensor2_explicit":
    kw["mesh"] = make_mesh(data=2, fsdp=2, tensor=2, axis_types="explicit")
  got = measure(model, tok, records, **kw)
  assert (got.tokens, got.bytes, got.examples, got.skipped) == (
      baseline.tokens, baseline.bytes, baseline.examples, baseline.skipped)
  assert got.bits == pytest.approx(baseline.bits, rel=RTOL)


def test_trim_last_gives_the_last_partial_batch_only_its_rows(tok, records):
  from elasticity.compression.batches import plan, tokenize
  kept, _, _ = tokenize(tok, records, max_length=512)
  assert len(kept) == 21                  # 3 of the 24 records do not fit
  for shards, want in ((1, [5, 5, 5, 5, 1]), (4, [8, 8, 8, 8, 4]), (8, [8, 8, 8, 8, 8])):
    padded = plan(kept, batch_size=5, max_length=512, shards=shards)
    trimmed = plan(kept, batch_size=5, max_length=512, shards=shards, trim_last=True)
    assert [b.batch_size for b in padded] == [-(-5 // shards) * shards] * 5
    assert [b.batch_size for b in trimmed] == want, shards
    assert [b.rows for b in trimmed] == [b.rows for b in padded]          # the same examples
    for b in trimmed:                     # a capacity never exceeds the positions of a batch shard
      assert b.capacity <= b.batch_size // shards * b.length


def test_default_mesh_uses_all_eight_devices(model):
  assert len(jax.devices()) == 8, "conftest sets 8 fake CPU devices"
  assert Scorer(model).shards == 8 and Scorer(model, mesh=default_mesh(jax.devices()[:1])).shards == 1


# -- measure: what is counted ---------------------------------------------------------------------


def test_measure_equals_independent_per_example_computation(model, tok, records, baseline):
  kept, skipped, _ = compression.tokenize(tok, records, max_length=512)
  bits = tokens = 0
  for ex in kept:
    b, n = reference_bits(model, ex.input_ids, ex.loss_mask)
    bits, tokens = bits + b, tokens + n
  assert baseline.skipped == skipped
  assert baseline.examples == len(kept) == len(records) - skipped
  assert baseline.tokens == tokens
  assert baseline.bits == pytest.approx(bits, rel=RTOL)
  assert baseline.bytes == sum(len(ex.response.encode("utf-8")) for ex in kept)


def test_bits_per_byte_counts_utf8_bytes_of_multibyte_responses(model, tok):
  recs = [{"prompt": "Say it in French.", "response": "Café crème brûlée, s'il vous plaît."},
          {"prompt": "日本語で", "response": "日本語のテキストです。"},
          {"prompt": "Celebrate", "response": "Party 🎉🎉 time"},
          {"prompt": "Greek:", "response": "Ελληνικά γράμματα"}]
  rep = measure(model, tok, recs, max_length=128, batch_size=4)
  n_bytes = sum(len(r["response"].encode("utf-8")) for r in recs)
  assert rep.bytes == n_bytes > sum(len(r["response"]) for r in recs) + 40
  assert rep.examples == 4 and rep.skipped == 0
  bits = sum(reference_bits(model, ex.input_ids, ex.loss_mask)[0]
             for ex in compression.tokenize(tok, recs, max_length=128)[0])
  assert rep.bits == pytest.approx(bits, rel=RTOL)
  assert rep.bits_per_byte == pytest.approx(bits / n_bytes, rel=RTOL)


def test_long_records_lose_prompt_or_are_skipped_and_counted(model, tok, records):
  rep = measure(model, tok, records, max_length=96, batch_size=4, buckets=(96,))
  kept, skipped, truncated = compression.tokenize(tok, records, max_length=96)
  assert skipped > 0 and truncated > 0, "this slice must exercise both cases"
  assert (rep.examples, rep.skipped, rep.truncated) == (len(kept), skipped, truncated)
  assert rep.examples + rep.skipped == len(records)
  assert rep.tokens == sum(ex.n_loss_tokens for ex in kept)
  for ex in kept:
    assert ex.length <= 96 and not ex.response_truncated


def test_report_rates_merge_and_delta(model, tok, records, baseline):
  a = measure(model, tok, records[:7], max_length=512, batch_size=8, buckets=(128, 256, 512))
  b = measure(model, tok, records[7:], max_length=512, batch_size=8, buckets=(128, 256, 512))
  both = a.merge(b)
  assert (both.tokens, both.bytes, both.examples) == (baseline.tokens, baseline.bytes,
                                                      baseline.examples)
  assert both.bits == pytest.approx(baseline.bits, rel=RTOL)
  assert a.tokens != b.tokens          # so the pooled rate is not the mean of the two rates
  assert both.bits_per_token == pytest.approx((a.bits + b.bits) / (a.tokens + b.tokens))
  assert both.bits_per_token != pytest.approx((a.bits_per_token + b.bits_per_token) / 2, rel=1e-6)   # a different quantity, not rounding

  r = baseline
  assert r.nats_per_token == pytest.approx(r.bits_per_token * math.log(2))
  assert r.bits_per_byte == pytest.approx(r.bits / r.bytes)
  assert r.normalized == pytest.approx(r.bits_per_token - 9.0)      # log2(512)
  d = r.to_dict()
  for k in ("nats_per_token", "bits_per_token", "bits_per_byte", "normalized", "tokens", "bytes",
            "examples"):
    assert d[k] == getattr(r, k)

  other = measure(create_model(LLAMA, seed=1), tok, records, max_length=512, batch_size=8,
                  buckets=(128, 256, 512))
  delta = other.delta(r)
  assert delta.bits_per_token == pytest.approx(other.bits_per_token - r.bits_per_token)
  assert delta.bits_per_byte == pytest.approx(other.bits_per_byte - r.bits_per_byte)
  assert delta.normalized == pytest.approx(other.normalized - r.normalized)
  assert delta.normalized != 0
  with pytest.raises(ValueError, match="same data"):
    other.delta(a)


def test_report_with_nothing_scored_is_nan_not_an_error():
  r = CompressionReport(bits=0.0, tokens=0, bytes=0, examples=0, vocab_size=512)
  assert math.isnan(r.bits_per_token) and math.isnan(r.bits_per_byte)


# -- measure: bad input ---------------------------------------------------------------------------


def test_bad_records_name_the_record_and_field(model, tok):
  with pytest.raises(DataError, match=r"record 2, field 'response'"):
    measure(model, tok, [{"prompt": "a", "response": "b"}, {"prompt": "c"}], max_length=64)
  with pytest.raises(DataError, match=r"record 1, field 'response'.*expected a string"):
    measure(model, tok, [{"prompt": "a", "response": 3}], max_length=64)


def test_empty_prompt_without_bos_is_refused(model):
  gpt2 = load_tokenizer(require(paths.shared_path("tokenizers", "gpt2")))
  assert not gpt2.add_bos_token
  with pytest.raises(DataError, match=r"record 1, field 'prompt'.*no BOS"):
    measure(model, gpt2, [{"prompt": "", "response": "hello"}], max_length=64)


def test_a_response_that_fills_max_length_without_bos_is_skipped_not_refused():
  """Without BOS, a response of exactly max_length tokens leaves its prompt cut to nothing and its
  first token without context: it does not fit, so it is skipped and counted like a longer one (the
  safety task's long HH-RLHF answers raised here before)."""
  gpt2 = load_tokenizer(require(paths.shared_path("tokenizers", "gpt2")))
  model = create_model(dataclasses.replace(LLAMA, vocab_size=gpt2.vocab_size), seed=0)
  fills = {"prompt": "Hi", "response": " a" * 8}
  assert len(gpt2.encode(fills["prompt"] + fills["response"])) == 9      # 1 prompt + 8 response
  r = measure(model, gpt2, [fills, {"prompt": "Hi", "response": " a" * 3}], max_length=8)
  assert (r.examples, r.skipped, r.tokens) == (1, 1, 3)


def test_kernel_memory_stays_under_a_quarter_of_full_logits_at_llama3_vocab():
  """B=4, T=2048, V=128,256: [B, T, V] float32 logits are 4.2 GB; the compiled kernel (XLA memory
  analysis: temp + output + argument bytes; nothing is allocated) must stay under a quarter."""
  b, t, v = 4, 2048, 128_256
  cfg = ModelConfig(family="llama", vocab_size=v, hidden_size=64, intermediate_size=128,
                    num_layers=1, num_heads=1, num_kv_heads=1, head_dim=64)
  graphdef, state = nnx.split(abstract_model(cfg))
  spec = lambda dt: jax.ShapeDtypeStruct((b, t), dt)
  fn = lambda st, *a: code_lengths(nnx.merge(graphdef, st), *a)     # default chunk, all scored
  ma = jax.jit(fn).lower(state, spec(jnp.int32), spec(jnp.bool_), spec(jnp.int32),
                         spec(jnp.int32)).compile().memory_analysis()
  peak = ma.temp_size_in_bytes + ma.output_size_in_bytes + ma.argument_size_in_bytes
  assert peak < b * t * v * 4 / 4, f"{peak / 1e9:.2f} GB"
