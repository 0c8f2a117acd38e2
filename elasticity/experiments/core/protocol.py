"""What an experiment gives the runner, and what the runner gives its evaluator.

An experiment (``elasticity.experiments.rebound``, ``resistance``, ``scaling``) is an object with

    validate(config) -> None                 # every check that needs no model: before anything loads
    plan(config) -> list[Cell]               # the static grid (`elasticity.experiments.core.cells`)
    prepare(config, workdir) -> Evaluator    # data files the cells read, and the point evaluator
    before_train(config, TrainContext)       # data only the cell's start model can make (default: none)
    refine(config, rows) -> list[Cell]       # more cells from results so far (default: none)

registered by name in `elasticity.experiments.core.registry`. An experiment whose ``refine`` adds
cells (rebound's Table 3 bisection) says so with ``refines = True``, so a dry run and a shard can
tell the user about the cells that only the results decide.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

import ml_collections

from elasticity.experiments.core.cells import Cell, Point


@dataclasses.dataclass(frozen=True)
class PointContext:
  """What an evaluator may use beyond the checkpoint: the cell, its folders and its start model."""
  cell: Cell
  cell_id: str
  cell_dir: Path
  train_dir: Path | None
  start: tuple[str, str]          # (checkpoint, tokenizer) the cell started from
  point: Point


@dataclasses.dataclass(frozen=True)
class TrainContext:
  """What `Experiment.before_train` may use: the cell, its folders, its start model and the
  experiment's own evaluator (what ``prepare`` returned)."""
  cell: Cell
  cell_id: str
  cell_dir: Path
  workdir: Path
  start: tuple[str, str]          # (checkpoint, tokenizer) the cell starts from
  evaluator: Any


class Evaluator(Protocol):
  """Measures one evaluation point; ``fingerprint`` names every setting that decides its numbers
  (a finished cell is evaluated again when it changes)."""
  fingerprint: str

  def __call__(self, checkpoint: str, tokenizer: str, point_dir: str | os.PathLike,
               context: PointContext | None = None) -> dict[str, float]: ...


class Experiment(Protocol):
  """An experiment as the runner sees it (module docstring)."""
  refines: bool = False

  def validate(self, config: ml_collections.ConfigDict) -> None: ...

  def plan(self, config: ml_collections.ConfigDict) -> list[Cell]: ...

  def prepare(self, config: ml_collections.ConfigDict, workdir: Path) -> Evaluator: ...

  def before_train(self, config: ml_collections.ConfigDict, context: TrainContext) -> None:
    """Write what the cell's run reads and only its start model can make (e.g. preference pairs
    sampled from that model), into ``context.cell_dir``; called on every process before every run
    of an unfinished cell, so again when an interrupted cell resumes (reuse what is there)."""
    del config, context

  def refine(self, config: ml_collections.ConfigDict, rows: Sequence[dict[str, Any]]) -> list[Cell]:
    """More cells from the results so far (e.g. bisection points); [] when there are none."""
    del config, rows
    return []
