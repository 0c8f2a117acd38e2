"""The experiment runner on the rebound experiment: the grid, identities, resumption, bad input.

The end-to-end tests run ``python -m launch.experiment`` on the ``tiny`` preset (stories260K on IMDb)
in subprocesses: once uninterrupted, once killed with SIGKILL in the middle of a cell and run again.
"""

from __future__ import annotations

import copy
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from elasticity import atomic
from experiment_configs import preset
from elasticity.experiments import rebound
from elasticity.experiments.core import cells as cells_lib
from elasticity.experiments.core import runner

ROOT = Path(__file__).resolve().parent.parent
CONFIG = "configs/experiments/rebound.py"


def get(variant: str, **overrides):
  return preset("rebound", variant, **overrides)


# -- the grid, without running anything ----------------------------------------------------------


def test_a_dry_run_warns_about_a_missing_scorer_and_a_real_run_refuses(tmp_path, capsys):
  from elasticity.eval import ScorerConfigError
  c = get("llama2-7b,imdb", **{"eval.scorer.path": str(tmp_path / "no-classifier")})
  summary = runner.run("rebound", c, tmp_path / "w", dry_run=True)
  assert summary.status == "dry_run" and summary.cells == len(rebound.plan(c))
  assert "s42/pos1000" in capsys.readouterr().out and not (tmp_path / "w").exists()
  with pytest.raises(ScorerConfigError, match=r"config\.eval\.scorer\.path=.*no-classifier"):
    runner.run("rebound", c, tmp_path / "w")
  assert not (tmp_path / "w").exists()



def test_a_dry_run_says_when_a_missing_scorer_changes_the_cell_ids(tmp_path, caplog):
  """Matched pairs are rated by the scorer, so its files enter the stage-2 ids: a dry run before the
  scorer exists says so; the sft grid's ids do not depend on it, and its warning does not say so."""
  import logging
  missing = {"eval.scorer.path": str(tmp_path / "no-classifier")}
  with caplog.at_level(logging.WARNING):
    runner.run("rebound", get("tiny,imdb,dpo", **missing), tmp_path / "w", dry_run=True)
  (dpo,) = [r.getMessage() for r in caplog.records if "dry run:" in r.getMessage()]
  assert "no-classifier" in dpo and "ids listed here are not the ones the run will use" in dpo
  caplog.clear()
  with caplog.at_level(logging.WARNING):
    runner.run("rebound", get("tiny,imdb,sft", **missing), tmp_path / "w", dry_run=True)
  (sft,) = [r.getMessage() for r in caplog.records if "dry run:" in r.getMessage()]
  assert "no-classifier" in sft and "ids" not in sft


def test_dry_run_of_the_paper_preset_lists_the_grid_without_loading_a_model(monkeypatch, capsys):
  import elasticity.convert as models

  def no(*a, **k):
    raise AssertionError("a dry run must not load a model")

  monkeypatch.setattr(models, "load_pretrained", no)
  c = get("llama2-7b,imdb", **{"eval.scorer.path": "none"})
  summary = runner.run("rebound", c, "/nonexistent/never-written", dry_run=True)
  out = capsys.readouterr().out
  assert summary.status == "dry_run"
  assert not os.path.exists("/nonexistent/never-written")
  cells = rebound.plan(c)
  stage1 = [x for x in cells if x.coords["stage"] == "pos"]
  stage2_points = [(x.coords["n_pos"], p.coords["n_neg"]) for x in cells if x.coords["stage"] == "neg"
                   for p in x.points]
  assert sorted(x.coords["n_pos"] for x in stage1) == [1000, 2000, 5000, 10000]
  assert sorted(stage2_points) == sorted((p, n) for p in (1000, 2000, 5000, 10000)
                                         for n in (100, 200, 500, 1000, 2000))
  for x in cells:
    assert x.name in out
  assert "25 evaluation points" in out


