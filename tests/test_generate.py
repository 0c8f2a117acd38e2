"""KV-cache decoding equals recomputing the whole prefix; sampling options; real stories260K text."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from elasticity.convert import load_pretrained
from elasticity.models import ModelConfig, create_model
from elasticity.models.config import FULL, SLIDING
from elasticity.models.generate import generate, left_pad

from conftest import require

CFG = ModelConfig(family="gemma2", vocab_size=61, hidden_size=32, intermediate_size=48, num_layers=2,
                  num_heads=4, num_kv_heads=2, head_dim=8, norm_plus_one=True, embed_scale=True,
                  activation="gelu_tanh", sandwich_norms=True, sliding_window=3,
                  layer_types=(SLIDING, FULL), attn_logit_softcap=5.0, final_logit_softcap=4.0)
PROMPTS = [[5, 9, 11, 3, 7, 2, 8], [4, 6], [12, 13, 14, 15]]


def naive_greedy(model, prompts, n):
  """Greedy decoding that recomputes the full left-padded prefix at every step (no cache)."""
  graphdef, state = nnx.split(model)
  forward = jax.jit(lambda state, ids, mask: nnx.merge(graphdef, state)(ids, attention_mask=mask))
  rows = [list(p) for p in prompts]
  for _ in range(n):
    ids, mask = left_pad(rows, 0, multiple=1)
    logits = forward(state, ids, mask)
    for r, t in enumerate(np.asarray(jnp.argmax(logits[:, -1], -1))):
      rows[r].append(int(t))
  return [r[len(p):] for r, p in zip(rows, prompts)]


def test_cached_greedy_equals_full_recompute():
  model = create_model(CFG, seed=3)
  got = generate(model, PROMPTS, max_new_tokens=9)
  assert got.tokens == naive_greedy(model, PROMPTS, 9)


def test_cached_logits_equal_full_forward_logits():
  model = create_model(CFG, seed=4)
  ids, mask = left_pad(PROMPTS, 0, multiple=1)
  forced = np.array([[1, 2, 3, 4, 5]] * 3, np.int32)
  full_ids = np.concatenate([ids, forced], axis=1)
  full_mask = np.concatenate([mask, np.ones_like(forced, bool)], axis=1)
  want = np.asarray(model(jnp.asarray(full_ids), attention_mask=jnp.asarray(full_mask)))
  cache = model.init_cache(3, full_ids.shape[1])
  h, cache = model.hidden_states(jnp.asarray(ids), attention_mask=jnp.asarray(mask), cache=cache)
  steps = [np.asarray(model.logits_from_hidden(h[:, -1]))]
  for j in range(forced.shape[1] - 1):
    h, cache = model.hidden_states(jnp.asarray(forced[:, j:j + 1]), cache=cache)
    steps.append(np.asarray(model.logits_from_hidden(h[:, -1])))
  p = ids.shape[1]
  for j, got in enumerate(steps):
    np.testing.assert_allclose(got, want[:, p - 1 + j], atol=1e-5, err_msg=f"step {j}")


def test_stop_tokens_cut_rows_and_sampling_is_seeded():
  model = create_model(CFG, seed=3)
  greedy = generate(model, PROMPTS, max_new_tokens=9).tokens
  stop = greedy[0][2]
  cut = generate(model, PROMPTS, max_new_tokens=9, stop_tokens=[stop])
  assert cut.tokens[0] == greedy[0][:greedy[0].index(stop) + 1] and cut.stopped[0]
  # A nucleus this small keeps only the most likely token: sampling reduces to greedy.
  assert generate(model, PROMPTS, max_new_tokens=9, temperature=1.0, top_p=1e-6).tokens == greedy
  a = generate(model, PROMPTS, max_new_tokens=9, temperature=1.0, seed=7).tokens
  assert a == generate(model, PROMPTS, max_new_tokens=9, temperature=1.0, seed=7).tokens
  assert a != generate(model, PROMPTS, max_new_tokens=9, temperature=1.0, seed=8).tokens


def test_returned_hidden_states_are_the_full_forwards_and_change_no_token():
  """``return_hidden``: the same tokens (sampled, with a stop token), and each new token's activations
  equal the full forward's final-normed state at the position that predicts it."""
  model = create_model(CFG, seed=5)
  kw = dict(max_new_tokens=7, temperature=1.0, seed=11)
  plain = generate(model, PROMPTS, **kw)
  stop = plain.tokens[1][3]
  plain = generate(model, PROMPTS, stop_tokens=[stop], **kw)
  got = generate(model, PROMPTS, stop_tokens=[stop], return_hidden=True, **kw)
  assert plain.hidden is None
  assert got.tokens == plain.tokens and got.stopped == plain.stopped and any(got.stopped)
  assert any(len(t) < 7 for t in got.tokens)             # a cut row: hidden follows the cut
  for prompt, new, h in zip(PROMPTS, got.tokens, got.hidden):
    seq = np.asarray([prompt + new], np.int32)
    full = np.asarray(model.hidden_states(jnp.asarray(seq)))[0]
    assert h.shape == (len(new), CFG.hidden_size)
    np.testing.assert_allclose(h, full[len(prompt) - 1:len(prompt) - 1 + len(new)], atol=2e-5)


def test_stories260k_greedy_from_bos(shared):
  from elasticity.tokenizers import load_tokenizer
  ckpt = require(shared / "models" / "stories260K" / "stories260K.bin")
  tok_path = require(shared / "models" / "stories260K" / "tok512.bin")
  model = load_pretrained(ckpt, tokenizer=tok_path)
  tok = load_tokenizer(tok_path)
  out = generate(model, [[tok.bos_id]], max_new_tokens=40)
  text = tok.decode(out.tokens[0])
  assert text.startswith("Once upon a time, there was a little girl named Lily. "
                         "She loved to play outside in the park."), text


def test_llama2c_bad_tokenizer_size_is_named(shared, tmp_path):
  ckpt = require(shared / "models" / "stories260K" / "stories260K.bin")
  wrong = require(shared / "tokenizers" / "llama2" / "tokenizer.bin")
  with pytest.raises(ValueError, match=r"tokenizer\.bin: tokenizer has 32000 tokens .* 512"):
    load_pretrained(ckpt, tokenizer=wrong)
  bad = tmp_path / "cut.bin"
  bad.write_bytes(ckpt.read_bytes()[:5000])
  with pytest.raises(ValueError, match="cut.bin: truncated"):
    load_pretrained(bad)
