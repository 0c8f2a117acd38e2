"""Cells: the units of an experiment grid, and their identities.

A **cell** is a training run (a complete `elasticity.train.config` ConfigDict, handed as it is to
`elasticity.train.loop.train`) and/or a list of evaluation **points**, optionally starting from a
model of another cell (its **parent**). A point names which model it evaluates:

- ``"start"``: the model the cell starts from (its parent's model, or ``start_path`` for a root cell);
- ``"final"``: the cell's own final export (``<train workdir>/hf``);
- any other name: a snapshot the cell's run exports (``config.export.snapshots``).

Strings in a cell's training config may name folders the runner knows only when it runs:
``{experiment_dir}`` (the experiment's folder), ``{cell_dir}`` (the cell's own folder, e.g. a file its
experiment's ``before_train`` writes there) and ``{cell:<name>}`` (the folder of cell ``<name>``, which
must be the parent or listed in ``needs``), e.g. a data file that another cell generated.

A cell's **identity** is a short hash of everything that decides its outcome: its resolved training
config's defining keys (`elasticity.train.record.defining_keys`: without the keys a resumed run may
change — logging, checkpoint cadence, mesh, sharding, remat, layer layout, attention core — so a grid
moved to another slice, or to code that adds such a key, keeps its finished cells; ``model.path``
replaced by the parent's identity and model name, so a path on disk never enters it), its root model
path, its points, its ``inputs`` (when it has any) and its parent's identity. Changing one value re-runs only
the cells it reaches. What is evaluated at a point (sampling, scorers, held-out data) is fingerprinted
separately (the experiment's evaluator, e.g. `elasticity.experiments.rebound.evaluate`), so changing
an evaluation setting re-evaluates finished cells without training them again.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
from collections.abc import Mapping, Sequence
from typing import Any

import ml_collections

from elasticity.train import config as config_lib
from elasticity.train import record

ID_LENGTH = 12
PARENT_MODEL = "<parent>"       # what a child cell's model.path holds until the runner resolves it


@dataclasses.dataclass(frozen=True)
class Point:
  """An evaluation point of a cell: a model of the cell, and the grid coordinates of its row."""
  name: str
  model: str = "final"          # "start" | "final" | a snapshot name
  coords: Mapping[str, Any] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass
class Cell:
  name: str                                 # unique and readable within the experiment, e.g. "pos100/sft"
  coords: dict[str, Any]                    # grid coordinates shared by the cell's rows
  train: ml_collections.ConfigDict | None = None
  parent: str | None = None                 # the name of the cell whose model this one starts from
  parent_model: str = "final"               # which model of the parent ("start", "final", a snapshot)
  start_path: str = ""                      # a root cell's model (no parent): a checkpoint path
  start_tokenizer: str = ""                 # its tokenizer ("" = the checkpoint's own)
  points: tuple[Point, ...] = ()
  seed: int = 0
  data: Mapping[str, Any] = dataclasses.field(default_factory=dict)   # sizes, for --dry_run
  needs: tuple[str, ...] = ()               # other cells whose outputs this one reads (run first)
  # values outside the training config that decide the outcome, e.g. how a file it reads from a
  # `needs`/parent cell is made when that is an evaluation setting of the other cell
  inputs: Mapping[str, Any] = dataclasses.field(default_factory=dict)

  def __post_init__(self):
    if self.train is None and not self.points:
      raise ValueError(f"cell {self.name!r}: neither a training run nor evaluation points")
    if self.parent is None and not self.start_path:
      raise ValueError(f"cell {self.name!r}: a root cell needs start_path")
    names = [p.name for p in self.points]
    if len(set(names)) != len(names):
      raise ValueError(f"cell {self.name!r}: repeated point names {names}")
    for p in self.points:
      if p.model not in ("start", "final") and self.train is None:
        raise ValueError(f"cell {self.name!r}, point {p.name!r}: model {p.model!r} needs a training run")
      if p.model == "final" and self.train is None:
        raise ValueError(f"cell {self.name!r}, point {p.name!r}: 'final' needs a training run")

  def snapshot_names(self) -> set[str]:
    return {p.model for p in self.points if p.model not in ("start", "final")}


def canonical(obj: Any) -> str:
  """A canonical JSON text of configs, dataclasses, tuples and plain values (the hash input)."""
  def plain(x):
    if isinstance(x, ml_collections.ConfigDict):
      return plain(x.to_dict())
    if isinstance(x, ml_collections.FieldReference):
      return plain(x.get())
    if dataclasses.is_dataclass(x) and not isinstance(x, type):
      return plain(dataclasses.asdict(x))
    if isinstance(x, Mapping):
      return {str(k): plain(v) for k, v in sorted(x.items(), key=lambda kv: str(kv[0]))}
    if isinstance(x, (list, tuple)):
      return [plain(v) for v in x]
    return x
  return json.dumps(plain(obj), sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def digest(obj: Any, length: int = ID_LENGTH) -> str:
  return hashlib.sha256(canonical(obj).encode("utf-8")).hexdigest()[:length]


def identity(cell: Cell, parent_id: str | None, needs_ids: Mapping[str, str] | None = None) -> str:
  """The cell's short hash (see the module docstring); ``needs_ids``: name → id of ``cell.needs``."""
  train = None
  if cell.train is not None:
    train = cell.train.to_dict()
    if cell.parent is not None:
      train["model"] = dict(train["model"], path=f"{parent_id}:{cell.parent_model}")
    train["export"] = dict(train["export"], snapshot_dir="")   # where they go is the runner's
    train = record.defining_keys(train)
  key = {"train": train, "parent": parent_id, "parent_model": cell.parent_model,
         "needs": sorted(needs_ids.items()) if needs_ids else [],
         "start": cell.start_path, "start_tokenizer": cell.start_tokenizer,
         "points": [dataclasses.asdict(p) for p in cell.points],
         # an evaluation-only cell's seed labels its rows and decides nothing
         "seed": cell.seed if cell.train is not None else None}
  if cell.inputs:                 # absent when empty: the ids of cells without inputs stay as they were
    key["inputs"] = dict(cell.inputs)
  return digest(key)