def test_snapshot_sharing_follows_the_batch_and_the_schedule():
  c = get("llama2-7b,imdb", **{"eval.scorer.path": "none"})
  # global batch 8: 200, 1000, 2000 are snapshots of one run; 100 and 500 are runs of their own
  s2 = [x for x in rebound.plan(c) if x.coords["stage"] == "neg" and x.coords["n_pos"] == 1000]
  shared = [x for x in s2 if len(x.points) > 1]
  assert len(shared) == 1 and [p.coords["n_neg"] for p in shared[0].points] == [200, 1000, 2000]
  assert shared[0].train.export.snapshots == "neg200=25,neg1000=125"
  assert sorted(x.data["n_neg"] for x in s2 if len(x.points) == 1) == [100, 500]
  kto = get("llama2-7b,imdb,kto", **{"eval.scorer.path": "none"})
  assert all(len(x.points) == 1 for x in rebound.plan(kto) if x.coords["stage"] == "neg")


def test_identity_changes_only_for_the_cells_a_value_reaches():
  c = get("tiny")
  ids = cells_lib.identities(rebound.plan(c))
  more_neg = cells_lib.identities(rebound.plan(get("tiny", n_neg=(0, 8, 16, 32))))
  assert ids["base"] == more_neg["base"]
  assert ids["s42/pos16"] == more_neg["s42/pos16"]          # stage 1 is untouched…
  assert ids["s42/pos16/sft"] != more_neg["s42/pos16/sft"]  # …stage 2 runs longer
  lr = cells_lib.identities(rebound.plan(get("tiny", **{"train.optimizer.lr": 1e-3})))
  assert lr["base"] == ids["base"]
  assert all(lr[k] != v for k, v in ids.items() if k != "base")
  # the children of a changed cell change with it
  seed = cells_lib.identities(rebound.plan(get("tiny", seeds=(7,))))
  assert seed["base"] == ids["base"] and "s7/pos16/sft" in seed


@pytest.mark.parametrize("override, message", [
    ({"eval.scorer.path": ""}, "config.eval.scorer.path"),
    ({"n_neg": (0, 20000)}, "preset 'tiny': dataset imdb train: 20000 stage-2 (negative) examples "
                            "needed, 12500 available (config.n_neg)"),
    ({"n_pos": (0, 13000)}, "preset 'tiny': dataset imdb train: 13000 stage-1 (positive) examples "
                            "needed, 12500 available (config.n_pos)"),
    ({"eval.num_prompts": 30000}, "dataset imdb test: 30000 held-out prompts needed, 25000 available "
                                  "(config.eval.num_prompts)"),
    ({"eval.heldout": 13000}, "held-out pos reviews beyond the prompts needed"),
    ({"n_neg": (0, 1900)}, "dataset alpaca: 1900 neutral records (at least one per stage-2 example) "
                           "needed, 1801 available (config.n_neg)"),
    ({"seeds": ()}, "config.seeds: want at least one seed"),
    ({"eval.num_prompts": 500, "task": "safety"}, "dataset beavertails_prompts: 500 held-out prompts "
                                                  "needed, 140 available (config.eval.num_prompts)"),
    ({"seeds": (1, 1)}, "config.seeds: want at least one seed, all distinct"),
    ({"n_pos": (-1, 16)}, "config.n_pos: want distinct sizes >= 0"),
    ({"n_neg": (0,)}, "config.n_neg: want at least one stage-2 size > 0"),
    ({"neutral.dataset": "imdb"}, "config.neutral.dataset: 'imdb' is not one of"),
    ({"neutral.on_fail": "ignore"}, "config.neutral.on_fail"),
    ({"eval.score_as": "median"}, "config.eval.score_as: 'median' is not one of"),
    ({"eval.scorer.path": "/no/such/scorer"}, "config.eval.scorer.path=./no/such/scorer.: scorer folder /no/such/scorer does not exist"),
    ({"train.optimizer.lr": -1.0}, "config.train"),
])
def test_bad_input_is_refused_before_anything_is_loaded(monkeypatch, tmp_path, override, message):
  import elasticity.convert as models
  monkeypatch.setattr(models, "load_pretrained", lambda *a, **k: pytest.fail("loaded a model"))
  c = get("tiny", **override)
  with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
    runner.run("rebound", c, tmp_path / "x")
  assert not (tmp_path / "x").exists()


