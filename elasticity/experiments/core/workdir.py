"""What a run writes into its work directory beside the cells' own files, and what it deletes.

    experiment.json         resolved config, package versions, git commit
    cells/<id>/cell.json    the cell as resolved (name, coordinates, parent id, training config)
    cells/<id>/done.json    the cell's result rows and evaluation fingerprint, written last
    results.jsonl           every finished cell's rows, in plan order (a shard: shards/…)

Every file is written atomically, on process 0 only (`is_writer`). Disk: a finished cell's
checkpoints are deleted unless ``runner.keep_checkpoints``; its exports are deleted once no pending
cell starts from them unless ``runner.keep_exports`` (`cleanup`).
"""

from __future__ import annotations

import dataclasses
import shutil
import subprocess
from importlib import metadata
from pathlib import Path

import jax

from elasticity import atomic, paths
from elasticity.experiments.core.cells import Cell
from elasticity.experiments.core.grid import Grid
from elasticity.experiments.core.shards import GRID_FILE, shard_file

PACKAGES = ("elasticity", "jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "transformers",
            "numpy", "ml-collections")


def is_writer() -> bool:
  return jax.process_index() == 0


def versions() -> dict[str, str]:
  out = {}
  for pkg in PACKAGES:
    try:
      out[pkg] = metadata.version(pkg)
    except metadata.PackageNotFoundError:
      pass
  return out


def git_commit() -> str:
  root = paths.PROJECT_ROOT
  try:
    out = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True,
                         text=True, timeout=10)
    dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                           capture_output=True, text=True, timeout=10).stdout.strip()
    return out.stdout.strip() + ("+dirty" if dirty else "") if out.returncode == 0 else ""
  except (OSError, subprocess.SubprocessError):
    return ""


def write_experiment(workdir: Path, experiment: str, config, grid: Grid,
                     shard: tuple[int, int] | None) -> None:
  """``experiment.json`` (and a shard's ``grid.json``, the cell order `merge_shards` follows)."""
  if not is_writer():
    return
  atomic.write_json(workdir / "experiment.json", {
      "experiment": experiment, "variant": str(config.get("variant", "")),
      "config": config.to_dict(), "versions": versions(), "git_commit": git_commit()})
  if shard is not None:
    atomic.write_json(workdir / GRID_FILE, {"cells": [grid.ids[c.name] for c in grid.cells]})


def write_cell(grid: Grid, cell: Cell) -> None:
  """``cells/<id>/cell.json``: the cell as resolved, before it trains."""
  if is_writer():
    atomic.write_json(grid.cell_dir(cell) / "cell.json", {
        "name": cell.name, "id": grid.ids[cell.name], "coords": cell.coords,
        "parent": grid.ids[cell.parent] if cell.parent else None, "parent_model": cell.parent_model,
        "start": cell.start_path, "points": [dataclasses.asdict(p) for p in cell.points],
        "train": cell.train.to_dict() if cell.train is not None else None})


def write_done(grid: Grid, cell: Cell, fingerprint: str, rows: list[dict]) -> None:
  if is_writer():
    atomic.write_json(grid.cell_dir(cell) / "done.json", {"fingerprint": fingerprint, "rows": rows})


def write_results(grid: Grid, rows_by_cell: dict[str, list[dict]],
                  shard: tuple[int, int] | None = None) -> list[dict]:
  """Every finished cell's rows in grid order, to ``results.jsonl`` (a shard: its own file)."""
  rows = [r for c in grid.cells for r in rows_by_cell.get(c.name, [])]
  if is_writer():
    atomic.write_jsonl(grid.workdir / "results.jsonl" if shard is None else
                       shard_file(grid.workdir, shard), rows)
  return rows


def cleanup(grid: Grid, done: set[str], keep_checkpoints: bool, keep_exports: bool,
            sharded: bool = False) -> None:
  """Delete finished cells' checkpoints, and exports no pending cell starts from (module docstring)."""
  if not is_writer():
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
