"""The experiment runner: a grid of cells, run one after another in one process, resumable at any point.

    from elasticity.experiments import runner
    summary = runner.run("rebound", config, "runs/rebound")        # or launch/experiment.py

An **experiment** is a module with (the evaluator is called as
``evaluator(checkpoint, tokenizer, point_dir, context=PointContext)`` and has a ``fingerprint``)

    validate(config) -> None                 # every check that needs no model: before anything loads
    plan(config) -> list[Cell]               # the static grid (`elasticity.experiments.cells`)
    prepare(config, workdir) -> Evaluator    # data files the cells read, and the point evaluator
    refine(config, rows) -> list[Cell]       # optional: more cells from results so far (bisection)

Layout of the work directory (every file written atomically, on process 0 only)::

    experiment.json         resolved config, package versions, git commit
    data/                   files the cells train on (`elasticity.experiments.tasks`)
    cells/<id>/cell.json    the cell as resolved (name, coordinates, parent id, training config)
    cells/<id>/train/       the training workdir (checkpoints, metrics.jsonl, hf/, snapshots)
    cells/<id>/points/<p>/  generations.jsonl, metrics.json of each evaluation point
    cells/<id>/done.json    the cell's result rows and evaluation fingerprint, written last
    results.jsonl           every finished cell's rows, in plan order
    report.md, plots/       from results.jsonl (`elasticity.report`)

Rerunning the same command skips finished cells (``done.json`` with the current evaluation
fingerprint) and resumes an interrupted training run from its latest checkpoint. SIGTERM/SIGINT stop
the current run at a step boundary with a checkpoint saved, and the runner stops there (status
``"preempted"``), never moving on to the next cell. Because training resumes exactly and evaluation is
seeded, an interrupted and resumed experiment writes the same ``results.jsonl`` as an uninterrupted
one. Cells share one process, so compiled functions of equal shapes are reused from cell to cell.

**Shards** (``shard=(i, n)``, ``launch/experiment.py --shard=i/n``, i from 0): the process runs only
the cells whose position in the ordered grid is ≡ i (mod n), so n processes on n machines sharing
``workdir`` run disjoint parts of one grid. A cell whose parent or needs belong to another shard waits,
polling every ``poll_s`` seconds, for that cell's ``done.json`` (``runner.wait_timeout_s``, default a
day, then a `ShardWaitTimeout` naming both cells). Cells are in dependency order, so the globally first
unfinished cell never waits and the shards cannot deadlock. Each shard writes its rows to
``shards/results.<i>-of-<n>.jsonl`` and the grid's cell order to ``grid.json``; ``python -m
launch.report --workdir=DIR`` merges them (`merge_shards`) into ``results.jsonl``, equal to a
single-process run's, then writes the report. A shard never deletes an export that a cell without
``done.json`` (in any shard) starts from. ``refine()`` cells are not run under ``--shard`` (a warning
says so): run the same command without ``--shard`` afterwards to add them.

Disk: a finished cell's checkpoints are deleted unless ``runner.keep_checkpoints``; its exports are
deleted once no pending cell starts from them unless ``runner.keep_exports``.
"""

from __future__ import annotations

import copy
import dataclasses
import importlib
import math
import os
import shutil
import subprocess
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import ml_collections
from absl import logging

from elasticity import atomic
from elasticity.experiments import cells as cells_lib
from elasticity.eval.scorers import ScorerConfigError
from elasticity.experiments.cells import Cell

EXPERIMENTS = {"rebound": "elasticity.experiments.rebound",
               "scaling": "elasticity.experiments.scaling",
               "resistance": "elasticity.experiments.resistance"}


class Preempted(RuntimeError):
  """The run was stopped by a signal; rerun the same command to continue."""


class ShardWaitTimeout(RuntimeError):
  """A cell of this shard waited too long for a cell of another shard."""


GRID_FILE = "grid.json"
SHARDS_DIR = "shards"


def parse_shard(text: str) -> tuple[int, int] | None:
  """``"i/n"`` (0 <= i < n) → ``(i, n)``; ``""`` → None. Errors name the flag."""
  if not text:
    return None
  try:
    i, n = (int(x) for x in text.split("/"))
  except ValueError:
    raise ValueError(f"--shard: want i/n (e.g. 0/4), got {text!r}") from None
  if n < 1 or not 0 <= i < n:
    raise ValueError(f"--shard: want 0 <= i < n, got {text!r}")
  return i, n


def shard_file(workdir: Path, shard: tuple[int, int]) -> Path:
  return Path(workdir) / SHARDS_DIR / f"results.{shard[0]}-of-{shard[1]}.jsonl"


