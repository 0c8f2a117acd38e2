"""The resistance experiment (§5.1): the grid, θ_k's data, the evaluator's numbers, resumption, reports.

The end-to-end tests run the ``tiny`` preset (stories260K on Alpaca, D_k of 8) in a subprocess; the
interrupted run is killed with SIGKILL inside a training cell and rerun.
"""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import resistance_cmd
from elasticity import atomic
from experiment_configs import preset
from elasticity.experiments import resistance
from elasticity.experiments.core import runner

ROOT = Path(__file__).resolve().parent.parent


def get(variant: str, **overrides):
  return preset("resistance", variant, **overrides)


# -- the grid ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("dk", ["slices", "generated"])
def test_six_pair_cells_per_seed_with_the_right_start_and_data(dk):
  c = get(f"tiny,alpaca,{dk}", seeds=(1, 2))
  cells = {x.name: x for x in resistance.plan(c)}
  n, batch = int(c.n), int(c.train.train.global_batch_size)
  assert len(cells) == 2 * 7
  for seed in (1, 2):
    base = cells[f"s{seed}/base"]
    assert base.parent is None and base.start_path == c.model.path
    assert base.train.data.shuffle is False and tuple(base.train.data.slice) == (0, 3 * n)
    assert base.train.export.snapshots == f"theta1={n // batch},theta2={2 * n // batch}"
    assert [p.model for p in base.points] == ["theta1", "theta2", "final"]
    pairs = {x.name: x for x in cells.values() if x.name.startswith(f"s{seed}/") and x is not base}
    assert len(pairs) == 6
    for k, l in ((1, 2), (1, 3), (2, 3)):
      for name, start, target in ((f"fwd{k}{l}", k, l), (f"inv{l}{k}", l, k)):
        cell = pairs[f"s{seed}/{name}"]
        assert cell.parent == base.name
        assert cell.parent_model == (f"theta{start}" if start < 3 else "final")
        d = cell.train.data
        if dk == "slices":
          assert d.load_kwargs.path == resistance.train_file(c, seed)
          assert tuple(d.slice) == ((target - 1) * n, target * n)
        else:
          assert d.load_kwargs.path == f"{{cell:s{seed}/base}}/points/theta{target}/dk.jsonl"
          assert tuple(d.slice) == (0, n)
        assert cell.coords["direction"] == ("forward" if start < target else "inverse")


def test_the_base_run_visits_d1_first_so_theta1_has_seen_exactly_d1(shared):
  """The batches before θ1's snapshot hold exactly D_1's examples (the forward/inverse slice)."""
  from elasticity.tokenizers import load_tokenizer
  from elasticity.train.data import BatchStream, load_examples
  c = get("tiny", seeds=(3,))
  tok = load_tokenizer(c.model.tokenizer)
  files = resistance.build_files(c, tok)
  workdir = Path("/nonexistent-resolved")
  sub = lambda p: p.replace(resistance.EXPERIMENT_DIR, os.fspath(workdir))
  records = files[resistance.train_file(c, 3)]
  cells = {x.name: x for x in resistance.plan(c)}
  base, inv = cells["s3/base"].train.data, cells["s3/inv21"].train.data   # inv21 trains on D_1

  def examples(d):
    path = Path(sub(d.load_kwargs.path))
    atomic.write_jsonl(tmp / path.name, records)
    cfg = d.to_dict()
    cfg["load_kwargs"] = dict(cfg["load_kwargs"], path=os.fspath(tmp / path.name))
    return load_examples(cfg, tok)

  import tempfile
  with tempfile.TemporaryDirectory() as t:
    tmp = Path(t)
    stream = BatchStream(examples(base), batch_size=int(c.train.train.global_batch_size),
                         max_length=int(base.max_length), shuffle=base.shuffle, seed=base.seed)
    steps = int(cells["s3/base"].train.export.snapshots.split(",")[0].split("=")[1])
    seen = []
    for _ in range(steps):
      b = next(stream)
      for row, valid in zip(b["input_ids"], b["attention_mask"].any(axis=1)):
        if valid:
          seen.append(tuple(int(t) for t in row[row != 0]))
    d1 = examples(inv)
  assert len(seen) == len(d1) == int(c.n)
  assert sorted(seen) == sorted(tuple(int(t) for t in ex.input_ids if t != 0) for ex in d1)
  # independently: each batch row decodes to the text of one D_1 record, and every D_1 record is seen
  texts = [tok.decode(list(s)) for s in seen]
  owner = []
  for t in texts:
    hits = [i for i, r in enumerate(records) if r["response"].strip()[-30:] in t
            and r["prompt"].strip()[-30:] in t]
    assert hits, t
    owner.append(hits[0])
  assert sorted(owner) == list(range(int(c.n)))


