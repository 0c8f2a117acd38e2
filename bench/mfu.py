"""Model FLOPs utilisation of one SFT train step of a 1B-class Llama on an accelerator.

    python bench/mfu.py [--preset=tinyllama-1.1b] [--batch=8] [--seq=2048] [--steps=10]
                        [--dtype=bfloat16] [--remat=dots] [--mesh=1,-1,1]

The model is created with random weights directly on the devices (`init_train_state` with a jitted
initialiser: bf16 compute, float32 master weights and AdamW state by default, the paper's setting),
and the step is `elasticity.train.step.make_train_step` (the fused SFT head, every token scored).
MFU = model FLOPs per token (6·N + 12·L·D·T, PaLM appendix B, as the training loop's progress line)
× tokens/s / (peak FLOP/s per device × devices); the peak comes from the device kind
(`elasticity.train.metrics.PEAK_FLOPS`, bf16 dense) or ``--peak_flops``. Reported: the fastest of
``--steps`` timed steps after one warm-up (compilation) step, and the median.

Ends with ``ratio train_step_mfu_<preset>_over_goal x``: measured MFU over the goal of 45%. On a CPU
there is no peak to divide by, so only tokens/s is printed and nothing is recorded (use a small
``--preset`` such as smollm2-135m to smoke-test the script there).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

# Run as a script, bench/ would shadow the `compression` package jax imports; root first instead.
_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]
sys.path.insert(0, str(_HERE.parent))

from absl import app, flags  # noqa: E402

_PRESET = flags.DEFINE_string("preset", "tinyllama-1.1b", "elasticity.models.presets name.")
_BATCH = flags.DEFINE_integer("batch", 8, "Global batch (rows).")
_SEQ = flags.DEFINE_integer("seq", 2048, "Sequence length.")
_STEPS = flags.DEFINE_integer("steps", 10, "Timed steps after the warm-up step.")
_DTYPE = flags.DEFINE_enum("dtype", "bfloat16", ["bfloat16", "float32"], "Compute dtype.")
_REMAT = flags.DEFINE_enum("remat", "dots", ["none", "full", "dots", "dots_all"], "Remat policy.")
_MESH = flags.DEFINE_list("mesh", ["1", "-1", "1"], "data,fsdp,tensor (-1 = the rest).")
_PEAK = flags.DEFINE_float("peak_flops", 0.0, "Peak FLOP/s per device (0 = from the device kind).")
_LAYERS = flags.DEFINE_integer("num_layers", 0, "Decoder layers (0 = the preset's; fewer: a rehearsal).")
_RECORD = flags.DEFINE_bool("record", True, "Write the result to bench/RESULTS.md (accelerators only).")
GOAL = 0.45


def main(argv):
  del argv
  import jax
  import jax.numpy as jnp
  import numpy as np

  from bench.common import environment, print_table, ratio, record
  from elasticity import sharding as shd
  from elasticity.models import abstract_model, create_model
  from elasticity.models.presets import preset_config
  from elasticity.train.losses import Objective
  from elasticity.train.metrics import peak_flops_per_device, train_flops_per_token
  from elasticity.train.optimizer import make_optimizer
  from elasticity.train.step import (batch_shardings, init_train_state, make_train_step, split_params,
                                     state_shardings)

  cfg = preset_config(_PRESET.value)
  if _LAYERS.value:
    cfg = cfg.replace(num_layers=_LAYERS.value, layer_types=cfg.layer_types[:_LAYERS.value]
                      if cfg.layer_types else cfg.layer_types)
  dtype = jnp.dtype(_DTYPE.value)
  mesh = shd.make_mesh(*(int(x) for x in _MESH.value))
  abstract = abstract_model(cfg, dtype=dtype, param_dtype=jnp.float32)
  abstract.remat = None if _REMAT.value == "none" else _REMAT.value
  graphdef, abstract_params = split_params(abstract)
  n_params = int(sum(np.prod(x.shape) for x in jax.tree.leaves(abstract_params)))
  tx, schedule = make_optimizer({"name": "adamw", "lr": 1e-5, "weight_decay": 0.0, "clip_norm": 1.0}, 100)
  _, sh = state_shardings(abstract, tx, mesh)
  init = lambda: split_params(create_model(cfg, dtype=dtype, param_dtype=jnp.float32, seed=0))[1]
  state = init_train_state(init, tx, sh, seed=0)
  b, t = _BATCH.value, _SEQ.value
  ids = np.random.default_rng(0).integers(0, cfg.vocab_size, (b, t)).astype(np.int32)
  host = {"input_ids": ids, "loss_mask": np.ones_like(ids)}
  step = make_train_step(graphdef, Objective("sft", chunk_size=512), tx, schedule, mesh, sh,
                         batch_shardings(host, mesh))
  batch = shd.global_batch(host, mesh)
  times = []
  for _ in range(_STEPS.value + 1):
    t0 = time.perf_counter()
    state, metrics = step(state, batch)
    jax.block_until_ready((state, metrics))
    times.append(time.perf_counter() - t0)
  best, median = min(times[1:]), float(np.median(times[1:]))
  tokens_per_s = b * t / best
  flops_token = train_flops_per_token(n_params, cfg.num_layers, cfg.hidden_size, t)
  peak = peak_flops_per_device(_PEAK.value)
  devices = mesh.size
  mfu = flops_token * tokens_per_s / (peak * devices) if peak else None
  row = {"model": _PRESET.value, "params": n_params, "batch": f"{b}x{t}", "compute": _DTYPE.value,
         "remat": _REMAT.value, "devices": f"{devices} x {jax.devices()[0].device_kind}",
         "step s (best)": best, "step s (median)": median, "first step s": times[0],
         "tokens/s": tokens_per_s, "TFLOP/token": flops_token / 1e12,
         "MFU": f"{100 * mfu:.1f}%" if mfu is not None else "n/a (no peak for this device)",
         "loss": float(metrics["loss"])}
  table = print_table([row])
  if mfu is None:
    return
  line = ratio(f"train_step_mfu_{_PRESET.value}_over_goal", mfu / GOAL)
  if _RECORD.value:
    note = (f"{environment()}. One SFT step (forward, backward, AdamW; fp32 master weights), random "
            f"weights, every token scored; fastest of {_STEPS.value} steps after the compile step. "
            f"Peak {peak / 1e12:.0f} TFLOP/s per device; goal MFU {100 * GOAL:.0f}%.")
    record(f"MFU (bench/mfu.py, {_PRESET.value})", table + "\n" + note + "\n\n```\n" + line + "\n```\n")


if __name__ == "__main__":
  app.run(main)
