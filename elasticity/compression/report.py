"""What a compression measurement reports: sums and counts, every rate one division; Δγ between two.

`CompressionReport` holds the bits (Σ −log₂ p over scored response tokens), tokens, UTF-8 bytes and
examples of one model on one dataset; bits/token, bits/byte, nats/token and the normalized rate are
derived from them, and reports of parts of a dataset merge by adding. `CompressionDelta` is Δγ
between two checkpoints on the same data (``after.delta(before)``).

The normalized compression rate γ^{D_i/D} is defined here, once, for the measured kernel and the
theory lab (`elasticity.theory`). The paper writes γ^{D_i/D} = γ − log M, M the number of leaves of
the pruned token tree: the rate of a code that knows nothing beyond the tree's support (uniform over
its M leaves) is subtracted. Per token, a uniform code over M leaves of depth d costs log₂(M)/d bits
a token, so

    normalized_rate(bits_per_token, log2_support) = bits_per_token − log2_support

with ``log2_support`` the per-token log₂ of the support: log₂ V for a next-token model over a
vocabulary of V tokens (`CompressionReport.normalized`: the pruned tree of depth 1 has V leaves),
log₂(M)/d for a tree of M leaves pruned at depth d (`elasticity.theory.rates`). Which M (the
dataset's own leaves, the joint tree's, the vocabulary's V^d) is a choice the paper leaves open:
``NORMALIZATIONS`` names them; docs/theory.md §3.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

import numpy as np

LN2 = math.log(2.0)

# own: the leaves of D_i's own (pruned) tree; joint: the leaves of the joint model's (pruned) tree;
# vocab: every sequence of d tokens over the vocabulary (V^d leaves: log₂ V per token).
NORMALIZATIONS = ("own", "joint", "vocab")


def normalized_rate(bits_per_token, log2_support):
  """γ^{D_i/D} = bits/token − (per-token log₂ of the support). Scalars or numpy arrays."""
  if np.ndim(bits_per_token) == 0 and np.ndim(log2_support) == 0:
    return float(bits_per_token) - float(log2_support)
  return np.asarray(bits_per_token, np.float64) - np.asarray(log2_support, np.float64)


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
    """γ^{D_i/D} = bits/token − log₂ V (`normalized_rate`, the theory lab's definition too)."""
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


__all__ = ["LN2", "NORMALIZATIONS", "CompressionDelta", "CompressionReport", "normalized_rate"]
