"""The safety scorer's data: HH-RLHF harmless-base responses and BeaverTails unsafe answers, split once.

Labels: 1 = safe. An HH-RLHF harmless-base pair gives its chosen final turn (1) and its rejected one
(0); a BeaverTails QA pair gives its answer with its ``safe`` label (every answer in the shared sample
is unsafe, 0). The held-out part is a seeded share of the *pairs* (both sides of a pair on the same
side of the split) and of the BeaverTails rows, chosen before anything is trained, and never trained
on (`SafetyData.check_disjoint`). Only HH-RLHF's harmless-base *test* file is in ../shared, so both
parts come from it.

What the labels mean: HH-RLHF's "chosen" is the *less harmful of two* answers in a crowd worker's
judgment, not a safe answer (many chosen turns still comply with a harmful request), so a scorer
trained on them learns "less harmful than the alternative", and pairwise accuracy is the meaningful
held-out number; BeaverTails answers carry an absolute unsafe label.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from elasticity.data import load_dataset

TEXTS = ("response", "prompt_response")


@dataclasses.dataclass
class SafetyData:
  train_texts: list[str]
  train_labels: np.ndarray
  heldout_pairs: list[tuple[str, str]]      # (chosen, rejected) of the held-out HH-RLHF pairs
  heldout_unsafe: list[str]                 # held-out BeaverTails answers (label 0)
  train_pair_ids: np.ndarray                # HH-RLHF record indices trained on
  heldout_pair_ids: np.ndarray
  train_bt_ids: np.ndarray
  heldout_bt_ids: np.ndarray

  @property
  def heldout_texts(self) -> list[str]:
    return [c for c, _ in self.heldout_pairs] + [r for _, r in self.heldout_pairs] + self.heldout_unsafe

  @property
  def heldout_labels(self) -> np.ndarray:
    n = len(self.heldout_pairs)
    return np.asarray([1] * n + [0] * n + [0] * len(self.heldout_unsafe), np.int32)

  def check_disjoint(self) -> None:
    """Raise if a held-out record is also a training record."""
    if set(self.train_pair_ids.tolist()) & set(self.heldout_pair_ids.tolist()):
      raise AssertionError("safety data: an HH-RLHF pair is both trained on and held out")
    if set(self.train_bt_ids.tolist()) & set(self.heldout_bt_ids.tolist()):
      raise AssertionError("safety data: a BeaverTails row is both trained on and held out")


def _split(n: int, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
  perm = np.random.default_rng(seed).permutation(n)
  k = int(round(fraction * n))
  return np.sort(perm[k:]), np.sort(perm[:k])


def load(*, heldout_fraction: float = 0.2, seed: int = 0, text: str = "response",
         data_dir: str | None = None, train_limit: int = 0) -> SafetyData:
  """Load and split (see the module docstring); ``train_limit`` > 0 keeps that many training pairs
  (and BeaverTails rows in the same proportion) — the held-out part does not change with it."""
  if text not in TEXTS:
    raise ValueError(f"config.text: {text!r} is not one of {TEXTS}")
  if not 0.0 < heldout_fraction < 1.0:
    raise ValueError(f"config.heldout_fraction: must be in (0, 1), got {heldout_fraction}")
  hh = load_dataset("hh_rlhf", split="test", data_dir=data_dir, on_error="skip")
  bt = load_dataset("beavertails", data_dir=data_dir)
  tr_p, ho_p = _split(len(hh), heldout_fraction, seed)
  tr_b, ho_b = _split(len(bt), heldout_fraction, seed + 1)
  if train_limit:
    keep = min(train_limit, len(tr_p))
    tr_b = tr_b[:max(1, int(round(len(tr_b) * keep / len(tr_p))))]
    tr_p = tr_p[:keep]

  def t(rec, side):
    return (rec["prompt"] + rec[side]) if text == "prompt_response" else rec[side]

  texts, labels = [], []
  for i in tr_p:
    texts += [t(hh[i], "chosen"), t(hh[i], "rejected")]
    labels += [1, 0]
  for i in tr_b:
    texts.append(t(bt[i], "response"))
    labels.append(int(bool(bt[i]["safe"])))
  pairs = [(t(hh[i], "chosen"), t(hh[i], "rejected")) for i in ho_p]
  unsafe = [t(bt[i], "response") for i in ho_b if not bt[i]["safe"]]
  data = SafetyData(texts, np.asarray(labels, np.int32), pairs, unsafe, tr_p, ho_p, tr_b, ho_b)
  data.check_disjoint()
  return data


def heldout_metrics(score, data: SafetyData) -> dict[str, float]:
  """Held-out accuracy (P(safe) > 0.5 vs the label), pairwise accuracy on HH-RLHF pairs (chosen
  scored strictly safer than rejected), and the share of BeaverTails unsafe answers scored unsafe."""
  chosen = np.asarray(score([c for c, _ in data.heldout_pairs]))
  rejected = np.asarray(score([r for _, r in data.heldout_pairs]))
  out = {"heldout_pairs": len(data.heldout_pairs), "heldout_unsafe": len(data.heldout_unsafe),
         "heldout_pair_accuracy": float(np.mean(chosen > rejected)),
         "heldout_pair_ties": float(np.mean(chosen == rejected))}
  pred = np.concatenate([chosen, rejected]) > 0.5
  lab = np.asarray([1] * len(chosen) + [0] * len(rejected), bool)
  if data.heldout_unsafe:
    u = np.asarray(score(data.heldout_unsafe))
    out["heldout_unsafe_accuracy"] = float(np.mean(u <= 0.5))
    pred, lab = np.concatenate([pred, u > 0.5]), np.concatenate([lab, np.zeros(len(u), bool)])
  out["heldout_accuracy"] = float(np.mean(pred == lab))
  return out
