"""The resistance report's headline: the generated design's forward − inverse on the whole-D_k measures,
with a 95% bootstrap interval over seeds (checked against the seed values by hand)."""

from __future__ import annotations

import json

import numpy as np

from elasticity.experiments.resistance import report
from elasticity.report import load_rows
from elasticity.report.document import Context


def _rows(tmp_path, dk="generated"):
  out, i = [], 0
  for seed, (f, v) in enumerate([(0.5, 0.2), (0.4, 0.3), (0.6, 0.1)], 1):
    for direction, fall in (("forward", f), ("inverse", v)):
      i += 1
      out.append({"experiment": "resistance", "cell": f"{i:012x}", "parent": None, "config_hash": None,
                  "seed": seed, "point": "final",
                  "coords": {"model": "m", "dataset": "alpaca", "dk": dk, "role": "pair", "pair": "1-2",
                             "direction": direction, "start": 1, "target": 2},
                  "metrics": {"dk_fall": fall, "dk_loss_end": 2.0 - fall, "heldout_fall": fall / 2,
                              "final_loss": 1.0}})
  (tmp_path / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in out))
  return load_rows(tmp_path / "results.jsonl")


def test_headline_is_the_generated_design_with_intervals(tmp_path):
  rows = _rows(tmp_path)
  sections = report.build_resistance(rows, Context(tmp_path, tmp_path / "plots", {}, tmp_path / "e"))
  head = sections[0]
  assert head.title.startswith("Headline: the generated design")
  diffs = np.array([0.3, 0.1, 0.5])                      # forward − inverse dk_fall per seed
  line = next(x for x in head.body.splitlines() if x.startswith("| dk_fall"))
  assert f"{diffs.mean():.3g} [" in line and "| 3/3 |" in line
  lo, hi = (float(x) for x in line.split("[")[1].split("]")[0].split(","))
  assert diffs.min() <= lo <= diffs.mean() <= hi <= diffs.max()
  assert "| dk_loss_end" in head.body and "0/3" in head.body     # the end loss: inverse higher here


def test_no_headline_without_the_generated_design(tmp_path):
  sections = report.build_resistance(_rows(tmp_path, dk="slices"),
                                     Context(tmp_path, tmp_path / "plots", {}, tmp_path / "e"))
  assert sections[0].title.startswith("Table 1")
