"""``python -m launch.report --workdir=DIR``: regenerates report.md, plots and results.csv; a bad row
stops it with the file, line and field."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from elasticity import paths


def run(*args):
  env = {**os.environ, "PYTHONPATH": str(paths.PROJECT_ROOT)}
  return subprocess.run([sys.executable, "-m", "launch.report", *args], cwd=paths.PROJECT_ROOT,
                        env=env, capture_output=True, text=True, timeout=120)


def rows():
  out = []
  for i, (n_pos, n_neg, stage, score) in enumerate(
      [(0, 0, "base", 0.4), (50, 0, "pos", 0.9), (50, 10, "neg", 0.6), (50, 20, "neg", 0.5)]):
    out.append({"experiment": "rebound", "cell": f"{i:012x}", "parent": None, "config_hash": "0",
                "seed": 0, "point": f"neg={n_neg}",
                "coords": {"model": "tiny", "task": "imdb", "reverse": "sft", "order": "pos_first",
                           "n_pos": n_pos, "n_neg": n_neg, "stage": stage},
                "metrics": {"score": score, "kl_to_base": 0.1 / (1 + n_neg)}})
  return out


def test_cli_writes_the_report_then_rejects_a_bad_row(tmp_path):
  results = tmp_path / "results.jsonl"
  results.write_text("".join(json.dumps(r) + "\n" for r in rows()))
  proc = run(f"--workdir={tmp_path}")
  assert proc.returncode == 0, proc.stderr[-2000:]
  text = (tmp_path / "report.md").read_text()
  assert "## KL to base" in text and "plots/score_tiny-imdb-sft-pos_first.png" in text
  assert (tmp_path / "plots" / "score_tiny-imdb-sft-pos_first.png").stat().st_size > 1000
  assert len((tmp_path / "results.csv").read_text().splitlines()) == 5

  bad = rows()
  bad[2]["metrics"]["score"] = "0.6"
  results.write_text("".join(json.dumps(r) + "\n" for r in bad))
  proc = run(f"--workdir={tmp_path}")
  assert proc.returncode != 0
  assert f"{results}: line 3: field 'metrics.score'" in proc.stderr
  assert (tmp_path / "report.md").read_text() == text      # the old report is left as it was
