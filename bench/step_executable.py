"""Where the CPU training default's warm start goes: cold, warm cache, and a serialized executable.

    python bench/step_executable.py [--rounds=2]

Issue 16 asks the step's warm/cold compilation-cache ratio to reach 4×; `bench/startup.py` measured
1.57× for the unrolled step (the CPU default). This bench finds the floor. The step is
`bench/startup.py`'s: SmolLM2-135M (GGUF, float32), unrolled layers, SFT, AdamW, batch 2 × 128, one CPU
device. Each case runs in a fresh process, timed from the step's first call (the model load and
state initialisation are outside the clock, the same for all):

- **cold**: ``jit`` on an empty persistent compilation cache: tracing, lowering, XLA compilation and
  the first execution; the process also serializes the executable it compiled
  (`jax.experimental.serialize_executable`) for the third case, and reports the first execution of
  an executable compiled in-process (``first call − steady call``, nothing compiled in between);
- **warm cache**: ``jit`` on the cache the cold process filled (tracing and lowering still run; the
  executable is deserialized from the cache);
- **serialized executable**: `deserialize_and_load` of the cold process's executable: no tracing,
  no lowering, no cache lookup — what a per-config serialized step could give at best.

Overhead = first call (including deserialization) − the process's steady call (fastest of 3). Cases
alternate for ``--rounds`` rounds (warm and serialized; one cold per round, on a fresh cache). Ends with
``ratio step_warm_cache_vs_cold_unrolled`` and ``ratio step_serialized_vs_cold_unrolled`` (cold
overhead / case overhead, medians over the rounds).
"""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# bench/ holds a compression.py: off the path, or it shadows the stdlib's `compression` jax imports
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != ROOT / "bench"]
sys.path.insert(0, str(ROOT))

from absl import app, flags  # noqa: E402

_ROUNDS = flags.DEFINE_integer("rounds", 2, "Rounds of cold, warm and serialized processes.")
_CHILD = flags.DEFINE_string("child", "", "Internal: run one case (cold | warm | serialized).")
_DIR = flags.DEFINE_string("dir", "", "Internal: the round's cache folder and executable file.")
_STEPS = flags.DEFINE_integer("steps", 3, "Steady calls after the first (the fastest is kept).")

SECTION = "step executable: the floor of a warm start (bench/step_executable.py)"


def child(case: str, folder: str) -> dict:
  from elasticity import compile_cache
  compile_cache.enable(os.path.join(folder, "cache"))
  import jax
  import numpy as np
  from jax.experimental import serialize_executable
  from elasticity import sharding as shd
  from elasticity.convert import load_pretrained
  from elasticity.paths import smollm2_gguf
  from bench.common import sft_step
  model = load_pretrained(smollm2_gguf())
  mesh = shd.make_mesh(1, 1, 1, devices=jax.devices()[:1])
  ids = np.random.default_rng(0).integers(0, model.config.vocab_size, (2, 128)).astype(np.int32)
  host = {"input_ids": ids, "loss_mask": np.ones_like(ids)}
  step, state, batch = sft_step(model, mesh, host, scanned=False)   # built, not traced
  del model
  path = os.path.join(folder, "step.executable")
  out: dict = {"case": case, "load_avg": os.getloadavg()[0]}

  t0 = time.perf_counter()
  if case == "serialized":
    with open(path, "rb") as f:
      fn = serialize_executable.deserialize_and_load(*pickle.load(f))
    out["deserialize_s"] = time.perf_counter() - t0
  else:
    if case == "cold":
      lowered = step.lower(state, batch)
      out["trace_lower_s"] = time.perf_counter() - t0
      t1 = time.perf_counter()
      fn = lowered.compile()
      out["compile_s"] = time.perf_counter() - t1
    else:
      fn = step
  times, losses = [], []
  for i in range(1 + _STEPS.value):
    t1 = time.perf_counter()
    state, metrics = fn(state, batch)
    jax.block_until_ready(state)
    times.append(time.perf_counter() - t1)
    losses.append(float(metrics["loss"]))
    if i == 0:
      out["first_call_s"] = time.perf_counter() - t0     # from the start, deserialization included
  out.update(steady_s=min(times[1:]), losses=losses)
  if case != "warm":                    # compiled or loaded before its first call: execution alone
    out["first_execution_s"] = times[0]
  if case == "cold":
    with open(path, "wb") as f:
      pickle.dump(serialize_executable.serialize(fn), f)
    out["executable_bytes"] = os.path.getsize(path)
  return out


