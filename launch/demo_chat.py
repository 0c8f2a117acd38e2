"""The chat demo: load a model into the Flax port (SmolLM2-135M from ../shared by default), answer a
prompt, and report the answer's compression under the model (bits per byte and per token of the
answer, response-masked).

    python -m launch.main --demo=chat [--chat_config=configs/demo.py] [--chat_config.prompt=...]
"""

from __future__ import annotations

import os
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from elasticity import paths
from elasticity.convert import load_pretrained
from elasticity.logprobs import token_logprobs
from elasticity.models.generate import generate
from elasticity.tokenizers import load_tokenizer


def answer_bits(model, prompt_ids: list[int], answer_ids: list[int]) -> tuple[float, int]:
  """(total bits of the answer tokens given the prompt, number of answer tokens)."""
  ids = jnp.asarray([prompt_ids + answer_ids], jnp.int32)
  lp, _ = token_logprobs(model, ids)
  nats = -float(jnp.sum(lp[0, len(prompt_ids):]))
  return nats / np.log(2.0), len(answer_ids)


def run_chat(cfg) -> None:
  """Answer ``cfg.prompt`` with the model of configs/demo.py and print its bits/byte."""
  model_path = cfg.model or str(paths.smollm2_gguf())
  tok_path = cfg.tokenizer or model_path
  t0 = time.time()
  model = load_pretrained(model_path, dtype=jnp.dtype(cfg.dtype),
                          tokenizer=cfg.tokenizer or None)
  tok = load_tokenizer(tok_path)
  logging.info("loaded %s in %.1fs (%s, %d layers) on %s", model_path, time.time() - t0,
               model.config.family, model.config.num_layers, jax.devices()[0].platform)

  if tok.has_chat_template:
    messages = ([{"role": "system", "content": cfg.system}] if cfg.system else [])
    messages.append({"role": "user", "content": cfg.prompt})
    text = tok.apply_chat_template(messages, add_generation_prompt=True)
    prompt_ids = tok.encode(text)
  else:
    prompt_ids = tok.encode(cfg.prompt, add_bos=tok.bos_id is not None)
  stops = [t for t in (tok.eos_id, *model.config.eos_token_id) if t is not None]
  t0 = time.time()
  out = generate(model, [prompt_ids], max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature,
                 top_p=cfg.top_p, stop_tokens=stops, seed=cfg.seed)
  elapsed = time.time() - t0
  answer_ids = out.tokens[0]
  answer_ids_no_stop = answer_ids[:-1] if out.stopped[0] else answer_ids
  answer = tok.decode(answer_ids_no_stop).strip()
  bits, n_tokens = answer_bits(model, prompt_ids, answer_ids)
  n_bytes = len(tok.decode(answer_ids_no_stop).encode("utf-8"))
  print(f"\nPrompt: {cfg.prompt}\n")
  print(f"Answer: {answer}\n")
  print(f"model: {os.path.basename(model_path)}  ({len(answer_ids)} new tokens in {elapsed:.1f}s)")
  print(f"bits/byte of the answer under the model: {bits / max(n_bytes, 1):.4f} "
        f"({bits:.1f} bits over {n_bytes} UTF-8 bytes; {bits / max(n_tokens, 1):.4f} bits/token)")
