"""The resistance experiment's point evaluator (paper §5.1, Tables 1–2), and the experiment it measures.

A pretrained model is fine-tuned for one epoch on 3·n examples visited **in order** (no shuffle), and
the model after each third is exported: θ1 has seen exactly D_1, θ2 exactly D_1 + D_2, θ3 all three.
For every pair k < l two cells train for one epoch on n examples:

- **forward** ``θ_k → D_l``: θ_k trained on D_l;
- **inverse** ``θ_l → D_k``: θ_l trained on D_k.

The paper's claim (elasticity) is that the inverse loss is lower than the forward one.

Cells, per seed (``configs/experiments/resistance.py``): ``s<seed>/base`` (the SFT epoch, points
``theta1..3``) and ``s<seed>/fwd<k><l>``, ``s<seed>/inv<l><k>``. The seed picks the 3·n examples
(a seeded order of the pool) and the training seed.

**D_k, two designs** (``config.dk``):

- ``slices``: D_k is the k-th third of the base run's data (the file ``data/...-train-s<seed>.jsonl``
  the base cell reads in order, so the snapshot after k·n/batch steps has seen exactly D_1..D_k);
- ``generated``: D_k is θ_k's responses to n held-out prompts P_k (disjoint from the training data
  and from each other; sampling in ``config.generate``), written at the base cell's point
  ``theta<k>`` as ``dk.jsonl`` and read by the pair cells. ``dk.json`` beside it records the
  sampling it was made with: a file made otherwise is generated again, and the pair cells carry the
  sampling settings in their identity (`Cell.inputs`), so they are retrained on the new D_k. θ_l has not been trained on these, so a
  lower inverse loss cannot be memorisation of the training data.

**Recorded per pair cell** (its one point ``final``):

- ``final_loss``: the paper's metric, the mean training loss (token-mean NLL in nats, as logged by
  the train loop) over the **last** ``loss.last_steps`` steps of the cell's ``metrics.jsonl``;
  ``first_loss`` the loss of the first step (computed before the first update); the whole curve
  goes to ``<point>/loss_curve.json`` (the report plots it);
- ``kl_start_end``: KL(end ‖ start) per token, exact over the vocabulary, on the held-out examples
  teacher-forced (prompt + reference response; response tokens scored), `elasticity.eval.kl`;
- compression: nats/token and bits/byte (γ) of the start and the end model on D_1, D_2, D_3 and on the
  held-out set (`elasticity.compression.measure`, EOS scored as in training): ``gamma_D<j>_start``,
  ``gamma_D<j>_end``, ``dgamma_D<j>`` (end − start, bits/byte);
- **the whole-D_k measures** (the report's headline): ``dk_loss_end`` (= ``train_loss_end``, the end
  model's nats/token over all of its training data D_target, not the last noisy batches) and
  ``dk_fall`` = ``train_loss_start − train_loss_end``, how far the run moved on its own data;
- **the memorisation control**: ``train_loss_start`` (the start model's nats/token on the cell's
  own training data, before any update), ``heldout_loss_start``, ``heldout_loss_end`` and
  ``heldout_fall`` (start − end) on examples of the same source that no θ has seen.

The base cell's points record the same compression numbers of θ_k (``gamma_D<j>``, ``loss_D<j>``,
``heldout_loss``).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from absl import logging

from elasticity import atomic, compression
from elasticity.data.tokenize import tokenize
from elasticity.eval import generations as gen_lib
from elasticity.eval.kl import kl_to_reference
from elasticity.experiments.core import cells as cells_lib
from elasticity.experiments.core import checkpoints
from elasticity.experiments.resistance.grid import (EXPERIMENT_DIR, base_name, num_checkpoints,
                                                    prompts_file, train_file)


def read_curve(train_dir: Path) -> list[tuple[int, float]]:
  """(step, loss) of every training step in ``<train_dir>/metrics.jsonl``."""
  path = Path(train_dir) / "metrics.jsonl"
  if not path.is_file():
    raise FileNotFoundError(f"{path}: no training metrics (was the cell trained?)")
  curve = {}
  with open(path, encoding="utf-8") as f:
    for i, line in enumerate(f, 1):
      if not line.strip():
        continue
      try:
        rec = json.loads(line)
      except json.JSONDecodeError as e:
        raise ValueError(f"{path}, line {i}: not JSON ({e})") from None
      if rec.get("kind") == "train" and "loss" in rec:
        curve[int(rec["step"])] = float(rec["loss"])
  return sorted(curve.items())


def final_loss(curve: list[tuple[int, float]], last_steps: int) -> float:
  """The paper's metric: the mean training loss over the last ``last_steps`` steps."""
  if not curve:
    raise ValueError("final_loss: an empty loss curve")
  tail = [v for _, v in curve[-int(last_steps):]]
  return float(sum(tail) / len(tail))


