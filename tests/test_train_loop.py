"""The training loop and launcher on real data (stories260K on IMDb positive reviews, 8 fake CPUs):
loss decreases, exact resume, SIGTERM, NaN, bad config keys, HF export parity, two processes."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys

import jax
import numpy as np
import pytest

from conftest import require
from tolerances import f32_tol, stack_depth
from elasticity import paths
from elasticity.train.checkpoint import Checkpointer
from elasticity.train.loop import NonFiniteLossError, train
from elasticity.train.metrics import read_jsonl
from elasticity.train.signals import StopOnSignal

ROOT = str(paths.PROJECT_ROOT)


@pytest.fixture
def stories():
  require(paths.shared_path("models", "stories260K", "stories260K.bin"))
  require(paths.shared_path("data", "imdb", "aclImdb_labeled_train_test.tar.gz"))


def small_config(**train):
  """configs/sft.py:tiny shrunk for in-process tests (short rows, no eval, no export)."""
  sys.path.insert(0, ROOT)
  from configs import sft
  c = sft.get_config("tiny")
  c.unlock()
  c.data.n = 64
  c.data.max_length = 64
  c.eval.every = 0
  c.export.hf = False
  c.checkpoint.every = 2
  c.checkpoint.keep = 10
  c.checkpoint.async_save = False
  c.metrics.tensorboard = False
  c.train.log_every = 2
  c.train.num_steps = 6
  for k, v in train.items():
    c.train[k] = v
  c.lock()
  return c


def losses(workdir):
  return [r["loss"] for r in read_jsonl(os.path.join(workdir, "metrics.jsonl"))]


def final_params(workdir, cfg, step=None):
  from elasticity.train import loop, step as step_lib
  from elasticity.train.optimizer import make_optimizer
  from elasticity import sharding as shd
  mesh = shd.mesh_from_config(cfg.mesh)
  _, abstract = loop._load_model(cfg, cfg.model.tokenizer)
  tx, _ = make_optimizer(cfg.optimizer, cfg.train.num_steps)
  abs_state, sh = step_lib.state_shardings(abstract, tx, mesh)
  ck = Checkpointer(os.path.join(workdir, "checkpoints"))
  step, state, data_state, _ = ck.restore(step_lib.with_shardings(abs_state, sh), step)
  ck.close()
  return step, jax.device_get(state), data_state


def test_launched_tiny_run_learns_and_exports_a_transformers_model(stories, tmp_path):
  """`python -m launch.train --config=configs/sft.py:tiny`: 30 steps, eval, checkpoints, HF export."""
  workdir = tmp_path / "tiny"
  proc = subprocess.run([sys.executable, "-m", "launch.train", "--config=configs/sft.py:tiny",
                         f"--workdir={workdir}", "--config.metrics.tensorboard=False"],
                        cwd=ROOT, capture_output=True, text=True, timeout=300,
                        env={**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=8"})
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "step 30/30" in proc.stderr and "tokens/s" in proc.stderr and "ETA" in proc.stderr
  curve = losses(workdir)
  assert len(curve) == 30
  assert np.mean(curve[-5:]) < np.mean(curve[:5]) - 0.3, curve
  evals = read_jsonl(workdir / "metrics.jsonl", kind="eval")
  assert [e["step"] for e in evals] == [15, 30]
  assert all(np.isfinite(e["imdb_pos/bits_per_byte"]) for e in evals)
  # the export loads in transformers and gives the Flax model's logits
  import torch
  import transformers
  from elasticity.convert import load_pretrained
  hf = transformers.AutoModelForCausalLM.from_pretrained(workdir / "hf", attn_implementation="eager").eval()
  ours = load_pretrained(workdir / "hf")
  ids = np.random.default_rng(0).integers(3, 512, (2, 33))
  with torch.no_grad():
    want = hf(input_ids=torch.from_numpy(ids)).logits.float().numpy()
  got = np.asarray(ours(ids.astype(np.int32)))
  np.testing.assert_allclose(got, want, atol=1e-4, rtol=1e-4)
  # and the exported weights are the trained ones, not the initial ones
  init = load_pretrained(paths.shared_path("models", "stories260K", "stories260K.bin"),
                         tokenizer=paths.shared_path("models", "stories260K", "tok512.bin"))
  assert not np.allclose(np.asarray(init.embed[...]), np.asarray(ours.embed[...]))
  # the export carries the run's tokenizer: the folder alone is enough to score or fine-tune again
  from elasticity.tokenizers import load_tokenizer
  text = "Once upon a time, Lily saw a big dog."
  source = load_tokenizer(paths.shared_path("models", "stories260K", "tok512.bin"))
  assert load_tokenizer(workdir / "hf").encode(text) == source.encode(text)


def test_snapshots_export_the_model_at_the_named_steps(stories, tmp_path, monkeypatch):
  """export.snapshots: HF directories of the model at the named steps (the θ_k of a base run)."""
  from elasticity.convert import load_pretrained
  from elasticity.tokenizers import load_tokenizer
  c = small_config(num_steps=4)
  c.unlock()
  c.export.snapshots = "theta1=2, theta2=4,late=9"
  c.export.snapshot_dir = str(tmp_path / "runs")
  c.export.hf = True
  c.lock()
  from elasticity.train import export
  gathers = []
  gather = export.gather_model
  monkeypatch.setattr(export, "gather_model", lambda *a: gathers.append(1) or gather(*a))
  assert train(c, tmp_path / "w").status == "completed"
  assert len(gathers) == 2          # steps 2 and 4: the final export reuses step 4's gather
  assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == ["theta1", "theta2"]
  theta1, theta2 = (load_pretrained(tmp_path / "runs" / n) for n in ("theta1", "theta2"))
  _, at2, _ = final_params(tmp_path / "w", c, step=2)
  np.testing.assert_array_equal(np.asarray(theta1.embed[...]), at2["params"]["embed"])
  final = load_pretrained(tmp_path / "w" / "hf")
  np.testing.assert_array_equal(np.asarray(theta2.embed[...]), np.asarray(final.embed[...]))
  assert not np.array_equal(np.asarray(theta1.embed[...]), np.asarray(theta2.embed[...]))
  assert load_tokenizer(tmp_path / "runs" / "theta1").vocab_size == 512


def test_a_snapshot_lost_to_a_kill_after_its_checkpoint_is_written_on_resume(stories, tmp_path,
                                                                            monkeypatch):
  """Killed between the checkpoint at a snapshot step and the snapshot: the resumed run writes it."""
  from elasticity.convert import load_pretrained
  from elasticity.train import export
  c = small_config(num_steps=4)
  c.unlock()
  c.export.snapshots = "theta1=2"
  c.export.snapshot_dir = str(tmp_path / "runs")
  c.lock()
  write = export.write_snapshots

  def killed(*a, **k):
    raise KeyboardInterrupt("killed before the snapshot")

  monkeypatch.setattr(export, "write_snapshots", killed)
  with pytest.raises(KeyboardInterrupt):
    train(c, tmp_path / "w")
  assert not (tmp_path / "runs" / "theta1").exists()
  monkeypatch.setattr(export, "write_snapshots", write)
  assert train(c, tmp_path / "w").status == "completed"
  _, at2, _ = final_params(tmp_path / "w", c, step=2)
  theta1 = load_pretrained(tmp_path / "runs" / "theta1")
  np.testing.assert_array_equal(np.asarray(theta1.embed[...]), at2["params"]["embed"])



def test_restart_after_sigterm_equals_uninterrupted_run(stories, tmp_path):
  cfg = small_config(num_steps=6)
  straight = train(cfg, tmp_path / "straight")
  assert straight.status == "completed" and straight.step == 6

  def sigterm_at_3(step, batch):
    if step == 3:
      os.kill(os.getpid(), signal.SIGTERM)    # a real signal, handled by the loop
    return batch

  with StopOnSignal() as stop:          # the launcher's handler; train() installs none itself
    first = train(cfg, tmp_path / "resumed", batch_transform=sigterm_at_3, stop=stop)
  assert first.status == "preempted" and first.step == 3
  step, _, data_state = final_params(tmp_path / "resumed", cfg)
  assert step == 3 and data_state == {"epoch": 0, "batch": 3}
  second = train(cfg, tmp_path / "resumed")
  assert second.status == "completed" and second.step == 6

  assert losses(tmp_path / "resumed") == losses(tmp_path / "straight")     # bitwise
  _, a, _ = final_params(tmp_path / "straight", cfg)
  _, b, _ = final_params(tmp_path / "resumed", cfg)
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_array_equal(x, y)


def test_without_a_last_checkpoint_a_kill_before_done_recomputes_the_same_steps(stories, tmp_path):
  """``checkpoint.at_end=False`` (the experiment runner's cells, whose checkpoints are deleted once
  done): the last step is not checkpointed, the run and its export are those of the default; killed
  between its last step and ``DONE.json`` (both removed here), the rerun resumes from the latest
  periodic checkpoint and writes the same export bit for bit."""
  def cfg_with(at_end):
    c = small_config(num_steps=5)
    c.unlock()
    c.export.hf = True
    c.checkpoint.at_end = at_end
    c.lock()
    return c
  ref = train(cfg_with(True), tmp_path / "ref")
  run = train(cfg_with(False), tmp_path / "run")
  assert ref.status == run.status == "completed" and ref.last == run.last
  steps = lambda w: Checkpointer(os.path.join(w, "checkpoints")).all_steps()  # noqa: E731
  assert steps(tmp_path / "ref") == [2, 4, 5] and steps(tmp_path / "run") == [2, 4]
  weights = lambda w: (w / "hf" / "model.safetensors").read_bytes()  # noqa: E731
  assert weights(tmp_path / "run") == weights(tmp_path / "ref")
  want = losses(tmp_path / "ref")
  assert losses(tmp_path / "run") == want

  os.remove(tmp_path / "run" / "DONE.json")               # killed during the export
  shutil.rmtree(tmp_path / "run" / "hf")
  again = train(cfg_with(False), tmp_path / "run")
  assert again.status == "completed" and again.last == ref.last
  assert losses(tmp_path / "run") == want                # steps 5 recomputed from step 4, bitwise
  assert weights(tmp_path / "run") == weights(tmp_path / "ref")
  assert steps(tmp_path / "run") == [2, 4]


def test_nan_in_batch_stops_with_the_step_and_keeps_last_good_checkpoint(stories, tmp_path):
  cfg = small_config(num_steps=6)

  def nan_at_5(step, batch):
    if step == 5:
      batch = dict(batch, loss_mask=batch["loss_mask"].astype(np.float32))
      batch["loss_mask"][2, 7] = np.nan
    return batch

  with pytest.raises(NonFiniteLossError, match=r"step 5: non-finite loss nan.*last good checkpoint is step 4"):
    train(cfg, tmp_path / "nan", batch_transform=nan_at_5)
  ck = Checkpointer(tmp_path / "nan" / "checkpoints")
  assert ck.all_steps() == [2, 4]
  ck.close()
  step, state, _ = final_params(tmp_path / "nan", cfg)
  assert step == 4 and all(np.isfinite(x).all() for x in jax.tree.leaves(state["params"]))


@pytest.mark.parametrize("override, message", [
    ("--config.train.num_stepz=3", "num_stepz"),
    ("--config.optimizer.name=lion", "config.optimizer.name"),
    ("--config.mesh.tensor=0", "config.mesh.tensor"),
    ("--config.mesh.axis_types=manual", "config.mesh.axis_types"),
])
def test_bad_config_fails_fast_naming_the_key(tmp_path, override, message):
  proc = subprocess.run([sys.executable, "-m", "launch.train", "--config=configs/sft.py:tiny",
                         f"--workdir={tmp_path}", override], cwd=ROOT, capture_output=True, text=True,
                        timeout=120)
  assert proc.returncode != 0
  assert message in proc.stderr, proc.stderr[-2000:]
  assert "mesh {" not in proc.stderr and not (tmp_path / "metrics.jsonl").exists()


CHILD = r"""
import os, sys, json
os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=4"
import jax
jax.config.update("jax_cpu_collectives_implementation", "gloo")
sys.path.insert(0, {root!r})
sys.path.insert(0, os.path.join({root!r}, "tests"))
from test_train_loop import small_config
from elasticity.train.loop import train
cfg = small_config(num_steps=4)
cfg.unlock()
cfg.distributed.coordinator_address = "localhost:{port}"
cfg.distributed.num_processes = 2
cfg.distributed.process_id = int(sys.argv[1])
cfg.export.hf = True
cfg.lock()
res = train(cfg, {workdir!r})
print("RESULT", jax.process_index(), jax.device_count(), res.status, res.step)
"""


def test_a_url_workdir_is_refused_before_anything_runs(tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  with pytest.raises(ValueError, match="workdir 'gs://bucket/run': a URL"):
    train(small_config(), "gs://bucket/run")
  assert not any(tmp_path.iterdir())      # no ./gs:/bucket/run left behind


_PORT_TAKEN = ("address already in use", "failed to add port", "failed to bind", "address in use")


def run_two_processes(workdir, attempts: int = 4):
  """Run CHILD as processes 0 and 1; [(returncode, stdout, stderr)] of the last attempt.

  The coordinator's port must be known to both processes before either starts, so it cannot be
  reserved race-free: a random port from the ephemeral range is tried, and another one when the
  coordinator reports it taken (instead of binding and closing a socket, which races with others).
  """
  import random
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  rng = random.Random(os.getpid())
  for attempt in range(attempts):
    shutil.rmtree(workdir, ignore_errors=True)
    script = CHILD.format(root=ROOT, port=rng.randrange(20000, 60000), workdir=str(workdir))
    procs = [subprocess.Popen([sys.executable, "-c", script, str(i)], cwd=ROOT, env=env, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE) for i in range(2)]
    outs = [(p, *p.communicate(timeout=400)) for p in procs]
    results = [(p.returncode, out, err) for p, out, err in outs]
    taken = any(rc != 0 and any(m in err.lower() for m in _PORT_TAKEN) for rc, _, err in results)
    if not taken or attempt == attempts - 1:
      return results


@pytest.mark.slow
def test_two_processes_reproduce_the_single_process_run(stories, tmp_path):
  single = train(small_config(num_steps=4), tmp_path / "single")
  assert single.status == "completed"
  results = run_two_processes(tmp_path / "multi")
  outs = [(out, err) for _, out, err in results]
  for rc, _, err in results:
    assert rc == 0, err[-3000:]
  assert "RESULT 0 8 completed 4" in outs[0][0] and "RESULT 1 8 completed 4" in outs[1][0]
  # Two processes all-reduce the gradient in another order: stories260K's widest reduction is its
  # 512-token vocabulary through 5 layers, 2·√(512·stack_depth(5))·u = 1.85e-5 (was 1e-5).
  tol = f32_tol(512, stack_depth(5))
  np.testing.assert_allclose(losses(tmp_path / "multi"), losses(tmp_path / "single"), rtol=tol)
  from elasticity.convert import load_pretrained
  exported = load_pretrained(tmp_path / "multi" / "hf")
  _, state, _ = final_params(tmp_path / "single", small_config(num_steps=4))
  np.testing.assert_allclose(np.asarray(exported.embed[...]), state["params"]["embed"], rtol=tol,
                             atol=1e-6)


def tiny_with_reference(module, mode, *, n, max_length, steps):
  """``module.get_config("tiny")`` (configs/dpo.py or kto.py) shrunk, with the reference ``mode``."""
  c = module.get_config("tiny")
  c.unlock()
  c.data.n, c.data.max_length, c.train.num_steps = n, max_length, steps
  c.objective.reference = mode
  c.export.hf, c.metrics.tensorboard = False, False
  c.lock()
  return c


def test_dpo_reference_once_equals_on_the_fly(stories, tmp_path):
  """configs/dpo.py:tiny on HH-RLHF pairs: the first loss is log 2 (policy = reference), and the
  reference computed once before training gives the run the on-the-fly reference gives."""
  sys.path.insert(0, ROOT)
  from configs import dpo
  curves = {}
  for mode in ("precomputed", "on_the_fly"):
    c = tiny_with_reference(dpo, mode, n=16, max_length=64, steps=2)
    assert train(c, tmp_path / mode).status == "completed"
    curves[mode] = losses(tmp_path / mode)
  np.testing.assert_allclose(curves["precomputed"][0], np.log(2.0), rtol=1e-5)
  np.testing.assert_allclose(curves["precomputed"], curves["on_the_fly"], rtol=1e-5)


def test_resume_reads_neither_the_pretrained_weights_nor_the_reference_again(stories, tmp_path,
                                                                             monkeypatch):
  """DPO with a precomputed reference: stopped after 2 of 4 steps, the restart takes the parameters
  from the checkpoint and the reference log-probs from the workdir's cache (loading the pretrained
  model is made to fail), and equals 4 uninterrupted steps."""
  sys.path.insert(0, ROOT)
  from configs import dpo
  import elasticity.convert as models_lib
  from elasticity.train import reference
  full = tiny_with_reference(dpo, "precomputed", n=16, max_length=64, steps=4)
  assert train(full, tmp_path / "full").status == "completed"
  steps = []
  first = train(full, tmp_path / "split", on_step=lambda s, n, m: steps.append(s),
                stop=lambda: len(steps) >= 1)           # metrics are read one step late: stops at 2
  assert (first.status, first.step) == ("preempted", 2)
  assert (tmp_path / "split" / "reference_logps.npz").exists()

  def no_loading(*args, **kwargs):
    raise AssertionError("a resumed run loaded the pretrained checkpoint")
  monkeypatch.setattr(models_lib, "load_pretrained", no_loading)
  assert train(full, tmp_path / "split").status == "completed"
  np.testing.assert_array_equal(losses(tmp_path / "split"), losses(tmp_path / "full"))
  # the cache is keyed by what it depends on: another data selection does not read it
  other = tiny_with_reference(dpo, "precomputed", n=12, max_length=64, steps=4)
  assert reference.load(str(tmp_path / "split"), reference.fingerprint(full)) is not None
  assert reference.load(str(tmp_path / "split"), reference.fingerprint(other)) is None


def test_kto_learns_and_reference_once_equals_on_the_fly(stories, tmp_path):
  """configs/kto.py:tiny on one repeated batch of 8 IMDb reviews: the first loss is Σ λ_y/2 over the
  batch (policy = reference, z0 = 0), the loss falls and the desirable reward rises, every token the
  model reads (KL rows included) is counted, and the reference computed once before training (KL
  sequences included) gives the run the on-the-fly reference gives."""
  sys.path.insert(0, ROOT)
  from configs import kto
  runs, seen = {}, {}
  for mode in ("precomputed", "on_the_fly"):
    c = tiny_with_reference(kto, mode, n=8, max_length=64, steps=4)

    def look(step, batch, mode=mode):
      seen.setdefault(mode, []).append(dict(batch))
      return batch
    assert train(c, tmp_path / mode, batch_transform=look).status == "completed"
    runs[mode] = read_jsonl(os.path.join(tmp_path / mode, "metrics.jsonl"))
  first = seen["precomputed"][0]
  assert {"ref_logps", "ref_kl_logps"} <= set(first) and "ref_logps" not in seen["on_the_fly"][0]
  lam = np.where(first["label"] > 0, c.objective.desirable_weight, c.objective.undesirable_weight)
  assert 0 < first["label"].sum() < 8
  curve = [r["loss"] for r in runs["precomputed"]]
  np.testing.assert_allclose(curve[0], np.sum(lam * 0.5 * first["example_mask"]) / 8, rtol=1e-5)
  assert all(b < a for a, b in zip(curve, curve[1:])), curve
  rewards = [r["reward_desirable"] for r in runs["precomputed"]]
  assert rewards[-1] > rewards[0] + 0.1 and runs["precomputed"][-1]["reward_undesirable"] < -0.1
  read = first["attention_mask"].sum() + first["kl_attention_mask"].sum()
  assert runs["precomputed"][0]["tokens"] == read
  np.testing.assert_allclose(curve, [r["loss"] for r in runs["on_the_fly"]], rtol=1e-5)


def test_kto_balance_warns_outside_the_papers_range(caplog):
  """λ_D·n_D / (λ_U·n_U) outside [1, 4/3] (the KTO paper's advice) is logged as a warning."""
  import logging as std_logging
  from types import SimpleNamespace

  from elasticity.train import init
  from elasticity.train.losses import Objective
  counts = SimpleNamespace(n_desirable=41, n_undesirable=23)
  with caplog.at_level(std_logging.INFO, logger="absl"):
    init.log_kto_balance(counts, Objective("kto"))                          # 1.783: warn
    init.log_kto_balance(counts, Objective("kto", undesirable_weight=1.5))  # 1.188: fine
    init.log_kto_balance(SimpleNamespace(n_desirable=4, n_undesirable=0), Objective("kto"))
  warned = [r.getMessage() for r in caplog.records if r.levelno == std_logging.WARNING]
  assert len(warned) == 2 and "= 1.783" in warned[0] and "n_U=0" in warned[1], warned
  assert any("41 desirable, 23 undesirable" in r.getMessage() for r in caplog.records)