def shard_of(position: int, shard: tuple[int, int] | None) -> bool:
  return shard is None or position % shard[1] == shard[0]


def merge_shards(workdir: str | os.PathLike) -> Path | None:
  """Merge ``shards/results.*-of-*.jsonl`` into ``results.jsonl`` in the grid's cell order (the order
  of ``grid.json``); rows of a cell keep their order. None when the folder holds no shard files."""
  workdir = Path(workdir)
  files = sorted((workdir / SHARDS_DIR).glob("results.*-of-*.jsonl"))
  if not files:
    return None
  grid_path = workdir / GRID_FILE
  if not grid_path.is_file():
    raise FileNotFoundError(f"{grid_path}: missing (written by every --shard run); cannot order the "
                            f"rows of {[f.name for f in files]}")
  position = {cid: i for i, cid in enumerate(atomic.read_json(grid_path)["cells"])}
  rows, seen = [], {}
  for f in files:
    for j, r in enumerate(atomic.read_jsonl(f)):
      if r.get("cell") not in position:
        raise ValueError(f"{f}, row {j + 1}: cell {r.get('cell')!r} is not in {grid_path}")
      key = (r["cell"], r["point"])
      if key in seen and seen[key] != r:
        raise ValueError(f"{f}, row {j + 1}: cell {r['cell']} point {r['point']} differs from the "
                         f"row in another shard file")
      if key not in seen:
        seen[key] = r
        rows.append((position[r["cell"]], len(rows), r))
  rows.sort(key=lambda x: (x[0], x[1]))
  return atomic.write_jsonl(workdir / "results.jsonl", [r for _, _, r in rows])


@dataclasses.dataclass
class Summary:
  status: str                     # "completed" | "preempted" | "dry_run"
  cells: int
  ran: int                        # cells trained or evaluated in this process
  rows: list[dict]
  workdir: str


def experiment_module(name: str):
  if name not in EXPERIMENTS:
    raise ValueError(f"config.experiment: {name!r} is not one of {sorted(EXPERIMENTS)}")
  return importlib.import_module(EXPERIMENTS[name])


def _is_writer() -> bool:
  import jax
  return jax.process_index() == 0


def _versions() -> dict[str, str]:
  from importlib import metadata
  out = {}
  for pkg in ("elasticity", "jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "transformers",
              "numpy", "ml-collections"):
    try:
      out[pkg] = metadata.version(pkg)
    except metadata.PackageNotFoundError:
      pass
  return out


def _git_commit() -> str:
  root = Path(__file__).resolve().parents[2]
  try:
    out = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True,
                         text=True, timeout=10)
    dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                           capture_output=True, text=True, timeout=10).stdout.strip()
    return out.stdout.strip() + ("+dirty" if dirty else "") if out.returncode == 0 else ""
  except (OSError, subprocess.SubprocessError):
    return ""


# -- the cell table -----------------------------------------------------------------------------


def _steps(train) -> int:
  if train is None:
    return 0
  if train.train.num_steps:
    return int(train.train.num_steps)
  n = int(train.data.slice[1] - train.data.slice[0]) if train.data.slice else int(train.data.n)
  return int(train.train.num_epochs) * math.ceil(n / int(train.train.global_batch_size)) if n else 0


def table(cells: Sequence[Cell], ids: dict[str, str]) -> str:
  """The cell table of ``--dry_run``: id, parent, data sizes, steps, tokens (an upper bound)."""
  lines = [f"{'cell':<34} {'id':<12} {'parent':<12} {'data':<24} {'steps':>6} {'tokens≤':>11} points"]
  total_steps = total_tokens = 0
  for c in cells:
    steps = _steps(c.train)
    tokens = steps * int(c.train.train.global_batch_size) * int(c.train.data.max_length) if c.train else 0
    total_steps, total_tokens = total_steps + steps, total_tokens + tokens
    data = ", ".join(f"{k}={v}" for k, v in c.data.items()) or "-"
    parent = ids[c.parent] if c.parent else "-"
    lines.append(f"{c.name:<34} {ids[c.name]:<12} {parent:<12} {data:<24} {steps:>6} {tokens:>11} "
                 + ",".join(p.name for p in c.points))
  lines.append(f"{len(cells)} cells, {sum(c.train is not None for c in cells)} training runs, "
               f"{total_steps} steps, ≤ {total_tokens} tokens, "
               f"{sum(len(c.points) for c in cells)} evaluation points")
  return "\n".join(lines)


# -- running ------------------------------------------------------------------------------------


