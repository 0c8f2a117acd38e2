"""Compression rates of a model during training, on named datasets: the elasticity signal of a run.

`elasticity.train.loop` builds one `Evaluator` per run (the datasets already loaded and selected) and
calls it every ``eval.every`` steps with the current model: bits/token, bits/byte and the normalized
rate of each dataset (`measure`). The scorer, and so its compiled functions, is kept for the next
evaluator of this process: `Scorer.reuse` takes it when the model's structure, the mesh, the rules and
the chunk size match, so an experiment runner's runs of one model compile it once.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from jax.sharding import Mesh

from elasticity import sharding as shd
from elasticity.compression.measure import measure
from elasticity.compression.scorer import Scorer


class Evaluator:
  """``evaluator(model) -> {"<name>/bits_per_token", "<name>/bits_per_byte", "<name>/normalized"}``.

  ``datasets``: ``{name: (records, template)}`` (empty: the evaluator returns ``{}``). ``rules``:
  the training's sharding rules, so the scorer's parameter shardings equal the train state's and
  placing the weights copies nothing.
  """

  _last: Scorer | None = None       # the scorer of the last evaluator in this process

  def __init__(self, datasets: Mapping[str, tuple[Sequence[Mapping[str, Any]], str]], tokenizer,
               mesh: Mesh, *, rules: shd.Rules, chunk_size: int, max_length: int, batch_size: int):
    self.datasets = dict(datasets)
    self.tokenizer, self.mesh, self.rules = tokenizer, mesh, rules
    self.chunk_size, self.max_length, self.batch_size = chunk_size, max_length, batch_size
    self.scorer: Scorer | None = None

  def __call__(self, model) -> dict[str, float]:
    if not self.datasets:
      return {}
    self.scorer = Scorer.reuse(Evaluator._last, model, mesh=self.mesh, rules=self.rules,
                               chunk_size=self.chunk_size)
    Evaluator._last = self.scorer
    out = {}
    for name, (records, template) in self.datasets.items():
      rep = measure(self.scorer, self.tokenizer, records, max_length=self.max_length,
                    batch_size=self.batch_size, template=template, name=name)
      out[f"{name}/bits_per_token"] = rep.bits_per_token
      out[f"{name}/bits_per_byte"] = rep.bits_per_byte
      out[f"{name}/normalized"] = rep.normalized
    return out

  def release(self) -> None:
    """Drop the scorer's hold on this run's parameters (the kept scorer outlives the run)."""
    if self.scorer is not None:
      self.scorer.params = None
      self.scorer = None


__all__ = ["Evaluator"]
