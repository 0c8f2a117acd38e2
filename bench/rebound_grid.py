"""Wall time of a rebound grid's training (stage 1 per n⁺, stage 2 per n⁻), ours against the authors'
way, side by side in one run: same model, same examples in the same batches, same hyper-parameters.

    python bench/rebound_grid.py [--variant=tiny] [--rounds=1]

**ours**: `elasticity.experiments.core.runner.run("rebound", cfg, workdir)` in one fresh Python process
(its start, imports and JAX start-up are in its time): the runner trains every cell one after another
in that process, so compiled steps are reused across cells, and stage 2 is one run per n⁺ with an HF
snapshot at each n⁻ (`elasticity.experiments.rebound`). Evaluation is excluded: `rebound.prepare` is
replaced by an evaluator that measures nothing (no generation, no held-out data), and the report is
not built. Everything else is the preset as it is (``tiny``: orbax checkpoint every step, HF export
of every cell and snapshot), unless ``--ours_checkpoint_every`` changes ``train.checkpoint.every``.

**the authors' way**: one fresh Python process per cell, as their shell scripts launch one SFT run
per cell: import torch and `transformers`, `AutoModelForCausalLM.from_pretrained(start)` (the base:
an HF export of the base model made once with `elasticity.convert.save_pretrained`; stage 2: stage 1's
saved directory), a plain loop over padded batches (``model(input_ids, attention_mask, labels)``,
``backward``, ``clip_grad_norm_``, `torch.optim.AdamW` with the config's lr, betas, eps and weight
decay), then ``save_pretrained``. Every n⁻ is its own run from stage 1's model (no snapshot
sharing). The batches are the ones our loop trains on (`elasticity.train.data.load_examples` +
`BatchStream` with each cell's own data section), token ids written to an ``.npz`` before the clock
starts: torch pays no tokenization and no IMDb read — which favours it, as does the bare loop (no HF
``Trainer``, no DeepSpeed).

The final training loss of every cell is printed on both sides: they agree to float32 noise when the
two did the same work (more than 1e-3 apart is an error). Ours' own time is broken down too (imports,
`rebound.validate`, the ``train()`` calls, XLA compile time per function from `jax.monitoring`).
Ends with ``ratio rebound_grid_wall <torch wall / ours wall>``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

T_PROCESS = time.perf_counter()
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
ROOT = Path(__file__).resolve().parent.parent
# Run as a script, Python puts bench/ first on sys.path, where bench/compression.py would shadow the
# `compression` package jax imports (`compression.zstd`); import bench modules as `bench.x` instead.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != ROOT / "bench"]
sys.path.insert(0, str(ROOT))

from absl import app, flags  # noqa: E402

_VARIANT = flags.DEFINE_string("variant", "tiny", "configs/experiments/rebound.py variant (SFT reverse).")
_ROUNDS = flags.DEFINE_integer("rounds", 1, "Alternating rounds (ours, torch, ...); best total kept.")
_CKPT = flags.DEFINE_integer("ours_checkpoint_every", -1, "train.checkpoint.every for ours "
                             "(-1: the preset's own).")
_RECORD = flags.DEFINE_bool("record", True, "Write the section of bench/RESULTS.md.")
_WORKER = flags.DEFINE_string("worker", "", "Internal: 'ours' (the runner) or 'torch' (one cell).")
_WORKDIR = flags.DEFINE_string("workdir", "", "Internal: the worker's directory.")
_SPEC = flags.DEFINE_string("spec", "", "Internal: a torch cell's JSON spec file.")
LOSS_TOLERANCE = 1e-3   # |ours − torch| final training loss per cell: the same work was done


# -- ours: the experiment runner in one process ----------------------------------------------------


class _NoEvaluation:
  """An evaluator that measures nothing (training alone is timed)."""
  fingerprint = "bench-no-evaluation"

  def __call__(self, path, tokenizer, point_dir, context=None) -> dict[str, float]:
    del path, tokenizer, point_dir, context
    return {}


def experiment_config(variant: str, checkpoint_every: int = -1):
  from configs.experiments.rebound import get_config
  cfg = get_config(variant)
  if cfg.reverse != "sft":
    raise app.UsageError(f"--variant={variant}: the torch side implements SFT only (reverse "
                         f"{cfg.reverse!r})")
  cfg.unlock()
  cfg.eval.scorer.path = "none"
  # The timed grid is the stage-1/stage-2 SFT grid both sides implement: the n⁺ = 0 control and the
  # neutral arm (issues 15, 22) are left out, and n⁺ = 16, 24 kept as in the earlier RESULTS rows.
  cfg.neutral.dataset = ""
  cfg.n_pos = (16, 24)
  if checkpoint_every >= 0:
    cfg.train.checkpoint.every = checkpoint_every
  cfg.lock()
  return cfg


def worker_ours(workdir: str, checkpoint_every: int) -> dict:
  t_imports = time.perf_counter()
  import jax
  from jax import monitoring
  from elasticity.experiments.core import runner
  from elasticity.experiments.rebound import EXPERIMENT as rebound
  from elasticity.train import loop
  jax.config.update("jax_threefry_partitionable", True)
  t_imported = time.perf_counter()
  compile_events: dict[str, list[float]] = {}

  compiled_funs: dict[str, list[float]] = {}

  def on_duration(event: str, duration_secs: float, **kwargs) -> None:
    if event.startswith("/jax/core/compile/"):
      n, s = compile_events.get(event, [0, 0.0])
      compile_events[event] = [n + 1, s + duration_secs]
    if event.endswith("/backend_compile_duration"):
      compiled_funs.setdefault(str(kwargs.get("fun_name", "?")), []).append(duration_secs)

  monitoring.register_event_duration_secs_listener(on_duration)
  cfg = experiment_config(_VARIANT.value, checkpoint_every)
  rebound.prepare = lambda c, w: _NoEvaluation()
  validate, validate_s = rebound.validate, []

  def timed_validate(c):
    t0 = time.perf_counter()
    validate(c)
    validate_s.append(time.perf_counter() - t0)

  rebound.validate = timed_validate
  train, runs = loop.train, []

  def timed_train(cfg, wd, **kw):
    t0 = time.perf_counter()
    result = train(cfg, wd, **kw)
    cell = json.loads((Path(wd).parent / "cell.json").read_text())
    losses = [json.loads(l) for l in (Path(wd) / "metrics.jsonl").read_text().splitlines()]
    runs.append({"cell": cell["name"], "seconds": time.perf_counter() - t0, "steps": result.step,
                 "loss": {int(r["step"]): r["loss"] for r in losses
                          if r.get("kind") == "train" and "loss" in r},
                 "snapshots": cfg.export.snapshots})
    return result

  loop.train = timed_train
  t0 = time.perf_counter()
  summary = runner.run("rebound", cfg, workdir, report=False)
  t1 = time.perf_counter()
  if summary.status != "completed":
    raise RuntimeError(f"runner: {summary.status}")
  return {"imports_s": t_imported - t_imports, "before_imports_s": t_imports - T_PROCESS,
          "runner_s": t1 - t0, "runs": runs, "cells": summary.cells, "validate_s": sum(validate_s),
          "compile": {k.rsplit("/", 1)[-1]: v for k, v in compile_events.items()},
          "compiled": compiled_funs}


# -- the authors' way: one torch process per cell --------------------------------------------------


def worker_torch(spec_path: str) -> dict:
  t_imports = time.perf_counter()
  import numpy as np
  import torch
  import transformers
  t_imported = time.perf_counter()
  spec = json.loads(Path(spec_path).read_text())
  torch.manual_seed(int(spec["seed"]))
  model = transformers.AutoModelForCausalLM.from_pretrained(spec["start"], dtype=torch.float32)
  model.train()
  o = spec["optimizer"]
  opt = torch.optim.AdamW(model.parameters(), lr=o["lr"], betas=(o["b1"], o["b2"]), eps=o["eps"],
                          weight_decay=o["weight_decay"])
  t_loaded = time.perf_counter()
  data = np.load(spec["batches"])
  losses = []
  for i in range(int(data["input_ids"].shape[0])):
    ids = torch.from_numpy(data["input_ids"][i].astype(np.int64))
    mask = torch.from_numpy(data["attention_mask"][i].astype(np.int64))
    labels = torch.where(torch.from_numpy(data["loss_mask"][i] > 0), ids, torch.full_like(ids, -100))
    loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
    loss.backward()
    if o["clip_norm"] > 0:
      torch.nn.utils.clip_grad_norm_(model.parameters(), o["clip_norm"])
    opt.step()
    opt.zero_grad(set_to_none=True)
    losses.append(float(loss))
  t_trained = time.perf_counter()
  model.save_pretrained(spec["out"])
  t_saved = time.perf_counter()
  return {"before_imports_s": t_imports - T_PROCESS, "imports_s": t_imported - t_imports,
          "load_s": t_loaded - t_imported, "train_s": t_trained - t_loaded,
          "save_s": t_saved - t_trained, "losses": losses}


def torch_plan(cfg, tmp: Path) -> list[dict]:
  """The authors' runs: stage 1 per n⁺ from the base, then a separate stage-2 run per n⁻ > 0 from
  stage 1's model; each with the batches our loop would train that cell on, saved to an .npz."""
  import numpy as np

  from elasticity.experiments.rebound import grid as rebound
  from elasticity.convert import load_pretrained, save_pretrained
  from elasticity.tokenizers import load_tokenizer
  from elasticity.train.data import BatchStream, load_examples
  tokenizer = load_tokenizer(cfg.model.tokenizer or cfg.model.path)
  base = tmp / "torch" / "base"
  save_pretrained(load_pretrained(cfg.model.path, tokenizer=cfg.model.tokenizer or None), base,
                  dtype="float32", tokenizer=tokenizer)
  negs = sorted(int(n) for n in cfg.n_neg if int(n) > 0)
  runs = []
  for seed in (int(s) for s in cfg.seeds):
    for n_pos in (int(n) for n in cfg.n_pos):
      stage1 = f"s{seed}/pos{n_pos}"
      todo = [(stage1, rebound._train(cfg, 1, n_pos, seed), base)]
      todo += [(f"{stage1}/{cfg.reverse}-neg{n}", rebound._train(cfg, 2, n, seed),
                tmp / "torch" / stage1.replace("/", "_")) for n in negs]
      for name, t, start in todo:
        if t.objective.name != "sft":
          raise app.UsageError(f"cell {name}: objective {t.objective.name!r}; the torch side is SFT")
        if t.optimizer.name != "adamw" or t.optimizer.schedule != "constant" or t.optimizer.warmup_steps:
          raise app.UsageError(f"cell {name}: the torch side implements AdamW at a constant lr only")
        examples = load_examples(t.data, tokenizer, "sft")
        stream = BatchStream(examples, batch_size=t.train.global_batch_size,
                             max_length=t.data.max_length, kind="sft", pack=t.data.pack,
                             pad_id=tokenizer.pad_id, seed=t.seed, shuffle=t.data.shuffle,
                             drop_last=t.data.drop_last)
        steps = int(t.train.num_steps or t.train.num_epochs * stream.batches_per_epoch)
        batches = [next(stream) for _ in range(steps)]
        if t.data.pack:
          raise app.UsageError(f"cell {name}: packed rows; the torch side pads one example per row")
        key = name.replace("/", "_")
        npz = tmp / "torch" / f"{key}.npz"
        np.savez(npz, **{k: np.stack([b[k] for b in batches])
                         for k in ("input_ids", "attention_mask", "loss_mask")})
        o = t.optimizer
        spec = {"name": name, "start": os.fspath(start), "out": os.fspath(tmp / "torch" / key),
                "batches": os.fspath(npz), "seed": int(t.seed), "steps": steps,
                "tokens": int(sum(int(b["attention_mask"].sum()) for b in batches)),
                "optimizer": {k: float(o[k]) for k in ("lr", "b1", "b2", "eps", "weight_decay",
                                                        "clip_norm")}}
        (tmp / "torch" / f"{key}.json").write_text(json.dumps(spec))
        runs.append(spec | {"spec": os.fspath(tmp / "torch" / f"{key}.json")})
  return runs


