"""The KL's vocabulary-wide step: `elasticity.eval.kl.kl_terms` against two log-softmaxes.

    python bench/kl_terms.py [--rounds=3] [--chunks=38]

What one rebound evaluation point of the `smollm2` preset does after the forwards: for each of ~4,800
scored positions, two [576] activations are projected onto SmolLM2's 49,152-token vocabulary and the
exact KL(p‖r) is summed over it, 128 positions at a time inside a ``lax.map`` (as
`elasticity.eval.kl` runs it). Both sides run that same jitted structure on the same activations and
unembeddings (seeded Gaussian, the real shapes), alternating in one process, 2-D [positions, V] rows:

- **two log-softmaxes** (the form of the project before 2026-12-06 and of the torch reference):
  ``Σ exp(lp) (lp − lr)``, lp, lr = log_softmax(z_p), log_softmax(z_r);
- **kl_terms** (ours): ``E_p[d] + log E_p[exp(−d)]``, d = z_p − z_r.

Accuracy: each side's per-position
KL against float64 on the same float32 logits (first 4 chunks). Ends with
``ratio kl_terms_vs_two_log_softmax <two-log-softmax s / kl_terms s>`` (fastest of the rounds).
"""

from __future__ import annotations

import os
import platform
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# bench/ holds a compression.py: off the path, or it shadows the stdlib's `compression` jax imports
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != ROOT / "bench"]
sys.path.insert(0, str(ROOT))

from absl import app, flags  # noqa: E402

_ROUNDS = flags.DEFINE_integer("rounds", 3, "Alternating rounds (the fastest of each side is kept).")
_CHUNKS = flags.DEFINE_integer("chunks", 38, "Chunks of 128 positions (38: one point's ~4,800).")

V, D, C = 49152, 576, 128
SECTION = "KL terms (bench/kl_terms.py)"


def main(_):
  import jax
  import jax.numpy as jnp
  import numpy as np

  from elasticity.eval.kl import kl_terms

  rng = np.random.default_rng(0)
  w_p = jnp.asarray(rng.normal(0, 0.05, (D, V)), jnp.float32)
  w_r = w_p + jnp.asarray(rng.normal(0, 0.02, (D, V)), jnp.float32)
  h_p = jnp.asarray(rng.normal(0, 1, (_CHUNKS.value, C, D)), jnp.float32)
  h_r = h_p + jnp.asarray(rng.normal(0, 0.3, h_p.shape), jnp.float32)

  def two_log_softmax(zp, zr):
    lp, lr = jax.nn.log_softmax(zp, axis=-1), jax.nn.log_softmax(zr, axis=-1)
    return jnp.sum(jnp.exp(lp) * (lp - lr), axis=-1)

  def mapped(terms):
    return jax.jit(lambda hp, hr: jax.lax.map(lambda ab: terms(ab[0] @ w_p, ab[1] @ w_r), (hp, hr)))

  sides = {"two log-softmaxes": mapped(two_log_softmax), "kl_terms (ours)": mapped(kl_terms)}
  for fn in sides.values():
    fn(h_p, h_r).block_until_ready()
  times = {k: [] for k in sides}
  for _ in range(_ROUNDS.value):
    for name, fn in sides.items():
      t = time.perf_counter()
      fn(h_p, h_r).block_until_ready()
      times[name].append(time.perf_counter() - t)

  k = min(4, _CHUNKS.value)
  zp = np.asarray(h_p[:k], np.float64) @ np.asarray(w_p, np.float64)
  zr = np.asarray(h_r[:k], np.float64) @ np.asarray(w_r, np.float64)
  lp = zp - zp.max(-1, keepdims=True)
  lp -= np.log(np.exp(lp).sum(-1, keepdims=True))
  lr = zr - zr.max(-1, keepdims=True)
  lr -= np.log(np.exp(lr).sum(-1, keepdims=True))
  want = np.sum(np.exp(lp) * (lp - lr), -1)
  err = {name: float(np.max(np.abs(np.asarray(sides[name](h_p[:k], h_r[:k]), np.float64) - want)))
         for name in ("two log-softmaxes", "kl_terms (ours)")}

  from bench.common import print_table, ratio, record

  load = os.getloadavg()[0]
  head = (f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, Python "
          f"{sys.version.split()[0]}, jax {jax.__version__}; {_CHUNKS.value} chunks × {C} positions × "
          f"{V} tokens, D = {D}; {_ROUNDS.value} alternating rounds; 1-minute load average after: "
          f"{load:.2f}. Mean KL per position {want.mean():.4f} nats.")
  print(head)
  table = print_table([{"what": name, "fastest s": min(ts), "median s": float(np.median(ts)),
                        "max abs error vs float64 (nats, per position)": err[name]}
                       for name, ts in times.items()])
  line = ratio("kl_terms_vs_two_log_softmax",
               min(times["two log-softmaxes"]) / min(times["kl_terms (ours)"]))
  record(SECTION, f"{head}\n\n{table.strip()}\n\n`{line}`")


if __name__ == "__main__":
  app.run(main)