def test_unknown_variant_and_unknown_key():
  from configs.experiments.rebound import get_config
  with pytest.raises(ValueError, match="variant 'tiny,imdb,rlhf'"):
    get_config("tiny,imdb,rlhf")
  with pytest.raises(ValueError, match="unknown model 'llama9'"):
    get_config("llama9,imdb")
  c = get_config("tiny")
  with pytest.raises(AttributeError):
    c.eval.no_such_key = 1


def test_refine_bisects_between_the_grid_points_around_the_threshold():
  c = get("tiny", **{"table3.bisect_steps": 2, "n_pos": (16,), "n_neg": (0, 8, 16)})
  row = lambda n, kl, stage="neg": {"seed": 42, "coords": {"n_pos": 16, "n_neg": n, "stage": stage},
                                    "metrics": {"kl_to_base": kl}}
  rows = [row(0, 0.5, "pos"), row(8, 0.2), row(16, 0.005)]
  new = rebound.refine(c, rows)
  assert [x.name for x in new] == ["s42/pos16/sft-neg12"]
  assert new[0].train.data.n == 12 and new[0].points[0].coords == {"n_neg": 12}
  rows.append(row(12, 0.008))            # under: the crossing is in (8, 12]
  assert [x.name for x in rebound.refine(c, rows)] == ["s42/pos16/sft-neg10"]
  rows.append(row(10, 0.02))             # two bisection steps done: stop
  assert rebound.refine(c, rows) == []
  assert rebound.refine(get("tiny"), rows) == []   # bisect_steps = 0: off


# -- snapshots are the paper's separate runs -------------------------------------------------------


def _params(export_dir: Path) -> dict[str, np.ndarray]:
  from safetensors.numpy import load_file
  out = {}
  for f in sorted(export_dir.glob("*.safetensors")):
    out.update(load_file(f))
  return out


def test_a_stage2_snapshot_equals_a_separate_run_bit_for_bit(tmp_path):
  from elasticity.train.loop import train
  c = get("tiny", n_neg=(0, 16, 32))
  (shared,) = [x for x in rebound.plan(c) if x.name == "s42/pos16/sft"]
  (alone,) = rebound.stage2_cells(get("tiny", n_neg=(0, 16)), 42, 16, [16])   # a 16-example run
  assert [p.model for p in shared.points] == ["neg16", "final"]
  assert [p.model for p in alone.points] == ["final"] and alone.train.data.n == 16

  def run(cell, name):
    cfg = copy.deepcopy(cell.train)
    cfg.unlock()
    cfg.model.path, cfg.model.tokenizer = c.model.path, c.model.tokenizer   # start: the base model
    cfg.checkpoint.every = 0
    cfg.lock()
    return train(cfg, tmp_path / name)

  run(shared, "shared")
  run(alone, "alone")
  a, b = _params(tmp_path / "shared" / "neg16"), _params(tmp_path / "alone" / "hf")
  assert a.keys() == b.keys()
  for k in a:
    np.testing.assert_array_equal(a[k], b[k], err_msg=k)
  full = _params(tmp_path / "shared" / "hf")
  assert any(not np.array_equal(full[k], a[k]) for k in a)   # the run went on after the snapshot


# -- end to end, and SIGKILL in the middle of a cell --------------------------------------------


def _cmd(workdir: Path) -> list[str]:
  return [sys.executable, "-m", "launch.experiment", f"--config={CONFIG}:tiny", f"--workdir={workdir}"]


def _env() -> dict[str, str]:
  env = dict(os.environ)
  env.pop("XLA_FLAGS", None)             # one CPU device in the subprocesses, both runs alike
  env["JAX_PLATFORMS"] = "cpu"
  return env


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
  workdir = tmp_path_factory.mktemp("rebound") / "run"
  t0 = time.perf_counter()
  proc = subprocess.run(_cmd(workdir), cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-4000:]
  return workdir, time.perf_counter() - t0, proc


