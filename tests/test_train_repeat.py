"""`train()` called many times in one process (an experiment runner's use): resources closed on
errors, stop callable, config fingerprint refusal, DONE.json short-circuit, no recompilation, and
configs/sft.py reading ``ELASTICITY_RUNS`` when the config is built (stories260K, 8 fake CPUs)."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import sys
import threading
import time

import jax
import pytest

from conftest import require
from elasticity import paths
from elasticity.train import loop, metrics as metrics_lib, record
from elasticity.train.checkpoint import Checkpointer
from elasticity.train.loop import RunResult, train

ROOT = str(paths.PROJECT_ROOT)


@pytest.fixture
def stories():
  require(paths.shared_path("models", "stories260K", "stories260K.bin"))
  require(paths.shared_path("data", "imdb", "aclImdb_labeled_train_test.tar.gz"))


def config(**changes):
  """configs/sft.py:tiny shrunk: 32 short IMDb rows, constant lr, no eval, no TensorBoard."""
  sys.path.insert(0, ROOT)
  from configs import sft
  c = sft.get_config("tiny")
  c.unlock()
  c.data.n, c.data.max_length = 32, 48
  c.eval.every = 0
  c.export.hf = False
  c.checkpoint.every, c.checkpoint.keep, c.checkpoint.async_save = 2, 5, False
  c.metrics.tensorboard = False
  c.train.num_steps, c.train.log_every = 3, 1
  c.optimizer.schedule, c.optimizer.warmup_steps = "constant", 0
  for key, value in changes.items():
    *section, name = key.split(".")
    (c[section[0]] if section else c)[name] = value
  c.lock()
  return c


def _orbax_threads() -> set[threading.Thread]:
  return {t for t in threading.enumerate() if t is not threading.main_thread()}


@pytest.mark.parametrize("where", ["_data", "_load_model", "_Evaluator"])
def test_an_error_while_loading_closes_the_writer_and_the_checkpointer(stories, tmp_path,
                                                                      monkeypatch, where):
  """Loading the data, the model or the eval data fails: the metrics file is closed, the Orbax
  manager closed, and no thread it started is left running."""
  writers, closed = [], []
  real_writer, real_close = metrics_lib.MetricWriter, Checkpointer.close

  class Writer(real_writer):
    def __init__(self, *a, **kw):
      super().__init__(*a, **kw)
      writers.append(self)

  def close(self):
    closed.append(self.directory)
    real_close(self)

  def boom(*a, **kw):
    raise RuntimeError(f"{where} failed")

  monkeypatch.setattr(metrics_lib, "MetricWriter", Writer)
  monkeypatch.setattr(Checkpointer, "close", close)
  monkeypatch.setattr(loop, where, boom)
  before = _orbax_threads()
  with pytest.raises(RuntimeError, match=f"{where} failed"):
    train(config(**{"checkpoint.async_save": True}), tmp_path / "w")
  assert len(writers) == 1 and writers[0]._file is None          # the jsonl file was closed
  assert closed == [str(tmp_path / "w" / "checkpoints")]
  deadline = time.time() + 10
  while _orbax_threads() - before and time.time() < deadline:  # threads end as the manager closes
    time.sleep(0.05)
  assert not {t.name for t in _orbax_threads() - before}


def test_a_stop_request_preempts_and_the_rerun_finishes_it(stories, tmp_path):
  """stop() → a checkpoint at that step and status "preempted" (no export, no DONE.json); the same
  call again continues to the end; on_step saw every step once, with the run's length."""
  cfg = config(**{"export.hf": True, "train.num_steps": 4})
  seen = []
  res = train(cfg, tmp_path / "w", stop=lambda: len(seen) >= 1,
              on_step=lambda s, n, m: seen.append((s, n, m["loss"])))
  assert (res.status, res.step, res.total_steps, res.export_dir) == ("preempted", 2, 4, None)
  ck = Checkpointer(tmp_path / "w" / "checkpoints")
  assert ck.all_steps() == [2]
  ck.close()
  assert not (tmp_path / "w" / "DONE.json").exists() and not (tmp_path / "w" / "hf").exists()
  res = train(cfg, tmp_path / "w", on_step=lambda s, n, m: seen.append((s, n, m["loss"])))
  assert (res.status, res.step) == ("completed", 4)
  assert [(s, n) for s, n, _ in seen] == [(1, 4), (2, 4), (3, 4), (4, 4)]
  logged = metrics_lib.read_jsonl(tmp_path / "w" / "metrics.jsonl")
  assert [r["loss"] for r in logged] == [loss for _, _, loss in seen]
  assert res.last["loss"] == seen[-1][2] and os.path.isdir(res.export_dir)


