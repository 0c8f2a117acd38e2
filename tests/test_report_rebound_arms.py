"""The rebound report's elasticity test from hand-written rows with known answers: the stage-1 check and
its "not testable" flag, the fraction of the gain undone, aligned − control, the fraction lost under
neutral data, the crossing of the base level, the four-arm plot, and the neutral data's rating."""

from __future__ import annotations

import json

import numpy as np
import pytest

from elasticity.experiments.rebound import arms
from elasticity.experiments.rebound import report as rebound
from elasticity.report import load_rows
from elasticity.report.document import Context

PANEL = {"model": "tiny", "task": "imdb", "reverse": "sft", "order": "pos_first"}
P = 40
_ids = iter(range(10_000))


def values(mean: float, shift: int = 0) -> list[float]:
  k = round(mean * P)
  v = np.zeros(P)
  v[:k] = 1.0
  return [float(x) for x in np.roll(v, shift)]


def row(n_pos, n_neg, mean, seed=1, stage=None, order="pos_first"):
  stage = stage or ("base" if (n_pos, n_neg) == (0, 0) else ("pos" if n_neg == 0 else "neg"))
  vals = values(mean)
  return {"experiment": "rebound", "cell": f"{next(_ids):012x}", "parent": None, "config_hash": "ab" * 8,
          "seed": seed, "point": f"neg={n_neg}",
          "coords": {**PANEL, "order": order, "n_pos": n_pos, "n_neg": n_neg, "stage": stage},
          "metrics": {"score": float(np.mean(vals)), "score_values": vals,
                      "delta_gamma": 0.1 * mean + 0.01 * seed}}


# score levels: base 0.5; aligned (n⁺ = 100) 0.9 → 0.7 (n 10) → 0.4 (n 20); control 0.45, 0.3;
# neutral from aligned 0.8, 0.75; neutral from base 0.5, 0.5
LEVELS = {("pos", 100, 0): 0.9, ("neg", 100, 10): 0.7, ("neg", 100, 20): 0.4, ("neg", 0, 10): 0.45,
          ("neg", 0, 20): 0.3, ("neutral", 100, 10): 0.8, ("neutral", 100, 20): 0.75,
          ("neutral", 0, 10): 0.5, ("neutral", 0, 20): 0.5}


def rows(tmp_path, levels=LEVELS, order="pos_first"):
  out = [row(0, 0, 0.5, order=order)]
  for seed in (1, 2):
    out += [row(n_pos, n, m, seed, stage, order) for (stage, n_pos, n), m in levels.items()]
  (tmp_path / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in out))
  return load_rows(tmp_path / "results.jsonl")


def ctx(tmp_path):
  return Context(tmp_path, tmp_path / "plots", {}, tmp_path / "experiment.json")


def test_the_statistics_of_the_arms_by_hand(tmp_path):
  (panel,) = rebound.panels(rows(tmp_path))
  assert len(panel.neutral) == 8 and all(r.coords["stage"] != "neutral" for r in panel.rows)
  a = arms.Arms(panel)
  s1, aligned = arms.stage1_table(a)
  assert aligned == {100: True} and s1[0]["gain d·(S1 − B)"] == "0.4000"
  by_n = {r["n"]: r for r in arms.statistics_table(a, aligned)}
  assert by_n[10]["gain undone (neg)"].startswith("0.5 [")                 # (0.9 − 0.7) / 0.4
  assert by_n[10]["drop: aligned − control"].startswith("0.15 [")          # 0.2 − 0.05
  assert by_n[20]["level: aligned − control"].startswith("0.1 [")          # 0.4 − 0.3
  assert by_n[20]["gain lost (neutral)"].startswith("0.375 [")             # (0.9 − 0.75) / 0.4
  assert by_n[20]["neutral drop: aligned − base"].startswith("0.15 [")     # 0.15 − (0.5 − 0.5)
  drift = {**LEVELS, ("neutral", 0, 20): 0.45}          # the base drifts under neutral data too
  (panel,) = rebound.panels(rows(tmp_path, drift))
  a = arms.Arms(panel)
  by_n = {r["n"]: r for r in arms.statistics_table(a, arms.stage1_table(a)[1])}
  assert by_n[20]["neutral drop: aligned − base"].startswith("0.1 [")      # 0.15 − (0.5 − 0.45)
  assert by_n[20]["gain lost (neutral)"].startswith("0.375 [")             # uncorrected: unchanged
  cross = {r["arm"]: r["n back at the base level"] for r in arms.crossing_table(a)}
  assert cross["aligned n⁺=100, negative"].startswith("16.7 [")            # 10 + 10·0.2/0.3
  assert cross["aligned n⁺=100, neutral"].startswith("∞")
  assert cross["base, negative"] == "starts there"


