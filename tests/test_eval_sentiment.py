"""The built-in sentiment classifier: tokens, n-gram features and the NB-weighted linear model against
an independent brute-force computation (Python sets of n-gram tuples, numpy float64), learning on
real IMDb reviews, the checkpoint round trip and the launcher."""

from __future__ import annotations

import itertools
import json
import subprocess
import sys

import numpy as np
import pytest

from elasticity.eval.scorers import load_scorer
from elasticity.eval import sentiment as S
from elasticity.eval import sentiment_features as sf

TEXTS = ["Great movie, great acting!<br />Loved it.", "Bad movie. Bad acting; don't watch it",
         "great acting but a bad plot?", "I don't know... loved the movie, hated the plot",
         "bad bad bad", "great great plot acting movie"]
LABELS = [1, 0, 1, 0, 0, 1]


def test_tokens():
  assert sf.tokens("Don't<br />GO!! x-ray 3.5 l'amour?") == [
      "don't", "go", "!", "!", "x", "ray", "3", "5", "l'amour", "?"]
  for t in TEXTS:
    for n in (1, 3, 100):
      cut = sf.first_tokens(t, n)
      assert sf.tokens(cut) == sf.tokens(t)[:n]


def _ngrams(text: str, n: int) -> set[tuple[str, ...]]:
  t = sf.tokens(text)
  return {tuple(t[i:i + n]) for i in range(len(t) - n + 1)}


def _decode(vocab: sf.Vocab) -> list[tuple[str, ...]]:
  """Feature id → n-gram tuple, from the key digits in base V (an independent decoding)."""
  v = len(vocab.words)
  out = [(w,) for w in vocab.words[1:]]
  for n, keys in enumerate(vocab.ngram_keys, start=2):
    for k in keys.tolist():
      digits = []
      for _ in range(n):
        k, d = divmod(k, v)
        digits.append(d)
      out.append(tuple(vocab.words[d] for d in reversed(digits)))
  return out


def test_linear_model_equals_brute_force_numpy():
  cfg = S.TrainConfig(max_n=3, min_df=2, alpha=0.5, norm="sqrt", scale=2.5, steps=3)
  clf = S.fit(TEXTS, LABELS, cfg)
  # The vocabulary, brute force: every word; n-grams (n ≥ 2) in at least min_df texts.
  words = sorted({w for t in TEXTS for w in sf.tokens(t)})
  expect = [(w,) for w in words]
  for n in (2, 3):
    df = {}
    for t in TEXTS:
      for g in _ngrams(t, n):
        df[g] = df.get(g, 0) + 1
    expect += sorted(g for g, c in df.items() if c >= 2)
  feats = _decode(clf.vocab)
  assert sorted(feats) == sorted(expect) and len(feats) == len(set(feats))
  # NB ratio, brute force in float64.
  present = [set().union(*(_ngrams(t, n) for n in (1, 2, 3))) for t in TEXTS]
  p = np.array([0.5 + sum(g in s for s, y in zip(present, LABELS) if y) for g in feats])
  q = np.array([0.5 + sum(g in s for s, y in zip(present, LABELS) if not y) for g in feats])
  r = np.log(p / p.sum()) - np.log(q / q.sum())
  np.testing.assert_allclose(np.asarray(clf.model.ratio[...]), r, rtol=1e-6, atol=1e-6)
  # Set weights from the n-gram strings, and score unseen texts (unknown words, short, empty).
  w = np.array([(len(" ".join(g)) % 7 - 3) * 0.3 + 0.05 * len(g) for g in feats])
  clf.model.w[...] = w.astype(np.float32)
  clf.model.b[...] = np.float32(-0.2)
  clf = S.SentimentClassifier(clf.vocab, clf.model, clf.config)
  new = ["great plot, bad acting, zebra movie", "zebra", "", "loved it! great acting"]
  index = {g: i for i, g in enumerate(feats)}
  want = []
  for t in TEXTS + new:
    ids = [index[g] for n in (1, 2, 3) for g in _ngrams(t, n) if g in index]
    z = float(np.sum(r[ids] * w.astype(np.float32)[ids]))
    want.append(-0.2 + 2.5 * z / np.sqrt(max(len(ids), 1)))
  np.testing.assert_allclose(clf.logits(TEXTS + new), want, rtol=1e-5, atol=1e-5)
  got = clf.score(TEXTS + new)
  assert got.dtype == np.float64
  np.testing.assert_allclose(got, 1 / (1 + np.exp(-np.asarray(want))), rtol=1e-5, atol=1e-6)


