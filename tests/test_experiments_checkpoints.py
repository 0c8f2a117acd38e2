"""The runner's cells skip the checkpoint of their last step when cleanup deletes finished cells'
checkpoints (``runner.keep_checkpoints=False``): a ~1.6 GB write and seal per SmolLM2 cell, deleted
seconds later. With ``keep_checkpoints`` they keep it."""

from __future__ import annotations

import types

import ml_collections
import pytest

from elasticity.experiments.core import runner
from elasticity.experiments.core.cells import Cell, Point
from elasticity.train import config as train_config
from elasticity.train.record import RunResult


class Evaluator:
  fingerprint = "stub"

  def __call__(self, path, tok, point_dir, context=None):
    return {"value": 1.0}


def stub():
  def plan(c):
    return [Cell("a", {"stage": "a"}, train=train_config.default_config(), start_path="root",
                 points=(Point("p", "final"),))]
  return types.SimpleNamespace(validate=lambda c: None, plan=plan, prepare=lambda c, w: Evaluator(),
                               refines=False, before_train=lambda config, ctx: None)


@pytest.mark.parametrize("keep", [False, True])
def test_the_last_checkpoint_follows_keep_checkpoints(monkeypatch, tmp_path, keep):
  seen = []

  def train(cfg, workdir, **kw):
    seen.append(cfg.checkpoint.at_end)
    return RunResult("completed", 1, 1, str(workdir))
  monkeypatch.setattr(runner.loop, "train", train)
  monkeypatch.setitem(runner.EXPERIMENTS, "stub", stub())
  config = ml_collections.ConfigDict(dict(experiment="stub", variant="", runner=dict(
      keep_checkpoints=keep, keep_exports=True)))
  assert runner.run("stub", config, tmp_path, report=False).status == "completed"
  assert seen == [keep]
