"""The main job (`python -m launch.main`) end to end on the reduced lab config: the report, its plots
and its numbers exist, and every part of the lab wrote rows."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_main_job_writes_the_report(tmp_path):
  env = {**os.environ, "PYTHONPATH": str(ROOT)}
  t0 = time.perf_counter()
  out = subprocess.run([sys.executable, "-m", "launch.main", "--config=configs/theory.py:lab_small",
                        f"--workdir={tmp_path}", "--noprogress"], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=300)
  assert out.returncode == 0, out.stderr[-3000:]
  assert f"report: {tmp_path / 'report.md'}" in out.stdout
  report = (tmp_path / "report.md").read_text()
  for plot in ("exact_gamma_p", "exact_gamma_a", "law_ratio", "law_delta_gamma_a", "rebound_share_a",
               "scaling_share_a", "rounds_share_a"):
    assert (tmp_path / "plots" / f"{plot}.png").stat().st_size > 1000, plot
    assert f"plots/{plot}.png" in report
  for title in ("Exact theory", "Theorem 4.2 measured on networks", "Resistance in the world",
                "Rebound in the world", "Scaling", "Several rounds"):
    assert f"## {title}" in report
  assert len(re.findall(r"-?\d+\.\d+ ± \d+\.\d+", report)) > 10     # mean ± s.d. over two seeds
  rows = [json.loads(x) for x in (tmp_path / "results.jsonl").read_text().splitlines()]
  assert {r["coords"]["part"] for r in rows} == {"law", "resistance", "rebound", "scaling", "rounds"}
  assert (tmp_path / "results.csv").is_file() and (tmp_path / "experiment.json").is_file()
  assert time.perf_counter() - t0 < 240