class _Grid:
  """The cells of one experiment directory, their identities and where their models are."""

  def __init__(self, workdir: Path):
    self.workdir = workdir
    self.cells: list[Cell] = []
    self.ids: dict[str, str] = {}
    self.by_name: dict[str, Cell] = {}

  def add(self, new: Sequence[Cell]) -> list[Cell]:
    ordered = cells_lib.order([*self.cells, *new])
    ids = cells_lib.identities(ordered)
    fresh = [c for c in ordered if c.name not in self.by_name]
    self.cells, self.ids = ordered, ids
    self.by_name = {c.name: c for c in ordered}
    return fresh

  def cell_dir(self, cell: Cell) -> Path:
    return self.workdir / "cells" / self.ids[cell.name]

  def model(self, cell: Cell, which: str) -> tuple[str, str]:
    """(checkpoint path, tokenizer path or "") of one of a cell's models."""
    if which == "start":
      if cell.parent is None:
        return cell.start_path, cell.start_tokenizer
      return self.model(self.by_name[cell.parent], cell.parent_model)
    train_dir = self.cell_dir(cell) / "train"
    return os.fspath(train_dir / ("hf" if which == "final" else which)), ""


def _row(experiment: str, grid: _Grid, cell: Cell, point, metrics: dict[str, float]) -> dict:
  return {"experiment": experiment, "cell": grid.ids[cell.name],
          "parent": grid.ids[cell.parent] if cell.parent else None,
          "config_hash": cells_lib.digest(cell.train.to_dict()) if cell.train is not None else None,
          "seed": cell.seed, "point": point.name, "name": cell.name,
          "coords": {**cell.coords, **dict(point.coords)}, "metrics": metrics}


def _train_cell(cell: Cell, grid: _Grid, stop: Callable[[], bool] | None, progress: str) -> None:
  from elasticity.train.loop import train
  cfg = copy.deepcopy(cell.train)
  cfg.unlock()
  path, tok = grid.model(cell, "start")
  cfg.model.path, cfg.model.tokenizer = path, tok
  cfg.export.snapshot_dir = ""          # snapshots inside the cell's train workdir
  cfg.lock()
  cfg = resolve_placeholders(cfg, cell, grid)
  t0, last = time.perf_counter(), [0.0]

  def on_step(step: int, total: int, metrics: dict) -> None:
    now = time.perf_counter()
    if now - last[0] < 10 and step != total:
      return
    last[0] = now
    eta = (now - t0) / max(step, 1) * (total - step)
    logging.info("%s step %d/%d  loss %.4f  ETA %s", progress, step, total,
                 float(metrics.get("loss", float("nan"))), time.strftime("%H:%M:%S", time.gmtime(eta)))

  result = train(cfg, grid.cell_dir(cell) / "train", stop=stop, on_step=on_step)
  if result.status != "completed":
    raise Preempted(f"cell {cell.name!r} ({grid.ids[cell.name]}) stopped at step {result.step}/"
                    f"{result.total_steps}; rerun the same command to resume it")


def resolve_placeholders(cfg, cell: Cell, grid: _Grid):
  """The config with ``{experiment_dir}`` and ``{cell:<name>}`` in its strings replaced by folders."""
  import re
  allowed = {cell.parent, *cell.needs} - {None}

  def sub(text: str) -> str:
    def cell_dir(m):
      name = m.group(1)
      if name not in allowed:
        raise ValueError(f"cell {cell.name!r}: {m.group(0)} names a cell that is neither its parent nor "
                         f"in its needs {sorted(allowed)}")
      return os.fspath(grid.cell_dir(grid.by_name[name]))
    text = text.replace("{experiment_dir}", os.fspath(grid.workdir))
    return re.sub(r"\{cell:([^}]+)\}", cell_dir, text)

  def walk(node):
    for key in list(node.keys()):
      value = node[key]
      if isinstance(value, ml_collections.ConfigDict):
        walk(value)
      elif isinstance(value, str) and "{" in value:
        node[key] = sub(value)
      elif isinstance(value, tuple) and any(isinstance(v, str) and "{" in v for v in value):
        node[key] = tuple(sub(v) if isinstance(v, str) else v for v in value)

  out = copy.deepcopy(cfg)
  out.unlock()
  walk(out)
  out.lock()
  return out


@dataclasses.dataclass(frozen=True)
class PointContext:
  """What an evaluator may use beyond the checkpoint: the cell, its folders and its start model."""
  cell: Cell
  cell_id: str
  cell_dir: Path
  train_dir: Path | None
  start: tuple[str, str]          # (checkpoint, tokenizer) the cell started from
  point: Any


