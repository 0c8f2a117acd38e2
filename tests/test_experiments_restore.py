"""A cell added to a finished grid whose parent's export was deleted by cleanup: the runner trains the
parent again, checks it ended where it ended the first time, and the new cell's rows equal a fresh
workdir's (issue 22's neutral arm added to a finished rebound grid, on the tiny preset, in-process)."""

from __future__ import annotations

import json
import shutil

import pytest

from elasticity import atomic
from elasticity.experiments.core import runner
from experiment_configs import preset


def get(**overrides):
  return preset("rebound", "tiny", **{"n_pos": (16,), "n_neg": (0, 8), "neutral.dataset": "",
                                      "runner.keep_exports": False, **overrides})


def _neutral(rows):
  return [json.dumps(r, sort_keys=True) for r in rows if r["coords"]["stage"] == "neutral"]


def test_a_new_arm_restores_the_deleted_parent_export(tmp_path):
  work = tmp_path / "grid"
  assert runner.run("rebound", get(), work, report=False).status == "completed"
  (stage1,) = [r["cell"] for r in atomic.read_jsonl(work / "results.jsonl") if r["coords"]["stage"] == "pos"]
  assert not (work / "cells" / stage1 / "train" / "hf").exists()      # cleaned once its children ran
  before = (work / "results.jsonl").read_text().splitlines()

  assert runner.run("rebound", get(**{"neutral.dataset": "alpaca"}), work, report=False).status == "completed"
  rows = atomic.read_jsonl(work / "results.jsonl")
  assert [json.dumps(r) for r in rows if r["coords"]["stage"] != "neutral"] == before   # old rows kept
  assert not (work / "cells" / stage1 / "restore").exists()

  fresh = tmp_path / "fresh"
  assert runner.run("rebound", get(**{"neutral.dataset": "alpaca"}), fresh, report=False).status == "completed"
  assert _neutral(rows) and _neutral(rows) == _neutral(atomic.read_jsonl(fresh / "results.jsonl"))


def test_a_parent_that_trains_to_another_end_is_refused(tmp_path):
  work = tmp_path / "grid"
  assert runner.run("rebound", get(), work, report=False).status == "completed"
  (stage1,) = [r["cell"] for r in atomic.read_jsonl(work / "results.jsonl") if r["coords"]["stage"] == "pos"]
  done = work / "cells" / stage1 / "train" / "DONE.json"
  d = json.loads(done.read_text())
  d["last"]["loss"] += 1e-6                 # as if the first run had been made by other code
  atomic.write_json(done, d)
  with pytest.raises(runner.RestoreMismatch, match=r"s42/pos16.*trained again to restore"):
    runner.run("rebound", get(**{"neutral.dataset": "alpaca"}), work, report=False)
  assert (work / "cells" / stage1 / "restore" / "DONE.json").exists()   # kept for inspection
  assert not (work / "cells" / stage1 / "train" / "hf").exists()


def test_shards_restore_in_their_own_folders(tmp_path):
  """Two shards that need the same deleted parent each train it again in ``restore.<i>-of-<n>/``
  (never one workdir for two processes); run one after the other here, the merged rows equal a fresh
  unsharded workdir's, and no restore folder is left."""
  from elasticity.experiments.core import shards
  work = tmp_path / "grid"
  assert runner.run("rebound", get(), work, report=False).status == "completed"
  (stage1,) = [r["cell"] for r in atomic.read_jsonl(work / "results.jsonl") if r["coords"]["stage"] == "pos"]
  new = get(**{"neutral.dataset": "alpaca"})
  for i in (0, 1):
    assert runner.run("rebound", new, work, report=False, shard=(i, 2)).status == "completed"
  assert not list((work / "cells" / stage1).glob("restore*"))
  merged = atomic.read_jsonl(shards.merge_shards(work))
  fresh = tmp_path / "fresh"
  assert runner.run("rebound", new, fresh, report=False).status == "completed"
  assert _neutral(merged) and _neutral(merged) == _neutral(atomic.read_jsonl(fresh / "results.jsonl"))

  d = json.loads((work / "cells" / stage1 / "train" / "DONE.json").read_text())
  d["last"]["loss"] += 1e-6
  atomic.write_json(work / "cells" / stage1 / "train" / "DONE.json", d)
  for c in (work / "cells").iterdir():          # the neutral cells again, from a deleted export
    if (c / "cell.json").exists() and json.loads((c / "cell.json").read_text()).get("parent") == stage1:
      (c / "done.json").unlink(missing_ok=True)
  shutil.rmtree(work / "cells" / stage1 / "train" / "hf", ignore_errors=True)
  raised = []
  for i in (0, 1):
    try:
      runner.run("rebound", new, work, report=False, shard=(i, 2))
    except runner.RestoreMismatch:
      raised.append(i)
  assert len(raised) >= 1
  assert sorted(p.name for p in (work / "cells" / stage1).glob("restore*")) == [
      f"restore.{i}-of-2" for i in raised]
