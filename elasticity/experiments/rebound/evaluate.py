"""What a rebound point measures: generations, a scorer's verdict, Δγ and the KL to the base model.

At each point the runner hands `PointEvaluator` a model checkpoint and the point's folder:

1. **Generations**: continuations of the held-out prompts (`elasticity.eval.generations`, sampling
   settings and seed from ``config.eval.sampling``), saved as ``generations.jsonl`` in the point's
   folder and reused while the sampling settings are unchanged, so any scorer can re-score a finished
   experiment (`elasticity.experiments.rebound.rescore`).
2. **Score** (when a scorer is configured): the scorer's value of each continuation (``score_text``:
   the continuation alone, or prompt + continuation). A classifier giving P(positive) yields ``score``
   = the share of continuations it calls positive (P > 0.5; ``eval.score_as = "probability"``: the
   mean P(positive) itself) and ``p_positive`` = the mean probability;
   a reward/cost model yields ``score`` = the mean sign-oriented reward. ``score_values`` keeps the
   per-prompt values whose mean is ``score`` (0/1, P or the reward), in prompt order, for the report's
   bootstrap intervals over prompts.
   **The stage-1 check**, at a stage-1 point: ``stage1_gain`` = d·(score − base score) (d = +1 when
   stage 1 trains toward the positive label, −1 for ``neg_first``), ``stage1_gain_se`` its paired
   standard error over prompts, ``stage1_aligned`` (1 when the gain is at least two standard errors)
   and ``stage1_ddelta_gamma`` (Δγ's change from the base), read against the base point's
   ``metrics.json`` (`elasticity.experiments.rebound.stats.stage1_check`).
3. **Δγ** (needs no scorer): bits/byte of held-out negative responses − bits/byte of held-out positive
   responses under the model (`elasticity.eval.preference`), i.e. the model's preference measured
   exactly by compression: it falls as the model comes to prefer the negative data.
4. **KL to the base model**: the exact KL(π‖π_base) per generated token on the policy's own
   continuations (`elasticity.eval.kl`). The sampler's own activations of the policy are kept
   (``policy_hidden.npz`` beside ``generations.jsonl``, float32, ~11 MB for 100 × 48 tokens of
   SmolLM2; written first, so a point killed in between samples again), so only the base runs a
   forward, and a resumed or re-evaluated point computes the same bits; rows without that file (an
   older run) run both forwards. At the base point itself (the policy is the base's checkpoint) it is
   0 by definition and not computed, and the base is loaded once.

Δγ and the KL run their last, partial batch without empty rows (``trim_last``; one more compiled
shape per process, the same values), and the `compression.Scorer` is kept across points.

The evaluator's `fingerprint` covers every setting above; the runner re-evaluates a finished cell when it
changes, without training it again.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import numpy as np
from absl import logging

from elasticity import atomic, compression
from elasticity.eval import generations as gen_lib
from elasticity.eval.kl import kl_on_generations
from elasticity.eval.preference import compression_preference
from elasticity.experiments.core import cells as cells_lib
from elasticity.experiments.core import checkpoints
from elasticity.experiments.rebound.grid import SCORE_AS
from elasticity.experiments.rebound.stats import stage1_check


def scorer_kind(scorer) -> str:
  """``"reward"`` for a one-logit model (a reward or cost), else ``"probability"`` (P(positive))."""
  return "reward" if int(getattr(scorer, "num_labels", 2)) == 1 else "probability"


def score_metrics(values: np.ndarray, kind: str, score_as: str = "share"
                  ) -> dict[str, float | list[float]]:
  """A point's score metrics from the scorer's values, one per continuation.

  A classifier's continuation scores 1[P(positive) > 0.5] (``score_as = "share"``: ``score`` is the
  share called positive) or P(positive) itself (``"probability"``: for a classifier whose outputs sit
  near 0.5, where a share has a floor or a ceiling); a reward or cost model's, its value.
  """
  if score_as not in SCORE_AS:
    raise ValueError(f"config.eval.score_as: {score_as!r} is not one of {SCORE_AS}")
  values = np.asarray(values, dtype=np.float64)
  if kind == "probability":
    per = (values > 0.5).astype(np.float64) if score_as == "share" else values
    return {"score": float(np.mean(per)), "p_positive": float(np.mean(values)),
            "score_values": [float(v) for v in per]}
  return {"score": float(np.mean(values)), "score_sd": float(np.std(values)),
          "score_values": [float(v) for v in values]}


def score_texts(rows: list[dict], score_text: str) -> list[str]:
  if score_text == "completion":
    return [r["completion"] for r in rows]
  if score_text == "prompt_completion":
    return [r["prompt"] + r["completion"] for r in rows]
  raise ValueError(f"config.eval.score_text: {score_text!r} is not 'completion' or 'prompt_completion'")


class PointEvaluator:
  """Evaluates checkpoints against one base model, one prompt set and one pair of held-out sets."""

  def __init__(self, ev, *, base_path: str, base_tokenizer: str, prompts: list[str],
               heldout_pos: list[dict], heldout_neg: list[dict], scorer=None,
               scorer_id: str = "", base_point_dir: str | os.PathLike | None = None,
               direction: float = 1.0):
    self.ev = ev
    self.base_path, self.base_tokenizer = base_path, base_tokenizer
    self.prompts, self.heldout_pos, self.heldout_neg = prompts, heldout_pos, heldout_neg
    self.scorer = scorer
    self.base_point_dir = Path(base_point_dir) if base_point_dir is not None else None
    self.direction = float(direction)
    self.score_as = str(ev.get("score_as", "share"))
    self._base = self._base_tokenizer = None
    self._compression = None     # one compression.Scorer for every point: compiled once
    s = ev.sampling
    self.sampling = dict(max_new_tokens=int(s.max_new_tokens), temperature=float(s.temperature),
                         top_p=float(s.top_p), seed=int(s.seed), batch_size=int(s.batch_size))
    self.generation_fingerprint = cells_lib.digest({"sampling": self.sampling, "prompts": prompts})
    self.fingerprint = cells_lib.digest({
        "generation": self.generation_fingerprint, "scorer": scorer_id,
        "score_text": ev.score_text, "heldout": [heldout_pos, heldout_neg],
        "compression": dict(max_length=int(ev.max_length), batch_size=int(ev.batch_size)),
        "kl": bool(ev.kl), "base": [base_path, base_tokenizer],
        **({} if self.score_as == "share" else {"score_as": self.score_as})})

  # -- models -----------------------------------------------------------------------------------
  load = staticmethod(checkpoints.load)

  def base(self):
    if self._base is None:
      self._base, self._base_tokenizer = self.load(self.base_path, self.base_tokenizer)
    return self._base

  # -- one point --------------------------------------------------------------------------------
  def is_base(self, model_path: str, tokenizer_path: str) -> bool:
    """Whether a point's model is the base model itself (same checkpoint and tokenizer)."""
    same = lambda a, b: os.path.realpath(os.fspath(a)) == os.path.realpath(os.fspath(b))  # noqa: E731
    return same(model_path, self.base_path) and same(tokenizer_path or model_path,
                                                     self.base_tokenizer or self.base_path)

  def generations(self, model, tokenizer, point_dir: Path, keep_hidden: bool = False) -> list[dict]:
    """The point's continuations: read back when saved with these settings, else sampled. With
    ``keep_hidden``, rows also carry the policy's activations (``policy_hidden``) when they were kept
    or are sampled now."""
    path, hpath = point_dir / "generations.jsonl", point_dir / "policy_hidden.npz"
    fp = self.generation_fingerprint
    if path.exists():
      rows, meta = gen_lib.load(path)
      if meta.get("fingerprint") == fp:
        hidden = gen_lib.load_hidden(hpath, rows, fp) if keep_hidden else None
        for r, h in zip(rows, hidden or ()):
          r["policy_hidden"] = h
        return rows
    rows = gen_lib.continue_prompts(model, tokenizer, self.prompts, **self.sampling,
                                    keep_hidden=keep_hidden)
    if keep_hidden:
      gen_lib.save_hidden(hpath, rows, fp)        # before generations.jsonl, which seals the point
    gen_lib.save(path, rows, {"fingerprint": fp, **self.sampling})
    return rows

  def score(self, rows: list[dict]) -> dict[str, float]:
    if self.scorer is None:
      return {}
    values = self.scorer.score(score_texts(rows, self.ev.score_text))
    return score_metrics(values, scorer_kind(self.scorer), self.score_as)

  def __call__(self, model_path: str, tokenizer_path: str, point_dir: str | os.PathLike,
               context=None) -> dict[str, float]:
    point_dir = Path(point_dir)
    point_dir.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    is_base = self.is_base(model_path, tokenizer_path)
    if is_base and self._base is not None:
      model, tokenizer = self._base, self._base_tokenizer
    else:
      model, tokenizer = self.load(model_path, tokenizer_path)
      if is_base:
        self._base, self._base_tokenizer = model, tokenizer
    rows = self.generations(model, tokenizer, point_dir, keep_hidden=bool(self.ev.kl) and not is_base)
    metrics: dict[str, float] = {}
    metrics.update(self.score(rows))
    self._compression = compression.Scorer.reuse(self._compression, model)
    pref = compression_preference(self._compression, tokenizer, self.heldout_pos, self.heldout_neg,
                                  max_length=int(self.ev.max_length), batch_size=int(self.ev.batch_size),
                                  trim_last=True)
    metrics.update({k: float(pref[k]) for k in ("bpb_pos", "bpb_neg", "delta_gamma")})
    if self.ev.kl and is_base:
      metrics["kl_to_base"] = 0.0          # KL(π_base‖π_base): zero by definition (module docstring)
    elif self.ev.kl:                       # rows with policy_hidden: only the base runs a forward
      rep = kl_on_generations(model, self.base(), rows, batch_size=int(self.ev.batch_size),
                              trim_last=True)
      metrics["kl_to_base"] = float(rep.mean)
    metrics["generated_tokens"] = float(sum(len(r["completion_ids"]) for r in rows))
    if context is not None and context.cell.coords.get("stage") == "pos":
      metrics.update(self.stage1(metrics))
    atomic.write_json(point_dir / "metrics.json", {"fingerprint": self.fingerprint, "metrics": metrics})
    logging.info("evaluated %s in %.1fs: %s", model_path, time.perf_counter() - t0,
                 "  ".join(f"{k} {v:.4g}" for k, v in metrics.items() if not isinstance(v, list)))
    return metrics

  def stage1(self, metrics: dict) -> dict[str, float]:
    """The stage-1 check (module docstring) against the base point's metrics, when both are there."""
    path = self.base_point_dir / "metrics.json" if self.base_point_dir is not None else None
    if path is None or not path.exists():
      logging.warning("stage-1 check skipped: no base metrics at %s (the report computes it from the "
                      "rows)", path)
      return {}
    base = atomic.read_json(path)["metrics"]
    out = {"stage1_ddelta_gamma": float(metrics["delta_gamma"] - base["delta_gamma"])}
    if "score_values" in base and "score_values" in metrics:
      chk = stage1_check(np.asarray(base["score_values"]), np.asarray(metrics["score_values"]),
                         self.direction)
      out.update(stage1_gain=float(chk["gain"]), stage1_gain_se=float(chk["se"]),
                 stage1_aligned=float(chk["aligned"]))
      logging.info("stage-1 check: gain %.4g ± %.4g (s.e.): %s", chk["gain"], chk["se"],
                   "aligned" if chk["aligned"] else "stage 1 did not align: rebound not testable")
    return out


def rescore_rows(rows: list[dict], scorer, score_text: str, score_as: str = "share") -> dict[str, Any]:
  """Score metrics of saved generation rows with another scorer (no generation)."""
  values = scorer.score(score_texts(rows, score_text))
  return score_metrics(values, scorer_kind(scorer), score_as)
