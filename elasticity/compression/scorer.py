"""Compression rate γ: the code length a model assigns to a dataset's responses, per token and per byte.

Definitions (paper §3; docs/PAPER.md). For a model p_θ and a dataset D of (prompt x, response y) records,

    bits(θ, D)        = Σ_{(x, y) ∈ D} Σ_{response tokens y_t} −log₂ p_θ(y_t | x, y_<t)
    bits/token        = bits(θ, D) / number of response tokens scored
    bits/byte         = bits(θ, D) / number of UTF-8 bytes of the responses (tokenizer-independent)
    nats/token        = bits/token · ln 2
    normalized        = γ^{D_i/D} = bits/token − log₂ V

``normalized`` is the paper's γ − log M: M is the number of leaves of the token tree pruned to the
model's depth, here the model's output vocabulary (V = ``model.config.vocab_size``), and log₂ V is the
code length of the uniform code over those leaves, the rate of a model that knows nothing beyond the
tree's support. A model better than uniform has normalized < 0; comparing datasets of different
entropy, or one dataset across checkpoints, uses it. Δγ between two checkpoints on the same data is
``after.delta(before)`` (each rate of ``after`` minus that of ``before``).

Aggregation is sums and counts only: the jitted kernel (`code_lengths`) returns per-example sums of
bits and token counts; the host adds them (float64) across batches, and every rate is one division at
the end. Across devices the kernel's outputs are gathered whole (replicated), so every host sees the
global sums; reports merge with ``a.merge(b)``.

Which tokens: records are tokenized by `elasticity.data.tokenize` (joint encoding of ``prompt +
response``, BOS when the tokenizer adds one; the response tokens are the loss-masked ones), with the
prompt cut from the left when a record exceeds ``max_length``; a record whose response alone does
not fit is skipped and counted, never half-scored (`elasticity.compression_batches`).

Memory and work: the final projection and log-softmax run only on the scored (response) positions,
gathered per batch shard, in chunks (`elasticity.logprobs.chunked_target_logprobs`), so a [B, T, V]
float32 logits tensor is never held whole and prompt or padding positions are never projected.

Sharding: `Scorer` splits the model once (``nnx.split``) and jits a pure function of (params, batch)
once per batch shape under a mesh: the batch over the mesh's batch axes (``data`` × ``fsdp``), the
parameters by their logical axes (`elasticity.sharding` rules; replicated on a pure ``data`` mesh).

    from elasticity.compression import measure
    report = measure(model, tokenizer, examples, max_length=512, batch_size=8, template="plain")
    report.bits_per_token, report.bits_per_byte, report.normalized
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from elasticity import sharding as shd
from elasticity.compression_batches import Planned, length_buckets, plan, tokenize
from elasticity.logprobs import chunked_target_logprobs
from elasticity.models.scan import to_layout, with_layers_rule
from elasticity.models.transformer import CausalLM
from elasticity.tokenizers import as_tokenizer

Array = jax.Array
log = logging  # absl, as everywhere in the project

LN2 = math.log(2.0)


# --------------------------------------------------------------------------------------------------
# Reports
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CompressionReport:
  """Sums and counts of one model on one dataset; every rate is derived from them by one division."""

  bits: float                 # Σ −log₂ p over scored response tokens
  tokens: int                 # response tokens scored
  bytes: int                  # UTF-8 bytes of the scored responses
  examples: int               # records scored
  vocab_size: int             # V of the model (for the normalized rate)
  name: str = ""
  skipped: int = 0            # records whose response alone did not fit in max_length
  truncated: int = 0          # records scored with their prompt cut from the left

  @property
  def nats(self) -> float:
    return self.bits * LN2

  @property
  def bits_per_token(self) -> float:
    return self.bits / self.tokens if self.tokens else math.nan

  @property
  def nats_per_token(self) -> float:
    return self.nats / self.tokens if self.tokens else math.nan

  @property
  def bits_per_byte(self) -> float:
    return self.bits / self.bytes if self.bytes else math.nan

  @property
  def log2_vocab(self) -> float:
    return math.log2(self.vocab_size)

  @property
  def normalized(self) -> float:
    """γ^{D_i/D} = bits/token − log₂ V (see the module docstring; the theory lab's definition)."""
    from elasticity.theory.rates import normalized_rate
    return normalized_rate(self.bits_per_token, self.log2_vocab)

  def merge(self, other: "CompressionReport") -> "CompressionReport":
    """The report of both parts together (sums and counts add); same vocabulary required."""
    if other.vocab_size != self.vocab_size:
      raise ValueError(f"cannot merge reports over vocabularies {self.vocab_size} and {other.vocab_size}")
    return dataclasses.replace(
        self, bits=self.bits + other.bits, tokens=self.tokens + other.tokens,
        bytes=self.bytes + other.bytes, examples=self.examples + other.examples,
        skipped=self.skipped + other.skipped, truncated=self.truncated + other.truncated)

  def delta(self, before: "CompressionReport") -> "CompressionDelta":
    """Δγ = this report's rates minus ``before``'s, on the same data (same examples and bytes)."""
    if (self.examples, self.bytes) != (before.examples, before.bytes):
      raise ValueError(
          f"Δγ needs the same data: {self.name or 'this report'} has {self.examples} examples / "
          f"{self.bytes} bytes, {before.name or 'the other'} {before.examples} / {before.bytes}")
    return CompressionDelta(
        name=self.name or before.name,
        bits_per_token=self.bits_per_token - before.bits_per_token,
        bits_per_byte=self.bits_per_byte - before.bits_per_byte,
        nats_per_token=self.nats_per_token - before.nats_per_token,
        normalized=self.normalized - before.normalized)

  def to_dict(self) -> dict[str, Any]:
    return {"name": self.name, "nats_per_token": self.nats_per_token,
            "bits_per_token": self.bits_per_token, "bits_per_byte": self.bits_per_byte,
            "normalized": self.normalized, "tokens": self.tokens, "bytes": self.bytes,
            "examples": self.examples, "bits": self.bits, "vocab_size": self.vocab_size,
            "skipped": self.skipped, "truncated": self.truncated}


@dataclass(frozen=True)
class CompressionDelta:
  """Δγ between two checkpoints on one dataset (after − before); negative = compresses better."""
  name: str
  bits_per_token: float
  bits_per_byte: float
  nats_per_token: float
  normalized: float

  def to_dict(self) -> dict[str, Any]:
    return dataclasses.asdict(self)


# --------------------------------------------------------------------------------------------------
# The kernel
# --------------------------------------------------------------------------------------------------


def code_lengths(model: CausalLM, ids: Array, loss_mask: Array, segment_ids: Array,
                 positions: Array, *, num_segments: int = 1, shards: int = 1,
                 capacity: int | None = None, chunk_size: int = 512) -> tuple[Array, Array]:
  """Per-example sums of −log₂ p(token | context) over the ``loss_mask`` tokens, and their counts.

  All inputs are [B, T]; segment ids 1..``num_segments`` mark the examples packed in a row (0 =
  padding); ``positions`` are RoPE positions. A token is scored where ``loss_mask`` is set and the
  token before it belongs to the same example. Returns ``(bits, counts)``, both [B, num_segments]:
  float32 bits and int32 counts of the example with segment id ``s + 1`` in row ``b``.

  Compaction: the vocabulary projection runs on scored positions only. The rows are split into
  ``shards`` groups (the batch shards of the mesh, so the split needs no communication); each
  group's scored positions are gathered into ``capacity`` slots (static; default: all positions)
  and projected ``chunk_size`` slots at a time, so at most [shards, chunk_size, V] float32 logits
  exist at once. ``capacity`` must cover the scored tokens of every group (the caller knows them:
  `elasticity.compression_batches.plan`); the counts returned are those of the slots kept, so a
  shortfall shows as a count mismatch, never silently.
  """
  ids = jnp.asarray(ids, jnp.int32)
  seg = jnp.asarray(segment_ids, jnp.int32)
  b, t = ids.shape
  if b % shards:
    raise ValueError(f"code_lengths: {b} rows do not split into {shards} shards")
  h = model.hidden_states(ids, None, positions, seg)                       # [B, T, D]
  prev = jnp.concatenate([jnp.zeros((b, 1), jnp.int32), seg[:, :-1]], axis=1)
  scored = jnp.asarray(loss_mask, bool) & (seg != 0) & (seg == prev)       # token t from h[t - 1]

  rows, s = b // shards, num_segments
  flat = rows * t                                                          # positions per shard
  n = flat if capacity is None else max(1, min(int(capacity), flat))
  grouped = scored.reshape(shards, flat)
  idx = jax.vmap(lambda m: jnp.nonzero(m, size=n, fill_value=0)[0])(grouped)   # [G, n]
  live = jnp.arange(n)[None, :] < jnp.sum(grouped, axis=1, keepdims=True)
  take = jax.vmap(lambda x, i: x[i])
  h_prev = take(h.reshape(shards, flat, -1), jnp.maximum(idx - 1, 0))      # [G, n, D]
  targets = take(ids.reshape(shards, flat), idx)
  lp = chunked_target_logprobs(h_prev, model.output_embedding(), targets, chunk_size=chunk_size,
                               final_softcap=model.config.final_logit_softcap)
  bits = jnp.where(live, -lp, 0.0) * jnp.float32(1.0 / LN2)
  # Example slot within the shard: (row in shard) · S + segment − 1; dead slots go to a spare one.
  slot = jnp.where(live, (idx // t) * s + take(seg.reshape(shards, flat), idx) - 1, rows * s)
  add = jax.vmap(lambda v, k: jax.ops.segment_sum(v, k, num_segments=rows * s + 1))
  sums = add(bits, slot)[:, :-1].reshape(b, s)
  counts = add(live.astype(jnp.int32), slot)[:, :-1].reshape(b, s)
  return sums, counts


def default_mesh(devices: list | None = None) -> Mesh:
  """A pure data-parallel ``(data, fsdp, tensor)`` mesh over ``devices`` (default: all)."""
  return shd.make_mesh(data=-1, fsdp=1, tensor=1, devices=devices)


class Scorer:
  """`code_lengths` of one model, jitted once per batch shape under a mesh.

  The model is split once; its parameters are placed on the mesh by their logical axes (``rules``;
  a mesh without the ``(data, fsdp, tensor)`` axes gets them replicated and the batch over its
  ``data``/``fsdp`` axes). ``scan_layers`` (default True) scores with the decoder stack as one
  `lax.scan` (a model in the other layout is converted; the numbers agree to float rounding, and
  each bucket shape compiles one layer instead of L). ``update(model)`` swaps in new weights of the
  same structure without recompiling. Calling the scorer on a planned batch dispatches asynchronously and returns device
  arrays ``(bits, counts)`` [B, S], replicated.
  """

  def __init__(self, model: CausalLM, *, mesh: Mesh | None = None, rules: shd.Rules | None = None,
               chunk_size: int = 512, scan_layers: bool = True):
    self.mesh = mesh if mesh is not None else default_mesh()
    self.rules = with_layers_rule(rules if rules is not None else shd.DEFAULT_RULES)
    self.chunk_size = int(chunk_size)
    self.vocab_size = int(model.config.vocab_size)
    self.scan_layers = bool(scan_layers)
    self.graphdef, state = nnx.split(to_layout(model, self.scan_layers))
    self.replicated = NamedSharding(self.mesh, P())
    if set(shd.MESH_AXES) <= set(self.mesh.axis_names):
      self.param_shardings = shd.param_shardings(state, self.mesh, self.rules)
      self.batch_sharding = shd.batch_sharding(self.mesh, 2, self.rules)
      self.shards = shd.batch_divisor(self.mesh, self.rules)
    else:
      axes = tuple(a for a in shd.BATCH_AXES if a in self.mesh.axis_names)
      if not axes:
        raise ValueError(f"mesh axes {self.mesh.axis_names} name no batch axis {shd.BATCH_AXES}")
      self.param_shardings = jax.tree.map(lambda _: self.replicated, nnx.to_pure_dict(state))
      self.batch_sharding = NamedSharding(self.mesh, P(axes))
      self.shards = math.prod(self.mesh.shape[a] for a in axes)
    self.params = jax.device_put(nnx.to_pure_dict(state), self.param_shardings)
    self._fns: dict[tuple[int, int, int], Callable] = {}
    self._capacity: dict[tuple[int, int], int] = {}

  def update(self, model: CausalLM) -> None:
    """Score with ``model``'s weights from now on (same structure: no recompilation)."""
    graphdef, state = nnx.split(to_layout(model, self.scan_layers))
    if graphdef != self.graphdef:
      raise ValueError("Scorer.update: the model's structure differs from the one compiled")
    self.params = jax.device_put(nnx.to_pure_dict(state), self.param_shardings)

  def _fn(self, length: int, num_segments: int, capacity: int) -> Callable:
    key = (length, num_segments, capacity)
    if key not in self._fns:
      graphdef, shards, chunk = self.graphdef, self.shards, self.chunk_size

      def score(params, ids, loss_mask, segment_ids, positions):
        return code_lengths(nnx.merge(graphdef, params), ids, loss_mask, segment_ids, positions,
                            num_segments=num_segments, shards=shards, capacity=capacity,
                            chunk_size=chunk)

      b = self.batch_sharding
      self._fns[key] = shd.jit(score, self.mesh, in_shardings=(self.param_shardings, b, b, b, b),
                               out_shardings=(self.replicated, self.replicated))
    return self._fns[key]

  def put(self, x: np.ndarray) -> Array:
    """A host array (the same on every process) as a global array over the batch axes."""
    return jax.make_array_from_callback(x.shape, self.batch_sharding, lambda idx: x[idx])

  def __call__(self, rows: Mapping[str, np.ndarray], *, num_segments: int = 1,
               capacity: int | None = None) -> tuple[Array, Array]:
    """Score ``rows`` (``input_ids``, ``loss_mask``, ``segment_ids``, ``positions``: [B, T]).

    ``capacity``: scored positions per batch shard to keep (None: all). A compiled capacity at
    least as large for the same shape is reused rather than compiling another.
    """
    arrays = [np.asarray(rows[k]) for k in ("input_ids", "loss_mask", "segment_ids", "positions")]
    extra = -arrays[0].shape[0] % self.shards           # empty rows (segment 0) so the batch splits
    if extra:
      arrays = [np.pad(a, ((0, extra), (0, 0))) for a in arrays]
    b, t = arrays[0].shape
    full = (b // self.shards) * t
    need = full if capacity is None else min(int(capacity), full)
    shape = (t, num_segments)
    if self._capacity.get(shape, 0) < need:
      self._capacity[shape] = need
    fn = self._fn(t, num_segments, self._capacity[shape])
    with jax.set_mesh(self.mesh):
      return fn(self.params, *map(self.put, arrays))


# --------------------------------------------------------------------------------------------------
# measure
# --------------------------------------------------------------------------------------------------


class _Progress:
  """A tqdm bar over examples, with tokens/s (real tokens, prompts included) and ETA."""

  def __init__(self, enabled: bool, total: int, name: str):
    self.bar = None
    self.tokens = 0
    self.t0 = time.perf_counter()
    if enabled:
      from tqdm.auto import tqdm  # pylint: disable=import-outside-toplevel
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
            scan_layers: bool = True) -> CompressionReport:
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
    buckets: padded row lengths when unpacked (default `compression_batches.length_buckets`);
      one compilation per length used.
    mesh: the device mesh (default: all devices, data parallel); ignored with a `Scorer`.
    name: the dataset's name, carried into the report.
    progress: show a progress bar (examples, tokens/s, ETA).
    stats: if given, filled with ``tokens_processed`` (real tokens, prompts included), ``seconds``
      (after tokenization) and ``batches``.
    scan_layers: score with the layers scanned (`Scorer`); ignored with a `Scorer`.
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
                 buckets=buckets, shards=scorer.shards)
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


__all__ = ["CompressionReport", "CompressionDelta", "Scorer", "code_lengths", "default_mesh",
           "length_buckets", "measure", "plan", "tokenize"]
