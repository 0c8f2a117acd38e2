"""Grids across machines: ``--shard=i/n`` runs disjoint parts, waits for other shards' cells, merges.

Fast tests use a stub experiment (evaluation-only cells, a stub evaluator) run by two threads; the
end-to-end test runs two ``launch.experiment --shard`` processes on the ``tiny`` resistance grid and
compares the merged ``results.jsonl`` with a single-process run's, byte for byte (the session's run,
conftest's ``tiny_resistance_run``, which test_experiments_resistance.py reads too).
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
import types
from pathlib import Path

import ml_collections
import pytest

from conftest import resistance_cmd
from elasticity import atomic
from elasticity.experiments.core import runner, shards
from elasticity.experiments.core.cells import Cell, Point

ROOT = Path(__file__).resolve().parent.parent


class StubEvaluator:
  fingerprint = "stub"

  def __init__(self, delay: float = 0.0):
    self.delay, self.calls, self.lock = delay, [], threading.Lock()

  def __call__(self, path, tok, point_dir, context=None):
    time.sleep(self.delay)
    with self.lock:
      self.calls.append(context.cell.name)
    return {"value": float(len(context.cell.name)), "depth": float(context.cell.name.count("/"))}


def stub_module(evaluator):
  """A chain a → a/b → a/b/c and a second root x with a child: dependencies across shards."""
  def plan(c):
    out = [Cell("a", {"k": 0}, start_path="root-a", points=(Point("p", "start"),)),
           Cell("x", {"k": 1}, start_path="root-x", points=(Point("p", "start"),))]
    out.append(Cell("a/b", {"k": 2}, parent="a", parent_model="start", points=(Point("p", "start"),)))
    out.append(Cell("a/b/c", {"k": 3}, parent="a/b", parent_model="start",
                    points=(Point("p", "start"), Point("q", "start"))))
    out.append(Cell("x/y", {"k": 4}, parent="x", parent_model="start", points=(Point("p", "start"),)))
    return out
  return types.SimpleNamespace(validate=lambda c: None, plan=plan,
                               prepare=lambda c, w: evaluator, refines=False)


def stub_config(timeout: float = 60.0):
  c = ml_collections.ConfigDict(dict(experiment="stub", variant="", runner=dict(
      keep_checkpoints=False, keep_exports=True, wait_timeout_s=timeout)))
  return c


@pytest.fixture
def stub(monkeypatch):
  def install(evaluator):
    monkeypatch.setitem(runner.EXPERIMENTS, "stub", stub_module(evaluator))
  return install


def test_parse_shard():
  assert shards.parse_shard("") is None
  assert shards.parse_shard("1/3") == (1, 3)
  for bad in ("3/3", "-1/2", "1", "a/b", "0/0"):
    with pytest.raises(ValueError, match="--shard"):
      shards.parse_shard(bad)


def test_two_shards_in_threads_equal_one_process(stub, tmp_path):
  ev = StubEvaluator()
  stub(ev)
  single = runner.run("stub", stub_config(), tmp_path / "single", report=False)
  assert single.status == "completed" and single.cells == 5

  ev2 = StubEvaluator(delay=0.05)
  stub(ev2)
  work = tmp_path / "sharded"
  results = {}

  def go(i):
    results[i] = runner.run("stub", stub_config(), work, shard=(i, 2), poll_s=0.01, report=False)

  threads = [threading.Thread(target=go, args=(i,)) for i in (0, 1)]
  for t in threads:
    t.start()
  for t in threads:
    t.join(60)
  assert {s.status for s in results.values()} == {"completed"}
  # disjoint, and together the whole grid: cells at even positions in shard 0
  assert results[0].cells + results[1].cells == 5
  assert sorted(ev2.calls) == sorted(ev.calls)
  names0 = {r["name"] for r in results[0].rows}
  names1 = {r["name"] for r in results[1].rows}
  assert not names0 & names1 and names0 | names1 == {"a", "x", "a/b", "a/b/c", "x/y"}
  # a child never ran before its parent finished (the order of evaluation respects dependencies)
  order = ev2.calls
  assert order.index("a") < order.index("a/b") < order.index("a/b/c")
  assert order.index("x") < order.index("x/y")
  assert not (work / "results.jsonl").exists()
  merged = shards.merge_shards(work)
  assert merged.read_bytes() == (tmp_path / "single" / "results.jsonl").read_bytes()


def test_a_cell_waiting_for_a_missing_shard_times_out_with_a_clear_message(stub, tmp_path):
  stub(StubEvaluator())
  # positions in the ordered grid: a, x, a/b, a/b/c, x/y → shard 1 holds x and a/b/c
  with pytest.raises(runner.ShardWaitTimeout,
                     match=r"shard 1/2: cell 'a/b/c' \(\w+\) waited \d+s for cell 'a/b' .*done.json"):
    runner.run("stub", stub_config(timeout=0.2), tmp_path / "w", shard=(1, 2), poll_s=0.01,
               report=False)


def test_merge_refuses_rows_of_an_unknown_cell(tmp_path):
  atomic.write_json(tmp_path / shards.GRID_FILE, {"cells": ["c1"]})
  atomic.write_jsonl(shards.shard_file(tmp_path, (0, 2)), [{"cell": "c9", "point": "p"}])
  with pytest.raises(ValueError, match=r"results.0-of-2.jsonl, row 1: cell 'c9'"):
    shards.merge_shards(tmp_path)
  assert shards.merge_shards(tmp_path / "empty") is None


# -- two real processes on the tiny resistance grid ------------------------------------------------------


def _cmd(workdir, *extra):
  return resistance_cmd(workdir, "tiny", *extra)


@pytest.mark.slow
def test_two_shard_processes_finish_the_tiny_grid_like_one_process(tmp_path, shared,
                                                                   tiny_resistance_run):
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  single = tiny_resistance_run                        # one process, the session's run (conftest)
  work = tmp_path / "sharded"
  procs = [subprocess.Popen(_cmd(work, f"--shard={i}/2"), cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True) for i in (0, 1)]
  outs = [p.communicate(timeout=900) for p in procs]
  for p, (out, err) in zip(procs, outs):
    assert p.returncode == 0, err[-3000:]
  assert "waits for" in outs[1][1]                    # shard 1's pair cells wait for s42/base
  rep = subprocess.run([sys.executable, "-m", "launch.report", f"--workdir={work}"], cwd=ROOT,
                       env=env, capture_output=True, text=True, timeout=300)
  assert rep.returncode == 0, rep.stderr[-3000:]
  assert (work / "results.jsonl").read_bytes() == (single / "results.jsonl").read_bytes()
  assert "Table 1" in (work / "report.md").read_text()
