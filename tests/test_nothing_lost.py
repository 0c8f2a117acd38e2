"""No command deletes what it did not write (issue 17): exports refuse a folder they did not write,
never replace a training workdir, and name the folder and the flag that allows it; launchers exit
0 / 1 / 3 and say a user's mistake in one line."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import require
from elasticity import atomic
from elasticity.convert import load_pretrained, save_pretrained
from elasticity.convert.hf import is_hf_export
from elasticity.tokenizers import load_tokenizer

ROOT = Path(__file__).resolve().parents[1]


def launch(*args, timeout=300):
  return subprocess.run([sys.executable, "-m", *args], cwd=ROOT, capture_output=True, text=True,
                        timeout=timeout, env={**os.environ, "ELASTICITY_COMPILATION_CACHE": "off"})


def _tree(folder: Path) -> dict[str, bytes]:
  return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture
def stories(shared):
  return (require(shared / "models" / "stories260K" / "stories260K.bin"),
          require(shared / "models" / "stories260K" / "tok512.bin"))


def _fake_run(workdir: Path) -> dict[str, bytes]:
  (workdir / "checkpoints" / "4").mkdir(parents=True)
  (workdir / "checkpoints" / "4" / "state").write_bytes(b"weights")
  (workdir / "metrics.jsonl").write_text('{"step": 1}\n')
  (workdir / "DONE.json").write_text("{}\n")
  (workdir / "config.json").write_text("{}\n")
  return _tree(workdir)


def test_convert_refuses_a_training_workdir_even_with_overwrite(stories, tmp_path):
  model, tok = stories
  run = tmp_path / "RUN"
  before = _fake_run(run)
  for extra in ([], ["--overwrite"]):
    r = launch("launch.convert", f"--src={model}", f"--tokenizer={tok}", f"--dst={run}", *extra)
    assert r.returncode == 1, r.stderr[-2000:]
    fatal = [ln for ln in r.stderr.splitlines() if ln.startswith("FATAL")]
    assert len(fatal) == 1 and "is a training run's workdir" in fatal[0] and str(run) in fatal[0]
    assert "Traceback" not in r.stderr
    assert _tree(run) == before                               # every file in place


def test_convert_refuses_a_foreign_folder_unless_overwrite_and_replaces_its_own(stories, tmp_path):
  model, tok = stories
  dst = tmp_path / "out"
  dst.mkdir()
  (dst / "notes.txt").write_text("mine")
  r = launch("launch.convert", f"--src={model}", f"--tokenizer={tok}", f"--dst={dst}")
  assert r.returncode == 1 and "holds files this command did not write" in r.stderr
  assert "--overwrite" in r.stderr and _tree(dst) == {"notes.txt": b"mine"}
  r = launch("launch.convert", f"--src={model}", f"--tokenizer={tok}", f"--dst={dst}", "--overwrite")
  assert r.returncode == 0, r.stderr[-2000:]
  assert (dst / atomic.MARKER).exists() and not (dst / "notes.txt").exists()
  assert (dst / "model.safetensors").stat().st_mode & 0o077 == 0o666 & ~_umask() & 0o077  # not 0600
  r = launch("launch.convert", f"--src={model}", f"--tokenizer={tok}", f"--dst={dst}")   # its own
  assert r.returncode == 0, r.stderr[-2000:]


def _umask() -> int:
  mask = os.umask(0)
  os.umask(mask)
  return mask


def test_a_runs_own_legacy_export_is_recognised(stories, tmp_path):
  model, tok = stories
  m = load_pretrained(model, tokenizer=tok)
  out = save_pretrained(m, tmp_path / "hf", tokenizer=load_tokenizer(tok))
  (out / atomic.MARKER).unlink()                            # an export made before the marker
  assert is_hf_export(out)
  (out / "notes.txt").write_text("x")
  assert not is_hf_export(out)


def test_a_typo_is_one_line_naming_the_key_and_the_nearest(tmp_path):
  for arg, want in (("--config.optimizer.lrr=1", "config key 'optimizer.lrr' does not exist; did you "
                                                  "mean 'optimizer.lr'?"),
                    ("--config.zzzzz.lr=1", "config key 'zzzzz.lr' does not exist; the config's "
                                            "top-level keys: checkpoint,"),
                    ("--config.optimizer.lr=abc", "--config.optimizer.lr=abc: could not convert "
                                                  "string to float: 'abc'")):
    r = launch("launch.train", "--config=configs/sft.py:tiny", f"--workdir={tmp_path / 'w'}", arg)
    assert r.returncode == 1, r.stderr[-2000:]
    assert "Traceback" not in r.stderr and want in r.stderr, r.stderr[-2000:]
  r = launch("launch.train", "--config=configs/sft.py:nosuch", f"--workdir={tmp_path / 'w'}")
  assert r.returncode == 1 and "Traceback" not in r.stderr
  assert "FATAL: --config=configs/sft.py:nosuch: unknown model preset 'nosuch'; known:" in r.stderr
  assert not (tmp_path / "w").exists()


def test_a_workdir_that_is_a_file_is_one_line(tmp_path):
  w = tmp_path / "w"
  w.write_text("x")
  r = launch("launch.train", "--config=configs/sft.py:tiny", f"--workdir={w}")
  assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr[-3000:]
  assert any(ln.startswith("FATAL") and str(w) in ln for ln in r.stderr.splitlines()), r.stderr[-2000:]
  assert w.read_text() == "x"


def test_a_damaged_checkpoint_is_named_and_the_run_resumes_from_the_previous_one(tmp_path, caplog):
  """Flip 64 bytes in the newest checkpoint of a stopped run: the rerun names the step and the file,
  moves it aside, resumes from the previous intact step and ends with an uninterrupted run's losses."""
  import logging as pylogging

  from test_train_loop import losses, small_config
  from elasticity import paths
  from elasticity.train.checkpoint import MANIFEST
  from elasticity.train.loop import train
  require(paths.shared_path("models", "stories260K", "stories260K.bin"))
  require(paths.shared_path("data", "imdb", "aclImdb_labeled_train_test.tar.gz"))
  cfg = small_config(num_steps=6)
  whole = train(cfg, tmp_path / "whole")
  calls = []
  stopped = train(cfg, tmp_path / "run", stop=lambda: calls.append(1) or len(calls) >= 4)
  assert stopped.status == "preempted" and stopped.step == 4
  step4 = tmp_path / "run" / "checkpoints" / "4"
  victim = max((p for p in step4.rglob("*") if p.is_file() and p.name != MANIFEST and "state" in p.parts),
               key=lambda p: p.stat().st_size)
  blob = bytearray(victim.read_bytes())
  mid = len(blob) // 2
  blob[mid:mid + 64] = bytes(b ^ 0x5A for b in blob[mid:mid + 64])
  victim.write_bytes(bytes(blob))
  with caplog.at_level(pylogging.WARNING):
    resumed = train(cfg, tmp_path / "run")
  assert any("step 4 is damaged" in r.getMessage() and victim.name in r.getMessage()
             for r in caplog.records), [r.getMessage() for r in caplog.records]
  assert (tmp_path / "run" / "checkpoints.damaged" / "4").is_dir()       # kept, not deleted
  assert resumed.status == "completed" and resumed.step == 6
  assert losses(tmp_path / "run") == losses(tmp_path / "whole")          # same program: bitwise
  assert resumed.last == whole.last