def test_a_run_killed_after_its_checkpoint_logs_each_step_once(stories, tmp_path):
  """A SIGKILL after the checkpoint of step 2 leaves records of steps 3–4 and half a line in
  metrics.jsonl; the resumed run drops them and its log equals an uninterrupted run's."""
  cfg = config(**{"train.num_steps": 4})
  assert train(cfg, tmp_path / "straight").status == "completed"
  straight = (tmp_path / "straight" / "metrics.jsonl").read_text().splitlines()
  assert train(cfg, tmp_path / "w", stop=lambda: True).step == 1
  ck = Checkpointer(tmp_path / "w" / "checkpoints")
  assert ck.all_steps() == [1]
  ck.close()
  log = tmp_path / "w" / "metrics.jsonl"
  later = [line for line in straight if json.loads(line)["step"] > 1]
  log.write_text(log.read_text() + "\n".join(later[:3]) + "\n" + later[3][:17])   # killed mid-line
  assert train(cfg, tmp_path / "w").status == "completed"
  keys = lambda lines: [(r["kind"], r["step"], r.get("loss")) for r in map(json.loads, lines)]
  assert keys(log.read_text().splitlines()) == keys(straight)


def test_a_resumed_workdir_with_another_config_is_refused_before_loading(stories, tmp_path,
                                                                         monkeypatch):
  cfg = config()
  assert train(cfg, tmp_path / "w", stop=lambda: True).status == "preempted"
  stored = json.loads((tmp_path / "w" / "config.json").read_text())
  assert stored["data"]["n"] == 32 and stored["optimizer"]["lr"] == cfg.optimizer.lr
  want = hashlib.sha256(json.dumps(record.defining_keys(stored), sort_keys=True,
                                   separators=(",", ":")).encode()).hexdigest()
  assert (tmp_path / "w" / "config.sha256").read_text().strip() == want == record.fingerprint(cfg)

  def no_loading(*a, **kw):
    raise AssertionError("the model was loaded")
  monkeypatch.setattr(loop, "_load_model", no_loading)
  monkeypatch.setattr(loop, "_data", no_loading)
  with pytest.raises(ValueError, match=r"config\.data\.n was 32 there, is 16 now"):
    train(config(**{"data.n": 16}), tmp_path / "w")
  with pytest.raises(ValueError, match=r"config\.optimizer\.lr was 0\.003 there, is 0\.001 now"):
    train(config(**{"data.n": 32, "optimizer.lr": 1e-3}), tmp_path / "w")
  monkeypatch.undo()
  # keys that may change on resume (logging and checkpoint cadence, async writes, the layer layout)
  # are accepted: the checkpoint written in one layer layout resumes in the other
  res = train(config(**{"train.log_every": 3, "checkpoint.every": 1, "checkpoint.async_save": True,
                        "model.scan_layers": not cfg.model.scan_layers}),
              tmp_path / "w")
  assert (res.status, res.step) == ("completed", 3)
  assert record.fingerprint(config(**{"train.log_every": 7})) == record.fingerprint(cfg)
  assert record.fingerprint(config(**{"model.attention_impl": "cudnn"})) == record.fingerprint(cfg)
  assert record.fingerprint(config(**{"train.num_steps": 4})) != record.fingerprint(cfg)


def test_a_finished_workdir_returns_its_result_without_loading_anything(stories, tmp_path,
                                                                        monkeypatch):
  cfg = config(**{"export.hf": True})
  first = train(cfg, tmp_path / "w")
  assert first.status == "completed"
  done = tmp_path / "w" / "DONE.json"
  stored = json.loads(done.read_text())
  assert {k: stored[k] for k in dataclasses.asdict(first)} == dataclasses.asdict(first)
  assert stored["fingerprint"] == record.fingerprint(cfg)
  newest = max(os.stat(os.path.join(d, f)).st_mtime_ns for d, _, fs in os.walk(tmp_path / "w")
               for f in fs)
  assert os.stat(done).st_mtime_ns == newest                      # written last
  before = {p: os.stat(p).st_mtime_ns for p in (tmp_path / "w").rglob("*") if p.is_file()}

  def no_loading(*a, **kw):
    raise AssertionError("a finished run loaded something")
  for name in ("_load_model", "_data", "_join_and_mesh", "save_export", "Checkpointer"):
    monkeypatch.setattr(loop, name, no_loading)
  again = train(cfg, tmp_path / "w")
  assert again == first and isinstance(again, RunResult)
  assert {p: os.stat(p).st_mtime_ns for p in (tmp_path / "w").rglob("*") if p.is_file()} == before
  # a moved workdir returns its own paths
  os.rename(tmp_path / "w", tmp_path / "moved")
  moved = train(cfg, tmp_path / "moved")
  assert moved.workdir == str(tmp_path / "moved") and moved.export_dir == str(tmp_path / "moved" / "hf")


