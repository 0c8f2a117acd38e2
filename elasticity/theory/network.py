"""Small Llamas trained from scratch in a synthetic world, and their compression rates measured
exactly on the world's datasets — the network side of the theory lab (docs/theory.md §8).

A world sequence x = (x_1..x_T) is fed as ``[BOS, x_1, ..., x_T]`` (BOS = token V, so the model's
vocabulary is V + 1) and every one of the T world tokens is scored: the model's code length of x is
bits_θ(x) = −Σ_t log₂ p_θ(x_t | BOS, x_<t), the quantity the exact theory's joint code assigns to a
leaf (the prefix token carries the dataset's mixture weight, as it does there).

Training uses the project's stack unchanged (`create_model`, `make_optimizer`, `make_train_step` with
the SFT objective). A batch holds a fixed number of rows of each dataset and the loss mask carries
per-row weights w_i = (|D_i| / Σ_j |D_j|) · B / n_i (n_i rows of D_i among B), so the step minimizes
the joint objective Σ_i |D_i| · L_i / Σ_i |D_i| whatever the sizes: l = 10⁻³ is a weight, not one
D_t row in a thousand batches, and runs at different l see the same rows (common random numbers).

Rates are measured with the compression kernel (`elasticity.compression.Scorer`) on token arrays.
By default on every leaf of each dataset's support, weighted by its exact probability, so
γ_i = Σ_s p_i(s) bits_θ(s) / T is the exact expectation (no sampling noise); with ``eval_samples``
> 0 on that many held-out samples instead. The normalized rate subtracts the per-token log₂ of a
support (`elasticity.theory.rates`; ``own`` = the dataset's own leaves, as the exact tables use).
The exact share of a dataset, Σ_{s∈supp D_i} p_θ(s), is the probability that a sample of the model
is a sequence of D_i (the world's exact classifier applied to the model's whole distribution).

    net = Network(world, NetConfig(hidden=64, layers=2), seed=0)
    params = net.init_params()
    params = net.train(params, sizes=(k, 1, 0), steps=400, lr=3e-3, seed=1)
    rates = net.rates(params)          # {"gamma": {p, a, t}, "bits_per_token": ..., "share": ...}
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from elasticity import sharding as shd
from elasticity.compression import Scorer
from elasticity.models import ModelConfig, abstract_model, create_model
from elasticity.theory.rates import NORMALIZATIONS, log2_support_per_token, normalized_rate
from elasticity.theory.worlds import NAMES, World
from elasticity.train.losses import Objective
from elasticity.train.optimizer import make_optimizer
from elasticity.train.step import batch_shardings, init_train_state, make_train_step, split_params, \
  state_shardings


@dataclass(frozen=True)
class NetConfig:
  """The network and its training: a Llama of ``layers`` × ``hidden`` (``heads`` heads, MLP
  ``mlp_ratio`` × hidden), batches of ``batch`` rows of which ``rows_a`` are D_a's and ``rows_t``
  D_t's (the rest D_p's), Adam with a constant learning rate, and γ's normalization."""
  hidden: int = 64
  layers: int = 2
  heads: int = 4
  mlp_ratio: int = 2
  batch: int = 128
  rows_a: int = 32
  rows_t: int = 32
  normalization: str = "own"
  eval_samples: int = 0          # 0: every leaf of the support, weighted exactly; > 0: samples
  eval_chunk: int = 2048         # rows a scorer call

  def validate(self) -> "NetConfig":
    def bad(key, why):
      raise ValueError(f"network config.{key}: {why}, got {getattr(self, key)!r}")
    for key in ("hidden", "layers", "heads", "mlp_ratio", "batch", "eval_chunk"):
      if getattr(self, key) < 1:
        bad(key, "must be >= 1")
    if self.hidden % self.heads:
      bad("hidden", f"must be a multiple of heads={self.heads}")
    if self.rows_a < 1 or self.rows_t < 1 or self.rows_a + self.rows_t >= self.batch:
      bad("rows_a", f"rows_a, rows_t >= 1 and rows_a + rows_t < batch={self.batch} (D_p needs rows)")
    if self.normalization not in NORMALIZATIONS:
      bad("normalization", f"must be one of {NORMALIZATIONS}")
    if self.eval_samples < 0:
      bad("eval_samples", "must be >= 0")
    return self


