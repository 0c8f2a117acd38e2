"""`python -m launch.compress`: results files equal the Python API's numbers; bad configs fail early."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys

import pytest

from conftest import require
from elasticity import paths, report
from elasticity.compression import measure
from elasticity.data import load_dataset
from elasticity.convert import load_pretrained, save_pretrained
from elasticity.models import ModelConfig, create_model
from elasticity.tokenizers import load_tokenizer

ROOT = paths.PROJECT_ROOT
CFG = ModelConfig(family="llama", vocab_size=512, hidden_size=32, intermediate_size=48, num_layers=2,
                  num_heads=4, num_kv_heads=2, head_dim=8)


def run(*args: str) -> subprocess.CompletedProcess:
  return subprocess.run([sys.executable, "-m", "launch.compress", "--config=configs/compress.py",
                         *args], cwd=ROOT, capture_output=True, text=True, timeout=300,
                        env={**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=8"})


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
  root = tmp_path_factory.mktemp("ckpt")
  save_pretrained(create_model(CFG, seed=0), root / "model")
  save_pretrained(create_model(CFG, seed=1), root / "base")
  return root / "model", root / "base"


def test_cli_writes_results_equal_to_measure(checkpoints, tmp_path):
  tok_path = require(paths.shared_path("models", "stories260K", "tok512.bin"))
  require(paths.shared_path("data", "alpaca"))
  model_dir, base_dir = checkpoints
  proc = run(f"--config.model={model_dir}", f"--config.baseline={base_dir}",
             f"--config.tokenizer={tok_path}", "--config.datasets=alpaca,truthfulqa",
             f"--config.data_dir={paths.shared_path('data')}", "--config.limit=12",
             f"--workdir={tmp_path}")
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "tok/s" in proc.stderr and "ex/s" in proc.stderr         # the progress bar
  assert sorted(p.name for p in tmp_path.iterdir()) == ["results.csv", "results.json", "results.md"]

  out = json.loads((tmp_path / "results.json").read_text())
  rows = {(r["dataset"], r["checkpoint"]): r for r in out["results"]}
  assert set(rows) == {(d, c) for d in ("alpaca", "truthfulqa") for c in ("model", "baseline")}
  assert out["config"]["limit"] == 12 and out["checkpoints"]["baseline"] == str(base_dir)

  tok = load_tokenizer(tok_path)
  for name in ("alpaca", "truthfulqa"):
    records = load_dataset(name, on_error="skip")[:12]
    for role, path in (("model", model_dir), ("baseline", base_dir)):
      want = measure(load_pretrained(path), tok, records, max_length=512, batch_size=8)
      got = rows[(name, role)]
      assert (got["examples"], got["tokens"], got["bytes"], got["skipped"]) == (
          want.examples, want.tokens, want.bytes, want.skipped)
      # the job may batch and shard otherwise than this measure: test_compression's RTOL (1e-5) kept
      assert got["bits_per_token"] == pytest.approx(want.bits_per_token, rel=1e-5)
      assert got["bits_per_byte"] == pytest.approx(want.bits_per_byte, rel=1e-5)
      assert got["normalized"] == pytest.approx(want.bits_per_token - 9.0, rel=1e-5)
  for d in out["deltas"]:
    m, b = rows[(d["dataset"], "model")], rows[(d["dataset"], "baseline")]
    assert d["normalized"] == pytest.approx(m["normalized"] - b["normalized"])

  with open(tmp_path / "results.csv", newline="") as f:
    table = list(csv.DictReader(f))
  assert len(table) == 4
  assert float(table[0]["bits_per_byte"]) == out["results"][0]["bits_per_byte"]
  md = (tmp_path / "results.md").read_text()
  assert "| dataset | checkpoint | examples |" in md and "Δγ (model − baseline)" in md


@pytest.mark.parametrize("args,message", [
    (["--config.bogus=1"], "config.bogus"),
    (["--config.template=fancy"], "config.template"),
    (["--config.datasets=alpaca,nosuchdata"], "nosuchdata"),
    (["--config.batch_size=0"], "config.batch_size"),
    (["--config.model=/no/such/checkpoint"], "config.model"),
])
def test_bad_config_fails_before_loading_anything(args, message, tmp_path):
  proc = run(*args, f"--workdir={tmp_path}")
  assert proc.returncode != 0
  assert message in proc.stderr
  assert "loaded checkpoint" not in proc.stderr and not list(tmp_path.iterdir())


def test_config_file_with_an_unknown_key_is_refused(tmp_path):
  cfg_file = tmp_path / "my_compress.py"
  cfg_file.write_text("from configs.compress import get_config as base\n\n"
                      "def get_config(arg=None):\n  c = base(arg)\n  c.max_lenght = 256\n  return c\n")
  proc = subprocess.run([sys.executable, "-m", "launch.compress", f"--config={cfg_file}",
                         f"--workdir={tmp_path / 'out'}"], cwd=ROOT, capture_output=True, text=True,
                        timeout=300)
  assert proc.returncode != 0
  assert "unknown key 'max_lenght'" in proc.stderr


def test_report_tables_write_strict_json_and_leave_no_temporary(tmp_path):
  report.write_json(tmp_path / "r.json", {"rate": float("nan"), "rows": [{"x": 1.5}]})
  assert json.loads((tmp_path / "r.json").read_text()) == {"rate": None, "rows": [{"x": 1.5}]}
  report.write_csv(tmp_path / "r.csv", [{"a": 1, "b": 0.1 + 0.2}, {"a": 2, "c": "x,y"}])
  with open(tmp_path / "r.csv", newline="") as f:
    assert list(csv.reader(f)) == [["a", "b", "c"], ["1", repr(0.1 + 0.2), ""], ["2", "", "x,y"]]
  assert sorted(p.name for p in tmp_path.iterdir()) == ["r.csv", "r.json"]


def test_the_library_job_measures_without_the_launcher(checkpoints, tmp_path):
  """`elasticity.compression.job` (what evaluators import; nothing from launch/): the same numbers as
  `measure`, Δγ = model − baseline, and a bad key refused before anything is loaded."""
  import sys
  from elasticity.compression import job as compression_job
  sys.path.insert(0, str(ROOT))
  from configs.compress import get_config
  tok_path = require(paths.shared_path("models", "stories260K", "tok512.bin"))
  model_dir, base_dir = checkpoints
  cfg = get_config("truthfulqa")
  cfg.update(dict(model=str(model_dir), baseline=str(base_dir), tokenizer=str(tok_path), limit=4,
                  progress=False))
  names = compression_job.validate(cfg, get_config())
  result = compression_job.run(cfg, names)
  records = load_dataset("truthfulqa", on_error="skip")[:4]
  tok = load_tokenizer(tok_path)
  want = {role: measure(load_pretrained(p), tok, records, max_length=512, batch_size=8)
          for role, p in (("model", model_dir), ("baseline", base_dir))}
  for row in result.rows:
    assert row["bits_per_byte"] == pytest.approx(want[row["checkpoint"]].bits_per_byte, rel=1e-5)
  (delta,) = result.deltas
  assert delta["bits_per_byte"] == pytest.approx(
      want["model"].bits_per_byte - want["baseline"].bits_per_byte, rel=1e-4, abs=1e-6)
  compression_job.write_results(tmp_path, cfg, result)
  assert json.loads((tmp_path / "results.json").read_text())["deltas"][0]["dataset"] == "truthfulqa"
  bad = get_config()
  bad.batch_size = 0
  with pytest.raises(ValueError, match="config.batch_size"):
    compression_job.validate(bad, get_config())