def test_tiny_rebound_end_to_end(uninterrupted):
  workdir, wall, proc = uninterrupted
  rows = atomic.read_jsonl(workdir / "results.jsonl")
  c = get("tiny")
  assert 0 in c.n_pos and c.neutral.dataset == "alpaca"   # the control and the neutral arm
  expected = {("base", 0, 0)} | {("pos", n, 0) for n in c.n_pos if n} | {
      (stage, p, n) for stage in ("neg", "neutral") for p in c.n_pos for n in c.n_neg if n}
  assert {(r["coords"]["stage"], r["coords"]["n_pos"], r["coords"]["n_neg"]) for r in rows} == expected
  assert len(rows) == len(expected)
  for r in rows:
    assert {"delta_gamma", "bpb_pos", "bpb_neg", "kl_to_base"} <= set(r["metrics"]), r
    assert all(np.isfinite(v) for v in r["metrics"].values())
  # the control and the neutral arm start from the base model; the stage-1 point records Δγ's change
  cells = {x.name: x for x in rebound.plan(c)}
  assert (cells["s42/pos0/sft"].parent, cells["s42/pos0/sft"].parent_model) == ("base", "start")
  assert (cells["s42/pos0/neutral"].parent, cells["s42/pos16/neutral"].parent) == ("base", "s42/pos16")
  by = {(r["coords"]["stage"], r["coords"]["n_pos"], r["coords"]["n_neg"]): r["metrics"] for r in rows}
  assert by[("pos", 16, 0)]["stage1_ddelta_gamma"] == pytest.approx(
      by[("pos", 16, 0)]["delta_gamma"] - by[("base", 0, 0)]["delta_gamma"])
  assert by[("neg", 0, 8)]["kl_to_base"] > 0 and by[("neutral", 0, 8)]["kl_to_base"] > 0
  # the neutral data: Alpaca responses joined to the stage-2 length, in the neutral cells' config
  (neutral,) = (workdir / "data").glob("imdb-neutral-*.jsonl")
  texts = atomic.read_jsonl(neutral)
  assert len(texts) == max(c.n_neg) and all(t["text"] for t in texts)
  assert cells["s42/pos16/neutral"].train.data.load_kwargs.path.endswith(neutral.name)
  base = next(r for r in rows if r["coords"]["stage"] == "base")
  assert base["metrics"]["kl_to_base"] == pytest.approx(0.0, abs=1e-6)
  assert any(r["metrics"]["kl_to_base"] > 1e-3 for r in rows if r["coords"]["stage"] != "base")
  report = (workdir / "report.md").read_text()
  pngs = sorted((workdir / "plots").glob("*.png"))
  assert pngs, "no plots written"
  for p in pngs:
    assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and p.stat().st_size > 1000
    assert f"plots/{p.name}" in report
  meta = atomic.read_json(workdir / "experiment.json")
  assert meta["experiment"] == "rebound" and meta["versions"]["jax"]
  assert f"report: {workdir}" in proc.stdout
  # finished cells keep no checkpoints
  assert not list((workdir / "cells").glob("*/train/checkpoints"))
  assert wall < 240, f"tiny grid took {wall:.0f}s"