def _cleanup(grid: _Grid, done: set[str], keep_checkpoints: bool, keep_exports: bool,
             sharded: bool = False) -> None:
  if not _is_writer():
    return
  own = set(done)        # this process's finished cells: the only ones whose files it deletes
  if sharded:     # cells of other shards count as done only once their done.json exists
    done = done | {c.name for c in grid.cells if (grid.cell_dir(c) / "done.json").exists()}
  for cell in grid.cells:
    if cell.name not in done or cell.train is None:
      continue
    train_dir = grid.cell_dir(cell) / "train"
    if not keep_checkpoints and (train_dir / "checkpoints").exists():
      shutil.rmtree(train_dir / "checkpoints", ignore_errors=True)
    if keep_exports or (sharded and cell.name not in own):
      continue
    pending = [c for c in grid.cells if c.name not in done]
    if any(cell.name in c.needs for c in pending):
      continue
    needed = {c.parent_model for c in pending if c.parent == cell.name}
    for name in ["final", *sorted(cell.snapshot_names())]:
      d = train_dir / ("hf" if name == "final" else name)
      if name not in needed and d.exists():
        shutil.rmtree(d, ignore_errors=True)


def _wait_for(grid: _Grid, cell: Cell, stop: Callable[[], bool] | None, timeout_s: float,
              poll_s: float, shard: tuple[int, int], progress: str) -> None:
  """Block until every parent/needs cell of ``cell`` has its ``done.json`` (other shards')."""
  deps = ([cell.parent] if cell.parent else []) + list(cell.needs)
  t0 = time.monotonic()
  logged = False
  for dep in deps:
    marker = grid.cell_dir(grid.by_name[dep]) / "done.json"
    while not marker.exists():
      if stop is not None and stop():
        raise Preempted(f"stopped on a signal while {cell.name!r} waited for {dep!r}")
      waited = time.monotonic() - t0
      if waited > timeout_s:
        raise ShardWaitTimeout(
            f"shard {shard[0]}/{shard[1]}: cell {cell.name!r} ({grid.ids[cell.name]}) waited "
            f"{waited:.0f}s for cell {dep!r} ({grid.ids[dep]}) of another shard: no {marker} yet "
            f"(is that shard running? raise runner.wait_timeout_s to wait longer)")
      if not logged:
        logging.info("%s waits for %s (%s) of another shard", progress, dep, grid.ids[dep])
        logged = True
      time.sleep(poll_s)


def validate(experiment: str, config, *, dry_run: bool = False) -> None:
  """The experiment's own checks (a clear ``ValueError`` naming the key, before anything is loaded).

  A dry run only warns about a missing or unusable scorer: it lists the grid, which needs none, so
  the paper's grids can be inspected on a machine where no classifier or cost model is installed.
  """
  try:
    experiment_module(experiment).validate(config)
  except ScorerConfigError as e:
    if not dry_run:
      raise
    logging.warning("dry run: %s (a real run stops here)", e)