def _count_compiles():
  """A listener counting XLA backend compilations, and a function removing it."""
  count = []

  def listener(event, duration, **kw):
    del duration, kw
    if event == "/jax/core/compile/backend_compile_duration":
      count.append(event)
  jax.monitoring.register_event_duration_secs_listener(listener)
  return count, lambda: jax.monitoring.unregister_event_duration_listener(listener)


def test_a_second_run_of_the_same_shapes_compiles_nothing(stories, tmp_path, monkeypatch):
  """Two runs in different workdirs, with another seed and another length (a constant schedule does
  not depend on it): the second traces no objective and compiles nothing at all."""
  from elasticity.train import losses
  traces = []
  real_call = losses.Objective.__call__
  monkeypatch.setattr(losses.Objective, "__call__",
                      lambda self, *a, **kw: traces.append(1) or real_call(self, *a, **kw))
  shape = {"data.max_length": 40}               # a batch shape no other test compiles
  assert train(config(**shape), tmp_path / "a").status == "completed"
  assert traces                                                    # the counter sees a trace
  traces.clear()
  compiles, remove = _count_compiles()
  try:
    res = train(config(**shape, **{"seed": 7, "data.seed": 7, "train.num_steps": 4}), tmp_path / "b")
    assert res.status == "completed" and res.step == 4
    assert (traces, compiles) == ([], [])
    jax.jit(lambda x: x * 3.25 + 1)(jax.numpy.ones(5))             # the listener does count
    assert compiles
  finally:
    remove()


def test_the_step_key_has_the_run_length_only_for_decaying_schedules():
  """A constant learning rate (with or without warmup) gives the same optimizer for any length; a
  linear or cosine decay is another function of the step for another length."""
  from elasticity.train import compiled
  from elasticity.train.optimizer import make_optimizer
  for schedule, warmup in (("constant", 0), ("constant", 2), ("linear", 0), ("cosine", 2)):
    c = dict(config().optimizer.to_dict(), schedule=schedule, warmup_steps=warmup)
    same_key = compiled.optimizer_key(c, 10) == compiled.optimizer_key(c, 30)
    _, s10 = make_optimizer(c, 10)
    _, s30 = make_optimizer(c, 30)
    same_lr = all(float(s10(t)) == float(s30(t)) for t in range(12))
    assert same_key == same_lr == (schedule == "constant"), (schedule, warmup)
  c = config().optimizer.to_dict()
  assert compiled.optimizer_key(c, 10) != compiled.optimizer_key(dict(c, lr=1e-4), 10)


def test_sft_config_reads_the_runs_root_when_built(monkeypatch, tmp_path):
  """configs/sft.py: ELASTICITY_RUNS is read by get_config, not at import; the base run exports its
  θ into its own workdir; forward/inverse start from <runs_dir>/<model>-<dataset>/theta{1,2}."""
  sys.path.insert(0, ROOT)
  from configs import sft
  for root in (tmp_path / "one", tmp_path / "two"):
    monkeypatch.setenv("ELASTICITY_RUNS", str(root))
    assert paths.runs_dir() == root
    fwd = sft.get_config("llama2-7b,alpaca,forward")
    inv = sft.get_config("llama2-7b,alpaca,inverse")
    assert fwd.model.path == str(root / "llama2-7b-alpaca" / "theta1")
    assert inv.model.path == str(root / "llama2-7b-alpaca" / "theta2")
  base = sft.get_config("llama2-7b,alpaca,base")
  assert base.export.snapshot_dir == ""                            # the run's own workdir
  assert [s.split("=")[0] for s in base.export.snapshots.split(",")] == ["theta1", "theta2", "theta3"]
  monkeypatch.delenv("ELASTICITY_RUNS")
  assert paths.runs_dir() == paths.Path("~/elasticity_runs").expanduser().resolve()
