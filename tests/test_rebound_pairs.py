"""Prompt-matched preference pairs for the rebound's DPO/SimPO/KTO reverse step: sampled from the stage's
start model, labelled by the task's scorer, saved with the cell and reused; bad settings refused."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from elasticity import atomic
from elasticity.eval import generations as gen_lib
from elasticity.eval.scorers import load_scorer
from elasticity.experiments import rebound
from elasticity.experiments.core import runner
from elasticity.experiments.core.protocol import TrainContext
from elasticity.experiments.core.sizes import DataSizeError
from elasticity.experiments.rebound import pairs
from experiment_configs import preset
from tiny_scorers import imdb_scorer


@pytest.fixture(scope="module")
def scorer(tmp_path_factory):
  return imdb_scorer(tmp_path_factory.mktemp("scorer") / "clf")


def get(variant: str = "tiny,imdb,dpo", **overrides):
  return preset("rebound", variant, **{"n_pos": (16,), "n_neg": (0, 8), "neutral.dataset": "",
                                       **overrides})


def _no_sampling(*a, **k):
  raise AssertionError("sampled again")


def test_matched_pairs_are_built_saved_and_reused(tmp_path, scorer, monkeypatch):
  c = get(**{"eval.scorer.path": str(scorer)})
  summary = runner.run("rebound", c, tmp_path / "run", report=False)
  assert summary.status == "completed"
  rows = atomic.read_jsonl(tmp_path / "run" / "results.jsonl")
  assert [(r["coords"]["stage"], r["coords"]["n_neg"]) for r in rows] == [("base", 0), ("pos", 0),
                                                                          ("neg", 8)]
  cell = next(r["cell"] for r in rows if r["coords"]["stage"] == "neg")
  path = tmp_path / "run" / "cells" / cell / "pairs.jsonl"
  got = atomic.read_jsonl(path)
  assert len(got) == 8
  (prompts_file,) = (tmp_path / "run" / "data").glob("imdb-prompts-*.jsonl")
  prompts = [r["prompt"] for r in atomic.read_jsonl(prompts_file)]
  assert len(prompts) == 16                                    # max_prompts 0: twice the largest n⁻
  clf = load_scorer(scorer)
  idx = [p["prompt_index"] for p in got]
  assert idx == sorted(idx) and len(set(idx)) == 8
  for p in got:
    assert p["prompt"] == prompts[p["prompt_index"]]          # both responses continue that prompt
    assert p["chosen"].strip() and p["rejected"].strip() and p["chosen"] != p["rejected"]
    # pos_first: the reverse step pulls negative, so chosen is the lower-rated sample, by the margin
    assert p["rejected_score"] - p["chosen_score"] >= 0.1
    np.testing.assert_allclose(clf.score([p["chosen"], p["rejected"]]),
                               [p["chosen_score"], p["rejected_score"]], rtol=1e-9)
  neg = next(x for x in rebound.plan(c) if x.coords["stage"] == "neg")
  assert neg.train.data.load_kwargs.path == "{cell_dir}/pairs.jsonl" and neg.inputs["pairs"]
  # a rerun of the cell reads the saved pairs: nothing is sampled (its evaluation is reused too)
  before = path.read_bytes()
  (tmp_path / "run" / "cells" / cell / "done.json").unlink()
  monkeypatch.setattr(gen_lib, "continue_prompts", _no_sampling)
  assert runner.run("rebound", c, tmp_path / "run", report=False).status == "completed"
  assert path.read_bytes() == before
  assert atomic.read_jsonl(tmp_path / "run" / "results.jsonl") == rows


def test_a_margin_that_leaves_too_few_pairs_is_one_line_naming_the_key(tmp_path, scorer, monkeypatch):
  c = get(**{"eval.scorer.path": str(scorer), "pairs.margin": 0.95})
  runner.validate("rebound", c)
  evaluator = rebound.prepare(c, tmp_path)
  cell = next(x for x in rebound.plan(c) if x.coords["stage"] == "neg")
  ctx = TrainContext(cell, "x", tmp_path / "cells" / "x", tmp_path, (c.model.path, c.model.tokenizer),
                     evaluator)
  with pytest.raises(DataSizeError, match=r"^preset 'tiny,imdb,dpo': matched pairs: 8 pairs needed, "
                                          r"\d+ of 16 prompts .* at least 0.95 \(config\.pairs\.margin"
                     ) as e:
    pairs.build(c, ctx, evaluator.scorer)
  assert "\n" not in str(e.value) and not (ctx.cell_dir / "pairs.jsonl").exists()
  # the rerun fails the same way without sampling again (the outcome is the cell's, identity and all)
  monkeypatch.setattr(gen_lib, "continue_prompts", _no_sampling)
  with pytest.raises(DataSizeError, match=r"config\.pairs\.margin"):
    pairs.build(c, ctx, evaluator.scorer)


@pytest.mark.parametrize("override, message", [
    ({"pairs.construction": "random"}, r"config\.pairs\.construction: 'random' is not one of"),
    ({"pairs.samples_per_prompt": 1}, r"config\.pairs\.samples_per_prompt"),
    ({"pairs.margin": -0.1}, r"config\.pairs\.margin: must be >= 0"),
    ({"pairs.margin": 1.5}, r"config\.pairs\.margin: 1\.5 is more than any difference"),
    ({"pairs.max_prompts": 20000}, r"20000 stage-2 \(negative\) prompts for the matched pairs needed, "
                                   r"12500 available \(config\.pairs\.max_prompts\)"),
    ({"eval.scorer.path": "none"}, r"config\.pairs\.construction: matched pairs are labelled by the "
                                   r"task's scorer and config\.eval\.scorer\.path is 'none'"),
])
def test_bad_pair_settings_are_refused_before_anything_loads(monkeypatch, tmp_path, scorer, override,
                                                             message):
  import elasticity.convert as models
  monkeypatch.setattr(models, "load_pretrained", lambda *a, **k: pytest.fail("loaded a model"))
  c = get(**{"eval.scorer.path": str(scorer), **override})
  with pytest.raises(ValueError, match=message):
    runner.run("rebound", c, tmp_path / "x")
  assert not (tmp_path / "x").exists()


def test_the_mismatched_construction_needs_no_scorer_and_no_hook(tmp_path):
  c = get("tiny,imdb,kto", **{"pairs.construction": "mismatched"})   # tiny: eval.scorer.path none
  runner.validate("rebound", c)
  cell = next(x for x in rebound.plan(c) if x.coords["stage"] == "neg")
  assert "-pairs-" in cell.train.data.load_kwargs.path and not cell.inputs
  assert not pairs.needed(c, cell)
  assert pairs.needed(get(**{"eval.scorer.path": "x"}), cell)


def test_other_processes_wait_for_process_0s_pairs_or_its_error(tmp_path):
  import threading
  c = get(**{"eval.scorer.path": "x"})
  cell = next(x for x in rebound.plan(c) if x.coords["stage"] == "neg")
  ctx = TrainContext(cell, "x", tmp_path, tmp_path, ("m", ""), None)
  later = threading.Timer(0.3, lambda: atomic.write_jsonl(tmp_path / pairs.FILE, [{"prompt": "p"}]))
  later.start()
  assert pairs.build(c, ctx, None, process_index=1, poll_s=0.05) == tmp_path / pairs.FILE
  later.join()
  (tmp_path / pairs.FILE).unlink()
  atomic.write_json(tmp_path / pairs.ERROR_FILE, {"error": "preset 'x': too few (config.pairs.margin)"})
  with pytest.raises(DataSizeError, match=r"config\.pairs\.margin"):
    pairs.build(c, ctx, None, process_index=1, poll_s=0.05)