def test_a_point_evaluated_again_gives_the_same_bits_and_the_base_point_runs_no_kl(
    uninterrupted, tmp_path, monkeypatch):
  """The sampler's activations are kept beside the generations, so evaluating a point again (a
  resumed or re-evaluated cell) gives its KL bit for bit; without them both models run, and agree
  to float32 rounding. The base point's KL is 0 without a forward, and the base is loaded once."""
  import shutil
  from elasticity.experiments.rebound import evaluate
  from elasticity.experiments.rebound.experiment import prepare
  workdir = uninterrupted[0]
  rows = atomic.read_jsonl(workdir / "results.jsonl")
  r = next(x for x in rows if x["coords"]["stage"] == "neg" and x["coords"]["n_pos"]
           and x["point"] == "neg=8")
  base = next(x for x in rows if x["coords"]["stage"] == "base")
  cell_dir = workdir / "cells" / r["cell"]
  assert (cell_dir / "points" / "neg=8" / "policy_hidden.npz").is_file()
  assert not (workdir / "cells" / base["cell"] / "points" / "base" / "policy_hidden.npz").exists()
  c = get("tiny")
  ev = prepare(c, tmp_path / "w")
  point = tmp_path / "point"
  shutil.copytree(cell_dir / "points" / "neg=8", point)
  model = os.fspath(cell_dir / "train" / "neg8")
  again = ev(model, "", point)
  assert r["metrics"]["kl_to_base"] > 1e-3
  # The KL bit for bit (one device here as in the run); Δγ's scorer shards over this test process's
  # 8 host devices (the run had one), so its sums are ordered otherwise: float32 rounding apart.
  assert again["kl_to_base"] == r["metrics"]["kl_to_base"]
  assert again["generated_tokens"] == r["metrics"]["generated_tokens"]
  assert again == pytest.approx(r["metrics"], rel=1e-6)
  (point / "policy_hidden.npz").unlink()
  both = ev(model, "", point)
  assert both["kl_to_base"] == pytest.approx(r["metrics"]["kl_to_base"], rel=1e-5)
  assert not (point / "policy_hidden.npz").exists()     # read-back rows: nothing new written
  # The base point.
  loads = []
  monkeypatch.setattr(evaluate, "kl_on_generations", lambda *a, **k: pytest.fail("KL computed"))
  fresh = prepare(c, tmp_path / "w2")
  monkeypatch.setattr(fresh, "load", lambda *a: loads.append(a) or evaluate.PointEvaluator.load(*a))
  m = fresh(c.model.path, c.model.tokenizer, tmp_path / "base")
  assert m == pytest.approx(base["metrics"], rel=1e-6) and m["kl_to_base"] == 0.0 and len(loads) == 1
  assert fresh.base() is not None and len(loads) == 1


def test_sigkill_in_a_cell_then_rerun_gives_the_same_results(uninterrupted, tmp_path):
  reference, _, _ = uninterrupted
  workdir = tmp_path / "run"
  proc = subprocess.Popen(_cmd(workdir), cwd=ROOT, env=_env(), stdout=subprocess.DEVNULL,
                          stderr=subprocess.DEVNULL)
  killed_in = None
  deadline = time.time() + 300
  try:
    while time.time() < deadline and proc.poll() is None:
      for ck in (workdir / "cells").glob("*/train/checkpoints/*"):
        cell = ck.parents[2]
        # a sealed checkpoint (its manifest is written last): one killed before that is, rightly,
        # reported damaged and the cell starts again, which is not what this test is about
        if (ck.name.isdigit() and (ck / "manifest.sha256.json").exists() and (cell / "cell.json").exists()
            and not (cell / "done.json").exists()):
          killed_in = cell.name
          break
      if killed_in:
        proc.send_signal(signal.SIGKILL)
        break
      time.sleep(0.02)
  finally:
    if proc.poll() is None and not killed_in:
      proc.kill()
    proc.wait()
  assert killed_in, "the run finished before a training cell had a checkpoint"
  assert not (workdir / "cells" / killed_in / "done.json").exists()
  again = subprocess.run(_cmd(workdir), cwd=ROOT, env=_env(), capture_output=True, text=True,
                         timeout=600)
  assert again.returncode == 0, again.stderr[-4000:]
  assert "resumed at step" in again.stderr
  assert (workdir / "results.jsonl").read_bytes() == (reference / "results.jsonl").read_bytes()


def test_neg_first_swaps_the_stages_data():
  c = get("tiny,imdb,sft,neg_first")
  cells = {x.name: x for x in rebound.plan(c)}
  assert cells["s42/pos16"].train.data.load_kwargs.label == "neg"
  assert cells["s42/pos16/sft"].train.data.load_kwargs.label == "pos"
  assert cells["s42/pos16/sft"].train.data.shuffle is False