def order(cells: Sequence[Cell]) -> list[Cell]:
  """The cells with every parent before its children (stable otherwise); errors name the cell."""
  by_name: dict[str, Cell] = {}
  for c in cells:
    if c.name in by_name:
      raise ValueError(f"two cells are named {c.name!r}")
    by_name[c.name] = c
  out, state = [], {}

  def visit(c: Cell, path: tuple[str, ...]) -> None:
    if state.get(c.name) == "done":
      return
    if c.name in path:
      raise ValueError(f"cells form a cycle: {' -> '.join(path + (c.name,))}")
    for dep in ([c.parent] if c.parent is not None else []) + list(c.needs):
      if dep not in by_name:
        raise ValueError(f"cell {c.name!r}: unknown {'parent' if dep == c.parent else 'dependency'} "
                         f"{dep!r}")
      visit(by_name[dep], path + (c.name,))
    state[c.name] = "done"
    out.append(c)

  for c in cells:
    visit(c, ())
  return out


def identities(cells: Sequence[Cell]) -> dict[str, str]:
  """name → identity for cells in `order`."""
  ids: dict[str, str] = {}
  for c in order(cells):
    ids[c.name] = identity(c, ids[c.parent] if c.parent is not None else None,
                           {n: ids[n] for n in c.needs})
  return ids


def validate_training(cells: Sequence[Cell], model_path: str, *, check_scorer: bool = True) -> None:
  """`elasticity.train.config.validate` on every cell's training config (the runner fills in
  ``model.path``; ``model_path`` stands in for it), naming the cell in the error; ``check_scorer=False``
  leaves a PPO cell's reward scorer to the experiment's own check (which names its own key)."""
  for cell in cells:
    if cell.train is None:
      continue
    cfg = copy.deepcopy(cell.train)
    cfg.unlock()
    cfg.model.path = cfg.model.path or model_path
    try:
      config_lib.validate(cfg, check_scorer=check_scorer)
    except ValueError as e:
      raise ValueError(f"config.train (cell {cell.name}): {e}") from None