def run(experiment: str, config, workdir: str | os.PathLike, *, dry_run: bool = False,
        stop: Callable[[], bool] | None = None, report: bool = True,
        shard: tuple[int, int] | None = None, poll_s: float = 2.0, validated: bool = False
        ) -> Summary:
  """Run (or continue) the experiment ``config`` describes in ``workdir`` (module docstring);
  ``shard=(i, n)`` runs only the i-th of n disjoint parts of the grid; ``validated``: the caller has
  already run `validate` on this config."""
  if shard is not None and (shard[1] < 1 or not 0 <= shard[0] < shard[1]):
    raise ValueError(f"shard: want (i, n) with 0 <= i < n, got {shard}")
  if shard is not None and shard[1] == 1:
    shard = None
  exp = experiment_module(experiment)
  if not validated:
    validate(experiment, config, dry_run=dry_run)
  workdir = Path(os.path.abspath(os.fspath(workdir)))
  grid = _Grid(workdir)
  grid.add(exp.plan(config))
  if dry_run:
    cells_shown = [c for j, c in enumerate(grid.cells) if shard_of(j, shard)]
    print(table(cells_shown, grid.ids), flush=True)
    if hasattr(exp, "refine"):
      print("(plus the cells that refine() adds from the results, e.g. bisection points)", flush=True)
    return Summary("dry_run", len(grid.cells), 0, [], os.fspath(workdir))

  if _is_writer():
    atomic.write_json(workdir / "experiment.json", {
        "experiment": experiment, "variant": str(config.get("variant", "")),
        "config": config.to_dict(), "versions": _versions(), "git_commit": _git_commit()})
    if shard is not None:
      atomic.write_json(workdir / GRID_FILE, {"cells": [grid.ids[c.name] for c in grid.cells]})
  evaluator = exp.prepare(config, workdir)
  runner_cfg = config.runner
  wait_timeout_s = float(runner_cfg.get("wait_timeout_s", 86400.0))
  mine = {c.name for j, c in enumerate(grid.cells) if shard_of(j, shard)}
  rows_by_cell: dict[str, list[dict]] = {}
  ran = 0
  pending = [c for c in grid.cells if c.name in mine]
  t_start = time.perf_counter()
  try:
    while pending:
      for cell in pending:
        if stop is not None and stop():
          raise Preempted("stopped on a signal between cells; rerun the same command to continue")
        i = len(rows_by_cell) + 1
        progress = f"[cell {i}/{len(mine)} {cell.name}]"
        cdir = grid.cell_dir(cell)
        marker = cdir / "done.json"
        if marker.exists():
          done = atomic.read_json(marker)
          if done.get("fingerprint") == evaluator.fingerprint:
            rows_by_cell[cell.name] = done["rows"]
            logging.info("%s done already (%s)", progress, grid.ids[cell.name])
            continue
        logging.info("%s %s: %s", progress, grid.ids[cell.name],
                     "training" if cell.train is not None else "evaluating")
        if shard is not None:
          _wait_for(grid, cell, stop, wait_timeout_s, poll_s, shard, progress)
        if _is_writer():
          atomic.write_json(cdir / "cell.json", {
              "name": cell.name, "id": grid.ids[cell.name], "coords": cell.coords,
              "parent": grid.ids[cell.parent] if cell.parent else None, "parent_model": cell.parent_model,
              "start": cell.start_path, "points": [dataclasses.asdict(p) for p in cell.points],
              "train": cell.train.to_dict() if cell.train is not None else None})
        if cell.train is not None:
          _train_cell(cell, grid, stop, progress)
        rows = []
        for point in cell.points:
          path, tok = grid.model(cell, point.model)
          ctx = PointContext(cell, grid.ids[cell.name], cdir,
                             cdir / "train" if cell.train is not None else None,
                             grid.model(cell, "start"), point)
          metrics = evaluator(path, tok, cdir / "points" / point.name, context=ctx)
          rows.append(_row(experiment, grid, cell, point, metrics))
        if _is_writer():
          atomic.write_json(cdir / "done.json", {"fingerprint": evaluator.fingerprint, "rows": rows})
        rows_by_cell[cell.name] = rows
        ran += 1
        _write_results(grid, rows_by_cell, shard)
        _cleanup(grid, set(rows_by_cell), runner_cfg.keep_checkpoints, runner_cfg.keep_exports,
                 shard is not None)
        elapsed = time.perf_counter() - t_start
        logging.info("%s finished; %d/%d cells done, %.0fs elapsed", progress, len(rows_by_cell),
                     len(grid.cells), elapsed)
      more = exp.refine(config, [r for c in grid.cells for r in rows_by_cell.get(c.name, [])]) \
          if hasattr(exp, "refine") and shard is None else []
      if hasattr(exp, "refine") and shard is not None:
        logging.warning("shard %d/%d: refine() cells (e.g. bisection points) are not run with "
                        "--shard; run the same command without --shard to add them", *shard)
      pending = grid.add(more) if more else []
      mine |= {c.name for c in pending}
  except Preempted as e:
    logging.warning("%s", e)
    rows = _write_results(grid, rows_by_cell, shard)
    return Summary("preempted", len(mine), ran, rows, os.fspath(workdir))
  rows = _write_results(grid, rows_by_cell, shard)
  _cleanup(grid, set(rows_by_cell), runner_cfg.keep_checkpoints, runner_cfg.keep_exports,
           shard is not None)
  if shard is not None:
    logging.info("shard %d/%d done; merge every shard's rows and report with: python -m "
                 "launch.report --workdir=%s", shard[0], shard[1], workdir)
    return Summary("completed", len(mine), ran, rows, os.fspath(workdir))
  if report and _is_writer():
    from elasticity.report import build_report
    out = build_report(workdir)
    logging.info("report: %s", out)
  return Summary("completed", len(grid.cells), ran, rows, os.fspath(workdir))


def _write_results(grid: _Grid, rows_by_cell: dict[str, list[dict]],
                   shard: tuple[int, int] | None = None) -> list[dict]:
  rows = [r for c in grid.cells for r in rows_by_cell.get(c.name, [])]
  if _is_writer():
    atomic.write_jsonl(grid.workdir / "results.jsonl" if shard is None else
                       shard_file(grid.workdir, shard), rows)
  return rows
