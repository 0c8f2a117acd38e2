"""Why the scanned SmolLM2 SFT step is slower than the unrolled one on CPU: the levers, side by side.

    python bench/scan_levers.py [--variants=unrolled,scan,scan_dots] [--shape=2x128]
                                [--rounds=4]

One process holds every variant's train state and step (SmolLM2-135M-Instruct, the wheel's GGUF in
float32, AdamW, a random 2 × 128 batch, every token scored) and calls them in alternating rounds, so
load on the shared machine hits them alike. A variant is a layout (``unrolled`` or ``scan``) and
options: ``uN`` = `lax.scan` with ``unroll=N`` (``CausalLM.scan_unroll``); ``dots``/``full``/
``dots_all`` = that remat policy (``CausalLM.remat``); ``cheap`` = a remat policy that saves everything
but layout ops (reshape, transpose, broadcast, squeeze, dtype converts), so the scan's residuals hold
no reshaped copies of the weights. Reported per variant: wall seconds and process CPU seconds per step
(CPU time is less sensitive to other processes on the cores than wall time), fastest and median; the
loss of the first step (all variants compute the same step). Ends with one
``ratio steady_step_<variant>_vs_unrolled`` line per variant (unrolled CPU s / variant CPU s, medians).
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != ROOT / "bench"]
sys.path.insert(0, str(ROOT))

from absl import app, flags  # noqa: E402

_VARIANTS = flags.DEFINE_string("variants", "unrolled,scan,scan_dots",
                                "Comma-separated variants (see the module docstring); each holds "
                                "a train state (~2 GB RSS), so keep few on a 23 GB machine.")
_ROUNDS = flags.DEFINE_integer("rounds", 4, "Alternating steady rounds.")
_SHAPE = flags.DEFINE_string("shape", "2x128", "Batch rows x sequence length (the rebound smollm2 "
                             "preset trains 5x64).")
SECTION = "scan levers (bench/scan_levers.py)"
# one section per shape: the training step's shape matters (the rebound preset trains 5 x 64)


def main(argv):
  del argv
  import jax
  import numpy as np
  from bench.common import environment, print_table, ratio, record, sft_step
  from elasticity import sharding as shd
  from elasticity.convert import load_pretrained
  from elasticity.models import transformer
  from elasticity.paths import smollm2_gguf
  layout_ops = {jax.lax.reshape_p, jax.lax.transpose_p, jax.lax.broadcast_in_dim_p,
                jax.lax.squeeze_p, jax.lax.convert_element_type_p}
  transformer.REMAT_POLICIES.setdefault("cheap", lambda prim, *_, **__: prim not in layout_ops)
  variants = _VARIANTS.value.split(",")
  model = load_pretrained(smollm2_gguf())
  mesh = shd.make_mesh(1, 1, 1, devices=jax.devices()[:1])
  rows, seq = (int(x) for x in _SHAPE.value.split("x"))
  ids = np.random.default_rng(0).integers(0, model.config.vocab_size, (rows, seq)).astype(np.int32)
  host = {"input_ids": ids, "loss_mask": np.ones_like(ids)}
  live, loads = {}, []
  for v in variants:
    layout, *opts = v.split("_")
    attrs = dict(("scan_unroll", int(o[1:])) if o.startswith("u") else ("remat", o) for o in opts)
    step, state, batch = sft_step(model, mesh, host, scanned=layout != "unrolled", **attrs)
    t0 = time.perf_counter()
    state, metrics = step(state, batch)
    jax.block_until_ready(state)
    live[v] = {"step": step, "state": state, "batch": batch, "wall": [], "cpu": [],
               "first_s": time.perf_counter() - t0, "loss": float(metrics["loss"])}
    print(f"{v}: first step {live[v]['first_s']:.1f} s, loss {live[v]['loss']:.6f}", flush=True)
  for r in range(_ROUNDS.value):
    loads.append(os.getloadavg()[0])
    for v in variants:
      lv = live[v]
      c0, t0 = time.process_time(), time.perf_counter()
      lv["state"], _ = lv["step"](lv["state"], lv["batch"])
      jax.block_until_ready(lv["state"])
      lv["wall"].append(time.perf_counter() - t0)
      lv["cpu"].append(time.process_time() - c0)
    print(f"round {r + 1} (load {loads[-1]:.2f}): "
          + "  ".join(f"{v} {live[v]['wall'][-1]:.2f} s/{live[v]['cpu'][-1]:.2f} cpu-s" for v in variants),
          flush=True)
  ref = float(np.median(live["unrolled"]["cpu"])) if "unrolled" in live else None
  rows = [{"variant": v, "first step s": lv["first_s"], "wall s (fastest)": min(lv["wall"]),
           "wall s (median)": float(np.median(lv["wall"])), "CPU s (fastest)": min(lv["cpu"]),
           "CPU s (median)": float(np.median(lv["cpu"])), "loss": lv["loss"],
           "tokens/s (fastest wall)": rows * seq / min(lv["wall"]),
           "unrolled / this (CPU, median)": (ref / float(np.median(lv["cpu"]))) if ref else float("nan")}
          for v, lv in live.items()]
  table = print_table(rows)
  lines = [ratio(f"steady_step_{v}_vs_unrolled_{rows}x{seq}", row["unrolled / this (CPU, median)"])
           for v, row in zip(live, rows) if v != "unrolled" and ref]
  record(f"{SECTION}, {rows}x{seq}", f"{environment()}; SmolLM2-135M-Instruct float32, AdamW, {rows} × {seq}, every "
         f"token scored; {_ROUNDS.value} alternating rounds in one process, 1-minute load averages before "
         f"each round: {', '.join(f'{x:.2f}' for x in loads)} (2 cores, shared).\n\n{table}\n"
         + "\n".join(f"`{x}`  " for x in lines) + "\n")


if __name__ == "__main__":
  app.run(main)
