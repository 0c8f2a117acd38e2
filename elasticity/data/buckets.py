"""Padded row lengths: the few fixed shapes variable-length rows are padded to (one compilation each).

Used by the compression rate's batch plan (`elasticity.compression.batches`) and the exact KL of
generated tokens (`elasticity.eval.kl`).
"""

from __future__ import annotations


def length_buckets(max_length: int, smallest: int = 32) -> tuple[int, ...]:
  """Padded row lengths up to ``max_length``, each at most 4/3 of the one before from 128 on:
  32, 64, 96, 128, 160, 192, 224, 256, 320, 384, 448, 512, 640, ... (padding waste ≤ 25%)."""
  out, n = [], smallest
  while n < max_length:
    out.append(n)
    power = 1 << (n.bit_length() - 1)
    n += max(smallest, power // 4)
  return tuple(out) + (max_length,)


__all__ = ["length_buckets"]