def test_more_stage1_data_against_less_by_hand(tmp_path):
  """A second aligned arm, n⁺ = 50: 0.7 → 0.6 (n 10) → 0.55 (n 20), against n⁺ = 100's 0.9 → 0.7 → 0.4."""
  more = {**LEVELS, ("pos", 50, 0): 0.7, ("neg", 50, 10): 0.6, ("neg", 50, 20): 0.55}
  (panel,) = rebound.panels(rows(tmp_path, more))
  a = arms.Arms(panel)
  _, aligned = arms.stage1_table(a)
  by_n = {r["n"]: r for r in arms.dose_table(a, aligned)}
  assert set(by_n) == {10, 20} and by_n[10]["n⁺ low → high"] == "50 → 100"
  assert by_n[10]["drop: high − low"].startswith("0.1 [")                  # 0.2 − 0.1
  assert by_n[20]["drop: high − low"].startswith("0.35 [")                 # 0.5 − 0.15
  assert by_n[20]["gain undone: high − low"].startswith("0.5 [")           # 0.5/0.4 − 0.15/0.2
  assert float(by_n[10]["gain undone: high − low"].split()[0]) == pytest.approx(0, abs=1e-12)
  #                                                                          0.2/0.4 − 0.1/0.2
  assert "More stage-1 data, faster rebound?" in arms.sections([panel], ctx(tmp_path))[-1].body
  (panel,) = rebound.panels(rows(tmp_path))
  assert arms.dose_table(arms.Arms(panel), {100: True}) == []               # one aligned level


def test_the_report_flags_a_stage_1_that_did_not_align(tmp_path):
  levels = dict(LEVELS)
  levels[("pos", 100, 0)] = 0.55            # +0.05 over 40 prompts: under two standard errors
  (panel,) = rebound.panels(rows(tmp_path, levels))
  _, aligned = arms.stage1_table(arms.Arms(panel))
  assert aligned == {100: False}
  text = "\n".join(s.body for s in rebound.build_rebound(rows(tmp_path, levels), ctx(tmp_path)))
  assert f"**{arms.NOT_ALIGNED}** for n⁺ ∈ [100]" in text


def test_neg_first_measures_the_gain_downward(tmp_path):
  flipped = {k: 1.0 - v for k, v in LEVELS.items()}
  (panel,) = rebound.panels(rows(tmp_path, flipped, order="neg_first"))
  s1, aligned = arms.stage1_table(arms.Arms(panel))
  assert aligned == {100: True} and s1[0]["gain d·(S1 − B)"] == "0.4000"


def test_the_report_has_the_four_arm_plot_and_the_neutral_rating(tmp_path):
  (tmp_path / "neutral_check.json").write_text(json.dumps(
      {"dataset": "alpaca", "texts": 50, "kind": "probability", "mean": 0.81, "se": 0.02,
       "share_positive": 0.9, "midpoint": 0.5, "tolerance": 0.15, "neutral": False}))
  c = ctx(tmp_path)
  sections = rebound.build_rebound(rows(tmp_path), c)
  text = "\n".join(s.body for s in sections)
  assert "NOT NEUTRAL" in text and "0.810" in text
  assert any(s.title.startswith("Elasticity test") for s in sections)
  assert any(s.title.startswith("Δγ against the classifier's score, raw and within") for s in sections)
  pngs = sorted(c.plots_dir.glob("arms_score_npos100_*.png"))
  assert pngs and pngs[0].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and pngs[0].stat().st_size > 1000


def test_rows_without_per_prompt_scores_leave_the_arms_out(tmp_path):
  rs = rows(tmp_path)
  for r in rs:
    object.__setattr__(r, "metrics", {k: v for k, v in r.metrics.items() if k != "score_values"})
  sections = rebound.build_rebound(rs, ctx(tmp_path))
  assert not any(s.title.startswith("Elasticity test") for s in sections)


class _Scorer:
  """A stand-in P(positive) classifier: the value it is given for every text."""
  num_labels = 2

  def __init__(self, p):
    self.p = p

  def score(self, texts):
    return np.full(len(texts), self.p)


def test_neutral_data_rated_off_neutral_is_refused_or_reported(tmp_path):
  from configs.experiments.rebound import get_config
  from elasticity.experiments.core.sizes import DataSizeError
  from elasticity.experiments.rebound.experiment import check_neutral
  c = get_config("tiny")
  recs = [{"text": "a recipe for bread"}] * 4
  ok = check_neutral(c, recs, _Scorer(0.55), tmp_path)
  assert ok["neutral"] and ok["mean"] == pytest.approx(0.55)
  with pytest.raises(DataSizeError, match=r"config.neutral.dataset: the scorer rates the alpaca texts "
                                          r"0.900 .* outside the neutral band 0.5 ± 0.15"):
    check_neutral(c, recs, _Scorer(0.9), tmp_path)
  c.unlock()
  c.neutral.on_fail = "report"
  out = check_neutral(c, recs, _Scorer(0.9), tmp_path)
  assert not out["neutral"]
  assert json.loads((tmp_path / "neutral_check.json").read_text())["mean"] == pytest.approx(0.9)


def test_a_grid_without_neutral_runs_draws_two_arms(tmp_path):
  no_neutral = {k: v for k, v in LEVELS.items() if k[0] != "neutral"}
  (panel,) = rebound.panels(rows(tmp_path, no_neutral))
  assert sorted(arms.arm_series(arms.Arms(panel), 100)) == [
      "aligned (n⁺=100), negative", "base (n⁺=0), negative"]
  (panel,) = rebound.panels(rows(tmp_path))
  assert len(arms.arm_series(arms.Arms(panel), 100)) == 4
