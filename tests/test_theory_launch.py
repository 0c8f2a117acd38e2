"""launch/theory.py on a reduced config: the table is printed and written, the config is checked."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from configs.theory import get_config
from elasticity.theory.exact import run_exact, to_markdown

ROOT = Path(__file__).resolve().parent.parent
SMALL = ["--config.ks=10,100", "--config.ls=0,0.001", "--config.world.n_leaves_p=800",
         "--config.world.n_leaves_a=50", "--config.world.n_leaves_t=100",
         "--config.scenarios.budget_independent.budget=200",
         "--config.scenarios.budget_near_p.budget=200"]


def _small_config():
  c = get_config("exact")
  c.ks, c.ls = "10,100", "0,0.001"
  c.world.n_leaves_p, c.world.n_leaves_a, c.world.n_leaves_t = 800, 50, 100
  for name in c.scenarios:
    if c.scenarios[name].budget:
      c.scenarios[name].budget = 200
  return c


def test_run_exact_rows_and_markdown():
  res = run_exact(_small_config())
  assert len(res["law"]) == 5 * 2 * 2
  by = {(r["scenario"], r["k"], r["l"]): r for r in res["law"]}
  assert by[("unbounded_independent", 10.0, 0.0)]["ratio"] == pytest.approx(1.0)
  assert by[("unbounded_near_p", 100.0, 0.0)]["ratio"] == pytest.approx(-100.0)
  assert by[("budget_independent", 10.0, 0.0)]["theta"] == pytest.approx(1.0)
  text = to_markdown(res)
  assert "| budget_near_p | 100 | 0.001 |" in text
  assert "### Theorem 3.4" in text


def test_bad_config_values():
  c = _small_config()
  c.normalization = "log"
  with pytest.raises(ValueError, match="config.normalization"):
    run_exact(c)
  c = _small_config()
  c.ks = "ten"
  with pytest.raises(ValueError, match="config.ks"):
    run_exact(c)


def test_cli_writes_table(tmp_path):
  env = {**os.environ, "PYTHONPATH": str(ROOT)}
  out = subprocess.run([sys.executable, "-m", "launch.theory", "--config=configs/theory.py:exact",
                        *SMALL, f"--workdir={tmp_path}"], cwd=ROOT, env=env, capture_output=True,
                       text=True, timeout=120)
  assert out.returncode == 0, out.stderr[-2000:]
  assert "### Theorem 4.2" in out.stdout and "wall time" in out.stdout
  res = json.loads((tmp_path / "theory_exact.json").read_text())
  assert len(res["law"]) == 20
  assert (tmp_path / "theory_exact.md").read_text().startswith("normalization: own")