def test_truthfulqa_answers_expand_each_question_in_the_seeded_order(shared):
  import csv

  from elasticity.experiments.rebound import data as tasks
  from elasticity.tokenizers import load_tokenizer
  tok = load_tokenizer(shared / "models" / "stories260K" / "tok512.bin")
  with open(shared / "data" / "truthfulqa" / "TruthfulQA.csv", encoding="utf-8-sig", newline="") as f:
    rows = list(csv.DictReader(f))
  # independent count: the best answer plus every other correct answer ("a; b; c")
  expected = sum(1 + len({a.strip() for a in r["Correct Answers"].split(";") if a.strip()}
                             - {r["Best Answer"].strip()}) for r in rows)
  assert tasks.neutral_pool_size("truthfulqa_answers") == expected > 2 * len(rows)
  pool = tasks._neutral_pool("truthfulqa_answers", seed=1)
  questions = [r["prompt"] for r in tasks._neutral_pool("truthfulqa", seed=1)]
  firsts = [p["prompt"] for i, p in enumerate(pool) if i == 0 or pool[i - 1]["prompt"] != p["prompt"]]
  assert firsts == questions       # answers of one question kept together, questions seeded
  by_q = {r["Question"]: r["Best Answer"] for r in rows}
  assert all(p["response"] == by_q[p["prompt"]] for i, p in enumerate(pool[:50])
             if i == 0 or pool[i - 1]["prompt"] != p["prompt"])   # each question's best answer first
  recs = tasks.neutral_records("truthfulqa_answers", task="imdb", seed=1, n=20, max_length=64,
                               tokenizer=tok)
  assert len(recs) == 20 and all(len(tok.encode(r["text"])) >= 64 - 20 for r in recs)
  assert recs[0]["text"].startswith(pool[0]["response"])
  assert get("smollm2").neutral.dataset == "truthfulqa_answers"
  assert get("smollm2,safety").neutral.dataset == "alpaca"


@pytest.mark.parametrize("variant", ["tiny,imdb,dpo", "tiny,safety,kto"])
def test_preference_reverse_steps_and_the_safety_task_run_end_to_end(variant, tmp_path):
  # the older, mismatched pairs: they need no scorer (matched pairs: tests/test_rebound_pairs.py)
  c = get(variant, n_pos=(16,), n_neg=(0, 8), **{"pairs.construction": "mismatched"})
  summary = runner.run("rebound", c, tmp_path / "run", report=False)
  assert summary.status == "completed"
  rows = atomic.read_jsonl(tmp_path / "run" / "results.jsonl")
  assert [(r["coords"]["stage"], r["coords"]["n_neg"]) for r in rows] == [("base", 0), ("pos", 0),
                                                                          ("neg", 8), ("neutral", 8)]
  # the neutral arm trains by SFT whatever the reverse step; on the safety task on Alpaca pairs
  neutral_cell = next(x for x in rebound.plan(c) if x.coords["stage"] == "neutral")
  assert neutral_cell.train.objective.name == "sft"
  (neutral,) = (tmp_path / "run" / "data").glob("*-neutral-*.jsonl")
  assert all(set(r) == ({"text"} if "imdb" in variant else {"prompt", "response"})
             for r in atomic.read_jsonl(neutral))
  assert all(np.isfinite(r["metrics"]["delta_gamma"]) for r in rows)
  cell = next(x for x in rebound.plan(c) if x.coords["stage"] == "neg")
  assert cell.train.objective.name == variant.split(",")[2]
  written = sorted(p.name for p in (tmp_path / "run" / "data").glob("*.jsonl"))
  assert any("pairs" in n for n in written)           # the pairs the reverse step trains on
  pairs = atomic.read_jsonl(next((tmp_path / "run" / "data").glob("*pairs*.jsonl")))
  assert len(pairs) == 8 and all(p["chosen"] and p["rejected"] and p["prompt"] for p in pairs)


