"""bench/device_check.sh --rehearse: the accelerator check's every step, on this CPU with tiny shapes,
so the script is known to run before a lent device's minutes are spent on it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow      # four processes, each compiling: ~1.5 CPU-minutes on a 2-core machine
def test_the_rehearsal_runs_every_step_and_writes_one_markdown_section(tmp_path):
  env = {**os.environ, "OUT": str(tmp_path), "PYTHON": sys.executable}
  env.pop("XLA_FLAGS", None)
  r = subprocess.run(["bash", "bench/device_check.sh", "--rehearse"], cwd=ROOT, env=env,
                     capture_output=True, text=True, timeout=900, check=False)
  assert r.returncode == 0, r.stdout + r.stderr
  steps = [ln.split()[1:3] for ln in r.stdout.splitlines() if ln.startswith("step ")]
  assert steps == [["checks", "ok"], ["mfu_small", "ok"], ["mfu_7b", "ok"]], r.stdout
  md = (tmp_path / "device_check.md").read_text()
  assert md.startswith("## Device check (") and "CPU rehearsal" in md
  for name in ("attention", "train_step", "generate", "compression"):
    assert f"check {name} ok" in md, md
  assert md.count("smollm2-135m") == 2 and "| mfu_7b | ok |" in md
