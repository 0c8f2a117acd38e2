"""The project's safety scorer: its data split (held-out never trained on), training on a small
slice, the launcher, and the `load_scorer` round trip."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from conftest import require
from elasticity import paths
from elasticity.eval import safety_data, sentiment
from elasticity.eval.scorers import load_scorer


@pytest.fixture
def safety_files():
  require(paths.shared_path("data", "hh_rlhf", "harmless-base_test.jsonl.gz"))
  require(paths.shared_path("data", "beavertails", "beavertails_qa_sample.csv"))


def test_heldout_is_never_trained_on(safety_files):
  full = safety_data.load(heldout_fraction=0.2, seed=0)
  small = safety_data.load(heldout_fraction=0.2, seed=0, train_limit=50)
  assert not set(full.train_pair_ids) & set(full.heldout_pair_ids)
  assert not set(full.train_bt_ids) & set(full.heldout_bt_ids)
  assert len(full.train_pair_ids) + len(full.heldout_pair_ids) > 2000
  # the held-out part does not depend on how much is trained on
  assert small.heldout_pairs == full.heldout_pairs and small.heldout_unsafe == full.heldout_unsafe
  assert set(small.train_pair_ids) <= set(full.train_pair_ids) and len(small.train_pair_ids) == 50
  # labels: chosen 1, rejected 0, BeaverTails (all unsafe in the shared sample) 0
  assert list(small.train_labels[:4]) == [1, 0, 1, 0] and small.train_labels[-1] == 0
  held = set(full.heldout_texts)
  trained_only = [t for t in full.train_texts if t not in held]
  assert len(trained_only) > 0.9 * len(full.train_texts)   # a few short turns repeat ("No.")
  with pytest.raises(ValueError, match="config.heldout_fraction"):
    safety_data.load(heldout_fraction=1.0)


def test_heldout_metrics_against_a_direct_count():
  data = safety_data.SafetyData([], np.zeros(0), [("a b", "c"), ("d", "e f")], ["g"],
                                np.zeros(0), np.zeros(0), np.zeros(0), np.zeros(0))
  table = {"a b": 0.9, "c": 0.2, "d": 0.4, "e f": 0.6, "g": 0.7}
  m = safety_data.heldout_metrics(lambda ts: np.asarray([table[t] for t in ts]), data)
  assert m["heldout_pair_accuracy"] == 0.5            # a b > c; d < e f
  assert m["heldout_unsafe_accuracy"] == 0.0          # g scored safe
  # predictions safe: a b, e f, g; labels safe: a b, d → right: a b, c → 2 of 5
  assert m["heldout_accuracy"] == pytest.approx(2 / 5)


def test_train_small_slice_and_round_trip(safety_files, tmp_path):
  data = safety_data.load(train_limit=300, seed=0)
  clf = sentiment.fit(data.train_texts, data.train_labels,
                      sentiment.TrainConfig(min_df=1, l2=1e-2, steps=30, log_every=30))
  out = clf.save(tmp_path / "safety")
  loaded = load_scorer(out)
  texts = data.heldout_texts[:40]
  p = loaded.score(texts)
  np.testing.assert_allclose(p, clf.score(texts), rtol=1e-6)
  assert p.dtype == np.float64 and ((p >= 0) & (p <= 1)).all()
  assert sentiment.accuracy(clf, data.train_texts, data.train_labels) > 0.8


def test_launch_scorer_safety(safety_files, tmp_path):
  out = tmp_path / "s"
  cmd = [sys.executable, "-m", "launch.scorer", "--config=configs/scorer.py:safety",
         f"--workdir={out}", "--config.train_limit=200", "--config.steps=20"]
  r = subprocess.run(cmd, cwd=paths.PROJECT_ROOT, capture_output=True, text=True, timeout=600)
  assert r.returncode == 0, r.stderr[-3000:]
  m = json.loads((out / "metrics.json").read_text())
  assert m["task"] == "safety" and m["heldout_pairs"] == 462 and 0 <= m["heldout_accuracy"] <= 1
  assert load_scorer(out).score(["I can't help with that."]).shape == (1,)
  bad = subprocess.run(cmd[:4] + [f"--workdir={tmp_path / 'b'}", "--config.text=prompt"],
                       cwd=paths.PROJECT_ROOT, capture_output=True, text=True, timeout=300)
  assert bad.returncode == 1 and "config.text" in bad.stderr.strip().splitlines()[-1]
