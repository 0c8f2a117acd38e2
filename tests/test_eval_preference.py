"""Δγ on real IMDb reviews under stories260K, against bits/byte computed directly from full logits."""

from __future__ import annotations

import math

import jax
import numpy as np
import pytest
from flax import nnx

from elasticity import compression, data
from elasticity.data.imdb import split_prompt
from elasticity.eval.preference import compression_preference
from elasticity.convert import load_pretrained
from elasticity.tokenizers import load_tokenizer

from conftest import require

MAX_LENGTH = 192


@pytest.fixture(scope="module")
def setup():
  from elasticity import paths
  root = require(paths.shared_dir() / "models" / "stories260K")
  require(paths.shared_dir() / "data" / "imdb")
  tok = load_tokenizer(require(root / "tok512.bin"))
  model = load_pretrained(require(root / "stories260K.bin"), tokenizer=root / "tok512.bin")
  test = data.load_dataset("imdb", split="test", replace_br=True)
  sides = {}
  for label in ("pos", "neg"):
    short = [r["text"] for r in test if r["label"] == label and 150 <= len(r["text"]) <= 320][:3]
    assert len(short) == 3
    sides[label] = [dict(zip(("prompt", "response"), split_prompt(t, 8, tok)[:2])) for t in short]
  return model, tok, sides["pos"], sides["neg"]


def direct_bits_and_bytes(model, tok, records):
  """Σ −log₂ p over response tokens and Σ UTF-8 bytes, from the model's full logits in float64.

  Tokens: ``BOS + prompt + response`` encoded jointly; the response starts where that encoding
  stops agreeing with the prompt's own (the tokenizer's boundary rule, reimplemented here).
  """
  seqs, starts = [], []
  for r in records:
    ids = tok.encode(r["prompt"] + r["response"], add_bos=True)
    head = tok.encode(r["prompt"], add_bos=True)
    k = next((i for i, (a, b) in enumerate(zip(ids, head)) if a != b), min(len(ids), len(head)))
    seqs.append(ids)
    starts.append(k)
  t = max(map(len, seqs))
  assert t <= MAX_LENGTH
  ids = np.zeros((len(seqs), t), np.int32)
  mask = np.zeros((len(seqs), t), bool)
  for r, x in enumerate(seqs):
    ids[r, :len(x)], mask[r, :len(x)] = x, True
  graphdef, state = nnx.split(model)
  logits = np.asarray(jax.jit(lambda s, i, m: nnx.merge(graphdef, s)(i, attention_mask=m))(
      state, ids, mask), np.float64)
  bits = tokens = 0.0
  for r, (x, k) in enumerate(zip(seqs, starts)):
    z = logits[r, :len(x) - 1]
    logp = z - z.max(-1, keepdims=True)
    logp = logp - np.log(np.exp(logp).sum(-1, keepdims=True))
    pos = np.arange(k, len(x))                        # response tokens, predicted from pos - 1
    bits += -logp[pos - 1, np.asarray(x)[pos]].sum() / math.log(2)
    tokens += len(pos)
  return bits, tokens, sum(len(r["response"].encode("utf-8")) for r in records)


def test_delta_gamma_matches_a_direct_computation(setup):
  model, tok, pos, neg = setup
  got = compression_preference(model, tok, pos, neg, max_length=MAX_LENGTH, batch_size=4)
  for side, records in (("pos", pos), ("neg", neg)):
    bits, tokens, nbytes = direct_bits_and_bytes(model, tok, records)
    assert (got[f"tokens_{side}"], got[f"bytes_{side}"], got[f"examples_{side}"]) == (tokens, nbytes, 3)
    assert got[f"skipped_{side}"] == 0
    np.testing.assert_allclose(got[f"bits_{side}"], bits, rtol=1e-5)
    np.testing.assert_allclose(got[f"bpb_{side}"], bits / nbytes, rtol=1e-5)
    np.testing.assert_allclose(got[f"bpt_{side}"], bits / tokens, rtol=1e-5)
    assert 0.5 < got[f"bpb_{side}"] < 8.0
  assert got["delta_gamma"] == got["bpb_neg"] - got["bpb_pos"]
  assert got["delta_gamma_per_token"] == got["bpt_neg"] - got["bpt_pos"]
  # One Scorer, reused: the same numbers (and no new model split or compilation).
  scorer = compression.Scorer(model)
  again = compression_preference(scorer, tok, pos, neg, max_length=MAX_LENGTH, batch_size=4)
  np.testing.assert_allclose(again["delta_gamma"], got["delta_gamma"], rtol=1e-6, atol=1e-9)
  # Swapping the sides flips the sign.
  flipped = compression_preference(scorer, tok, neg, pos, max_length=MAX_LENGTH, batch_size=4)
  np.testing.assert_allclose(flipped["delta_gamma"], -got["delta_gamma"], rtol=1e-6, atol=1e-9)


def test_skips_are_counted_and_bad_input_is_named(setup):
  model, tok, pos, neg = setup
  scorer = compression.Scorer(model)
  long = {"prompt": "A", "response": " word" * 300}
  got = compression_preference(scorer, tok, [*pos, long], neg, max_length=MAX_LENGTH, batch_size=4)
  assert (got["examples_pos"], got["skipped_pos"]) == (3, 1)
  with pytest.raises(ValueError, match="none of the 1 negative records fits in max_length=192"):
    compression_preference(scorer, tok, pos, [long], max_length=MAX_LENGTH, batch_size=4)
  with pytest.raises(ValueError, match="negative has no records"):
    compression_preference(scorer, tok, pos, [], max_length=MAX_LENGTH, batch_size=4)
  with pytest.raises(TypeError, match="positive must be a list"):
    compression_preference(scorer, tok, "text", neg, max_length=MAX_LENGTH, batch_size=4)
  with pytest.raises(data.DataError, match=r"record 2.*response"):
    compression_preference(scorer, tok, [pos[0], {"prompt": "x"}], neg, max_length=MAX_LENGTH,
                           batch_size=4)