# -- the parent: both sides, the table, the section ------------------------------------------------


def _subprocess(args: list[str]) -> tuple[dict, float]:
  cmd = [sys.executable, os.path.abspath(__file__), *args]
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  t0 = time.perf_counter()
  proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT)
  wall = time.perf_counter() - t0
  if proc.returncode != 0:
    raise RuntimeError(f"worker {args} failed:\n{proc.stderr[-4000:]}")
  line = [l for l in proc.stdout.splitlines() if l.startswith("RESULT ")][-1]
  return json.loads(line[len("RESULT "):]), wall


def run_ours(tmp: Path, round_: int) -> dict:
  workdir = tmp / f"ours{round_}"
  res, wall = _subprocess(["--worker=ours", f"--workdir={workdir}", f"--variant={_VARIANT.value}",
                           f"--ours_checkpoint_every={_CKPT.value}"])
  return res | {"wall_s": wall}


def run_torch(plan: list[dict], tmp: Path, round_: int) -> dict:
  out = []
  for spec in plan:
    res, wall = _subprocess(["--worker=torch", f"--spec={spec['spec']}"])
    out.append(res | {"name": spec["name"], "wall_s": wall})
  return {"runs": out, "wall_s": sum(r["wall_s"] for r in out)}


def _load() -> float:
  return os.getloadavg()[0]