def run_child(case: str, folder: Path) -> dict:
  env = {**os.environ, "JAX_PLATFORMS": "cpu"}
  env.pop("ELASTICITY_COMPILATION_CACHE", None)
  p = subprocess.run([sys.executable, __file__, f"--child={case}", f"--dir={folder}",
                      f"--steps={_STEPS.value}"], capture_output=True, text=True, check=False, env=env)
  if p.returncode:
    raise SystemExit(f"child {case} failed:\n{p.stderr[-4000:]}")
  res = json.loads(p.stdout.strip().splitlines()[-1])
  print(f"{case}: first call {res['first_call_s']:.2f} s, steady {res['steady_s']:.2f} s", flush=True)
  return res


def main(argv):
  del argv
  if _CHILD.value:
    print(json.dumps(child(_CHILD.value, _DIR.value)))
    return
  import numpy as np
  from bench.common import environment, print_table, ratio, record
  t_start = time.perf_counter()
  runs: dict[str, list[dict]] = {"cold": [], "warm cache": [], "serialized executable": []}
  with tempfile.TemporaryDirectory(prefix="step_executable_") as tmp:
    for r in range(_ROUNDS.value):
      folder = Path(tmp) / f"round{r}"
      folder.mkdir()
      runs["cold"].append(run_child("cold", folder))
      runs["warm cache"].append(run_child("warm", folder))
      runs["serialized executable"].append(run_child("serialized", folder))
  losses = {tuple(x["losses"]) for rs in runs.values() for x in rs}
  if len(losses) != 1:
    raise SystemExit(f"the cases computed different losses: {sorted(losses)}")

  def med(rs, key):
    vals = [x[key] for x in rs if key in x]
    return float(np.median(vals)) if vals else ""

  overhead = {k: float(np.median([x["first_call_s"] - x["steady_s"] for x in rs]))
              for k, rs in runs.items()}
  rows = []
  for k, rs in runs.items():
    rows.append({"case": k, "first call s": med(rs, "first_call_s"), "steady s": med(rs, "steady_s"),
                 "overhead s": overhead[k], "trace + lower s": med(rs, "trace_lower_s"),
                 "XLA compile s": med(rs, "compile_s"), "deserialize s": med(rs, "deserialize_s"),
                 "first execution − steady s": (float(np.median(
                     [x["first_execution_s"] - x["steady_s"] for x in rs]))
                     if "first_execution_s" in rs[0] else ""),
                 "load avg": med(rs, "load_avg")})
  head = (f"{environment()}; SmolLM2-135M (GGUF, float32), unrolled SFT step, AdamW, 2 × 128, one CPU "
          f"device; {_ROUNDS.value} rounds of three fresh processes, medians; whole run "
          f"{time.perf_counter() - t_start:.0f} s. Executable: "
          f"{runs['cold'][0]['executable_bytes'] / 2**20:.1f} MiB. The three cases' losses are equal, "
          f"bit for bit ({len(runs['cold'][0]['losses'])} steps).")
  print(head)
  table = print_table(rows)
  lines = [ratio("step_warm_cache_vs_cold_unrolled", overhead["cold"] / overhead["warm cache"]),
           ratio("step_serialized_vs_cold_unrolled",
                 overhead["cold"] / overhead["serialized executable"])]
  record(SECTION, f"{head}\n\n{table.strip()}\n\n" + "  \n".join(f"`{x}`" for x in lines))


if __name__ == "__main__":
  app.run(main)
