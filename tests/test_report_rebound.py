"""Rebound report from hand-written rows with known answers: Table 3 (threshold crossings per seed,
bisection rows, "not reached"), mean ± s.d. over seeds, panels and base rows, Δγ/score agreement, and
the written report (every table mentioned, every referenced PNG a real, non-blank image)."""

from __future__ import annotations

import csv
import json
import math
import re

import numpy as np
import pytest

from elasticity.experiments import REPORTS, build_report
from elasticity.experiments.rebound import report as rebound
from elasticity.report import ResultsError, load_rows
from elasticity.report.document import Context

PANEL = {"model": "tiny", "task": "imdb", "reverse": "sft", "order": "pos_first"}
_ids = iter(range(10_000))


def row(n_pos, n_neg, seed=1, metrics=None, experiment="rebound", **coords):
  stage = "base" if (n_pos, n_neg) == (0, 0) else ("pos" if n_neg == 0 else "neg")
  return {"experiment": experiment, "cell": f"{next(_ids):012x}", "parent": None,
          "config_hash": "ab" * 8, "seed": seed, "point": f"neg={n_neg}",
          "coords": {**PANEL, **coords, "n_pos": n_pos, "n_neg": n_neg, "stage": stage},
          "metrics": metrics or {}}


def write(path, rows, experiment=None):
  path.mkdir(parents=True, exist_ok=True)
  (path / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
  if experiment is not None:
    (path / "experiment.json").write_text(json.dumps(experiment))
  return path / "results.jsonl"


# KL to base per (n_pos, seed): {n_neg: kl}. Crossings under 0.01 (strict), worked out by hand:
#   n_pos 100: seed 1 -> 50, seed 2 -> 10 (mean 30, s.d. sqrt(800) = 28.28)
#   n_pos 250: never under (0.01 exactly is not under)     -> "not reached", 0/2
#   n_pos 500: seed 1 only, bisection row at 17 (0.0099)    -> 17, 1/1
KL = {(100, 1): {0: 0.20, 10: 0.05, 25: 0.02, 50: 0.008, 100: 0.004},
      (100, 2): {0: 0.22, 10: 0.009, 25: 0.012, 50: 0.007, 100: 0.003},
      (250, 1): {0: 0.30, 10: 0.10, 100: 0.01},
      (250, 2): {0: 0.32, 10: 0.11, 100: 0.02},
      (500, 1): {0: 0.40, 10: 0.02, 17: 0.0099, 25: 0.005}}


def kl_rows():
  return [row(n_pos, n_neg, seed, {"kl_to_base": kl})
          for (n_pos, seed), pts in KL.items() for n_neg, kl in pts.items()]


def ctx(tmp_path, experiment=None):
  return Context(tmp_path, tmp_path / "plots", experiment or {}, tmp_path / "experiment.json")


def test_table3_crossings(tmp_path):
  rows = load_rows(write(tmp_path, kl_rows()))
  table = rebound.table3(rebound.panels(rows), 0.01)
  by_n = {r["n⁺"]: r for r in table}
  assert list(by_n) == [100, 250, 500]
  assert by_n[100]["KL to base after stage 1"] == f"0.2100 ± {np.std([0.20, 0.22], ddof=1):.4f}"
  assert by_n[100]["n⁻ for KL < 0.01"] == f"30.0 ± {math.sqrt(800):.1f}"
  assert by_n[100]["seeds reached"] == "2/2"
  assert by_n[250]["n⁻ for KL < 0.01"] == "not reached"
  assert by_n[250]["seeds reached"] == "0/2"
  assert by_n[500]["n⁻ for KL < 0.01"] == "17.0" and by_n[500]["seeds reached"] == "1/1"
  assert by_n[500]["KL to base after stage 1"] == "0.4000"
  assert all(r["reverse"] == "sft" and r["model"] == "tiny" for r in table)


def test_table3_matches_brute_force_at_other_thresholds(tmp_path):
  rows = load_rows(write(tmp_path, kl_rows()))
  for thr in (0.006, 0.02, 0.1, 0.5):
    table = {r["n⁺"]: r for r in rebound.table3(rebound.panels(rows), thr)}
    for n_pos in (100, 250, 500):
      found = [min(n for n, kl in pts.items() if kl < thr)
               for (p, _), pts in KL.items() if p == n_pos and any(kl < thr for kl in pts.values())]
      cell = table[n_pos][f"n⁻ for KL < {thr:g}"]
      if not found:
        assert cell == "not reached"
      else:
        assert float(cell.split(" ± ")[0]) == pytest.approx(np.mean(found), abs=0.05)


def test_threshold_from_experiment_json(tmp_path):
  c = ctx(tmp_path, {"name": "rebound", "config": {"report": {"kl_threshold": 0.03}}})
  assert rebound.kl_threshold(c) == 0.03
  assert rebound.kl_threshold(ctx(tmp_path)) == 0.01
  with pytest.raises(ResultsError, match=r"experiment.json: field 'config.report.kl_threshold'"):
    rebound.kl_threshold(ctx(tmp_path, {"config": {"report": {"kl_threshold": -1}}}))


def test_mean_sd_over_seeds_and_base_level(tmp_path):
  scores = {1: 0.6, 2: 0.7, 3: 0.8}
  rows = [row(0, 0, s, {"score": 0.5 + 0.01 * s}) for s in scores]
  rows += [row(100, 25, s, {"score": v, "delta_gamma": -v}) for s, v in scores.items()]
  rows += [row(100, 0, s, {"score": 0.9}) for s in scores]
  (panel,) = rebound.panels(load_rows(write(tmp_path, rows)))
  stat = panel.points("score")[(100, 25)]
  assert stat.n == 3
  assert stat.mean == pytest.approx(np.mean(list(scores.values())))
  assert stat.sd == pytest.approx(np.std(list(scores.values()), ddof=1))
  assert panel.points("score")[(100, 0)].sd == pytest.approx(0.0)
  base = panel.base_level("score")
  assert base.mean == pytest.approx(0.52) and base.sd == pytest.approx(0.01)
  table = rebound.point_table(panel, ["score", "delta_gamma"])
  assert table[0]["stage"] == "base" and table[0]["delta_gamma"] == "–"
  neg = [r for r in table if r["n⁻"] == 25][0]
  assert neg["score"] == "0.7000 ± 0.1000" and neg["seeds"] == 3


def test_base_row_joins_every_reverse_panel(tmp_path):
  base = row(0, 0, metrics={"score": 0.5})
  del base["coords"]["reverse"]
  rows = [base] + [row(100, n, metrics={"score": 0.9 - 0.001 * n}, reverse=rev)
                   for rev in ("sft", "dpo") for n in (0, 10, 100)]
  panels = rebound.panels(load_rows(write(tmp_path, rows)))
  assert [p.values[p.keys.index("reverse")] for p in panels] == ["sft", "dpo"]
  assert all(len(p.base) == 1 for p in panels)
  text = build_report(tmp_path).read_text()                  # one heatmap per reverse algorithm
  for rev in ("sft", "dpo"):
    assert f"plots/heatmap_score_tiny-imdb-{rev}-pos_first.png" in text
    _png_ok(tmp_path / "plots" / f"heatmap_score_tiny-imdb-{rev}-pos_first.png")
  other = row(0, 0, metrics={"score": 0.4}, model="other")   # another model's base: joins neither
  panels = rebound.panels(load_rows(write(tmp_path, rows + [other])))
  assert all(len(p.base) == 1 and p.base[0].metric("score") == 0.5 for p in panels)


def test_neg_first_swaps_the_roles(tmp_path):
  rows = [row(0, 0, metrics={"kl_to_base": 0.0})]
  for n_pos, kl in ((0, 0.3), (10, 0.05), (50, 0.004)):
    r = row(n_pos, 100, metrics={"kl_to_base": kl}, order="neg_first")
    r["coords"]["stage"] = "neg" if n_pos == 0 else "pos"
    rows.append(r)
  (panel,) = rebound.panels(load_rows(write(tmp_path, rows)))
  assert set(panel.points("kl_to_base")) == {(100, 0), (100, 10), (100, 50)}
  (t,) = rebound.table3([panel], 0.01)
  assert t["n⁻"] == 100 and t["n⁺ for KL < 0.01"] == "50.0" and t["KL to base after stage 1"] == "0.3000"


def test_agreement_is_pearson_r(tmp_path):
  pts = {0: (0.9, 0.30), 10: (0.7, 0.21), 25: (0.6, 0.05), 50: (0.5, 0.07)}
  rows = [row(0, 0, metrics={"score": 0.4, "delta_gamma": -0.02})]
  rows += [row(100, n, metrics={"score": s, "delta_gamma": d}) for n, (s, d) in pts.items()]
  (panel,) = rebound.panels(load_rows(write(tmp_path, rows)))
  xs = [s for s, _ in pts.values()] + [0.4]
  ys = [d for _, d in pts.values()] + [-0.02]
  got = rebound.agreement(panel)
  assert got["points"] == 5
  assert float(got["Pearson r (score, delta_gamma)"]) == pytest.approx(np.corrcoef(xs, ys)[0, 1],
                                                                       abs=5e-4)


def test_bad_rebound_coordinates_name_the_line_and_field(tmp_path):
  rows = [row(0, 0, metrics={"score": 0.5}), row(100, 10, metrics={"score": 0.5})]
  rows[1]["coords"]["n_neg"] = "10"
  with pytest.raises(ResultsError, match=r"results.jsonl: line 2: field 'coords.n_neg'"):
    rebound.panels(load_rows(write(tmp_path, rows)))
  rows[1]["coords"].update(n_neg=10, stage="middle")
  with pytest.raises(ResultsError, match=r"line 2: field 'coords.stage'"):
    rebound.panels(load_rows(write(tmp_path, rows)))
  rows[1]["coords"].update(stage="base")
  with pytest.raises(ResultsError, match=r"line 2: field 'coords.stage': a base row"):
    rebound.panels(load_rows(write(tmp_path, rows)))


def _png_ok(path):
  from matplotlib import image as mpimg
  data = path.read_bytes()
  assert data[:8] == b"\x89PNG\r\n\x1a\n", path
  img = mpimg.imread(path)
  rgb = img[..., :3]
  assert rgb.shape[0] > 50 and rgb.shape[1] > 50
  assert float(rgb.std()) > 0.01, f"{path} is blank"
  assert float((rgb < 0.9).mean()) > 0.005, f"{path} has almost nothing drawn"


def full_grid():
  rows = []
  for seed in (1, 2):
    rows.append(row(0, 0, seed, {"score": 0.45 + 0.01 * seed, "p_positive": 0.5,
                                 "delta_gamma": -0.01, "kl_to_base": 0.0}))
    for n_pos in (100, 250):
      for n_neg in (0, 10, 25, 100):
        s = 0.95 - 0.4 * (1 - math.exp(-n_neg / 20)) - 0.0001 * n_pos + 0.01 * seed
        rows.append(row(n_pos, n_neg, seed, {"score": s, "p_positive": s - 0.02,
                                             "delta_gamma": s - 0.5, "bpb_pos": 1.9,
                                             "kl_to_base": 0.2 * math.exp(-n_neg / 15)}))
  return rows


def test_report_written_with_tables_and_pngs(tmp_path):
  rows = full_grid()
  rows.append(row(250, 999, 1, {}))                         # no metrics: skipped
  rows.append(row(250, 998, 1, {"score": None}))            # only a null metric: skipped
  write(tmp_path, rows, {"name": "rebound", "variant": "tiny,imdb", "git_commit": "abc123",
                         "config": {"report": {"kl_threshold": 0.02}}})
  (tmp_path / "plots").mkdir()
  (tmp_path / "plots" / "stale.png").write_bytes(b"old")
  report = build_report(tmp_path)
  text = report.read_text()
  assert text.startswith("# rebound — tiny,imdb\n")
  for heading in ("## KL to base (Table 3 style, threshold 0.02)", "## Δγ against the classifier",
                  "## Rebound: model=tiny, task=imdb, reverse=sft, order=pos_first"):
    assert heading in text
  assert "2 without metrics skipped" in text and "| 999 |" not in text and "| 998 |" not in text
  refs = re.findall(r"!\[[^\]]*\]\((plots/[^)]+\.png)\)", text)
  names = {r.split("/")[1].split("_")[0] for r in refs}
  assert names == {"score", "p", "delta", "kl", "heatmap"}, refs
  assert len(refs) == 6 and len(set(refs)) == 6
  for ref in refs:
    _png_ok(tmp_path / ref)
  assert sorted(p.name for p in (tmp_path / "plots").iterdir()) == sorted(r[6:] for r in refs)
  with open(tmp_path / "results.csv", newline="") as f:
    csv_rows = list(csv.DictReader(f))
  assert len(csv_rows) == len(rows)
  assert {"cell", "seed", "n_pos", "n_neg", "stage", "score", "kl_to_base", "bpb_pos"} <= set(
      csv_rows[0])
  # regenerating gives the same report
  assert build_report(tmp_path).read_text() == text


def test_unknown_experiment_gets_a_generic_table(tmp_path):
  rows = [row(0, 0, metrics={"final_loss": 0.2}, experiment="mystery"),
          row(100, 0, metrics={"final_loss": 0.15}, experiment="mystery")]
  write(tmp_path, rows)
  assert "mystery" not in REPORTS
  text = build_report(tmp_path).read_text()
  assert "## All rows" in text and "final_loss" in text and "0.1500" in text
  assert not list((tmp_path / "plots").iterdir())


def test_sparse_results_still_make_a_report(tmp_path):
  # only the base model so far
  write(tmp_path, [row(0, 0, metrics={"score": 0.5})])
  text = build_report(tmp_path).read_text()
  assert "## Rebound: all rows" in text and "0.5000" in text and "plots/" not in text
  # stage-2 points only (no n⁻ = 0): a log axis; one heatmap cell
  write(tmp_path, [row(100, 10, metrics={"score": 0.7}), row(100, 30, metrics={"score": 0.6})])
  text = build_report(tmp_path).read_text()
  for ref in re.findall(r"\((plots/[^)]+\.png)\)", text):
    _png_ok(tmp_path / ref)
  write(tmp_path, [row(100, 0, metrics={"delta_gamma": 0.1})])
  text = build_report(tmp_path).read_text()
  refs = re.findall(r"\((plots/[^)]+\.png)\)", text)
  assert len(refs) == 2 and "score" not in "".join(refs)
  for ref in refs:
    _png_ok(tmp_path / ref)


def test_linear_curves_for_other_builders(tmp_path):
  from elasticity.report import plots
  from elasticity.report.results import mean_sd
  path = plots.curves(tmp_path / "loss.png", {"forward": [(s, mean_sd([1 / (1 + s)])) for s in
                                                          range(0, 40, 4)]},
                      xlabel="step", ylabel="loss", title="t", xscale="linear")
  _png_ok(path)
  with pytest.raises(ValueError, match="xscale"):
    plots.curves(tmp_path / "x.png", {"a": [(1, mean_sd([1.0]))]}, xlabel="", ylabel="", title="",
                 xscale="log")