def test_an_unknown_override_key_is_named_without_a_traceback(tmp_path):
  proc = subprocess.run([*_cmd(tmp_path / "x"), "--config.eval.nokey=3", "--dry_run"], cwd=ROOT,
                        env=_env(), capture_output=True, text=True, timeout=300)
  assert proc.returncode != 0
  assert "config key 'eval.nokey' does not exist" in proc.stderr
  assert "Traceback" not in proc.stderr


def test_rescore_replaces_only_the_scores_from_saved_generations(uninterrupted, tmp_path):
  import shutil
  from elasticity.data import load_dataset
  from elasticity.eval.scorers import load_scorer
  from elasticity.eval import generations as gen_lib
  from elasticity.eval.sentiment import TrainConfig, fit
  from elasticity.experiments.rebound.rescore import rescore
  reference, _, _ = uninterrupted
  workdir = tmp_path / "copy"
  shutil.copytree(reference, workdir)
  reviews = list(load_dataset("imdb", "train"))[:: 250]
  clf = fit([r["text"] for r in reviews], [int(r["label"] == "pos") for r in reviews],
            TrainConfig(steps=20))
  clf.save(tmp_path / "clf")
  before = atomic.read_jsonl(workdir / "results.jsonl")
  after = rescore(workdir, tmp_path / "clf")
  assert atomic.read_jsonl(workdir / "results.jsonl") == after
  scorer = load_scorer(tmp_path / "clf")
  for b, a in zip(before, after):
    assert {k: v for k, v in a["metrics"].items() if k not in ("score", "p_positive", "score_values")} \
        == {k: v for k, v in b["metrics"].items() if not k.startswith("stage1_gain")
            and k != "stage1_aligned"}
    rows, _ = gen_lib.load(workdir / "cells" / a["cell"] / "points" / a["point"] / "generations.jsonl")
    p = scorer.score([r["completion"] for r in rows])            # the scorer, independently
    assert a["metrics"]["p_positive"] == pytest.approx(float(np.mean(p)), rel=1e-12)
    assert a["metrics"]["score"] == pytest.approx(float(np.mean(p > 0.5)), rel=1e-12)
    assert a["metrics"]["score_values"] == [float(v) for v in (p > 0.5)]
  meta = atomic.read_json(workdir / "experiment.json")
  assert meta["rescored"]["scorer"] == str(tmp_path / "clf")
  # the archive beside the rows re-scores the same without the cell folders
  bare = tmp_path / "bare"
  bare.mkdir()
  for name in ("results.jsonl", "experiment.json", "generations.jsonl.gz"):
    shutil.copy(reference / name, bare / name)
  assert rescore(bare, tmp_path / "clf") == after
  # eval.score_as = probability: the score is the mean P itself, per prompt in score_values
  meta_bare = atomic.read_json(bare / "experiment.json")
  meta_bare["config"]["eval"]["score_as"] = "probability"
  atomic.write_json(bare / "experiment.json", meta_bare)
  for a, b in zip(after, rescore(bare, tmp_path / "clf")):
    assert b["metrics"]["p_positive"] == a["metrics"]["p_positive"]
    assert b["metrics"]["score"] == pytest.approx(a["metrics"]["p_positive"], rel=1e-12)
    assert b["metrics"]["score_values"] != a["metrics"]["score_values"]
    assert float(np.mean(b["metrics"]["score_values"])) == pytest.approx(b["metrics"]["score"], rel=1e-12)
  report = subprocess.run([sys.executable, "-m", "launch.report", f"--workdir={workdir}"], cwd=ROOT,
                          env=_env(), capture_output=True, text=True, timeout=300)
  assert report.returncode == 0, report.stderr[-3000:]
  text = (workdir / "report.md").read_text()
  assert "p_positive" in text
  # with per-prompt scores the report tests elasticity: the stage-1 check, the arms, the four curves
  assert "Stage-1 check" in text and "Elasticity test" in text and "gain lost (neutral)" in text
  assert "r within n⁻ levels" in text
  assert list((workdir / "plots").glob("arms_score_npos16_*.png"))