class ResistanceEvaluator:
  """Point evaluator of the resistance grid (module docstring)."""

  def __init__(self, c, files: dict[Path, list[dict]], workdir):
    self.c = c
    self.files = files
    self.workdir = Path(workdir)
    self._scorer = None
    self._measured: dict[str, dict] = {}
    ev = c.eval
    self.settings = dict(batch_size=int(ev.batch_size), max_length=int(c.data.max_length),
                         last_steps=int(c.loss.last_steps), generate=c.generate.to_dict(),
                         kl=bool(ev.kl))
    self.fingerprint = cells_lib.digest({"settings": self.settings, "heldout": self.heldout,
                                         "dk": c.dk})

  @property
  def heldout(self) -> list[dict]:
    return next(rows for p, rows in self.files.items() if "-heldout-" in p.name)

  def _rows(self, template: str, seed: int) -> list[dict]:
    p = Path(template.replace(EXPERIMENT_DIR, os.fspath(self.workdir)))
    return self.files[p]

  def d_sets(self, cell) -> dict[str, list[dict]]:
    """D_1, …, D_m of the cell's seed (generated: θ_k's files, once they exist) and the held-out."""
    n, out = int(self.c.n), {}
    for k in range(1, num_checkpoints(self.c) + 1):
      if self.c.dk == "slices":
        out[f"D{k}"] = self._rows(train_file(self.c, cell.seed), cell.seed)[(k - 1) * n:k * n]
      else:
        p = self.workdir / "cells" / self._base_id(cell) / "points" / f"theta{k}" / "dk.jsonl"
        if p.exists():
          out[f"D{k}"] = atomic.read_jsonl(p)
    out["heldout"] = self.heldout
    return out

  def _base_id(self, cell) -> str:
    return self._ids[base_name(cell.seed)]

  # -- models and measurement ---------------------------------------------------------------------
  load = staticmethod(checkpoints.load)

  def scorer(self, model):
    self._scorer = compression.Scorer.reuse(self._scorer, model)
    return self._scorer

  def measure(self, model, tokenizer, sets: dict[str, list[dict]]) -> dict[str, float]:
    sc = self.scorer(model)
    out = {}
    for name, rows in sets.items():
      rep = compression.measure(sc, tokenizer, rows, max_length=int(self.c.data.max_length),
                                batch_size=int(self.c.eval.batch_size), add_eos=True, name=name)
      key = "heldout" if name == "heldout" else name
      out[f"loss_{key}"] = float(rep.nats_per_token)
      out[f"gamma_{key}"] = float(rep.bits_per_byte)
    return out

  def _cached(self, path: str, tokenizer_path: str, sets, model_tok=None) -> dict[str, float]:
    """Compression numbers of one model on ``sets``, cached on disk by model path and sets."""
    key = cells_lib.digest({"model": os.path.abspath(path), "sets": sets, "fp": self.fingerprint})
    file = self.workdir / "measures" / f"{key}.json"
    if file.exists():
      return atomic.read_json(file)["metrics"]
    model, tok = model_tok or self.load(path, tokenizer_path)
    out = self.measure(model, tok, sets)
    atomic.write_json(file, {"model": path, "metrics": out})
    return out

  def kl(self, policy, reference, tokenizer, rows: list[dict]) -> float:
    ds = tokenize(rows, tokenizer, template="plain", max_length=int(self.c.data.max_length),
                  add_eos=True)
    seqs, starts = [], []
    for ex in ds:
      ids = [int(t) for t in ex.input_ids]
      seqs.append(ids)
      starts.append(int(ex.prompt_len))
    return float(kl_to_reference(policy, reference, seqs, starts,
                                 batch_size=int(self.c.eval.batch_size)).mean)

  def generate_dk(self, model, tokenizer, cell, k: int, point_dir: Path) -> None:
    n = int(self.c.n)
    prompts = self._rows(prompts_file(self.c, cell.seed), cell.seed)[(k - 1) * n:k * n]
    g = self.c.generate
    rows = gen_lib.continue_prompts(model, tokenizer, [p["prompt"] for p in prompts],
                                    max_new_tokens=int(g.max_new_tokens),
                                    temperature=float(g.temperature), top_p=float(g.top_p),
                                    seed=int(g.seed) + 1000 * cell.seed + k,
                                    batch_size=int(g.batch_size))
    # The completion as θ_k wrote it; an empty one (θ_k ended at once) stays empty, and training on
    # it scores the end-of-sequence token alone. (Writing "." instead gave sequences θ_k never
    # produced, at ~10 nats/token.)
    data = [{"prompt": p["prompt"], "response": r["completion"].strip()} for p, r in zip(prompts, rows)]
    atomic.write_jsonl(point_dir / "dk.jsonl", data)
    atomic.write_json(point_dir / "dk.json", self._dk_record(cell, k))

  def _dk_record(self, cell, k: int) -> dict:
    """What θ_k's dk.jsonl was made with; a file made otherwise is generated again."""
    return {"generate": self.c.generate.to_dict(), "seed": cell.seed, "k": k, "n": int(self.c.n),
            "empty": "kept"}

  def _dk_current(self, cell, k: int, point_dir: Path) -> bool:
    rec = point_dir / "dk.json"
    return ((point_dir / "dk.jsonl").exists() and rec.exists()
            and json.loads(rec.read_text(encoding="utf-8")) == self._dk_record(cell, k))

  # -- one point ---------------------------------------------------------------------------------
  def __call__(self, model_path: str, tokenizer_path: str, point_dir, context=None) -> dict[str, float]:
    point_dir = Path(point_dir)
    point_dir.mkdir(parents=True, exist_ok=True)
    cell = context.cell
    self._ids = {base_name(cell.seed): context.cell_id} if cell.parent is None else \
        {base_name(cell.seed): Path(context.start[0]).parent.parent.name}
    if cell.parent is None:        # a θ_k of the base cell
      k = int(context.point.coords["k"])
      model, tok = self.load(model_path, tokenizer_path)
      if self.c.dk == "generated" and not self._dk_current(cell, k, point_dir):
        self.generate_dk(model, tok, cell, k, point_dir)
      sets = self.d_sets(cell)
      metrics = self._cached(model_path, tokenizer_path, sets, (model, tok))
      atomic.write_json(point_dir / "metrics.json", {"fingerprint": self.fingerprint,
                                                      "metrics": metrics})
      return metrics
    curve = read_curve(context.train_dir)
    atomic.write_json(point_dir / "loss_curve.json", {"cell": cell.name, "coords": cell.coords,
                                                       "curve": [[s, v] for s, v in curve]})
    metrics = {"final_loss": final_loss(curve, int(self.c.loss.last_steps)),
               "first_loss": float(curve[0][1]), "steps": float(len(curve))}
    metrics["train_fall"] = metrics["first_loss"] - metrics["final_loss"]
    sets = self.d_sets(cell)
    start_path, start_tok = context.start
    start = self.load(start_path, start_tok)
    before = self._cached(start_path, start_tok, sets, start)
    end = self.load(model_path, tokenizer_path)
    after = self._cached(model_path, tokenizer_path, sets, end)
    target = int(cell.coords["target"])
    metrics["train_loss_start"] = before[f"loss_D{target}"]
    metrics["train_loss_end"] = after[f"loss_D{target}"]
    for name in sets:
      metrics[f"gamma_{name}_start"] = before[f"gamma_{name}"]
      metrics[f"gamma_{name}_end"] = after[f"gamma_{name}"]
      metrics[f"dgamma_{name}"] = after[f"gamma_{name}"] - before[f"gamma_{name}"]
    # the final loss over the whole D_k (not the last few batches) and how far the run moved on it
    metrics["dk_loss_end"] = metrics["train_loss_end"]
    metrics["dk_fall"] = metrics["train_loss_start"] - metrics["train_loss_end"]
    metrics["heldout_loss_start"] = before["loss_heldout"]
    metrics["heldout_loss_end"] = after["loss_heldout"]
    metrics["heldout_fall"] = before["loss_heldout"] - after["loss_heldout"]
    if self.c.eval.kl:
      metrics["kl_start_end"] = self.kl(end[0], start[0], end[1], self.heldout)
    atomic.write_json(point_dir / "metrics.json", {"fingerprint": self.fingerprint,
                                                    "metrics": metrics})
    logging.info("%s: %s", cell.name, "  ".join(f"{k} {v:.4g}" for k, v in metrics.items()))
    return metrics