def main(argv):
  del argv
  if _WORKER.value == "ours":
    print("RESULT " + json.dumps(worker_ours(_WORKDIR.value, _CKPT.value)), flush=True)
    return
  if _WORKER.value == "torch":
    print("RESULT " + json.dumps(worker_torch(_SPEC.value)), flush=True)
    return
  if _WORKER.value:
    raise app.UsageError(f"--worker: {_WORKER.value!r} is not 'ours' or 'torch'")
  from bench.common import environment, print_table, ratio, record
  cfg = experiment_config(_VARIANT.value, _CKPT.value)
  with tempfile.TemporaryDirectory(prefix="rebound_grid_") as tmp_name:
    tmp = Path(tmp_name)
    plan = torch_plan(cfg, tmp)
    rounds = []
    for r in range(_ROUNDS.value):
      load0 = _load()
      ours = run_ours(tmp, r)
      load1 = _load()
      torch_res = run_torch(plan, tmp, r)
      rounds.append({"ours": ours, "torch": torch_res, "load": (load0, load1, _load())})
      print(f"round {r + 1}: ours {ours['wall_s']:.1f} s, torch {torch_res['wall_s']:.1f} s "
            f"(load avg {load0:.2f} / {load1:.2f} / {_load():.2f})", flush=True)
  ours = min((x["ours"] for x in rounds), key=lambda x: x["wall_s"])
  torch_res = min((x["torch"] for x in rounds), key=lambda x: x["wall_s"])

  # One row per grid cell (n⁺, n⁻ > 0): the run that trained it on each side.
  by_name = {r["cell"]: r for r in ours["runs"]}
  batch = int(cfg.train.train.global_batch_size)
  rows, max_dloss = [], 0.0
  for spec, t in zip(plan, torch_res["runs"]):
    name = spec["name"]
    if name in by_name:                       # a stage-1 cell, or a stage-2 run of its own
      o, at, shared = by_name[name], spec["steps"], False
    else:                                     # a snapshot of the shared stage-2 run
      parent, n = name.rsplit("-neg", 1)
      o, at, shared = by_name[parent], int(n) // batch, True
    ours_loss, torch_loss = o["loss"][str(at)], t["losses"][-1]
    max_dloss = max(max_dloss, abs(ours_loss - torch_loss))
    rows.append({
        "cell": name, "steps": spec["steps"], "tokens": spec["tokens"],
        "ours run": (f"{o['cell']} (snapshot at step {at})" if shared or o["snapshots"]
                     else o["cell"]),
        "ours train() s": None if shared and at < o["steps"] else o["seconds"],
        "torch process s": t["wall_s"],
        "torch imports s": t["imports_s"], "torch load s": t["load_s"], "torch train s": t["train_s"],
        "torch save s": t["save_s"], "ours loss": ours_loss, "torch loss": torch_loss})
  ours_train_steps = sum(r["steps"] for r in ours["runs"])
  torch_train_steps = sum(s["steps"] for s in plan)
  rows.append({"cell": "total", "steps": torch_train_steps, "tokens": sum(s["tokens"] for s in plan),
               "ours run": f"{len(ours['runs'])} train() calls, {ours_train_steps} steps, 1 process",
               "ours train() s": sum(r["seconds"] for r in ours["runs"]),
               "torch process s": torch_res["wall_s"],
               "torch imports s": sum(r["imports_s"] for r in torch_res["runs"]),
               "torch load s": sum(r["load_s"] for r in torch_res["runs"]),
               "torch train s": sum(r["train_s"] for r in torch_res["runs"]),
               "torch save s": sum(r["save_s"] for r in torch_res["runs"])})
  table = print_table(rows)
  if max_dloss > LOSS_TOLERANCE:
    raise RuntimeError(f"final losses differ by {max_dloss:.3g} > {LOSS_TOLERANCE}: the two sides did "
                       "not train the same cells (weights, batches or optimizer differ)")
  walls = [{"side": "ours (runner, one process)", "processes": 1, "training steps": ours_train_steps,
            "wall s": ours["wall_s"],
            "of which imports s": ours["imports_s"] + ours["before_imports_s"],
            "of which train() s": sum(r["seconds"] for r in ours["runs"])},
           {"side": "authors' way (transformers + torch, a process per cell)",
            "processes": len(torch_res["runs"]), "training steps": torch_train_steps,
            "wall s": torch_res["wall_s"],
            "of which imports s": sum(r["imports_s"] + r["before_imports_s"]
                                      for r in torch_res["runs"]),
            "of which train() s": sum(r["load_s"] + r["train_s"] + r["save_s"]
                                      for r in torch_res["runs"])}]
  print()
  walls_md = print_table(walls)
  comp = ours["compile"]
  where = [{"ours, in its process": "Python start + imports (jax, flax, elasticity)",
            "s": ours["imports_s"] + ours["before_imports_s"]},
           {"ours, in its process": "rebound.validate (counts the IMDb pools: reads the 50,000-review "
                                    "tarball)", "s": ours["validate_s"]},
           {"ours, in its process": "train() calls (load, init, data, steps, checkpoints, exports)",
            "s": sum(r["seconds"] for r in ours["runs"])},
           {"ours, in its process": "the rest of runner.run (plan, cell records, clean-up)",
            "s": ours["runner_s"] - ours["validate_s"] - sum(r["seconds"] for r in ours["runs"])}]
  where += [{"ours, in its process": f"  of all that: {k.replace('_', ' ')} ({int(n)} events)", "s": v}
            for k, (n, v) in sorted(comp.items())]
  where += [{"ours, in its process": f"    XLA compile of {name} (×{len(ts)})", "s": sum(ts)}
            for name, ts in sorted(ours["compiled"].items(), key=lambda kv: -sum(kv[1]))]
  print()
  where_md = print_table(where)
  value = torch_res["wall_s"] / ours["wall_s"]
  loads = "; ".join(f"round {i + 1}: {a:.2f} before ours, {b:.2f} before torch, {c:.2f} after"
                    for i, x in enumerate(rounds) for a, b, c in [x["load"]])
  ckpt = (f"checkpoint.every={_CKPT.value}" if _CKPT.value >= 0 else
          f"the preset's checkpoint.every={int(cfg.train.checkpoint.every)}")
  note = (
      f"{environment()}. Variant `{_VARIANT.value}` (n⁺ ∈ {tuple(int(n) for n in cfg.n_pos)}, "
      f"n⁻ ∈ {tuple(int(n) for n in cfg.n_neg)}, batch {batch}, max length "
      f"{int(cfg.data.max_length)}), {_ROUNDS.value} round(s), the faster total of each side kept. "
      f"1-minute load average (2 cores shared with other sessions): {loads}.\n\n"
      f"**ours**: `runner.run(\"rebound\", cfg, workdir, report=False)` in one fresh process "
      f"(wall includes Python start, imports, JAX start-up, compilation); evaluation excluded "
      f"(`rebound.prepare` replaced by an evaluator that measures nothing); {ckpt} (orbax, "
      "synchronous), an HF export per cell and per snapshot; stage 2 is one run per n⁺ with a "
      "snapshot at each n⁻. **authors' way**: a fresh process per cell (Python start, `import torch, "
      "transformers`, `from_pretrained` of the start model — the base's HF export, or stage 1's "
      "saved model — a bare AdamW loop over the same padded batches, `save_pretrained`); every n⁻ "
      "its own run, so it trains "
      f"{torch_train_steps} steps against our {ours_train_steps}. Batches pre-tokenized for torch "
      "before its clock starts (no tokenization, no IMDb read, no HF Trainer: all in torch's favour). "
      f"Final training losses agree to {max_dloss:.2g} (same weights, batches, optimizer).")
  step_compiles = max(ours["compiled"].values(), key=sum, default=[])
  if len(step_compiles) > 1:
    extra = sum(step_compiles) - max(step_compiles)
    note += (f"\n\nWhere ours loses: its costliest function (the train step) was compiled "
             f"{len(step_compiles)} times ({sum(step_compiles):.1f} s; all but the slowest compile: "
             f"{extra:.1f} s) although every cell has the same shapes — stage 1 starts from the llama2.c "
             "checkpoint and stage 2 from an HF export, and the compiled-step cache tells the two "
             "models apart; `rebound.validate` read the IMDb tarball for "
             f"{ours['validate_s']:.1f} s. Without those two, ours would take about "
             f"{ours['wall_s'] - extra - ours['validate_s']:.0f} s (arithmetic, not measured): "
             f"{torch_res['wall_s'] / (ours['wall_s'] - extra - ours['validate_s']):.2f}x.")
  print("\n" + note)
  line = ratio("rebound_grid_wall", value)
  if _RECORD.value:
    record("rebound grid (bench/rebound_grid.py)", walls_md + "\n" + table + "\n" + where_md + "\n" + note
           + f"\n\n`{line}`\n")


if __name__ == "__main__":
  app.run(main)
