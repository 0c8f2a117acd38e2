"""KL(π‖π_ref) of a policy to a reference model on sampled continuations, exact over the vocabulary.

For a sequence ``x`` = prompt + completion (completion tokens at ``s … L−1``) the per-position KL at
every generated position, conditioned on the prompt and the completion prefix, is

    KL_t = Σ_v π(v | x_<t) (log π(v | x_<t) − log π_ref(v | x_<t)),      t = s … L−1

in nats, summed over the whole vocabulary (no sampling estimate). The report keeps sums and counts:
``sum_kl`` = Σ over sequences and generated positions, ``tokens`` = number of such positions, and
``mean`` = ``sum_kl / tokens`` (KL per generated token), one division at the end; per-sequence sums
are kept too. Sums are accumulated in float64 on the host from the float32 per-position values.

Per position it is computed from the two logit vectors z_p, z_r with d = z_p − z_r and
p = softmax(z_p) as ``KL = E_p[d] + log E_p[exp(−d)]`` (the log-normalisers' difference is
log E_p[exp(−d)]): two vocabulary-wide exponentials instead of the three of two log-softmaxes and p,
and no difference of two ~log V normalisers, so it is both faster and closer to float64
(`kl_terms`; ``bench/kl_terms.py`` measures both against the two-log-softmax form).

**The policy's forward can be skipped**: ``policy_hidden`` gives, per sequence, the policy's
final-normed activations at the scored positions — what the sampler computed anyway
(`elasticity.eval.generations.continue_prompts(keep_hidden=True)`) — and only the reference runs a
forward; the policy's logits are its unembedding of them. Activations from the KV-cache decoder
equal the full forward's to float32 rounding (tests/test_eval_kl.py).

Memory: neither model's [B, T, V] logits are ever held. Both models' final-normed hidden states
[B, T, D] are computed, the scored positions (the ones whose logits predict a completion token) are
gathered — host-computed indices, padded to a multiple of the chunk — and projected onto the
vocabulary ``chunk_size`` positions at a time inside a ``lax.map`` (``CausalLM.logits_from_hidden``,
which applies Gemma 2's final soft-cap like `elasticity.logprobs` does), so at most [chunk, V] float32
logits per model exist at once. Both forwards run in one jitted function, compiled once per (row
length bucket, capacity) and cached per model structure across calls.

Sharding, as the compression `Scorer`'s: on a ``(data, fsdp, tensor)`` mesh (``mesh=``) the rows go
over the batch axes and both models' parameters by their logical axes; each batch shard gathers and
projects only its own rows' positions (`sharded_fn`), so nothing is all-gathered but the weights
FSDP needs. Without a mesh it runs on the default device alone.

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
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from elasticity import sharding as shd
from elasticity.data.buckets import length_buckets
from elasticity.models.scan import with_layers_rule
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


def kl_terms(zp: Array, zr: Array) -> Array:
  """KL(softmax(zp) ‖ softmax(zr)) over the last axis, float32 logits (module docstring)."""
  mp = jnp.max(zp, axis=-1, keepdims=True)
  e = jnp.exp(zp - mp)                                   # p · Σe
  s = jnp.sum(e, axis=-1)
  d = zp - zr
  c = jnp.max(-d, axis=-1, keepdims=True)                # exp(−d − c) ≤ 1: never overflows
  return (jnp.sum(e * d, axis=-1) / s + jnp.log(jnp.sum(e * jnp.exp(-d - c), axis=-1) / s)
          + c[..., 0])


def sharded_fn(graph_p, graph_r, shardings_p, shardings_r, mesh: Mesh, rules: shd.Rules, chunk: int,
               given_hidden: bool = False):
  """The jitted per-position KL of gathered positions on ``mesh``, and the shardings of its inputs.

  ``(state_p, state_r, ids [B, T], mask [B, T], idx [S, C]) → [S, C]``: the rows are split into the
  S batch shards of the mesh (rows ``s·B/S … (s+1)·B/S − 1`` are shard s's), and ``idx[s]`` holds
  positions local to shard s's rows (row-major in its ``B/S × T`` block), so the gather of hidden
  states never crosses shards; the vocabulary projection runs ``chunk`` positions of every shard at
  a time. With ``given_hidden`` a sixth argument ``hp [S, C, D]`` holds the policy's activations at
  the same slots and the policy runs no forward. Returns ``(fn, batch sharding, idx sharding)``;
  cached per structure, mesh, chunk and ``given_hidden`` (``hp`` is sharded like ``idx``, on its
  first axis).
  """
  return _sharded_fn(graph_p, graph_r, _tree_key(shardings_p), _tree_key(shardings_r), mesh,
                     tuple(rules), int(chunk), bool(given_hidden))


def _tree_key(tree):
  leaves, treedef = jax.tree.flatten(tree, is_leaf=lambda x: isinstance(x, NamedSharding))
  return treedef, tuple(leaves)


@functools.lru_cache(maxsize=16)
def _sharded_fn(graph_p, graph_r, key_p, key_r, mesh: Mesh, rules, chunk: int, given_hidden: bool):
  shards = shd.batch_divisor(mesh, rules)
  b_sh = shd.batch_sharding(mesh, 2, rules)
  idx_sh = shd.batch_sharding(mesh, 2, rules)        # [S, C]: shard s's slots on shard s
  rep = NamedSharding(mesh, P())
  sh_p = jax.tree.unflatten(key_p[0], key_p[1])
  sh_r = jax.tree.unflatten(key_r[0], key_r[1])

  def chunks(g):                                                         # [S, C, D] → [n, S, c, D]
    return g.reshape(shards, -1, chunk, g.shape[-1]).swapaxes(0, 1)

  def run(state_p, state_r, ids, mask, idx, hp=None):
    policy, reference = nnx.merge(graph_p, state_p), nnx.merge(graph_r, state_r)

    def gathered(model):
      h = model.hidden_states(ids, attention_mask=mask)                  # [B, T, D]
      h = h.reshape(shards, -1, h.shape[-1])                             # [S, B/S·T, D]
      return chunks(jnp.take_along_axis(h, idx[..., None], axis=1))      # [S, C, D] → chunks

    hp = gathered(policy) if hp is None else chunks(hp)
    hr = gathered(reference)
    wp, wr = policy.output_embedding(), reference.output_embedding()

    def one(args):
      # Rows [S·c, D] → [S·c, V] float32 logits: XLA:CPU reduces a 2-D array's rows far more exactly
      # than a 3-D [S, c, V] one's (a real SmolLM2 point's mean KL: 1.1e-7 from float64 against
      # 1.6e-5; bench/RESULTS.md "KL terms", tests/test_eval_kl.py).
      a, b = (x.reshape(-1, x.shape[-1]) for x in args)
      return kl_terms(policy.logits_from_hidden(a, wp),
                      reference.logits_from_hidden(b, wr)).reshape(args[0].shape[:-1])

    return jax.lax.map(one, (hp, hr)).swapaxes(0, 1).reshape(shards, -1)   # [S, C]

  shardings = (sh_p, sh_r, b_sh, b_sh, idx_sh)
  if given_hidden:
    shardings += (shd.batch_sharding(mesh, 3, rules),)
  fn = jax.jit(run, in_shardings=shardings, out_shardings=rep)
  return fn, b_sh, idx_sh


def default_mesh() -> Mesh:
  """One device (the default one): the evaluator unsharded."""
  return shd.make_mesh(data=1, fsdp=1, tensor=1, devices=jax.devices()[:1])


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


def _validate_hidden(hidden: Sequence[Any], counts: np.ndarray, width: int) -> list[np.ndarray]:
  if isinstance(hidden, np.ndarray) or not isinstance(hidden, Sequence) or len(hidden) != len(counts):
    got = len(hidden) if isinstance(hidden, Sequence) else type(hidden).__name__
    raise ValueError(f"kl_to_reference: policy_hidden must be a list of one array per sequence "
                     f"({len(counts)}), got {got}")
  out, dtype = [], None
  for i, (h, c) in enumerate(zip(hidden, counts)):
    h = np.asarray(h)
    if h.shape != (int(c), width) or not np.issubdtype(h.dtype, np.floating):
      raise ValueError(f"kl_to_reference: policy_hidden[{i}]: expected floats of shape ({int(c)}, "
                       f"{width}) (completion length, hidden size), got {h.dtype} {h.shape}")
    dtype = dtype or h.dtype
    out.append(h.astype(dtype, copy=False))
  return out


def kl_to_reference(policy: CausalLM, reference: CausalLM, sequences: Sequence[Sequence[int]],
                    completion_start: Sequence[int], *, chunk_size: int = 128, batch_size: int = 8,
                    mesh: Mesh | None = None, rules: shd.Rules | None = None,
                    policy_hidden: Sequence[Any] | None = None, trim_last: bool = False) -> KLReport:
  """Exact KL(policy‖reference) per generated token on ``sequences`` (see the module docstring).

  Args:
    policy, reference: models over the same vocabulary.
    sequences: token ids, prompt + completion each.
    completion_start: index of each sequence's first completion token (1 … its length; the length
      itself means an empty completion, which scores nothing).
    chunk_size: positions per vocabulary-projection chunk (per batch shard).
    batch_size: rows per forward (rounded up to a multiple of the mesh's batch shards; the last
      batch is filled up with empty rows, or with ``trim_last`` has only the rows it needs, rounded
      up to the batch shards: one more compiled shape, for callers that evaluate many times, as an
      experiment's points do; the values do not depend on it, tests/test_eval_kl.py).
    mesh: a ``(data, fsdp, tensor)`` mesh, as the compression `Scorer` takes: rows over the batch
      axes, both models' parameters by their logical axes (``rules``, default
      `elasticity.sharding.DEFAULT_RULES`). Default: the default device alone.
    policy_hidden: per sequence, the policy's final-normed activations [its completion length, D]
      at the positions that predict its completion tokens (row k predicts token
      ``completion_start + k``), e.g. ``Generation.hidden``; then the policy runs no forward.
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
  if policy_hidden is not None:
    policy_hidden = _validate_hidden(policy_hidden, counts, int(policy.config.hidden_size))
  if n == 0 or counts.sum() == 0:
    return KLReport(0.0, 0, tuple(per_seq.tolist()), tuple(counts.tolist()))

  mesh = mesh if mesh is not None else default_mesh()
  rules = with_layers_rule(rules if rules is not None else shd.DEFAULT_RULES)
  shards = shd.batch_divisor(mesh, rules)
  batch_size = -(-batch_size // shards) * shards
  lengths = np.array([len(x) for x in seqs])
  buckets = length_buckets(int(lengths.max()), smallest=8)
  order = [i for i in np.argsort(lengths, kind="stable").tolist() if counts[i] > 0]
  batches = [order[k:k + batch_size] for k in range(0, len(order), batch_size)]
  row_lens = [next(x for x in buckets if x >= lengths[b].max()) for b in batches]
  n_rows = [-(-len(b) // shards) * shards if trim_last else batch_size for b in batches]
  # One capacity per row length: the most positions any shard of its batches scores, rounded up to
  # a power of two (so other data of similar size reuses the compilation), at most every position.
  need: dict[int, int] = {}
  for b, t, rows in zip(batches, row_lens, n_rows):
    per_shard = rows // shards
    most = max(int(counts[b[s * per_shard:(s + 1) * per_shard]].sum()) for s in range(shards))
    need[t] = max(need.get(t, 0), most)
  graph_p, state_p = nnx.split(policy)
  graph_r, state_r = nnx.split(reference)
  sh_p, sh_r = shd.param_shardings(state_p, mesh, rules), shd.param_shardings(state_r, mesh, rules)
  params_p = jax.device_put(nnx.to_pure_dict(state_p), sh_p)
  params_r = jax.device_put(nnx.to_pure_dict(state_r), sh_r)
  hp_sh = shd.batch_sharding(mesh, 3, rules) if policy_hidden is not None else None

  for b, t, rows in zip(batches, row_lens, n_rows):
    per_shard = rows // shards
    cap = min(1 << max(3, (need[t] - 1).bit_length()), per_shard * t)
    chunk = min(chunk_size, cap)
    cap = -(-cap // chunk) * chunk
    given = policy_hidden is not None
    fn, b_sh, idx_sh = sharded_fn(graph_p, graph_r, sh_p, sh_r, mesh, rules, chunk, given)
    ids = np.zeros((rows, t), np.int32)
    mask = np.zeros((rows, t), bool)
    idx = np.zeros((shards, cap), np.int32)
    if given:
      hp = np.zeros((shards, cap, policy_hidden[0].shape[-1]), policy_hidden[0].dtype)
    owner = [[] for _ in range(shards)]
    for r, i in enumerate(b):
      x, s = seqs[i], starts[i]
      ids[r, :len(x)], mask[r, :len(x)] = x, True
      shard, k = divmod(r, per_shard)
      pos = np.arange(s - 1, len(x) - 1) + k * t        # logits at t - 1 predict token t
      at = slice(len(owner[shard]), len(owner[shard]) + len(pos))
      idx[shard, at] = pos
      if given:
        hp[shard, at] = policy_hidden[i]
      owner[shard] += [i] * len(pos)
    put = lambda x, sh: jax.make_array_from_callback(x.shape, sh, lambda i: x[i])  # noqa: E731
    args = [params_p, params_r, put(ids, b_sh), put(mask, b_sh), put(idx, idx_sh)]
    if given:
      args.append(put(hp, hp_sh))
    with jax.set_mesh(mesh):
      kl = np.asarray(fn(*args))
    for shard, who in enumerate(owner):
      np.add.at(per_seq, np.asarray(who, np.int64), kl[shard, :len(who)].astype(np.float64))
  return KLReport(float(per_seq.sum()), int(counts.sum()), tuple(per_seq.tolist()),
                  tuple(int(c) for c in counts))


def kl_on_generations(policy: CausalLM, reference: CausalLM, rows: Sequence[Mapping[str, Any]], *,
                      chunk_size: int = 128, batch_size: int = 8, mesh: Mesh | None = None,
                      rules: shd.Rules | None = None, trim_last: bool = False) -> KLReport:
  """`kl_to_reference` on rows of `elasticity.eval.generations` (prompt_ids + completion_ids); when
  every row carries ``policy_hidden`` (``continue_prompts(keep_hidden=True)``) the policy runs no
  forward."""
  seqs, starts = [], []
  for i, row in enumerate(rows):
    for field in ("prompt_ids", "completion_ids"):
      if not isinstance(row.get(field), (list, tuple)):
        raise ValueError(f"kl_on_generations: row {i}: field {field!r} must be a list of token ids")
    seqs.append([*row["prompt_ids"], *row["completion_ids"]])
    starts.append(len(row["prompt_ids"]))
  hidden = ([row["policy_hidden"] for row in rows]
            if rows and all("policy_hidden" in row for row in rows) else None)
  return kl_to_reference(policy, reference, seqs, starts, chunk_size=chunk_size,
                         batch_size=batch_size, mesh=mesh, rules=rules, policy_hidden=hidden,
                         trim_last=trim_last)


__all__ = ["KLReport", "default_mesh", "kl_on_generations", "kl_to_reference", "sharded_fn"]
