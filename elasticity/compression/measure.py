"""`measure`: the compression rate of a model on ``{"prompt", "response"}`` records, as a `CompressionReport`.

Tokenize (`elasticity.compression.batches.tokenize`), plan fixed-shape batches (`plan`), score them
with a `Scorer` (the next batch dispatched while the last one is read back), add the sums and counts
on the host (float64) and divide once at the end.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh
from tqdm.auto import tqdm

from elasticity.compression.batches import Planned, plan, tokenize
from elasticity.compression.report import CompressionReport
from elasticity.compression.scorer import Scorer
from elasticity.models.transformer import CausalLM
from elasticity.tokenizers import as_tokenizer

Array = jax.Array


class _Progress:
  """A tqdm bar over examples, with tokens/s (real tokens, prompts included) and ETA."""

  def __init__(self, enabled: bool, total: int, name: str):
    self.bar = None
    self.tokens = 0
    self.t0 = time.perf_counter()
    if enabled:
      self.bar = tqdm(total=total, desc=name or "compress", unit="ex", dynamic_ncols=True)

  def update(self, examples: int, tokens: int) -> None:
    self.tokens += tokens
    if self.bar is not None:
      rate = self.tokens / max(time.perf_counter() - self.t0, 1e-9)
      self.bar.set_postfix_str(f"{rate:,.0f} tok/s", refresh=False)
      self.bar.update(examples)

  def close(self) -> None:
    if self.bar is not None:
      self.bar.close()


def measure(model: CausalLM | Scorer, tokenizer: Any, examples: Iterable[Mapping[str, Any]], *,
            max_length: int = 512, batch_size: int = 8, template: str = "plain",
            add_bos: bool | None = None, add_eos: bool = False, system: str | None = None,
            packing: bool = False, padding_side: str = "right", chunk_size: int = 512,
            buckets: tuple[int, ...] | None = None, mesh: Mesh | None = None, name: str = "",
            progress: bool = False, stats: dict | None = None,
            scan_layers: bool = True, trim_last: bool = False) -> CompressionReport:
  """The compression rate of ``model`` on ``examples`` (``{"prompt", "response"}`` records).

  Args:
    model: a `CausalLM`, or a `Scorer` built once and reused (no recompilation across datasets).
    tokenizer: the model's `elasticity.tokenizers.Tokenizer`, or a ``transformers`` tokenizer (wrapped
      by `elasticity.tokenizers.as_tokenizer`).
    examples: the records (errors name the file, record and field).
    max_length: tokens per row; longer records lose prompt tokens from the left, or are skipped
      (``report.skipped``) when the response alone does not fit.
    batch_size: rows per batch (padded with empty rows to a multiple of the mesh's batch shards).
    template: ``"plain"`` (``prompt + response``, BOS if the tokenizer adds one), ``"alpaca"`` or
      ``"chat"`` (`elasticity.data.formats`).
    add_bos: ``None`` follows the tokenizer. add_eos: also score the end of the response.
    system: system message (``"chat"``).
    packing: several records per row (segment ids, restarting positions) instead of one per row.
    padding_side: ``"right"`` or ``"left"`` (unpacked rows).
    chunk_size: scored positions per vocabulary-projection chunk (per batch shard); ignored with
      a `Scorer` (set there).
    buckets: padded row lengths when unpacked (default `elasticity.data.buckets.length_buckets`);
      one compilation per length used.
    mesh: the device mesh (default: all devices, data parallel); ignored with a `Scorer`.
    name: the dataset's name, carried into the report.
    progress: show a progress bar (examples, tokens/s, ETA).
    stats: if given, filled with ``tokens_processed`` (real tokens, prompts included), ``seconds``
      (after tokenization) and ``batches``.
    scan_layers: score with the layers scanned (`Scorer`); ignored with a `Scorer`.
    trim_last: the last, partial batch has only the rows it needs (`batches.plan`): one more
      compiled shape, for a `Scorer` reused across many measurements. The examples' bits do not
      depend on it (tests/test_compression.py).
  """
  tokenizer = as_tokenizer(tokenizer)
  if padding_side not in ("right", "left"):
    raise ValueError(f"padding_side must be 'right' or 'left', got {padding_side!r}")
  scorer = model if isinstance(model, Scorer) else Scorer(model, mesh=mesh, chunk_size=chunk_size,
                                                          scan_layers=scan_layers)
  kept, skipped, truncated = tokenize(tokenizer, examples, max_length=max_length,
                                      template=template, add_bos=add_bos, add_eos=add_eos,
                                      system=system)
  planned = plan(kept, batch_size=batch_size, max_length=max_length, packing=packing,
                 buckets=buckets, shards=scorer.shards, trim_last=trim_last)
  bar = _Progress(progress, len(kept), name)
  totals = {"bits": 0.0, "tokens": 0, "bytes": 0, "examples": 0, "processed": 0}
  t0 = time.perf_counter()

  def collect(batch: Planned, rows: dict[str, np.ndarray], out: tuple[Array, Array]) -> None:
    # Replicated outputs: every process holds the whole value in its first local shard.
    bits, counts = (np.asarray(x.addressable_data(0)) for x in out)
    members = batch.examples
    expected = sum(ex.n_loss_tokens for ex in members)
    if int(counts.sum()) != expected:
      raise RuntimeError(f"compression kernel scored {int(counts.sum())} tokens, expected "
                         f"{expected} (batch of shape {rows['input_ids'].shape})")
    processed = int(rows["attention_mask"].sum())
    totals["bits"] += float(bits.astype(np.float64).sum())
    totals["tokens"] += expected
    totals["bytes"] += sum(ex.response_bytes for ex in members)
    totals["examples"] += len(members)
    totals["processed"] += processed
    bar.update(len(members), processed)

  pending = None
  try:
    for batch in planned:
      rows = batch.arrays(pad_id=tokenizer.pad_id, padding_side=padding_side)
      out = scorer(rows, num_segments=batch.num_segments, capacity=batch.capacity)
      if pending is not None:            # the device works on this batch while we read the last
        collect(*pending)
      pending = (batch, rows, out)
    if pending is not None:
      collect(*pending)
  finally:
    bar.close()
  if stats is not None:
    stats.update(tokens_processed=totals["processed"], seconds=time.perf_counter() - t0,
                 batches=len(planned))
  return CompressionReport(bits=totals["bits"], tokens=totals["tokens"], bytes=totals["bytes"],
                           examples=totals["examples"], vocab_size=scorer.vocab_size, name=name,
                           skipped=skipped, truncated=truncated)


__all__ = ["measure"]
