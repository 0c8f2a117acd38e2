"""Synthetic worlds: pre-training, alignment and perturbation datasets D_p, D_a, D_t whose exact
distributions are known, for the exact theory and for training small networks on samples.

A world has a vocabulary of V tokens and sequences of a fixed length T. Tokens 0, 1, 2 are the
datasets' first tokens (D_p starts with 0, D_a with 1, an independent D_t with 2), so the datasets
have disjoint prefixes; the other T − 1 tokens are drawn from the body tokens 3..V−1. Each dataset is
a finite support of distinct sequences (drawn uniformly without replacement) with leaf masses drawn
i.i.d. from a Pareto distribution (Assumption A.7: density α x^{−α−1} on x ≥ 1, normalized to sum to
1; smaller α = heavier tail). D_t is ``independent`` (its own prefix, support and masses), or
``near_p`` / ``near_a``: it lives on D_p's (D_a's) support with masses (1 − η) p + η r, r a fresh
Pareto draw, η = ``near_mix``. Dataset sizes are |D_a| = ``base_size`` sequences, |D_p| = k·|D_a|,
|D_t| = l·|D_a|.

Everything is a function of the config and its seed: the same config gives the same world, and
``sample(name, n, seed)`` the same sequences. For training a model on the world:

    world = make_world(WorldConfig(k=100, l=0.01))
    batch = world.sample("p", 4096, seed=0)     # batch.tokens int32 [n, T], batch.log_prob (nats)
    mixed = world.sample_joint(4096, seed=1)    # D_p ∪ D_a ∪ D_t in proportion k : 1 : l, labelled
    world.log_prob(tokens, "a")                 # exact log p_a(x), −inf off D_a's support
    world.score(tokens)                         # the exact classifier: which dataset each row is from
    world.tree("p")                             # the exact token tree, for elasticity.theory
    world.exact_law(budget=None)                # Theorem 4.2's exact row at the config's k and l
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import numpy as np

from elasticity.theory.law import rates_and_slopes
from elasticity.theory.tree import TokenTree

NAMES = ("p", "a", "t")
T_MODES = ("independent", "near_p", "near_a")


@dataclass(frozen=True)
class WorldConfig:
  vocab_size: int = 16
  length: int = 6                  # T tokens a sequence, the first one the dataset's prefix token
  n_leaves_p: int = 20000
  n_leaves_a: int = 200
  n_leaves_t: int = 2000
  alpha_p: float = 1.2             # Pareto shapes (Assumption A.7)
  alpha_a: float = 1.2
  alpha_t: float = 1.2
  t_mode: str = "independent"      # independent | near_p | near_a
  near_mix: float = 0.5            # η of a near_* D_t
  k: float = 100.0                 # |D_p| / |D_a|
  l: float = 0.01                  # |D_t| / |D_a|
  base_size: int = 1000            # |D_a| in sequences
  seed: int = 0

  def validate(self) -> "WorldConfig":
    def bad(key, why):
      raise ValueError(f"world config.{key}: {why}, got {getattr(self, key)!r}")
    if self.vocab_size < 4:
      bad("vocab_size", "need at least 4 tokens (3 prefix tokens and one body token)")
    if self.length < 2:
      bad("length", "need at least 2 tokens (the prefix and one body token)")
    bodies = (self.vocab_size - 3) ** (self.length - 1)
    for key in ("n_leaves_p", "n_leaves_a", "n_leaves_t"):
      n = getattr(self, key)
      if not 1 <= n <= bodies:
        bad(key, f"must be in [1, {bodies}] (the (V−3)^(T−1) distinct bodies)")
    for key in ("alpha_p", "alpha_a", "alpha_t"):
      if not getattr(self, key) > 0:
        bad(key, "a Pareto shape must be > 0")
    if self.t_mode not in T_MODES:
      bad("t_mode", f"must be one of {T_MODES}")
    if not 0 <= self.near_mix <= 1:
      bad("near_mix", "must be in [0, 1]")
    if not self.k > 0:
      bad("k", "must be > 0")
    if not self.l >= 0:
      bad("l", "must be >= 0")
    if self.base_size < 1:
      bad("base_size", "must be >= 1")
    if self.vocab_size ** self.length >= 2 ** 62:
      bad("length", "V^T must fit in 62 bits (sequences are keyed by integers)")
    return self


def pareto_masses(rng: np.random.Generator, n: int, alpha: float) -> np.ndarray:
  """n i.i.d. Pareto(α, x_m = 1) draws (inverse CDF: (1 − U)^{−1/α}), normalized to sum to 1."""
  x = (1.0 - rng.random(n)) ** (-1.0 / alpha)
  return x / x.sum()


@dataclass(frozen=True)
class Sample:
  tokens: np.ndarray       # int32 [n, T]
  log_prob: np.ndarray     # float64 [n]: exact log p(x) in nats under the distribution sampled
  labels: np.ndarray       # int32 [n]: index into NAMES of the dataset each row was drawn from


class World:
  """Exact distributions of D_p, D_a, D_t (see the module docstring); build with `make_world`."""

  names = NAMES

  def __init__(self, config: WorldConfig, leaves: dict[str, np.ndarray], probs: dict[str, np.ndarray]):
    self.config = config
    self.vocab_size = config.vocab_size
    self.length = config.length
    self.leaves = leaves          # name -> int64 [n_i, T], sorted by key
    self.probs = probs            # name -> float64 [n_i], sums to 1
    self._keys = {n: self._key(leaves[n]) for n in NAMES}

  # --- exact quantities ------------------------------------------------------------------------

  def _key(self, tokens: np.ndarray) -> np.ndarray:
    return _keys(tokens, self.vocab_size)

  def _check_tokens(self, tokens, where: str) -> np.ndarray:
    t = np.asarray(tokens)
    if t.ndim != 2 or t.shape[1] != self.length:
      raise ValueError(f"{where}: tokens must be [n, {self.length}], got shape {t.shape}")
    if not np.issubdtype(t.dtype, np.integer):
      raise ValueError(f"{where}: tokens must be integers, got {t.dtype}")
    if t.size and (t.min() < 0 or t.max() >= self.vocab_size):
      raise ValueError(f"{where}: token ids must be in [0, {self.vocab_size}); row "
                       f"{int(np.argwhere((t < 0) | (t >= self.vocab_size))[0, 0])} is not")
    return t

  def sizes(self, k: float | None = None, l: float | None = None) -> np.ndarray:
    """(|D_p|, |D_a|, |D_t|) in sequences: base_size · (k, 1, l)."""
    k = self.config.k if k is None else k
    l = self.config.l if l is None else l
    return self.config.base_size * np.array([k, 1.0, l])

  def prob(self, tokens, name: str) -> np.ndarray:
    """Exact p_name(x) of each row (0 off the dataset's support)."""
    t = self._check_tokens(tokens, f"World.prob({name!r})")
    if name not in NAMES:
      raise ValueError(f"World.prob: unknown dataset {name!r}; datasets: {NAMES}")
    keys, ref = self._key(t), self._keys[name]
    pos = np.clip(np.searchsorted(ref, keys), 0, len(ref) - 1)
    return np.where(ref[pos] == keys, self.probs[name][pos], 0.0)

  def log_prob(self, tokens, name: str) -> np.ndarray:
    """Exact log p_name(x) in nats (−inf off the support)."""
    with np.errstate(divide="ignore"):
      return np.log(self.prob(tokens, name))

  def posterior(self, tokens, k: float | None = None, l: float | None = None) -> np.ndarray:
    """P(dataset | x) under the joint distribution with sizes (k, 1, l): [n, 3]; rows off every
    support are all 0."""
    joint = np.stack([s * self.prob(tokens, n) for s, n in zip(self.sizes(k, l), NAMES)], axis=1)
    total = joint.sum(axis=1, keepdims=True)
    return np.divide(joint, total, out=np.zeros_like(joint), where=total > 0)

  def score(self, tokens, k: float | None = None, l: float | None = None) -> np.ndarray:
    """The exact (Bayes) classifier: the index into NAMES of each row's most probable dataset, −1 for
    a row on no dataset's support. With disjoint prefixes it is the prefix token's dataset."""
    post = self.posterior(tokens, k, l)
    return np.where(post.sum(axis=1) > 0, post.argmax(axis=1), -1).astype(np.int32)

  def tree(self, name: str) -> TokenTree:
    """The exact token tree of a dataset (its support with its masses)."""
    return TokenTree.from_sequences(self.leaves[name], self.probs[name], vocab_size=self.vocab_size)

  def union_masses(self) -> tuple[np.ndarray, np.ndarray]:
    """(leaves [N, T], masses [3, N]): the three distributions on the union of their supports."""
    leaves, masses, _ = TokenTree.union([self.tree(n) for n in NAMES])
    return leaves, masses

  def exact_law(self, k: float | None = None, l: float | None = None, *, budget: int | None = None,
                normalization: str = "own"):
    """Theorem 4.2's exact row (`elasticity.theory.law.LawRow`) for this world's distributions with
    sizes (k, 1, l) (default: the config's): the prediction a network trained on samples is held to."""
    _, masses = self.union_masses()
    k = self.config.k if k is None else k
    l = self.config.l if l is None else l
    return rates_and_slopes(masses, np.full(masses.shape[1], self.length), self.vocab_size, k, l,
                            budget=budget, normalization=normalization)

  def entropy_bits(self, name: str) -> float:
    p = self.probs[name]
    return float(-(p * np.log2(p)).sum())

  # --- samplers ------------------------------------------------------------------------------

  def sample(self, name: str, n: int, seed: int = 0) -> Sample:
    """n i.i.d. sequences of one dataset; deterministic in (world seed, dataset, seed)."""
    if name not in NAMES:
      raise ValueError(f"World.sample: unknown dataset {name!r}; datasets: {NAMES}")
    if n < 0:
      raise ValueError(f"World.sample: n must be >= 0, got {n}")
    i = NAMES.index(name)
    rng = np.random.default_rng([self.config.seed, 1 + i, seed])
    idx = rng.choice(len(self.probs[name]), size=n, p=self.probs[name])
    return Sample(tokens=self.leaves[name][idx].astype(np.int32),
                  log_prob=np.log(self.probs[name][idx]), labels=np.full(n, i, np.int32))

  def sample_joint(self, n: int, seed: int = 0, k: float | None = None, l: float | None = None) -> Sample:
    """n sequences of D = D_p ∪ D_a ∪ D_t: each row's dataset drawn with probability ∝ (k, 1, l),
    then the row from it; ``log_prob`` is the exact log of the joint (mixture) probability."""
    sizes = self.sizes(k, l)
    rng = np.random.default_rng([self.config.seed, 0, seed])
    labels = rng.choice(3, size=n, p=sizes / sizes.sum()).astype(np.int32)
    tokens = np.empty((n, self.length), np.int32)
    for i, name in enumerate(NAMES):
      rows = np.flatnonzero(labels == i)
      if rows.size:
        tokens[rows] = self.sample(name, rows.size, seed=seed).tokens
    joint = sum(s * self.prob(tokens, nm) for s, nm in zip(sizes / sizes.sum(), NAMES))
    return Sample(tokens=tokens, log_prob=np.log(joint), labels=labels)


def _keys(tokens: np.ndarray, vocab_size: int) -> np.ndarray:
  """Each row as one integer (its digits in base V), for sorted lookups."""
  powers = vocab_size ** np.arange(tokens.shape[1] - 1, -1, -1, dtype=np.int64)
  return tokens.astype(np.int64) @ powers


def _bodies(rng: np.random.Generator, n: int, n_body: int, width: int) -> np.ndarray:
  """n distinct body sequences of ``width`` tokens over ``n_body`` symbols (uniform, no replacement)."""
  total = n_body ** width
  if total <= 10 ** 7:
    codes = rng.choice(total, size=n, replace=False)
  else:
    codes = np.unique(rng.integers(0, total, size=2 * n + 16))
    while codes.size < n:
      codes = np.unique(np.concatenate([codes, rng.integers(0, total, size=n)]))
    codes = rng.permutation(codes)[:n]
  digits = np.empty((n, width), np.int64)
  for j in range(width - 1, -1, -1):
    digits[:, j] = codes % n_body
    codes = codes // n_body
  return digits


def make_world(config: WorldConfig | None = None, **overrides) -> World:
  """The world of ``config`` (defaults: `WorldConfig`), with fields replaced by ``overrides``."""
  config = dataclasses.replace(config or WorldConfig(), **overrides).validate()
  rng = np.random.default_rng(config.seed)
  n_body, width = config.vocab_size - 3, config.length - 1
  leaves, probs = {}, {}
  for i, name in enumerate(("p", "a")):
    n = getattr(config, f"n_leaves_{name}")
    body = _bodies(rng, n, n_body, width) + 3
    leaves[name] = np.concatenate([np.full((n, 1), i, np.int64), body], axis=1)
    probs[name] = pareto_masses(rng, n, getattr(config, f"alpha_{name}"))
  if config.t_mode == "independent":
    n = config.n_leaves_t
    leaves["t"] = np.concatenate([np.full((n, 1), 2, np.int64), _bodies(rng, n, n_body, width) + 3], 1)
    probs["t"] = pareto_masses(rng, n, config.alpha_t)
  else:
    base = config.t_mode[-1]
    fresh = pareto_masses(rng, len(probs[base]), config.alpha_t)
    leaves["t"] = leaves[base].copy()
    probs["t"] = (1 - config.near_mix) * probs[base] + config.near_mix * fresh
  for name in NAMES:   # sort every support by its integer key, for searchsorted lookups
    order = np.argsort(_keys(leaves[name], config.vocab_size))
    leaves[name], probs[name] = leaves[name][order], probs[name][order]
  return World(config, leaves, probs)
