"""A finished cell's rows take the labels of the grid that reads them.

A cell's identity hashes what it computes (training config, parent, start, points, seed), not its name or
coordinates, so the same stage-1 run serves rebound grids of different reverse steps; copied into another
grid's workdir it is not run again, and its rows carry that grid's name and coordinates with the metrics
the first grid measured.
"""

from __future__ import annotations

import types

import ml_collections

from elasticity import atomic
from elasticity.experiments.core import runner
from elasticity.experiments.core.cells import Cell, Point


class CountingEvaluator:
  fingerprint = "stub"

  def __init__(self):
    self.calls = []

  def __call__(self, path, tok, point_dir, context=None):
    self.calls.append(context.cell.name)
    return {"value": float(len(self.calls))}


def module(evaluator, step: str):
  def plan(c):
    return [Cell("base", {"step": step, "stage": "base"}, start_path="root",
                 points=(Point("p", "start"),)),
            Cell(f"base/{step}", {"step": step, "stage": "two"}, parent="base", parent_model="start",
                 points=(Point(step, "start"),))]          # a different cell in each grid
  return types.SimpleNamespace(validate=lambda c: None, plan=plan, prepare=lambda c, w: evaluator,
                               refines=False)


def config():
  return ml_collections.ConfigDict(dict(experiment="stub", variant="", runner=dict(
      keep_checkpoints=False, keep_exports=True)))


def test_finished_rows_take_this_grids_labels(monkeypatch, tmp_path):
  first = CountingEvaluator()
  monkeypatch.setitem(runner.EXPERIMENTS, "stub", module(first, "dpo"))
  runner.run("stub", config(), tmp_path, report=False)
  before = atomic.read_jsonl(tmp_path / "results.jsonl")
  assert first.calls == ["base", "base/dpo"]

  again = CountingEvaluator()
  monkeypatch.setitem(runner.EXPERIMENTS, "stub", module(again, "ppo"))
  summary = runner.run("stub", config(), tmp_path, report=False)
  after = atomic.read_jsonl(tmp_path / "results.jsonl")
  assert again.calls == ["base/ppo"] and summary.ran == 1     # the same base cell: not evaluated again
  base_before, base_after = before[0], after[0]
  assert base_after["cell"] == base_before["cell"]
  assert base_after["metrics"] == base_before["metrics"] == {"value": 1.0}
  assert base_before["coords"] == {"step": "dpo", "stage": "base"}
  assert base_after["coords"] == {"step": "ppo", "stage": "base"}      # this grid's label
  assert after[1]["name"] == "base/ppo" and after[1]["coords"]["step"] == "ppo"