def test_deterministic_and_bad_input():
  cfg = S.TrainConfig(max_n=2, min_df=1, steps=5)
  a, b = S.fit(TEXTS, LABELS, cfg), S.fit(TEXTS, LABELS, cfg)
  assert np.array_equal(np.asarray(a.model.w[...]), np.asarray(b.model.w[...]))
  with pytest.raises(ValueError, match="label 2 is 3"):
    S.fit(TEXTS, [1, 0, 3, 0, 0, 1], cfg)
  with pytest.raises(ValueError, match="6 texts but labels"):
    S.fit(TEXTS, [1, 0], cfg)
  with pytest.raises(ValueError, match="norm must be one of"):
    S.TrainConfig(norm="l3")
  with pytest.raises(TypeError, match="text 1 is int"):
    a.score(["ok", 3])


@pytest.fixture
def reviews(shared):
  del shared
  from elasticity.data import load_dataset
  train = load_dataset("imdb", split="train")
  idx = np.random.default_rng(0).permutation(len(train))[:600]
  return [train[i]["text"] for i in idx], np.array([train[i]["label_id"] for i in idx])


def test_learns_on_real_reviews_and_round_trips(reviews, tmp_path):
  texts, y = reviews
  clf = S.fit(texts[:400], y[:400], S.TrainConfig(steps=60, val_size=50, seed=1))
  assert 0.6 < clf.metrics["val_accuracy"] <= 1.0
  acc = S.accuracy(clf, texts[400:], y[400:])
  assert acc > 0.72, acc                              # chance is ~0.5 on 200 held-out reviews
  before = clf.score(texts[400:])
  clf.save(tmp_path / "clf")
  loaded = load_scorer(tmp_path / "clf")
  assert isinstance(loaded, S.SentimentClassifier) and loaded.kind == "elasticity-sentiment"
  assert np.array_equal(loaded.score(texts[400:]), before)
  assert json.loads((tmp_path / "clf" / "config.json").read_text())["metrics"]["val_size"] == 50
  (tmp_path / "clf" / "weights.npz").unlink()
  with pytest.raises(FileNotFoundError, match="weights.npz missing"):
    load_scorer(tmp_path / "clf")


@pytest.mark.slow  # two subprocesses, the whole dataset read: ~40 s on 2 loaded cores
def test_launcher_writes_a_loadable_checkpoint(shared, tmp_path):
  from elasticity import paths
  out = tmp_path / "run"
  cmd = [sys.executable, "-m", "launch.sentiment", f"--workdir={out}", "--config.train_limit=300",
         "--config.test_limit=100", "--config.steps=30", "--config.smollm2_prefix=False"]
  subprocess.run(cmd, check=True, cwd=paths.PROJECT_ROOT, capture_output=True)
  m = json.loads((out / "metrics.json").read_text())
  assert m["train_reviews"] == 300 and m["test_reviews"] == 100
  assert set(m) >= {"test_accuracy", "test_accuracy_first64_words", "wall_seconds"}
  assert load_scorer(out).score(["a wonderful, moving film"]).shape == (1,)
  bad = subprocess.run(cmd[:4] + ["--config.norm=l3"], cwd=paths.PROJECT_ROOT,
                       capture_output=True, text=True)
  assert bad.returncode != 0 and "norm must be one of" in bad.stderr
  bad = subprocess.run(cmd[:4] + ["--config.nrom=sqrt"], cwd=paths.PROJECT_ROOT,
                       capture_output=True, text=True)
  assert bad.returncode != 0 and "unknown config key 'config.nrom'" in bad.stderr
