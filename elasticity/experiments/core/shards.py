"""Shards of one grid (``shard=(i, n)``, ``launch/experiment.py --shard=i/n``, i from 0).

A process runs only the cells whose position in the ordered grid is ≡ i (mod n), so n processes on
n machines sharing the work directory run disjoint parts of one grid. A cell whose parent or needs
belong to another shard waits (`wait_for`), polling for that cell's ``done.json`` until a timeout
(then a `ShardWaitTimeout` naming both cells). Cells are in dependency order, so the globally first
unfinished cell never waits and the shards cannot deadlock. Each shard writes its rows to
``shards/results.<i>-of-<n>.jsonl`` and the grid's cell order to ``grid.json``; `merge_shards` merges
them into ``results.jsonl``, equal to a single-process run's.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path

from absl import logging

from elasticity import atomic
from elasticity.experiments.core.cells import Cell
from elasticity.experiments.core.grid import Grid, Preempted

GRID_FILE = "grid.json"
SHARDS_DIR = "shards"


class ShardWaitTimeout(RuntimeError):
  """A cell of this shard waited too long for a cell of another shard."""


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


def wait_for(grid: Grid, cell: Cell, stop: Callable[[], bool] | None, timeout_s: float,
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
