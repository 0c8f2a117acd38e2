"""The network lab (`elasticity.theory.lab`): its exact rows against a direct numpy mixture, its
summary slopes against numpy's least squares on its own measured rows, determinism, config errors."""

from __future__ import annotations

import numpy as np
import pytest

from configs.theory import get_config
from elasticity.theory.lab import Lab, _slope, planned_steps


def small(parts: str = "law", **law):
  cfg = get_config("lab_small")
  cfg.parts = parts
  cfg.seeds = "0"
  cfg.law.ks = "10"
  cfg.law.update(**law)
  return cfg


def test_slope_is_least_squares():
  rng = np.random.default_rng(0)
  x, y = rng.random(7), rng.random(7)
  assert _slope(x, y) == pytest.approx(np.polyfit(x, y, 1)[0], rel=1e-12)


@pytest.fixture(scope="module")
def law_rows():
  lab = Lab(small())
  return lab, lab.run()


def test_exact_rows_are_the_mixture_code(law_rows):
  lab, rows = law_rows
  w = lab.world
  t = w.length
  for r in [r for r in rows if r["coords"]["protocol"] == "exact"]:
    k, l = r["coords"]["k"], r["coords"]["l"]
    keys = {}
    for name in ("p", "a", "t"):
      for row, p in zip(map(tuple, w.leaves[name]), w.probs[name]):
        keys.setdefault(row, {})[name] = p
    sizes = {"p": k, "a": 1.0, "t": l}
    total = k + 1.0 + l
    for name in ("p", "a"):
      ce = 0.0
      for row, p in zip(map(tuple, w.leaves[name]), w.probs[name]):
        m = sum(sizes[n] * q for n, q in keys[row].items()) / total
        ce -= p * np.log2(m)
      want = ce / t - np.log2(len(w.probs[name])) / t
      assert r["metrics"][f"gamma_{name}"] == pytest.approx(want, rel=1e-9, abs=1e-12)


def test_summary_follows_the_measured_rows(law_rows):
  _, rows = law_rows
  joint = sorted([r for r in rows if r["coords"]["protocol"] == "joint"], key=lambda r: r["coords"]["l"])
  ls = [r["coords"]["l"] for r in joint]
  assert ls == [0.0, 0.2, 0.4]
  sp = np.polyfit(ls, [r["metrics"]["gamma_p"] for r in joint], 1)[0]
  sa = np.polyfit(ls, [r["metrics"]["gamma_a"] for r in joint], 1)[0]
  (summ,) = [r for r in rows if r["coords"]["protocol"] == "summary"]
  m = summ["metrics"]
  assert m["slope_p"] == pytest.approx(sp, rel=1e-6) and m["slope_a"] == pytest.approx(sa, rel=1e-6)
  assert m["ratio"] == pytest.approx(sa / sp, rel=1e-6)
  assert m["theta"] == pytest.approx(sa / sp / -10, rel=1e-6)
  assert m["exact_ratio_l0"] == pytest.approx(-10, rel=1e-6)     # D_t near D_p: envelope, ratio −k
  ft = [r for r in rows if r["coords"]["protocol"] == "finetune"]
  assert [r["coords"]["step"] for r in ft] == [0, 2, 4]
  assert all(np.isfinite(v) for r in rows for v in r["metrics"].values() if v is not None)


def test_same_seed_same_numbers(law_rows):
  _, rows = law_rows
  again = Lab(small()).run()
  assert [r["metrics"] for r in again] == [r["metrics"] for r in rows]
  assert [r["cell"] for r in again] == [r["cell"] for r in rows]


def test_planned_steps_counts_pretraining_once():
  cfg = small(parts="law,rebound")
  cfg.rebound.k = 10.0
  law, reb = cfg.law, cfg.rebound
  want = law.pretrain_steps + 3 * law.steps + law.finetune_steps + 3 + 4   # n_pos=3, max n_neg=4
  assert planned_steps(cfg) == want
  assert reb.n_pos == "3" and reb.n_neg == "0,2,4"


def test_config_errors():
  with pytest.raises(ValueError, match="config.parts"):
    Lab(small(parts="law,magic"))
  with pytest.raises(ValueError, match="config.law.ls"):
    Lab(small(ls="0.1,0.2")).run()
  cfg = small()
  cfg.world.n_leaves_p = 10 ** 9
  with pytest.raises(ValueError, match="world config.n_leaves_p"):
    Lab(cfg)
  with pytest.raises(ValueError, match="unknown variant"):
    get_config("lab_big")
