"""Scaling (paper §5.3, Figs. 5–6): the rebound grid of `elasticity.experiments.rebound` over several
models (``config.models``), each model's cells named ``<model>/<cell>``, and one rebound evaluator per
model (`Dispatch`); the rebound speed is in `elasticity.experiments.scaling.speed`.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

from elasticity.experiments.core import cells as cells_lib
from elasticity.experiments.core.cells import Cell
from elasticity.experiments.core.protocol import Experiment
from elasticity.experiments.rebound import experiment as rebound_experiment
from elasticity.experiments.rebound import grid as rebound


def model_name(c, key: str) -> str:
  return str(c.models[key].get("name") or key)


def model_config(c, key: str):
  """The rebound config of the model ``config.models[key]``."""
  m = c.models[key]
  name = model_name(c, key)
  sub = copy.deepcopy(c.rebound)
  sub.unlock()
  sub.model.name, sub.model.path, sub.model.tokenizer = name, m.path, m.tokenizer
  sub.lock()
  return sub


def validate(c) -> None:
  if not c.models:
    raise ValueError("config.models: at least one model (name → path, tokenizer, params, tokens)")
  for name in c.models:
    m = c.models[name]
    if not m.path:
      raise ValueError(f"config.models.{name}.path: the model's checkpoint is required")
    try:
      rebound.validate(model_config(c, name))
    except ValueError as e:           # the same type: a dry run tolerates a missing scorer
      raise type(e)(f"config.models.{name}: {e}") from None


def plan(c) -> list[Cell]:
  out = []
  for key in c.models:
    name = model_name(c, key)
    for cell in rebound.plan(model_config(c, key)):
      cell.name = f"{name}/{cell.name}"
      cell.parent = f"{name}/{cell.parent}" if cell.parent else None
      cell.needs = tuple(f"{name}/{n}" for n in cell.needs)
      out.append(cell)
  return out


class Dispatch:
  """One rebound evaluator per model, chosen by the cell's ``coords.model``."""

  def __init__(self, evaluators: Mapping[str, Any]):
    self.evaluators = dict(evaluators)
    self.fingerprint = cells_lib.digest({k: v.fingerprint for k, v in sorted(self.evaluators.items())})

  def __call__(self, path, tokenizer, point_dir, context=None):
    return self.evaluators[context.cell.coords["model"]](path, tokenizer, point_dir, context=context)


def prepare(c, workdir):
  return Dispatch({model_name(c, k): rebound_experiment.prepare(model_config(c, k), workdir)
                   for k in c.models})


class Scaling(Experiment):
  """One rebound grid per model, without Table 3's bisection."""

  def validate(self, config) -> None:
    validate(config)

  def plan(self, config) -> list[Cell]:
    return plan(config)

  def prepare(self, config, workdir) -> Dispatch:
    return prepare(config, workdir)


EXPERIMENT = Scaling()
