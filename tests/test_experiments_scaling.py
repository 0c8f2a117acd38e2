"""Scaling (§5.3): the rebound-speed summary on hand-written rows, the per-model grid, and the tiny
preset end to end with two local models (stories260K and a random-init export of its config)."""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from elasticity import atomic
from elasticity.experiments import scaling
from elasticity.experiments.core import runner

ROOT = Path(__file__).resolve().parent.parent


def row(model, seed, stage, n_pos, n_neg, value):
  return {"coords": {"model": model, "stage": stage, "n_pos": n_pos, "n_neg": n_neg},
          "metrics": {"delta_gamma": value}, "seed": seed}


def test_rebound_speed_on_hand_written_rows():
  # model A: base 0, stage 1 → 1.0; n⁻ = 10: 0.8 (r = 0.2), 20: 0.4 (r = 0.6), 40: 0.0 (r = 1)
  # half point between 10 (0.2) and 20 (0.6): 10 + (0.5 − 0.2)/(0.4) · 10 = 17.5
  rows = [row("A", 1, "base", 0, 0, 0.0), row("A", 1, "pos", 100, 0, 1.0),
          row("A", 1, "neg", 100, 10, 0.8), row("A", 1, "neg", 100, 20, 0.4),
          row("A", 1, "neg", 100, 40, 0.0)]
  # seed 2 of A: stage 1 → 2.0; 10: 1.0 (r = 0.5 → half at 10), 20: 0.5, 40: 0.2
  rows += [row("A", 2, "pos", 100, 0, 2.0), row("A", 2, "neg", 100, 10, 1.0),
           row("A", 2, "neg", 100, 20, 0.5), row("A", 2, "neg", 100, 40, 0.2)]
  # model B never gets halfway: base 1, stage 1 → 3; r = 0.1, 0.2
  rows += [row("B", 1, "base", 0, 0, 1.0), row("B", 1, "pos", 50, 0, 3.0),
           row("B", 1, "neg", 50, 10, 2.8), row("B", 1, "neg", 50, 20, 2.6)]
  rows.append({"coords": {"model": "B", "stage": "neg", "n_pos": 50, "n_neg": 5},
               "metrics": {"score": 1.0}, "seed": 1})          # another metric: ignored
  out = {(e["model"], e["n_pos"]): e for e in scaling.rebound_speed(rows)}
  a, b = out[("A", 100)], out[("B", 50)]
  assert a["speed"]["mean"] == pytest.approx((0.2 + 0.5) / 2)
  assert a["speed"]["sd"] == pytest.approx(math.sqrt(((0.2 - 0.35) ** 2 + (0.5 - 0.35) ** 2) / 1))
  assert sorted(p["half_n"] for p in a["per_seed"]) == pytest.approx([10.0, 17.5])
  assert a["half_n"]["mean"] == pytest.approx(13.75) and a["half_n_reached"] == 2
  assert b["speed"]["mean"] == pytest.approx(0.1) and b["half_n"] is None
  assert b["half_n_reached"] == 0
  two = {(e["model"], e["n_pos"]): e for e in scaling.rebound_speed(rows, first_points=2)}
  assert two[("A", 100)]["per_seed"][0]["speed"] == pytest.approx((0.2 + 0.6) / 2)
  with pytest.raises(ValueError, match="first_points"):
    scaling.rebound_speed(rows, first_points=0)


def test_half_point_and_undone_fraction():
  assert scaling.half_point([(10, 0.25), (30, 0.75)]) == pytest.approx(20.0)
  assert scaling.half_point([(8, 1.0)]) == pytest.approx(4.0)       # from (0, 0)
  assert scaling.half_point([(8, 0.1)]) is None
  assert math.isnan(scaling.undone_fraction(1.0, 1.0, 0.5))


def test_scaling_grid_is_the_rebound_grid_per_model():
  from configs.experiments.scaling import get_config, model_entry
  c = get_config("qwen")
  c.unlock()
  c.rebound.eval.scorer.path = "none"     # no sentiment classifier here; the dry run loads nothing
  c.lock()
  cells = scaling.plan(c)
  names = {x.name for x in cells}
  per_model = len(cells) // 3
  for m in ("qwen1.5-0.5b", "qwen1.5-4b", "qwen1.5-7b"):
    assert sum(x.name.startswith(m + "/") for x in cells) == per_model
    assert f"{m}/base" in names
    for x in cells:
      if x.name.startswith(m + "/") and x.parent:
        assert x.parent.startswith(m + "/") and x.coords["model"] == m
  s = runner.run("scaling", c, "/nonexistent/dir", dry_run=True)
  assert s.status == "dry_run" and s.cells == len(cells)


@pytest.mark.slow
def test_tiny_scaling_with_two_local_models_end_to_end(tmp_path, shared):
  """stories260K and a random-init model of the same config: rows, speed summary and plot."""
  from configs.experiments.scaling import get_config, model_entry
  from elasticity.convert import load_pretrained
  from elasticity.train.loop import save_export
  from configs import models as model_presets
  path, tok = model_presets.model_path("stories260K")
  model = load_pretrained(path, tokenizer=tok)
  import jax
  import jax.numpy as jnp
  from flax import nnx
  graph, params = nnx.split(model)
  leaves, tree = jax.tree_util.tree_flatten(params)
  keys = jax.random.split(jax.random.key(0), len(leaves))
  rand = [0.02 * jax.random.normal(k, x.shape, x.dtype) for k, x in zip(keys, leaves)]
  other = nnx.merge(graph, jax.tree_util.tree_unflatten(tree, rand))
  from elasticity.tokenizers import load_tokenizer
  save_export(other, os.fspath(tmp_path / "random"), tokenizer=load_tokenizer(tok))
  c = get_config("tiny")
  c.unlock()
  c.models["random260K"] = model_entry(os.fspath(tmp_path / "random"), "", params=2.6e5 * 2)
  c.models["stories260K"].params = 2.6e5
  c.rebound.n_pos, c.rebound.n_neg = (16,), (0, 8)
  c.lock()
  s = runner.run("scaling", c, tmp_path / "run")
  assert s.status == "completed"
  rows = atomic.read_jsonl(tmp_path / "run" / "results.jsonl")
  summary = scaling.rebound_speed(rows)
  assert {e["model"] for e in summary} == {"stories260K", "random260K"}
  report = (tmp_path / "run" / "report.md").read_text()
  assert "Rebound speed" in report and "rebound-speed-vs-params" in report


def test_the_speed_metric_is_the_score_where_a_scorer_was_configured(tmp_path):
  import json
  from elasticity.experiments.scaling.report import resolve_metric
  from elasticity.report import load_rows
  def rows(metrics):
    r = {"experiment": "scaling", "cell": "a" * 12, "parent": None, "config_hash": None, "seed": 1,
         "point": "base", "coords": {"model": "m", "n_pos": 0, "n_neg": 0, "stage": "base"},
         "metrics": metrics}
    (tmp_path / "results.jsonl").write_text(json.dumps(r) + "\n")
    return load_rows(tmp_path / "results.jsonl")
  assert resolve_metric("auto", rows({"score": 0.7, "delta_gamma": 0.1})) == "score"
  assert resolve_metric("auto", rows({"delta_gamma": 0.1})) == "delta_gamma"
  assert resolve_metric("delta_gamma", rows({"score": 0.7})) == "delta_gamma"
  from configs.experiments.scaling import get_config
  assert get_config("tiny").speed.metric == "auto"