def test_sft_base_preset_visits_the_slices_in_order(shared, monkeypatch):
  """configs/sft.py: θ1 of the base run has seen exactly the inverse preset's D_1."""
  import configs.sft as sft
  from elasticity.train.data import select
  b = sft.get_config("llama2-7b,alpaca,base")
  inv = sft.get_config("llama2-7b,alpaca,inverse")
  fwd = sft.get_config("llama2-7b,alpaca,forward")
  assert b.data.shuffle is False
  batch = int(b.train.global_batch_size)
  steps = {s.split("=")[0]: int(s.split("=")[1]) for s in b.export.snapshots.split(",")}
  third = steps["theta1"] * batch
  recs = list(range(int(b.data.n) + 5))          # stand-ins for the records: selection by index
  sel = select(recs, dict(b.data))
  assert len(sel) == 3 * third
  assert select(recs, dict(inv.data)) == sel[:steps["theta1"] * batch]     # D_1 = seen by θ1
  assert select(recs, dict(fwd.data)) == sel[third:steps["theta2"] * batch]  # D_2 = seen next
  assert int(b.data.n) % (3 * batch) == 0


def test_final_loss_is_the_mean_of_the_last_steps(tmp_path):
  lines = [{"kind": "train", "step": s, "loss": float(10 - s)} for s in range(1, 7)]   # 9 … 4
  lines.insert(2, {"kind": "perf", "step": 2, "tokens_per_s": 5.0})
  (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
  curve = resistance.read_curve(tmp_path)
  assert curve == [(s, float(10 - s)) for s in range(1, 7)]
  assert resistance.final_loss(curve, 3) == pytest.approx((4 + 5 + 6) / 3)   # steps 4, 5, 6
  assert resistance.final_loss(curve, 100) == pytest.approx(sum(10 - s for s in range(1, 7)) / 6)
  (tmp_path / "metrics.jsonl").write_text("{bad\n")
  with pytest.raises(ValueError, match="metrics.jsonl, line 1"):
    resistance.read_curve(tmp_path)


@pytest.mark.parametrize("override,message", [
    (dict(n=6), "multiple of the global batch"),
    (dict(dataset="imdb"), "config.dataset"),
    (dict(dk="mixed"), "config.dk"),
    (dict(seeds=(1, 1)), "config.seeds"),
    (dict(seeds=()), "config.seeds"),
    (dict(m=1), r"config.m: want at least 2 checkpoints"),
    (dict(n=904, m=2), r"preset 'tiny': dataset alpaca: 1816 records needed \(2·n=1808 training \+ 8 "
                       r"held-out\), 1801 available \(config.n, config.m or config.heldout\)"),
])
def test_bad_input_is_refused_before_anything_is_loaded(override, message):
  with pytest.raises(ValueError, match=message):
    resistance.validate(get("tiny", **override))


def test_dry_run_of_the_paper_presets_lists_cells_without_loading(capsys, monkeypatch):
  monkeypatch.setattr(resistance.EXPERIMENT, "prepare", lambda *a, **k: pytest.fail("prepare called"))
  for variant, n in (("llama2-7b,alpaca", 560), ("llama3-8b,truthfulqa,generated", 112),
                     ("llama2-13b,beavertails", 8)):
    c = get(variant, n=n)
    s = runner.run("resistance", c, "/nonexistent/dir", dry_run=True)
    assert s.status == "dry_run" and s.cells == 7
  out = capsys.readouterr().out
  assert "s42/fwd13" in out and "n=1680" in out


@pytest.mark.parametrize("variant, message", [
    ("llama2-7b,beavertails", "preset 'llama2-7b,beavertails': dataset beavertails: 220 records needed "
                              "(3·n=120 training + 100 held-out), 140 available"),
    ("llama2-7b,alpaca", "dataset alpaca: 1900 records needed (3·n=1800 training + 100 held-out), "
                         "1801 available (config.n, config.m or config.heldout)"),
    ("llama2-7b,truthfulqa", "dataset truthfulqa: 892 records needed"),
])
def test_a_paper_preset_that_does_not_fit_the_data_fails_in_its_dry_run(variant, message, tmp_path):
  t0 = time.perf_counter()
  proc = subprocess.run([*_cmd(tmp_path / "x", variant), "--dry_run"], cwd=ROOT, env=_env(),
                        capture_output=True, text=True, timeout=300)
  assert proc.returncode == 1 and message in proc.stderr.strip().splitlines()[-1]
  assert "Traceback" not in proc.stderr and not (tmp_path / "x").exists()
  assert time.perf_counter() - t0 < 60


def test_m_checkpoints_give_every_pair_both_ways():
  c = get("tiny", m=4)
  cells = resistance.plan(c)
  assert resistance.grid.pairs(c) == [(1, 2), (1, 3), (1, 4), (2, 3), (2, 4), (3, 4)]
  names = {x.name for x in cells}
  assert {f"s42/fwd{k}{l}" for k, l in resistance.grid.pairs(c)} <= names
  assert {f"s42/inv{l}{k}" for k, l in resistance.grid.pairs(c)} <= names and len(cells) == 13
  base = next(x for x in cells if x.name == "s42/base")
  assert [p.model for p in base.points] == ["theta1", "theta2", "theta3", "final"]
  assert base.train.data.slice == (0, 4 * c.n) and base.train.export.snapshots == (
      "theta1=2,theta2=4,theta3=6")
  inv41 = next(x for x in cells if x.name == "s42/inv41")
  assert inv41.parent_model == "final" and inv41.train.data.slice == (0, c.n)
  # three checkpoints keep the files (and so the ids) they had before m existed
  assert resistance.grid.train_file(get("tiny"), 42) != resistance.grid.train_file(c, 42)


# -- end to end on the tiny preset ----------------------------------------------------------------------


_cmd = resistance_cmd


def _env():
  env = dict(os.environ)
  env["JAX_PLATFORMS"] = "cpu"
  return env


@pytest.fixture
def uninterrupted(tiny_resistance_run):
  """The session's uninterrupted tiny run (conftest; test_experiments_shard.py compares with it too)."""
  return tiny_resistance_run


def test_tiny_grid_records_the_losses_kl_and_compression(uninterrupted, shared):
  workdir = uninterrupted
  rows = atomic.read_jsonl(workdir / "results.jsonl")
  assert len(rows) == 3 + 6
  by = {r["name"]: r for r in rows if r["coords"]["role"] == "pair"}
  thetas = {r["coords"]["k"]: r["metrics"] for r in rows if r["coords"]["role"] == "base"}
  assert sorted(thetas) == [1, 2, 3]
  c = get("tiny")
  for name, r in by.items():
    m = r["metrics"]
    cell_dir = workdir / "cells" / r["cell"]
    # the final loss, recomputed from the cell's own metrics.jsonl
    losses = [json.loads(x) for x in (cell_dir / "train" / "metrics.jsonl").read_text().splitlines()]
    losses = [x["loss"] for x in sorted(losses, key=lambda x: x["step"]) if x["kind"] == "train"]
    assert m["final_loss"] == pytest.approx(np.mean(losses[-int(c.loss.last_steps):]), rel=1e-9)
    assert m["first_loss"] == pytest.approx(losses[0])
    curve = atomic.read_json(cell_dir / "points" / "final" / "loss_curve.json")["curve"]
    assert [v for _, v in curve] == pytest.approx(losses)
    # the start model's numbers are θ_start's, measured at the base cell
    start, target = r["coords"]["start"], r["coords"]["target"]
    assert m["train_loss_start"] == pytest.approx(thetas[start][f"loss_D{target}"], rel=1e-6)
    assert m["heldout_loss_start"] == pytest.approx(thetas[start]["loss_heldout"], rel=1e-6)
    assert m["heldout_fall"] == pytest.approx(m["heldout_loss_start"] - m["heldout_loss_end"])
    for j in (1, 2, 3):
      assert m[f"dgamma_D{j}"] == pytest.approx(m[f"gamma_D{j}_end"] - m[f"gamma_D{j}_start"])
    assert m["kl_start_end"] > 0 and all(math.isfinite(v) for v in m.values())
    # training on D_target lowers the loss on it
    assert m["train_loss_end"] < m["train_loss_start"]
  report = (workdir / "report.md").read_text()
  assert "Table 1" in report and "Memorisation control" in report
  assert len(list((workdir / "plots").glob("loss-*.png"))) == 3


def test_kl_matches_a_numpy_reference(uninterrupted, shared):
  """kl_start_end of one cell, recomputed from both models' full-vocabulary log-probs in float64."""
  from elasticity.experiments.rebound.evaluate import PointEvaluator
  from elasticity.data.tokenize import tokenize
  import jax.numpy as jnp
  workdir = uninterrupted
  rows = atomic.read_jsonl(workdir / "results.jsonl")
  r = next(x for x in rows if x["name"] == "s42/fwd23")
  c = get("tiny")
  cell_dir = workdir / "cells" / r["cell"]
  base_id = r["parent"]
  start, tok = PointEvaluator.load(os.fspath(workdir / "cells" / base_id / "train" / "theta2"),
                                   c.model.tokenizer)
  end, _ = PointEvaluator.load(os.fspath(cell_dir / "train" / "hf"), "")
  held = atomic.read_jsonl(next((workdir / "data").glob("alpaca-heldout-*.jsonl")))
  ds = tokenize(held, tok, template="plain", max_length=int(c.data.max_length), add_eos=True)
  # One right-padded batch, one forward per model (causal: padding after a row changes nothing before
  # it); per-row calls ran the models op by op at 8 lengths, 5x the time.
  ids = np.zeros((len(ds), max(len(ex.input_ids) for ex in ds)), np.int32)
  for i, ex in enumerate(ds):
    ids[i, :len(ex.input_ids)] = ex.input_ids
  logits_p = np.asarray(end(jnp.asarray(ids)), np.float64)
  logits_q = np.asarray(start(jnp.asarray(ids)), np.float64)
  total, count = 0.0, 0
  for ex, lp, lq in zip(ds, logits_p, logits_q):
    lp = lp - np.logaddexp.reduce(lp, axis=-1, keepdims=True)
    lq = lq - np.logaddexp.reduce(lq, axis=-1, keepdims=True)
    # positions predicting the response tokens: prompt_len - 1 … L - 2
    for t in range(int(ex.prompt_len) - 1, len(ex.input_ids) - 1):
      total += float(np.sum(np.exp(lp[t]) * (lp[t] - lq[t])))
      count += 1
  assert r["metrics"]["kl_start_end"] == pytest.approx(total / count, rel=2e-3)


@pytest.mark.slow
def test_sigkill_in_a_cell_then_rerun_gives_the_same_results(uninterrupted, tmp_path):
  workdir = tmp_path / "run"
  proc = subprocess.Popen(_cmd(workdir), cwd=ROOT, env=_env(), stdout=subprocess.DEVNULL,
                          stderr=subprocess.DEVNULL)
  killed_in, deadline = None, time.time() + 600
  try:
    while time.time() < deadline and proc.poll() is None:
      done = len(list((workdir / "cells").glob("*/done.json")))
      for ck in (workdir / "cells").glob("*/train/checkpoints/*"):
        cell = ck.parents[2]
        if (done >= 2 and ck.name.isdigit() and (cell / "cell.json").exists()
            and not (cell / "done.json").exists()):
          killed_in = cell.name
          break
      if killed_in:
        proc.send_signal(signal.SIGKILL)
        break
      time.sleep(0.02)
  finally:
    if proc.poll() is None and not killed_in:
      proc.kill()
    proc.wait()
  assert killed_in, "the run finished before a pair cell had a checkpoint"
  again = subprocess.run(_cmd(workdir), cwd=ROOT, env=_env(), capture_output=True, text=True,
                         timeout=900)
  assert again.returncode == 0, again.stderr[-4000:]
  assert (workdir / "results.jsonl").read_bytes() == (uninterrupted / "results.jsonl").read_bytes()


@pytest.mark.slow
def test_an_empty_generated_response_is_kept_and_trains_on_the_end_of_sequence(tmp_path, shared):
  from elasticity.data import load_dataset
  from elasticity.data.tokenize import tokenize
  from elasticity.tokenizers import load_tokenizer
  c = get("tiny,alpaca,generated")
  pair = next(x for x in resistance.plan(c) if x.name == "s42/inv21")
  dk = tmp_path / "dk.jsonl"
  atomic.write_jsonl(dk, [{"prompt": "Name a colour.", "response": ""},
                          {"prompt": "Name a fruit.", "response": "A pear."}])
  kwargs = dict(pair.train.data.load_kwargs.to_dict(), path=str(dk))
  assert kwargs["allow_empty"] is True
  rows = load_dataset("jsonl", **kwargs)
  assert [r["response"] for r in rows] == ["", "A pear."]
  tok = load_tokenizer(c.model.tokenizer or c.model.path)
  ex = tokenize(rows, tok, template="plain", add_eos=True)[0]
  assert int(ex.loss_mask.sum()) == 1 and int(ex.input_ids[-1]) == tok.eos_id   # EOS alone is scored
  slices = next(x for x in resistance.plan(get("tiny,alpaca,slices")) if x.name == "s42/inv21")
  assert "allow_empty" not in slices.train.data.load_kwargs


def test_generated_pair_cells_change_identity_with_the_sampling_and_slices_ones_do_not():
  from elasticity.experiments.core import cells as cells_lib
  for dk in ("slices", "generated"):
    a = cells_lib.identities(resistance.plan(get(f"tiny,alpaca,{dk}")))
    b = cells_lib.identities(resistance.plan(get(f"tiny,alpaca,{dk}", **{"generate.temperature": 0.3})))
    assert a["s42/base"] == b["s42/base"]              # the base's training does not depend on it
    changed = {name for name in a if a[name] != b[name]}
    assert changed == (set() if dk == "slices" else set(a) - {"s42/base"}), dk


def test_generated_design_trains_on_theta_k_generations(tmp_path, shared):
  # Two checkpoints: θ1 a mid-run snapshot, θ2 the final model, the pairs fwd12 and inv21 (the grid
  # for any m: test_m_checkpoints_give_every_pair_both_ways); two runs of the generated grid.
  workdir = tmp_path / "gen"
  cmd = _cmd(workdir, "tiny,alpaca,generated") + ["--config.m=2"]
  proc = subprocess.run(cmd, cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=900)
  assert proc.returncode == 0, proc.stderr[-4000:]
  rows = atomic.read_jsonl(workdir / "results.jsonl")
  base = next(r for r in rows if r["coords"]["role"] == "base")["cell"]
  c = get("tiny,alpaca,generated", m=2)
  prompts = atomic.read_jsonl(next((workdir / "data").glob("alpaca-prompts-s42-*.jsonl")))
  train = atomic.read_jsonl(next((workdir / "data").glob("alpaca-train-s42-*.jsonl")))
  n = int(c.n)
  for k in (1, 2):
    dk = atomic.read_jsonl(workdir / "cells" / base / "points" / f"theta{k}" / "dk.jsonl")
    assert [d["prompt"] for d in dk] == [p["prompt"] for p in prompts[(k - 1) * n:k * n]]
    assert not {d["prompt"] for d in dk} & {t["prompt"] for t in train}
  for r in rows:
    if r["coords"]["role"] != "pair":
      continue
    cfg = atomic.read_json(workdir / "cells" / r["cell"] / "train" / "config.json")
    want = workdir / "cells" / base / "points" / f"theta{r['coords']['target']}" / "dk.jsonl"
    assert cfg["data"]["load_kwargs"]["path"] == os.fspath(want)

  # Other sampling: θ_k's responses are generated again and the pair cells retrained on them.
  before = {k: (workdir / "cells" / base / "points" / f"theta{k}" / "dk.jsonl").read_text()
            for k in (1, 2)}
  proc = subprocess.run(cmd + ["--config.generate.temperature=0.3"], cwd=ROOT, env=_env(),
                        capture_output=True, text=True, timeout=900)
  assert proc.returncode == 0, proc.stderr[-4000:]
  for k in (1, 2):
    point = workdir / "cells" / base / "points" / f"theta{k}"
    assert atomic.read_json(point / "dk.json")["generate"]["temperature"] == 0.3
    assert (point / "dk.jsonl").read_text() != before[k]
  again = atomic.read_jsonl(workdir / "results.jsonl")
  pairs = lambda rs: {r["name"]: r["cell"] for r in rs if r["coords"]["role"] == "pair"}
  assert pairs(again).keys() == pairs(rows).keys() == {"s42/fwd12", "s42/inv21"}
  assert not set(pairs(again).values()) & set(pairs(rows).values())