def model_config(world: World, net: NetConfig) -> ModelConfig:
  """The Llama for ``world``: vocabulary V + 1 (token V is BOS), context T + 1."""
  return ModelConfig(family="llama", vocab_size=world.vocab_size + 1, hidden_size=net.hidden,
                     intermediate_size=net.mlp_ratio * net.hidden, num_layers=net.layers,
                     num_heads=net.heads, num_kv_heads=net.heads, head_dim=net.hidden // net.heads,
                     rms_norm_eps=1e-5, max_position_embeddings=world.length + 1,
                     bos_token_id=world.vocab_size)


def with_bos(tokens: np.ndarray, bos: int) -> np.ndarray:
  """[n, T] world tokens → [n, T + 1] model inputs starting with BOS."""
  tokens = np.asarray(tokens, np.int32)
  return np.concatenate([np.full((tokens.shape[0], 1), bos, np.int32), tokens], axis=1)


def param_count(params) -> int:
  return int(sum(np.prod(np.shape(x)) for x in jax.tree.leaves(params)))


class Network:
  """One model architecture in one world: initialisation, weighted joint training, exact rates."""

  def __init__(self, world: World, net: NetConfig = NetConfig(), *, seed: int = 0):
    self.world, self.net, self.seed = world, net.validate(), int(seed)
    self.cfg = model_config(world, net)
    self.bos = world.vocab_size
    self.mesh = shd.make_mesh(1, 1, 1, devices=jax.devices()[:1])
    abstract = abstract_model(self.cfg, dtype=jnp.float32, param_dtype=jnp.float32)
    self.graphdef, _ = split_params(abstract)
    self._abstract = abstract
    self._steps: dict[float, tuple[Any, Callable, Any]] = {}
    self._scorer: Scorer | None = None
    self._samplers: dict[int, Callable] = {}
    self._eval = self._eval_rows()

  # --- parameters ------------------------------------------------------------------------------

  def init_params(self, seed: int | None = None) -> dict:
    """Random-init parameters (host numpy pure dict), seeded."""
    model = create_model(self.cfg, seed=self.seed if seed is None else int(seed))
    return jax.device_get(split_params(model)[1])

  def model(self, params):
    return nnx.merge(self.graphdef, params)

  # --- training --------------------------------------------------------------------------------

  def _step(self, lr: float):
    """(tx, jitted step, shardings) for Adam at ``lr``; compiled once per learning rate."""
    if lr not in self._steps:
      tx, schedule = make_optimizer({"name": "adam", "lr": float(lr), "schedule": "constant"}, 1)
      _, sh = state_shardings(self._abstract, tx, self.mesh)
      b, t = self.net.batch, self.world.length + 1
      example = {"input_ids": np.zeros((b, t), np.int32), "attention_mask": np.ones((b, t), np.int32),
                 "loss_mask": np.zeros((b, t), np.float32)}
      step = make_train_step(self.graphdef, Objective("sft", chunk_size=t), tx, schedule, self.mesh, sh,
                             batch_shardings(example, self.mesh))
      self._steps[lr] = (tx, step, sh)
    return self._steps[lr]

  def batches(self, sizes: Sequence[float], steps: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(input_ids [steps, B, T+1], loss weights [steps, B, T+1]) for the joint objective with dataset
    sizes ``sizes`` = (|D_p|, |D_a|, |D_t|) in any unit; a size of 0 leaves its rows unweighted."""
    sizes = np.asarray(sizes, np.float64)
    if sizes.shape != (3,) or (sizes < 0).any() or sizes.sum() <= 0:
      raise ValueError(f"Network.batches: sizes must be 3 numbers >= 0, not all 0; got {sizes}")
    n = self.net
    rows = np.array([n.batch - n.rows_a - n.rows_t, n.rows_a, n.rows_t])
    w = sizes / sizes.sum() * n.batch / rows
    parts, weights = [], []
    for i, name in enumerate(NAMES):
      s = self.world.sample(name, steps * rows[i], seed=int(seed) * 7919 + 1000003 * (1 + self.seed))
      parts.append(s.tokens.reshape(steps, rows[i], -1))
      weights.append(np.full((steps, rows[i]), w[i], np.float32))
    tokens = np.concatenate(parts, axis=1)
    ids = np.stack([with_bos(t, self.bos) for t in tokens])
    mask = np.repeat(np.concatenate(weights, axis=1)[:, :, None], ids.shape[2], axis=2)
    mask[:, :, 0] = 0.0                       # BOS is context, not scored
    return ids, mask.astype(np.float32)

  def train(self, params, sizes: Sequence[float], steps: int, lr: float, seed: int, *,
            callback: Callable[[int, dict], None] | None = None, every: int = 0,
            progress: Callable[[int], None] | None = None) -> dict:
    """``steps`` Adam steps (a fresh optimizer state) on the joint objective with ``sizes``, from
    ``params`` (host pure dict, not modified); returns the new host params. ``callback(step,
    params)`` runs after every ``every``-th step (and the last) when given."""
    if steps < 0:
      raise ValueError(f"Network.train: steps must be >= 0, got {steps}")
    tx, step, sh = self._step(lr)
    state = init_train_state(params, tx, sh, seed=int(seed))
    ids, mask = self.batches(sizes, steps, seed)
    attn = np.ones(ids.shape[1:], np.int32)
    for i in range(steps):
      batch = shd.global_batch({"input_ids": ids[i], "attention_mask": attn, "loss_mask": mask[i]},
                               self.mesh)
      state, metrics = step(state, batch)
      if progress is not None:
        progress(1)
      if callback is not None and every and ((i + 1) % every == 0 or i + 1 == steps):
        callback(i + 1, jax.device_get(state["params"]))
    return jax.device_get(state["params"])

  def fit(self, params, tokens: np.ndarray, steps: int, lr: float, seed: int) -> dict:
    """``steps`` Adam steps of plain maximum likelihood on the world sequences ``tokens`` [N, T]
    (every batch row weighted 1, rows drawn without replacement, reshuffled each pass)."""
    tokens = np.asarray(tokens, np.int32)
    if tokens.ndim != 2 or tokens.shape[1] != self.world.length or not len(tokens):
      raise ValueError(f"Network.fit: tokens must be [N >= 1, {self.world.length}], got {tokens.shape}")
    tx, step, sh = self._step(lr)
    state = init_train_state(params, tx, sh, seed=int(seed))
    rng = np.random.default_rng([int(seed), 17])
    b = self.net.batch
    order = np.concatenate([rng.permutation(len(tokens)) for _ in range(-(-steps * b // len(tokens)))])
    attn = np.ones((b, self.world.length + 1), np.int32)
    mask = attn.astype(np.float32)
    mask[:, 0] = 0.0
    for i in range(steps):
      ids = with_bos(tokens[order[i * b:(i + 1) * b]], self.bos)
      state, _ = step(state, shd.global_batch({"input_ids": ids, "attention_mask": attn,
                                               "loss_mask": mask}, self.mesh))
    return jax.device_get(state["params"])

  # --- measuring -------------------------------------------------------------------------------

  def _eval_rows(self) -> tuple[np.ndarray, dict[str, tuple[np.ndarray, np.ndarray]], dict]:
    """(the distinct rows scored [n, T]; per dataset (row indices, weights summing to 1) the rates
    average over; per dataset the row indices of its whole support, for the exact share)."""
    parts, rates, support = [], {}, {}
    offset = 0

    def index(tokens: np.ndarray) -> np.ndarray:
      nonlocal offset
      parts.append(tokens)
      offset += len(tokens)
      return np.arange(offset - len(tokens), offset)

    leaves = {}
    for name in NAMES:     # a near_* D_t shares its base's support: score it once
      same = next((m for m in leaves if np.array_equal(leaves[m], self.world.leaves[name])), None)
      leaves[name] = leaves[same] if same else self.world.leaves[name].astype(np.int32)
      support[name] = support[same] if same else index(leaves[name])
    for i, name in enumerate(NAMES):
      if self.net.eval_samples:
        s = self.world.sample(name, self.net.eval_samples, seed=10 ** 9 + i)
        rates[name] = (index(s.tokens), np.full(len(s.tokens), 1.0 / len(s.tokens)))
      else:
        rates[name] = (support[name], self.world.probs[name])
    return np.concatenate(parts), rates, support

  def sequence_bits(self, params, tokens: np.ndarray) -> np.ndarray:
    """bits_θ(x) of each world sequence (rows of ``tokens`` [n, T]), float64, via `Scorer`; rows go
    in chunks of ``eval_chunk`` (the last padded), so one shape is compiled."""
    model = self.model(params)
    if self._scorer is None:
      self._scorer = Scorer(model, mesh=self.mesh, chunk_size=self.world.length + 1)
    else:
      self._scorer.update(model)
    ids = with_bos(tokens, self.bos)
    n, t = ids.shape
    chunk = self.net.eval_chunk
    out = np.empty(n, np.float64)
    for start in range(0, n, chunk):
      part = ids[start:start + chunk]
      real = part.shape[0]
      part = np.pad(part, ((0, chunk - real), (0, 0)), constant_values=self.bos)
      seg = np.zeros((chunk, t), np.int32)
      seg[:real] = 1
      loss = seg.copy()
      loss[:, 0] = 0
      pos = np.broadcast_to(np.arange(t, dtype=np.int32), (chunk, t)).copy()
      bits, counts = self._scorer({"input_ids": part, "loss_mask": loss, "segment_ids": seg,
                                   "positions": pos})
      bits, counts = np.asarray(bits, np.float64)[:real, 0], np.asarray(counts)[:real, 0]
      if (counts != self.world.length).any():
        raise RuntimeError(f"sequence_bits: scored {counts.min()}..{counts.max()} tokens a row, "
                           f"expected {self.world.length}")
      out[start:start + real] = bits
    return out

  def rates(self, params) -> dict[str, dict[str, float]]:
    """Each dataset's bits/token, normalized γ and exact share Σ_{s∈supp} p_θ(s) under ``params``
    (one scoring pass over every row needed)."""
    rows, rate_rows, support = self._eval
    bits = self.sequence_bits(params, rows)
    out: dict[str, dict[str, float]] = {"bits_per_token": {}, "gamma": {}, "share": {}}
    for name in NAMES:
      idx, w = rate_rows[name]
      bpt = float(w @ bits[idx]) / self.world.length
      out["bits_per_token"][name] = bpt
      out["gamma"][name] = float(normalized_rate(bpt, self.log2_support(name)))
      out["share"][name] = float(np.exp2(-bits[support[name]]).sum())
    return out

  def log2_support(self, name: str) -> float:
    """Per-token log₂ of the support γ is normalized by (``own`` | ``joint`` | ``vocab``)."""
    norm, t = self.net.normalization, self.world.length
    if norm == "own":
      return log2_support_per_token(len(self.world.probs[name]), t)
    if norm == "joint":
      return log2_support_per_token(sum(len(self.world.probs[n]) for n in NAMES
                                        if not (n == "t" and self.world.config.t_mode != "independent")), t)
    return math.log2(self.world.vocab_size)

  def sample(self, params, n: int, seed: int, temperature: float = 1.0) -> np.ndarray:
    """n world sequences [n, T] sampled from the model (ancestral, full softmax over the V world
    tokens: BOS is never drawn), seeded; compiled once per n."""
    if n not in self._samplers:
      graphdef, t, v, bos = self.graphdef, self.world.length, self.world.vocab_size, self.bos

      @jax.jit
      def draw(params, key, temperature):
        model = nnx.merge(graphdef, params)
        ids = jnp.full((n, t + 1), bos, jnp.int32)
        for i in range(t):
          logits = model(ids)[:, i, :v]
          key, sub = jax.random.split(key)
          ids = ids.at[:, i + 1].set(jax.random.categorical(sub, logits / temperature).astype(jnp.int32))
        return ids[:, 1:]
      self._samplers[n] = draw
    return np.asarray(self._samplers[n](params, jax.random.PRNGKey(int(seed)), float(temperature)))


def replace(net: NetConfig, **kw) -> NetConfig:
  return dataclasses.replace(net, **kw).validate()
