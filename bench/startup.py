"""Start-up costs of SmolLM2-135M-Instruct on CPU: scanned against unrolled layers, the persistent
compilation cache warm against cold, and our GGUF load against transformers'.

    python bench/startup.py [--max_length=256] [--batch_size=2] [--steps=3] [--rounds=2]

In one run, side by side:
- start-up overhead = the first call's time minus a steady call's time (mostly tracing and
  compilation) of (a) the SFT train step (`elasticity.train.step.make_train_step`, AdamW, float32,
  a random 2 × 128 batch, every token scored) and (b) `elasticity.compression.measure` over its
  bucket shapes (alpaca records picked so that every bucket of ``length_buckets(--max_length)``
  gets one batch of ``--batch_size`` rows; the `Scorer` is built inside the timed first call, as
  ``measure(model, ...)`` does), scanned layers against unrolled;
- both layouts' overheads again in a second process whose persistent cache (`elasticity.compile_cache`)
  holds what the first one compiled, against the first (cold, empty cache): each process is fresh
  and both use one temporary cache folder made for this run, never the user's;
- GGUF load: `load_pretrained` against transformers' ``from_pretrained(gguf_file=...)``, fresh
  processes alternating, timed around the load call only (``bench/gguf_load.py``'s measurement);
- steady-state step and `measure` (forward) time, scanned against unrolled: both layouts live in the
  first process and alternate for ``--rounds`` rounds (fastest reported), so load hits both alike.

The machine is shared: the 1-minute load average before each phase is recorded. Ends with one
``ratio <what> <number>`` line per comparison (higher is better: the reference over ours, the
unrolled or cold time over the scanned or warm one).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("TQDM_DISABLE", "1")
ROOT = Path(__file__).resolve().parent.parent
# Run as a script, Python puts bench/ first on sys.path, where bench/compression.py would shadow the
# `compression` package jax imports; import bench modules as `bench.x` instead.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != ROOT / "bench"]
sys.path.insert(0, str(ROOT))

from absl import app, flags  # noqa: E402

_MAX_LENGTH = flags.DEFINE_integer("max_length", 256, "measure: max_length (its buckets follow).")
_BATCH_SIZE = flags.DEFINE_integer("batch_size", 2, "measure: rows per batch.")
_STEP_BATCH = flags.DEFINE_integer("step_batch", 2, "SFT step: batch size.")
_STEP_SEQ = flags.DEFINE_integer("step_seq", 128, "SFT step: sequence length.")
_STEPS = flags.DEFINE_integer("steps", 3, "Steady steps after the first, per layout.")
_ROUNDS = flags.DEFINE_integer("rounds", 2, "Alternating steady rounds (step + measure per layout).")
_GGUF_ROUNDS = flags.DEFINE_integer("gguf_rounds", 2, "Alternating GGUF load rounds (one process each).")
_CHILD = flags.DEFINE_string("child", "", "Internal: 'scanned,unrolled' layouts to time in this process.")
_CACHE = flags.DEFINE_string("cache_dir", "", "Internal: the persistent cache folder of a child.")

SECTION = "start-up (bench/startup.py)"
LAYOUTS = ("scanned", "unrolled")


def pick_records(tok, max_length: int, batch_size: int) -> tuple[list[dict], list[int]]:
  """Alpaca records, ``batch_size`` per bucket of ``length_buckets(max_length)`` (those that have
  enough records of a length in the bucket), so that measure compiles every bucket shape once."""
  from elasticity import compression
  from elasticity.data.buckets import length_buckets
  from elasticity.data import load_dataset
  # Whole records only: one truncated to an empty prompt would have an unscorable first token.
  records = [r for r in load_dataset("alpaca", on_error="skip")
             if len(tok.encode(r["response"])) + 8 < max_length]
  kept, _, _ = compression.tokenize(tok, records, max_length=max_length)
  buckets = length_buckets(max_length)
  chosen: dict[int, list[int]] = {b: [] for b in buckets}
  for ex in kept:
    b = next(b for b in buckets if b >= ex.length)
    lower = buckets[buckets.index(b) - 1] if b != buckets[0] else 0
    if ex.length > lower and len(chosen[b]) < batch_size:
      chosen[b].append(ex.index)
  used = [b for b in buckets if len(chosen[b]) == batch_size]
  return [records[i] for b in used for i in chosen[b]], used


def child(layouts: list[str], cache_dir: str) -> dict:
  """Time the first and steady SFT steps and measure calls of each layout, then alternate them."""
  from elasticity import compile_cache
  compile_cache.enable(cache_dir)
  import jax
  import numpy as np
  from elasticity import compression
  from elasticity import sharding as shd
  from elasticity.compression import Scorer, default_mesh, measure
  from elasticity.convert import load_pretrained
  from elasticity.paths import smollm2_gguf
  from elasticity.tokenizers import load_tokenizer
  from bench.common import sft_step
  gguf = smollm2_gguf()
  model = load_pretrained(gguf)
  tok = load_tokenizer(gguf)
  records, buckets = pick_records(tok, _MAX_LENGTH.value, _BATCH_SIZE.value)
  kw = dict(max_length=_MAX_LENGTH.value, batch_size=_BATCH_SIZE.value, template="plain")
  planned = compression.plan(compression.tokenize(tok, records, max_length=_MAX_LENGTH.value)[0],
                             batch_size=_BATCH_SIZE.value, max_length=_MAX_LENGTH.value)
  devices = jax.devices()[:1]
  mesh = shd.make_mesh(1, 1, 1, devices=devices)
  ids = np.random.default_rng(0).integers(0, model.config.vocab_size,
                                          (_STEP_BATCH.value, _STEP_SEQ.value)).astype(np.int32)
  host = {"input_ids": ids, "loss_mask": np.ones_like(ids)}
  out: dict = {"buckets": buckets, "batches": len(planned), "records": len(records),
               "shapes": sorted({(p.batch_size, p.length) for p in planned})}
  live = {}

  def timed(fn):
    t0 = time.perf_counter()
    r = fn()
    jax.block_until_ready(r)
    return r, time.perf_counter() - t0

  for layout in layouts:
    res = out[layout] = {"load_avg": os.getloadavg()[0]}
    step, state, batch = sft_step(model, mesh, host, scanned=layout == "scanned")
    times, losses = [], []
    for _ in range(1 + _STEPS.value):
      (state, metrics), dt = timed(lambda: step(state, batch))
      times.append(dt)
      losses.append(float(metrics["loss"]))
    res.update(step_first_s=times[0], step_steady_s=min(times[1:]), step_losses=losses)
    t0 = time.perf_counter()
    scorer = Scorer(model, mesh=default_mesh(devices), scan_layers=layout == "scanned")
    first = measure(scorer, tok, records, **kw)
    res["measure_first_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    again = measure(scorer, tok, records, **kw)
    res["measure_steady_s"] = time.perf_counter() - t0
    res["bits_per_token"] = again.bits_per_token
    res["tokens"] = again.tokens
    assert first.bits == again.bits, (first.bits, again.bits)
    live[layout] = {"state": state, "step": step, "batch": batch, "scorer": scorer}
    print(f"[{layout}] first step {times[0]:.2f} s, steady {min(times[1:]):.2f} s; measure first "
          f"{res['measure_first_s']:.2f} s, steady {res['measure_steady_s']:.2f} s", file=sys.stderr,
          flush=True)

  if len(layouts) > 1:
    rounds = []
    for r in range(_ROUNDS.value):
      row = {"load_avg": os.getloadavg()[0]}
      for layout in layouts:
        lv = live[layout]
        (lv["state"], _), row[f"step_{layout}_s"] = timed(lambda: lv["step"](lv["state"], lv["batch"]))
        _, row[f"measure_{layout}_s"] = timed(lambda: measure(lv["scorer"], tok, records, **kw))
      rounds.append(row)
      print(f"round {r + 1}: {row}", file=sys.stderr, flush=True)
    out["rounds"] = rounds
  return out


def run_child(layouts: list[str], cache_dir: Path) -> dict:
  cmd = [sys.executable, __file__, f"--child={','.join(layouts)}", f"--cache_dir={cache_dir}",
         f"--max_length={_MAX_LENGTH.value}", f"--batch_size={_BATCH_SIZE.value}",
         f"--step_batch={_STEP_BATCH.value}", f"--step_seq={_STEP_SEQ.value}",
         f"--steps={_STEPS.value}", f"--rounds={_ROUNDS.value}"]
  env = {**os.environ, "JAX_PLATFORMS": "cpu"}
  env.pop("ELASTICITY_COMPILATION_CACHE", None)
  t0 = time.perf_counter()
  p = subprocess.run(cmd, capture_output=True, text=True, check=False, env=env)
  if p.returncode:
    raise SystemExit(f"child {layouts} failed:\n{p.stderr[-4000:]}")
  sys.stderr.write(p.stderr[-2000:])
  res = json.loads(p.stdout.strip().splitlines()[-1])
  res["wall_s"] = time.perf_counter() - t0
  return res


def gguf_loads(rounds: int) -> dict[str, list[float]]:
  """Fresh-process GGUF loads, alternating ours and transformers' (bench/gguf_load.py's child)."""
  script = ROOT / "bench" / "gguf_load.py"
  out: dict[str, list[float]] = {"ours": [], "transformers": [], "load_avg": []}
  for _ in range(rounds):
    for side in ("ours", "transformers"):
      out["load_avg"].append(os.getloadavg()[0])
      p = subprocess.run([sys.executable, str(script), f"--child={side}"], capture_output=True,
                         text=True, check=False, env={**os.environ, "JAX_PLATFORMS": "cpu"})
      if p.returncode:
        raise SystemExit(f"GGUF load ({side}) failed:\n{p.stderr[-3000:]}")
      out[side].append(json.loads(p.stdout.strip().splitlines()[-1])["seconds"])
      print(f"GGUF load {side}: {out[side][-1]:.2f} s", flush=True)
  return out


def main(argv):
  del argv
  if _CHILD.value:
    print(json.dumps(child(_CHILD.value.split(","), _CACHE.value)), flush=True)
    return
  from bench.common import environment, print_table, ratio, record
  t_start = time.perf_counter()
  tmp = Path(tempfile.mkdtemp(prefix="elasticity_startup_"))
  try:
    cache = tmp / "jax_cache"
    print("process 1 (cache cold): both layouts ...", flush=True)
    cold = run_child(list(LAYOUTS), cache)
    entries = sum(1 for _ in cache.rglob("*") if _.is_file())
    print(f"process 2 (cache warm, {entries} entries): both layouts ...", flush=True)
    warm = run_child(list(LAYOUTS), cache)
  finally:
    shutil.rmtree(tmp, ignore_errors=True)
  loads = gguf_loads(_GGUF_ROUNDS.value)

  def overhead(res, what):
    return res[f"{what}_first_s"] - res[f"{what}_steady_s"]

  s, u, w, wu = cold["scanned"], cold["unrolled"], warm["scanned"], warm["unrolled"]
  rows = []
  for what, name in (("step", f"SFT step {_STEP_BATCH.value}x{_STEP_SEQ.value}"),
                     ("measure", f"measure, {cold['batches']} batches {cold['shapes']}")):
    for label, res in (("unrolled, cache cold", u), ("unrolled, cache warm", wu),
                       ("scanned, cache cold", s), ("scanned, cache warm", w)):
      rows.append({"call": name, "layout, cache": label, "first s": res[f"{what}_first_s"],
                   "steady s": res[f"{what}_steady_s"], "overhead s": overhead(res, what),
                   "load avg": res["load_avg"]})
  table = print_table(rows)
  steady_rows = []
  for what in ("step", "measure"):
    best = {lay: min(r[f"{what}_{lay}_s"] for r in cold["rounds"]) for lay in LAYOUTS}
    steady_rows.append({"call": what, "scanned s (fastest)": best["scanned"],
                        "unrolled s (fastest)": best["unrolled"],
                        "unrolled / scanned": best["unrolled"] / best["scanned"]})
  steady_table = print_table(steady_rows)
  rel = abs(s["bits_per_token"] - u["bits_per_token"]) / u["bits_per_token"]
  gguf_rows = [{"loader": "elasticity.convert.load_pretrained", "fastest s": min(loads["ours"]),
                "runs": len(loads["ours"])},
               {"loader": "transformers from_pretrained(gguf_file=...)",
                "fastest s": min(loads["transformers"]), "runs": len(loads["transformers"])}]
  gguf_table = print_table(gguf_rows)
  lines = [
      ratio("startup_step_scan_vs_unrolled", overhead(u, "step") / overhead(s, "step")),
      ratio("startup_measure_scan_vs_unrolled", overhead(u, "measure") / overhead(s, "measure")),
      ratio("startup_step_warm_vs_cold_cache", overhead(s, "step") / overhead(w, "step")),
      ratio("startup_measure_warm_vs_cold_cache", overhead(s, "measure") / overhead(w, "measure")),
      # the CPU training default (`model.scan_layers = None`: unrolled on CPU)
      ratio("startup_step_warm_vs_cold_cache_unrolled", overhead(u, "step") / overhead(wu, "step")),
      ratio("startup_measure_warm_vs_cold_cache_unrolled",
            overhead(u, "measure") / overhead(wu, "measure")),
      ratio("gguf_load", min(loads["transformers"]) / min(loads["ours"])),
      ratio("steady_step_scan_vs_unrolled", steady_rows[0]["unrolled / scanned"]),
      ratio("steady_forward_scan_vs_unrolled", steady_rows[1]["unrolled / scanned"]),
  ]
  total = time.perf_counter() - t_start
  round_loads = ", ".join(f"{r['load_avg']:.2f}" for r in cold["rounds"])
  spread = {what: [res[f"{what}_steady_s"] for res in (s, u)]
            + [r[f"{what}_{lay}_s"] for r in cold["rounds"] for lay in LAYOUTS]
            for what in ("step", "measure")}
  noise = "; ".join(f"{what} {min(v):.2f}–{max(v):.2f} s" for what, v in spread.items())
  record(SECTION,
         f"{environment()}; SmolLM2-135M-Instruct (Q4_1 GGUF dequantized to float32), one CPU device; "
         f"the machine is shared (1-minute load averages in the tables; GGUF loads: "
         f"{', '.join(f'{x:.2f}' for x in loads['load_avg'])}); whole run {total:.0f} s.\n\n"
         f"Start-up overhead = first call − steady call. Process 1 (empty persistent cache) runs "
         f"both layouts; process 2 (a fresh process on the cache process 1 filled, "
         f"{entries} entries) both again; the CPU training default is the unrolled step "
         f"(`model.scan_layers = None`), the scanned one the accelerators'. `measure`: max_length {_MAX_LENGTH.value}, "
         f"{cold['records']} alpaca records, batch {_BATCH_SIZE.value}, one batch per bucket "
         f"{cold['buckets']}; the first call includes building the `Scorer`. Steps: AdamW, "
         f"float32, no remat, state donated.\n\n{table}\n"
         f"Steady state, both layouts alive in process 1, alternating for {_ROUNDS.value} rounds "
         f"(fastest; load averages {round_loads}); "
         f"bits/token of the two layouts agree within {rel:.1e} relative:\n\n{steady_table}\n"
         f"Noise: the steady calls of process 1 (both layouts, both phases) ranged {noise}; an "
         f"overhead is the difference of two calls, and carries that noise.\n\n"
         f"GGUF load, fresh processes alternating, clock around the load call only:\n\n"
         f"{gguf_table}\n" + "\n".join(f"`{x}`  " for x in lines) + "\n")


if __name__ == "__main__":
  app.run(main)