def test_a_failed_start_does_not_block_the_corrected_command(tmp_path):
  from test_train_loop import small_config
  from elasticity import paths
  from elasticity.train.loop import train
  require(paths.shared_path("models", "stories260K", "stories260K.bin"))
  require(paths.shared_path("data", "imdb", "aclImdb_labeled_train_test.tar.gz"))
  bad = small_config(num_steps=2)
  bad.unlock()
  bad.data.n = 10 ** 7                       # more reviews than IMDb has: fails before the first step
  bad.lock()
  with pytest.raises(ValueError):
    train(bad, tmp_path / "w")
  assert (tmp_path / "w" / "config.json").exists()
  result = train(small_config(num_steps=2), tmp_path / "w")      # the fixed command is not refused
  assert result.status == "completed" and result.step == 2
  stopped_cfg = small_config(num_steps=2)
  stopped_cfg.unlock()
  stopped_cfg.optimizer.lr = 0.5
  stopped_cfg.lock()
  with pytest.raises(ValueError, match="the workdir holds another run: config.optimizer.lr"):
    train(stopped_cfg, tmp_path / "w")      # once a run has checkpointed, another config is refused


def test_sigterm_exits_3_with_a_checkpoint(tmp_path):
  """`launch.train` stopped by SIGTERM saves a checkpoint and exits 3 (it exited 0), like
  `launch.experiment`, so a scheduler can requeue on one status."""
  import signal
  import time

  from elasticity import paths
  require(paths.shared_path("models", "stories260K", "stories260K.bin"))
  w = tmp_path / "w"
  proc = subprocess.Popen([sys.executable, "-m", "launch.train", "--config=configs/sft.py:tiny",
                           f"--workdir={w}", "--config.train.num_steps=100000",
                           "--config.eval.every=0", "--config.train.log_every=1"],
                          cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  deadline = time.time() + 300
  while not (w / "metrics.jsonl").exists() and proc.poll() is None and time.time() < deadline:
    time.sleep(0.5)
  proc.send_signal(signal.SIGTERM)
  _, err = proc.communicate(timeout=300)
  assert proc.returncode == 3, err[-3000:]
  assert "preempted" in err and any(p.name.isdigit() for p in (w / "checkpoints").iterdir())


def test_the_sentiment_trainer_refuses_a_training_workdir(tmp_path):
  run = tmp_path / "RUN"
  before = _fake_run(run)
  r = launch("launch.sentiment", f"--workdir={run}", "--overwrite")
  assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr[-2000:]
  assert "is a training run's workdir" in r.stderr and _tree(run) == before
