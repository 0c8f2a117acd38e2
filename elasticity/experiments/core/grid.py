"""One work directory's grid: its cells in dependency order, their identities, folders and models,
the ``{experiment_dir}`` / ``{cell_dir}`` / ``{cell:<name>}`` placeholders of their configs, and their
result rows.

`Preempted` is how a run stops on a signal (at a step boundary, with a checkpoint saved, or between
cells): the runner ends there with status ``"preempted"``; rerunning the same command continues.
"""

from __future__ import annotations

import copy
import os
import re
from collections.abc import Sequence
from pathlib import Path

import ml_collections

from elasticity.experiments.core import cells as cells_lib
from elasticity.experiments.core.cells import Cell, Point


class Preempted(RuntimeError):
  """The run was stopped by a signal; rerun the same command to continue."""


class Grid:
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


def row(experiment: str, grid: Grid, cell: Cell, point: Point, metrics: dict[str, float]) -> dict:
  """One results.jsonl row: the cell's identity, its parent's, the point and its metrics."""
  return {"experiment": experiment, "cell": grid.ids[cell.name],
          "parent": grid.ids[cell.parent] if cell.parent else None,
          "config_hash": cells_lib.digest(cell.train.to_dict()) if cell.train is not None else None,
          "seed": cell.seed, "point": point.name, "name": cell.name,
          "coords": {**cell.coords, **dict(point.coords)}, "metrics": metrics}


def resolve_placeholders(cfg, cell: Cell, grid: Grid):
  """The config with ``{experiment_dir}``, ``{cell_dir}`` (the cell's own folder) and ``{cell:<name>}``
  in its strings replaced by folders."""
  allowed = {cell.parent, *cell.needs} - {None}

  def sub(text: str) -> str:
    def cell_dir(m):
      name = m.group(1)
      if name not in allowed:
        raise ValueError(f"cell {cell.name!r}: {m.group(0)} names a cell that is neither its parent nor "
                         f"in its needs {sorted(allowed)}")
      return os.fspath(grid.cell_dir(grid.by_name[name]))
    text = text.replace("{experiment_dir}", os.fspath(grid.workdir))
    text = text.replace("{cell_dir}", os.fspath(grid.cell_dir(cell)))
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
