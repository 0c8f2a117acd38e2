"""PPO as the rebound's reverse step: ``configs/experiments/rebound.py:tiny,imdb,ppo`` end to end (with a
real tiny scorer), the stage-2 cells it plans, and the bad inputs refused before anything loads."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from elasticity import atomic
from elasticity.eval import ScorerConfigError
from elasticity.experiments import rebound
from elasticity.experiments.core import runner
from experiment_configs import preset
from tiny_scorers import imdb_scorer

ROOT = Path(__file__).resolve().parent.parent


def get(variant: str = "tiny,imdb,ppo", **overrides):
  return preset("rebound", variant, **overrides)


@pytest.fixture(scope="module")
def scorer(tmp_path_factory):
  return imdb_scorer(tmp_path_factory.mktemp("scorer") / "clf")


def _env() -> dict[str, str]:
  env = dict(os.environ)
  env.pop("XLA_FLAGS", None)             # one CPU device in the subprocess
  env["JAX_PLATFORMS"] = "cpu"
  return env


def _cmd(workdir, *extra):
  return [sys.executable, "-m", "launch.experiment",
          "--config=configs/experiments/rebound.py:tiny,imdb,ppo", f"--workdir={workdir}", *extra]


# -- the plan ---------------------------------------------------------------------------------------


def test_ppo_stage2_is_one_run_per_start_model_with_a_snapshot_per_n_neg(scorer):
  c = get(**{"eval.scorer.path": str(scorer)})
  cells = {x.name: x for x in rebound.plan(c)}
  for n_pos in (0, 16):
    cell = cells[f"s42/pos{n_pos}/ppo"]
    t = cell.train
    assert t.objective.name == "ppo" and t.ppo.reward_sign == -1.0      # pos_first: pull negative
    assert t.ppo.scorer.path == str(scorer) and t.reference.path == ""  # reference = the start model
    assert [(p.model, p.coords["n_neg"]) for p in cell.points] == [("neg8", 8), ("final", 16)]
    assert t.export.snapshots == "neg8=1" and t.data.slice == (0, 16) and not t.data.shuffle
    assert t.data.load_kwargs.kind == "prompt" and "imdb-prompts-" in t.data.load_kwargs.path
  assert cells["s42/pos16/neutral"].train.objective.name == "sft"       # the neutral arm: SFT
  assert not any(x.name.startswith("s42/pos16/ppo-neg") for x in cells.values())
  flipped = get("tiny,imdb,ppo,neg_first", **{"eval.scorer.path": str(scorer)})
  assert next(x for x in rebound.plan(flipped) if x.name == "s42/pos16/ppo").train.ppo.reward_sign == 1.0
  own = get(**{"eval.scorer.path": "none", "ppo_train.scorer.path": str(scorer),
               "ppo_train.reward_sign": 1.0})
  assert next(x for x in rebound.plan(own) if x.name == "s42/pos16/ppo").train.ppo.reward_sign == 1.0
  runner.validate("rebound", own)     # PPO's own scorer, no evaluation scorer: fine


def test_the_paper_presets_keep_whole_rollout_batches_and_list_without_a_scorer(capsys):
  c = get("llama2-7b,imdb,ppo", **{"eval.scorer.path": "/no/scorer/here"})
  assert c.n_neg == (0, 200, 1000, 2000) and c.train.train.global_batch_size == 8
  assert runner.run("rebound", c, "/nonexistent/never", dry_run=True).status == "dry_run"
  assert "s42/pos1000/ppo" in capsys.readouterr().out


# -- bad input, before anything loads ----------------------------------------------------------------


def _cost_model(path: Path) -> Path:
  path.mkdir()
  (path / "config.json").write_text(json.dumps({"model_type": "llama", "num_labels": 1,
                                                "architectures": ["LlamaModelForScore"]}))
  return path


@pytest.mark.parametrize("override, message", [
    ({"eval.scorer.path": "none"}, r"config\.eval\.scorer\.path: the ppo reverse step is rewarded"),
    ({"ppo_train.scorer.path": "none"}, r"config\.ppo_train\.scorer\.path: the ppo reverse step"),
    ({"ppo_train.scorer.path": "COST"}, r"config\.ppo_train\.scorer\.sign: .* one-logit"),
    ({"n_neg": (0, 12)}, r"config\.n_neg: .* whole rollout batches .*\[12\]"),
    ({"ppo_train.clip_ratio": 2.0}, r"config\.ppo_train\.clip_ratio"),
    ({"ppo_train.reward_sign": 0.5}, r"config\.ppo_train\.reward_sign"),
])
def test_bad_ppo_input_is_refused_before_anything_loads(monkeypatch, tmp_path, scorer, override,
                                                        message):
  import elasticity.convert as models
  monkeypatch.setattr(models, "load_pretrained", lambda *a, **k: pytest.fail("loaded a model"))
  override = {k: str(_cost_model(tmp_path / "cost")) if v == "COST" else v for k, v in override.items()}
  c = get(**{"eval.scorer.path": str(scorer), **override})
  with pytest.raises(ValueError, match=message):
    runner.run("rebound", c, tmp_path / "x")
  assert not (tmp_path / "x").exists()


def test_a_cost_model_with_its_sign_is_accepted(tmp_path, scorer):
  c = get(**{"eval.scorer.path": str(scorer), "ppo_train.scorer.path": str(_cost_model(tmp_path / "c")),
             "ppo_train.scorer.sign": -1.0})
  runner.validate("rebound", c)
  with pytest.raises(ScorerConfigError):      # and without it, ScorerConfigError: a dry run goes on
    runner.validate("rebound", get(**{"eval.scorer.path": "none"}))


def test_launch_refuses_ppo_without_a_scorer_in_one_line(tmp_path):
  out = subprocess.run(_cmd(tmp_path / "w"), cwd=ROOT, env=_env(), capture_output=True, text=True,
                       timeout=300)
  assert out.returncode == 1
  last = [line for line in out.stderr.splitlines() if line.strip()][-1]
  assert "config.eval.scorer.path: the ppo reverse step is rewarded by a scorer" in last, out.stderr[-2000:]
  assert not (tmp_path / "w").exists()


# -- end to end -------------------------------------------------------------------------------------


def test_tiny_imdb_ppo_end_to_end(tmp_path, scorer):
  workdir = tmp_path / "run"
  proc = subprocess.run(_cmd(workdir, f"--config.eval.scorer.path={scorer}"), cwd=ROOT, env=_env(),
                        capture_output=True, text=True, timeout=900)
  assert proc.returncode == 0, proc.stderr[-4000:]
  rows = atomic.read_jsonl(workdir / "results.jsonl")
  got = sorted((r["coords"]["stage"], r["coords"]["n_pos"], r["coords"]["n_neg"]) for r in rows)
  assert got == sorted([("base", 0, 0), ("pos", 16, 0)] + [(s, p, n) for s in ("neg", "neutral")
                                                            for p in (0, 16) for n in (8, 16)])
  for r in rows:
    assert {"score", "p_positive", "delta_gamma", "kl_to_base"} <= set(r["metrics"]), r
    assert r["coords"]["reverse"] == "ppo"
  assert all(r["metrics"]["kl_to_base"] > 0 for r in rows if r["coords"]["stage"] == "neg")
  # one PPO run per start model: its points are the snapshot after one rollout batch and the end
  cells = {x.name: x for x in rebound.plan(get(**{"eval.scorer.path": str(scorer)}))}
  ids = {r["name"]: r["cell"] for r in rows}
  train = workdir / "cells" / ids["s42/pos16/ppo"] / "train"
  assert (train / "neg8" / "config.json").exists() and (train / "hf" / "config.json").exists()
  steps = [m for m in atomic.read_jsonl(train / "metrics.jsonl") if m.get("kind") == "train"]
  assert [m["step"] for m in steps] == [1, 2] and all(np.isfinite(m["score"]) for m in steps)
  # the reward is the scorer's P(positive) with its sign flipped: a score in [-1, 0]
  assert all(-1.0 <= m["score"] <= 0.0 for m in steps)
  assert cells["s42/pos16/ppo"].train.ppo.reward_sign == -1.0
  (prompts,) = (workdir / "data").glob("imdb-prompts-*.jsonl")
  assert len(atomic.read_jsonl(prompts)) == 16
  report = (workdir / "report.md").read_text()
  assert "## Scorers and the reverse step" in report
  assert f"reward = -1 · the score of `{scorer}`" in report and "SFT on alpaca data" in report
  pngs = sorted((workdir / "plots").glob("*.png"))
  assert pngs and all(f"plots/{p.name}" in report for p in pngs)
