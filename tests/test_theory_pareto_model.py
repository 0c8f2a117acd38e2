"""Model leaf masses (`elasticity.theory.pareto_model`): the batched prefix log-masses of stories260K
against a float64 numpy computation from its full logits, one unpadded sequence at a time; the
normalization over distinct nodes against a brute-force dictionary; the continuous fits recovering a
synthetic Pareto shape (and the truncated lognormal against scipy); the launcher's run on a few texts."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from flax import nnx
from scipy import stats

from conftest import require
from elasticity.theory.pareto_model import (clauset_x_min, fit_masses, model_depth_rows,
                                            node_log_masses, node_sequences, normalize,
                                            pointwise_loglik, sequence_logprobs, start_ids,
                                            vuong_masses)

ROOT = Path(__file__).resolve().parent.parent
TEXTS = ["Once upon a time there was a little dog.", "Once upon a time, a girl", "The sun",
         "Once upon a time there was a big cat who liked milk.", "Tom and Sue went to the park.",
         "The sun was hot.", "Hi"]


@pytest.fixture(scope="module")
def tiny():
  from elasticity import paths
  from elasticity.convert import load_pretrained
  from elasticity.tokenizers import load_tokenizer
  root = require(paths.shared_dir() / "models" / "stories260K")
  tok = load_tokenizer(require(root / "tok512.bin"))
  return load_pretrained(root / "stories260K.bin", tokenizer=root / "tok512.bin"), tok


def numpy_log_masses(model, start, seqs):
  """log Π_t p(x_t | start, x_<t) for every prefix of every sequence, float64, one sequence a call."""
  graphdef, state = nnx.split(model)
  out = []
  for x in seqs:
    ids = np.array([list(start) + list(x)], np.int32)
    z = np.asarray(nnx.merge(graphdef, state)(ids), np.float64)[0]
    logp = z - z.max(-1, keepdims=True)
    logp -= np.log(np.exp(logp).sum(-1, keepdims=True))
    s = len(start)
    out.append(np.cumsum([logp[s + t - 1, x[t]] for t in range(len(x))]))
  return out


def test_model_masses_equal_a_numpy_computation(tiny):
  model, tok = tiny
  depth = 6
  seqs = node_sequences(TEXTS, tok, depth, tok.eos_id)
  assert [len(x) for x in seqs][:2] == [depth, depth] and seqs[-1][-1] == tok.eos_id
  start = start_ids(tok, "bos")
  assert start == [tok.bos_id]
  lp = sequence_logprobs(model, seqs, start, batch_size=3)     # 3 batches, the last one padded
  ref = numpy_log_masses(model, start, seqs)
  for i, x in enumerate(seqs):
    assert np.isnan(lp[i, len(x):]).all()
    # stories260K float32 vs float64 log-softmax: 2·√(512·stack_depth(5))·u = 1.85e-5 ⇒ 2e-5 kept (measured 7.8e-6 abs)
    np.testing.assert_allclose(np.cumsum(lp[i, :len(x)]), ref[i], rtol=2e-5, atol=2e-5)
  for d in (1, 3, depth):
    nodes, logm, counts = node_log_masses(seqs, lp, d)
    want: dict[tuple, list] = {}
    for x, r in zip(seqs, ref):
      want.setdefault(tuple(x[:d]), []).append(r[min(d, len(x)) - 1])
    assert sorted(want) == nodes
    np.testing.assert_allclose(logm, [want[v][0] for v in nodes], rtol=2e-5, atol=2e-5)
    assert counts.tolist() == [len(want[v]) for v in nodes]
    for v in nodes:                      # a shared prefix has one mass, whichever sequence gave it
      assert np.ptp(want[v]) < 2e-5      # float32 forwards of different lengths: the 1.85e-5 bound above
    q, log_z = normalize(logm)
    p = np.exp([want[v][0] for v in nodes])
    np.testing.assert_allclose(q, p / p.sum(), rtol=1e-4)   # exp turns logm's ≤ 2e-5·(1+|logm|) into relative error ⇒ 1e-4 kept
    assert q.sum() == pytest.approx(1.0, abs=1e-12) and log_z == pytest.approx(math.log(p.sum()), rel=1e-4)
  # a literal start text scores from its encoding
  assert start_ids(tok, "Once") == tok.encode("Once")


def test_model_masses_cover_the_whole_level_on_a_complete_tree(tiny):
  """All V one-token nodes of the tree: their model masses sum to 1 (coverage 1)."""
  model, tok = tiny
  lp = sequence_logprobs(model, [[t] for t in range(tok.vocab_size)], [tok.bos_id], batch_size=128)
  _, logm, _ = node_log_masses([[t] for t in range(tok.vocab_size)], lp, 1)
  assert normalize(logm)[1] == pytest.approx(0.0, abs=1e-5)


def test_bad_input(tiny):
  _, tok = tiny
  with pytest.raises(ValueError, match="text 1"):
    node_sequences(["fine", ""], tok, 3, tok.eos_id)
  with pytest.raises(ValueError, match="finite"):
    normalize(np.array([0.0, -np.inf]))


@pytest.mark.parametrize("alpha", [0.8, 1.5])
def test_fit_recovers_a_synthetic_pareto_shape(alpha):
  rng = np.random.default_rng(int(alpha * 10))
  raw = (1 - rng.random(4000)) ** (-1 / alpha)          # Pareto(α, 1)
  q, _ = normalize(np.log(raw))                         # as masses: a distribution over 4000 nodes
  fits = {f.model: f for f in fit_masses(q)}
  assert fits["pareto"].params["alpha"] == pytest.approx(alpha, rel=0.05)
  assert vuong_masses(q, fits["pareto"], fits["exponential"]) > 2
  # a lognormal truncated far in its tail is a power law (μ → −∞, σ large): it may tie, never win
  assert abs(vuong_masses(q, fits["pareto"], fits["lognormal"])) < 2
  assert fits["lognormal"].aic > fits["pareto"].aic - 2
  assert fits["pareto"].loglik == pytest.approx(
      stats.pareto(fits["pareto"].params["alpha"], scale=q.min()).logpdf(q).sum(), rel=1e-10)
  # Clauset's cut on a lognormal body with a Pareto tail finds the tail's start and shape
  body = np.exp(rng.normal(0.0, 0.3, 3000))
  tail = (1 - rng.random(2000)) ** (-1 / alpha) * 3.0
  x = np.concatenate([body[body < 3.0], tail])
  cut = clauset_x_min(x, 50)
  assert 2.0 < cut < 4.5
  tfit = {f.model: f for f in fit_masses(x, cut)}
  assert tfit["pareto"].params["alpha"] == pytest.approx(alpha, rel=0.1)


def test_truncated_lognormal_matches_scipy():
  rng = np.random.default_rng(3)
  x = np.exp(rng.normal(-8.0, 1.5, 20_000))
  cut = float(np.quantile(x, 0.4))
  fits = {f.model: f for f in fit_masses(x, cut)}
  ln = fits["lognormal"]
  assert ln.params["mu"] == pytest.approx(-8.0, abs=0.1) and ln.params["sigma"] == pytest.approx(1.5, rel=0.05)
  dist = stats.lognorm(ln.params["sigma"], scale=math.exp(ln.params["mu"]))
  tail = x[x >= cut]
  want = dist.logpdf(tail) - dist.logsf(cut)
  np.testing.assert_allclose(pointwise_loglik(ln, tail), want, rtol=1e-9)
  assert ln.loglik == pytest.approx(want.sum(), rel=1e-9)
  assert vuong_masses(x, fits["pareto"], ln) < -2
  assert min(fits.values(), key=lambda f: f.aic).model == "lognormal"


def test_rows_and_run_on_a_few_texts(tiny, shared, tmp_path):
  model, tok = tiny
  seqs = node_sequences(TEXTS * 3, tok, 4, tok.eos_id)
  lp = sequence_logprobs(model, seqs, [tok.bos_id], batch_size=8)
  rows = model_depth_rows(seqs, lp, [1, 4], tail_min_n=3)
  assert [r["nodes"] for r in rows] == [len({tuple(x[:d]) for x in seqs}) for d in (1, 4)]
  assert all(0 < r["coverage"] <= 1 for r in rows)
  assert all(r["all"]["pareto"]["alpha"] > 0 for r in rows if r["all"])
  root = shared / "models" / "stories260K"
  env = {**os.environ, "PYTHONPATH": str(ROOT)}
  out = subprocess.run(
      [sys.executable, "-m", "launch.theory", "--config=configs/theory.py:pareto_model",
       "--config.limit=40", "--config.depths=1,3", f"--config.model={root / 'stories260K.bin'}",
       f"--config.tokenizer={root / 'tok512.bin'}", "--config.batch_size=16",
       "--config.tail_min_n=10", f"--workdir={tmp_path}"],
      cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
  assert out.returncode == 0, out.stderr[-2000:]
  assert "model masses" in out.stdout and "empirical counts" in out.stdout
  res = json.loads((tmp_path / "theory_pareto_model.json").read_text())
  block = res["fits"][0]
  assert res["start_ids"] == [1] and block["texts"] == 40
  assert [r["depth"] for r in block["model_rows"]] == [1, 3]
  assert [r["nodes"] for r in block["model_rows"]] == [r["nodes"] for r in block["empirical_rows"]]
  assert (tmp_path / "theory_pareto_model.md").read_text().startswith("Model masses")
