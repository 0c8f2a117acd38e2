"""Training data: from a config section to a deterministic, resumable stream of fixed-shape batches.

Builds on `elasticity.data` (dataset registry, subsets, tokenization with response masks, packing,
fixed-shape batches). What this module adds is what a restartable run needs: epoch ``e`` visits the
examples in the seeded order ``data.order(n, seed + e)`` (or the stored order when not shuffling), and
the stream's position ``{"epoch", "batch"}`` is saved with every checkpoint, so a restarted run sees
exactly the batches it would have seen.

Batches carry only the fields the objectives read (`elasticity.train.losses`): SFT rows give
``input_ids``, ``loss_mask`` and either ``attention_mask`` + ``positions`` (one example per row) or
``segment_ids`` + ``positions`` (packed); preference rows give the same fields prefixed ``chosen_`` /
``rejected_``, ``example_mask`` (0 for the padding rows of a last, partial batch) and ``example_id``
(the example's index, −1 on padding rows; host-side only, to attach precomputed reference values).
Unpaired (KTO) rows give the SFT fields of the completion, the same prefixed ``kl_`` for its KL
sequence (`elasticity.data.labelled`), ``label`` (1 desirable, 0 undesirable), ``example_mask`` and
``example_id``. Preference records given to the unpaired kind are unpaired first (chosen → 1,
rejected → 0); other records need a label field (``data.label_field``, read as a boolean, or
desirable iff its value is in ``data.desirable``).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np

from elasticity import data

KINDS = ("sft", "preference", "unpaired")
KEYS = ("name", "split", "load_kwargs", "n", "seed", "slice", "template", "max_length", "pack",
        "shuffle", "policy", "add_eos", "drop_last", "label_field", "desirable")


def select(records: Sequence, cfg: Mapping[str, Any]) -> list:
  """``n`` records in the seeded order (all if ``n`` <= 0), then the ``slice`` [start, stop) of them.

  ``slice`` cuts the selection into the paper's D_1, D_2, D_3 (e.g. thirds of one SFT set) for
  forward (θ_k on D_l) and inverse (θ_l on D_k) alignment.
  """
  n = int(cfg.get("n", 0) or 0)
  seed = int(cfg.get("seed", 0))
  recs = data.take(records, n, seed) if n > 0 else list(records)
  sl = cfg.get("slice") or ()
  if sl:
    if len(sl) != 2:
      raise ValueError(f"data.slice: want (start, stop), got {sl!r}")
    recs = recs[int(sl[0]):int(sl[1])]
  if not recs:
    raise ValueError(f"data: no records selected from {cfg.get('name')!r} (n={n}, slice={sl})")
  return recs


def load_examples(cfg: Mapping[str, Any], tokenizer, kind: str = "sft") -> data.TokenizedDataset:
  """Load, select and tokenize the dataset named by a ``data`` config section.

  For ``"unpaired"``, ``n`` and ``slice`` select source records (pairs, for preference data) before
  they are unpaired.
  """
  unknown = sorted(set(cfg) - set(KEYS))
  if unknown:
    raise ValueError(f"data: unknown key(s) {unknown}; known: {sorted(KEYS)}")
  if kind not in KINDS:
    raise ValueError(f"data kind {kind!r} is not one of {KINDS}")
  records = data.load_dataset(cfg["name"], cfg.get("split") or None, **dict(cfg.get("load_kwargs") or {}))
  record_kind = getattr(records, "kind", None)
  records = select(records, cfg)
  opts = dict(template=cfg.get("template", "plain"), max_length=int(cfg["max_length"]),
              policy=cfg.get("policy", "truncate_prompt_left"), add_eos=bool(cfg.get("add_eos", True)))
  if kind == "sft":
    return data.tokenize(records, tokenizer, **opts)
  if kind == "preference":
    return data.tokenize_preference(records, tokenizer, **opts)
  paired = record_kind == "preference" or (
      record_kind is None and set(data.KINDS["preference"]) <= set(records[0]))
  if paired:
    return data.tokenize_labelled(data.unpair(records), tokenizer, seed=int(cfg.get("seed", 0)),
                                  **opts)
  return data.tokenize_labelled(records, tokenizer, label_field=cfg.get("label_field") or "label",
                                desirable=tuple(cfg.get("desirable") or ()) or None,
                                seed=int(cfg.get("seed", 0)), **opts)


def sft_fields(rows: Mapping[str, np.ndarray], packed: bool) -> dict[str, np.ndarray]:
  keys = ("input_ids", "loss_mask", "segment_ids", "positions") if packed else (
      "input_ids", "loss_mask", "attention_mask", "positions")
  return {k: rows[k] for k in keys}


class BatchStream:
  """Endless, resumable iterator of global batches (numpy) over tokenized examples."""

  def __init__(self, examples: Sequence, *, batch_size: int, max_length: int, kind: str = "sft",
               pack: bool = False, pad_id: int = 0, seed: int = 0, shuffle: bool = True,
               drop_last: bool = False):
    if kind not in KINDS:
      raise ValueError(f"data kind {kind!r} is not one of {KINDS}")
    if not examples:
      raise ValueError("BatchStream: no examples")
    if pack and kind != "sft":
      raise ValueError("data.pack: packing is for SFT rows only")
    self.examples = list(examples)
    self.batch_size, self.max_length = int(batch_size), int(max_length)
    self.kind, self.pack, self.pad_id = kind, bool(pack), int(pad_id)
    self.seed, self.shuffle, self.drop_last = int(seed), bool(shuffle), bool(drop_last)
    self.epoch, self.batch = 0, 0
    self._cache: tuple[int, list[dict[str, np.ndarray]]] | None = None

  def epoch_batches(self, epoch: int) -> list[dict[str, np.ndarray]]:
    """Every batch of epoch ``epoch``, in order (cached: the current epoch is built once)."""
    if self._cache is not None and self._cache[0] == epoch:
      return self._cache[1]
    idx = data.order(len(self.examples), self.seed + epoch) if self.shuffle else range(len(self.examples))
    ordered = [self.examples[int(i)] for i in idx]
    if self.kind == "sft":
      out = [sft_fields(r, self.pack) for r in data.batches(
          ordered, self.batch_size, self.max_length, pack=self.pack, pad_id=self.pad_id)
             if not self.drop_last or r["row_valid"].all()]
    elif self.kind == "unpaired":
      out = []
      for r in data.labelled_batches(ordered, self.batch_size, self.max_length, pad_id=self.pad_id):
        if self.drop_last and not r["row_valid"].all():
          continue
        b = {"example_mask": r["row_valid"].astype(np.float32),
             "example_id": r["example"]["example_index"].max(axis=1),
             "label": r["label"].astype(np.float32), **sft_fields(r["example"], False)}
        b.update({f"kl_{k}": v for k, v in sft_fields(r["kl"], False).items()})
        out.append(b)
    else:
      out = []
      for r in data.preference_batches(ordered, self.batch_size, self.max_length, pad_id=self.pad_id):
        if self.drop_last and not r["row_valid"].all():
          continue
        b = {"example_mask": r["row_valid"].astype(np.float32),
             "example_id": r["chosen"]["example_index"].max(axis=1)}
        for side in ("chosen", "rejected"):
          b.update({f"{side}_{k}": v for k, v in sft_fields(r[side], False).items()})
        out.append(b)
    if not out:
      raise ValueError(f"BatchStream: {len(self.examples)} examples make no batch of {self.batch_size}")
    self._cache = (epoch, out)
    return out

  def example_batch(self) -> dict[str, np.ndarray]:
    """The first batch of the current epoch (shapes and fields of every batch), without the host-only
    ``example_id``; the stream's position does not move."""
    return {k: v for k, v in self.epoch_batches(self.epoch)[0].items() if k != "example_id"}

  @property
  def batches_per_epoch(self) -> int:
    return len(self.epoch_batches(self.epoch))

  def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
    return self

  def __next__(self) -> dict[str, np.ndarray]:
    batches = self.epoch_batches(self.epoch)
    if self.batch >= len(batches):
      self.epoch, self.batch = self.epoch + 1, 0
      batches = self.epoch_batches(self.epoch)
    out = batches[self.batch]
    self.batch += 1
    return out

  def state(self) -> dict[str, int]:
    """The position (JSON-able): the next batch is batch ``batch`` of epoch ``epoch``."""
    return {"epoch": int(self.epoch), "batch": int(self.batch)}

  def restore(self, state: Mapping[str, Any]) -> None:
    for k in ("epoch", "batch"):
      if k not in state:
        raise ValueError(f"data iterator state: missing key {k!r} (got {sorted(state)})")
    self.epoch, self.batch = int(state["epoch"]), int(state["batch"])
