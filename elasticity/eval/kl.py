"""KL(π‖π_ref) of a policy to a reference model on sampled continuations, exact over the vocabulary.

For a sequence ``x`` = prompt + completion (completion tokens at ``s … L−1``) the per-position KL at
every generated position, conditioned on the prompt and the completion prefix, is

    KL_t = Σ_v π(v | x_<t) (log π(v | x_<t) − log π_ref(v | x_<t)),      t = s … L−1

in nats, summed over the whole vocabulary (no sampling estimate). The report keeps sums and counts:
``sum_kl`` = Σ over sequences and generated positions, ``tokens`` = number of such positions, and
``mean`` = ``sum_kl / tokens`` (KL per generated token), one division at the end; per-sequence sums
are kept too. Sums are accumulated in float64 on the host from the float32 per-position values.

Memory: neither model's [B, T, V] logits are ever held. Both models' final-normed hidden states
[B, T, D] are computed, the scored positions (the ones whose logits predict a completion token) are
gathered — host-computed indices, padded to a multiple of the chunk — and projected onto the
vocabulary ``chunk_size`` positions at a time inside a ``lax.map`` (``CausalLM.logits_from_hidden``,
which applies Gemma 2's final soft-cap like `elasticity.logprobs` does), so at most [chunk, V] float32
logits per model exist at once. Both forwards run in one jitted function, compiled once per (row
length bucket, capacity) and cached per model structure across calls.

    from elasticity.eval import kl
    report = kl.kl_to_reference(policy, base, sequences, completion_start)
    report.mean, report.sum_kl, report.tokens
    kl.kl_on_generations(policy, base, rows)        # rows of `elasticity.eval.generations`
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from elasticity.data.buckets import length_buckets
from elasticity.models.transformer import CausalLM

Array = jax.Array


@dataclasses.dataclass(frozen=True)
class KLReport:
  """Sums and counts of KL(π‖π_ref) in nats; ``mean`` is KL per generated token."""

  sum_kl: float                          # Σ over sequences and generated positions
  tokens: int                            # generated positions scored
  per_sequence: tuple[float, ...]        # Σ over each sequence's generated positions
  per_sequence_tokens: tuple[int, ...]   # generated positions of each sequence

  @property
  def sequences(self) -> int:
    return len(self.per_sequence)

  @property
  def mean(self) -> float:
    return self.sum_kl / self.tokens if self.tokens else math.nan

  def merge(self, other: "KLReport") -> "KLReport":
    """Both parts together (sums and counts add; sequences concatenate)."""
    return KLReport(self.sum_kl + other.sum_kl, self.tokens + other.tokens,
                    self.per_sequence + other.per_sequence,
                    self.per_sequence_tokens + other.per_sequence_tokens)

  def to_dict(self) -> dict[str, Any]:
    return {"kl_mean": self.mean, "kl_sum": self.sum_kl, "kl_tokens": self.tokens,
            "kl_sequences": self.sequences}


@functools.lru_cache(maxsize=16)
def _compiled(graph_p, graph_r, chunk: int):
  """The jitted per-position KL of gathered positions: (state_p, state_r, ids, mask, idx) → [C]."""

  def run(state_p, state_r, ids, mask, idx):
    policy, reference = nnx.merge(graph_p, state_p), nnx.merge(graph_r, state_r)

    def gathered(model):
      h = model.hidden_states(ids, attention_mask=mask)                  # [B, T, D]
      return h.reshape(-1, h.shape[-1])[idx].reshape(-1, chunk, h.shape[-1])   # [n, c, D]

    hp, hr = gathered(policy), gathered(reference)
    wp, wr = policy.output_embedding(), reference.output_embedding()

    def one(args):
      a, b = args
      lp = jax.nn.log_softmax(policy.logits_from_hidden(a, wp), axis=-1)    # [c, V] float32
      lr = jax.nn.log_softmax(reference.logits_from_hidden(b, wr), axis=-1)
      return jnp.sum(jnp.exp(lp) * (lp - lr), axis=-1)

    return jax.lax.map(one, (hp, hr)).reshape(-1)

  return jax.jit(run)


def _validate(sequences: Any, completion_start: Any, vocab: int) -> tuple[list[np.ndarray], list[int]]:
  sequences = list(sequences) if isinstance(sequences, np.ndarray) else sequences
  completion_start = (completion_start.tolist() if isinstance(completion_start, np.ndarray)
                      else completion_start)
  if isinstance(sequences, (str, bytes)) or not isinstance(sequences, Sequence):
    raise TypeError(f"kl_to_reference: sequences must be a list of token-id lists, got "
                    f"{type(sequences).__name__}")
  if isinstance(completion_start, (str, bytes)) or not isinstance(completion_start, Sequence):
    raise TypeError(f"kl_to_reference: completion_start must be a list of integers, got "
                    f"{type(completion_start).__name__}")
  if len(sequences) != len(completion_start):
    raise ValueError(f"kl_to_reference: {len(sequences)} sequences but {len(completion_start)} "
                     "completion_start values")
  seqs, starts = [], []
  for i, (seq, s) in enumerate(zip(sequences, completion_start)):
    arr = np.asarray(seq)
    if arr.ndim != 1 or arr.size == 0 or not np.issubdtype(arr.dtype, np.integer):
      raise ValueError(f"kl_to_reference: sequence {i}: expected a non-empty list of integer token "
                       f"ids, got {np.asarray(seq).dtype} of shape {arr.shape}")
    if arr.min() < 0 or arr.max() >= vocab:
      bad = int(arr[(arr < 0) | (arr >= vocab)][0])
      raise ValueError(f"kl_to_reference: sequence {i}: token id {bad} outside the vocabulary "
                       f"[0, {vocab})")
    if isinstance(s, bool) or not isinstance(s, (int, np.integer)) or not 1 <= s <= arr.size:
      raise ValueError(f"kl_to_reference: sequence {i}: completion_start {s!r} must be an integer "
                       f"in [1, {arr.size}] (the first completion token needs a context)")
    seqs.append(arr.astype(np.int32))
    starts.append(int(s))
  return seqs, starts


def kl_to_reference(policy: CausalLM, reference: CausalLM, sequences: Sequence[Sequence[int]],
                    completion_start: Sequence[int], *, chunk_size: int = 128, batch_size: int = 8
                    ) -> KLReport:
  """Exact KL(policy‖reference) per generated token on ``sequences`` (see the module docstring).

  Args:
    policy, reference: models over the same vocabulary.
    sequences: token ids, prompt + completion each.
    completion_start: index of each sequence's first completion token (1 … its length; the length
      itself means an empty completion, which scores nothing).
    chunk_size: positions per vocabulary-projection chunk.
    batch_size: rows per forward (the last batch is filled up with empty rows).
  """
  vp, vr = int(policy.config.vocab_size), int(reference.config.vocab_size)
  wp, wr = policy.output_embedding().shape, reference.output_embedding().shape
  if vp != vr or wp[-1] != wr[-1]:
    raise ValueError(f"kl_to_reference: policy and reference must share the vocabulary: the policy "
                     f"has {vp} tokens (unembedding {wp}), the reference {vr} (unembedding {wr})")
  if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
    raise ValueError(f"kl_to_reference: chunk_size must be an integer >= 1, got {chunk_size!r}")
  if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
    raise ValueError(f"kl_to_reference: batch_size must be an integer >= 1, got {batch_size!r}")
  seqs, starts = _validate(sequences, completion_start, vp)
  n = len(seqs)
  per_seq = np.zeros(n, np.float64)
  counts = np.array([len(x) - s for x, s in zip(seqs, starts)], np.int64)
  if n == 0 or counts.sum() == 0:
    return KLReport(0.0, 0, tuple(per_seq.tolist()), tuple(counts.tolist()))

  lengths = np.array([len(x) for x in seqs])
  buckets = length_buckets(int(lengths.max()), smallest=8)
  order = [i for i in np.argsort(lengths, kind="stable").tolist() if counts[i] > 0]
  batches = [order[k:k + batch_size] for k in range(0, len(order), batch_size)]
  row_lens = [next(x for x in buckets if x >= lengths[b].max()) for b in batches]
  # One capacity per row length: the most positions any of its batches scores, rounded up to a
  # power of two (so other data of similar size reuses the compilation), at most every position.
  need: dict[int, int] = {}
  for b, t in zip(batches, row_lens):
    need[t] = max(need.get(t, 0), int(counts[b].sum()))
  graph_p, state_p = nnx.split(policy)
  graph_r, state_r = nnx.split(reference)

  for b, t in zip(batches, row_lens):
    cap = min(1 << max(3, (need[t] - 1).bit_length()), batch_size * t)
    chunk = min(chunk_size, cap)
    cap = -(-cap // chunk) * chunk
    ids = np.zeros((batch_size, t), np.int32)
    mask = np.zeros((batch_size, t), bool)
    idx = np.zeros(cap, np.int32)
    owner, k = [], 0
    for r, i in enumerate(b):
      x, s = seqs[i], starts[i]
      ids[r, :len(x)], mask[r, :len(x)] = x, True
      pos = np.arange(s - 1, len(x) - 1) + r * t        # logits at t - 1 predict token t
      idx[k:k + len(pos)] = pos
      owner += [i] * len(pos)
      k += len(pos)
    kl = np.asarray(_compiled(graph_p, graph_r, chunk)(state_p, state_r, ids, mask, idx))
    np.add.at(per_seq, np.asarray(owner), kl[:k].astype(np.float64))
  return KLReport(float(per_seq.sum()), int(counts.sum()), tuple(per_seq.tolist()),
                  tuple(int(c) for c in counts))


def kl_on_generations(policy: CausalLM, reference: CausalLM, rows: Sequence[Mapping[str, Any]], *,
                      chunk_size: int = 128, batch_size: int = 8) -> KLReport:
  """`kl_to_reference` on rows of `elasticity.eval.generations` (prompt_ids + completion_ids)."""
  seqs, starts = [], []
  for i, row in enumerate(rows):
    for field in ("prompt_ids", "completion_ids"):
      if not isinstance(row.get(field), (list, tuple)):
        raise ValueError(f"kl_on_generations: row {i}: field {field!r} must be a list of token ids")
    seqs.append([*row["prompt_ids"], *row["completion_ids"]])
    starts.append(len(row["prompt_ids"]))
  return kl_to_reference(policy, reference, seqs, starts, chunk_size=chunk_size,
                         batch_size=batch_size)


__all__ = ["KLReport", "kl_on_generations", "kl_to_reference"]
