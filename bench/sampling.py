"""The sampler of `generate`: the two-level inverse-CDF draw against the Gumbel-max draw it replaced.

    python bench/sampling.py [--rounds=3] [--steps=10]

Two measurements in one process, alternating rounds (gumbel, inverse_cdf, gumbel, …), best round:
1. one sampling step on the rebound preset's shape (50 rows × SmolLM2's 49,152-token vocabulary,
   temperature 1, top-p 1), jitted, fastest of ``--steps`` calls;
2. ``generate`` on SmolLM2-135M-Instruct (the wheel's GGUF, float32): 50 prompts of 8 tokens, 48 new
   tokens, temperature 1 (the `smollm2` rebound preset's evaluation batch), warm (compiled before the
   clock), fastest of 2 calls per round; the lm head alone on the same rows, for scale.
Both samplers draw exactly from the softmax (tests/test_sampling.py); their continuations differ for
one seed because their random numbers do. Ends with ``ratio sampling_step_gumbel_vs_inverse_cdf x``
and ``ratio generate_smollm2_gumbel_vs_inverse_cdf x`` (time of Gumbel / time of ours).
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != ROOT / "bench"]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("JAX_PLATFORMS", "cpu")

from absl import app, flags  # noqa: E402

_ROUNDS = flags.DEFINE_integer("rounds", 3, "Alternating rounds (best reported).")
_STEPS = flags.DEFINE_integer("steps", 10, "Timed sampling-step calls per round.")

BATCH, PROMPT, NEW = 50, 8, 48


def _best(fn, n: int) -> float:
  ts = []
  for _ in range(n):
    t = time.perf_counter()
    fn()
    ts.append(time.perf_counter() - t)
  return min(ts)


def main(argv):
  del argv
  import jax
  import jax.numpy as jnp
  import numpy as np

  from elasticity import convert, paths
  from elasticity.models import generate as gen

  model = convert.load_pretrained(os.fspath(paths.smollm2_gguf()))
  vocab = model.config.vocab_size
  logits = jax.random.normal(jax.random.key(0), (BATCH, vocab)) * 3.0
  step = {m: jax.jit(lambda k, l, m=m: gen.sample_logits(l, k, 1.0, 1.0, m)) for m in gen.METHODS}
  rng = np.random.default_rng(0)
  prompts = [rng.integers(1, 1000, size=PROMPT).tolist() for _ in range(BATCH)]
  h = jax.random.normal(jax.random.key(1), (BATCH, model.config.hidden_size))
  head = jax.jit(lambda h: model.logits_from_hidden(h))

  def run_step(m):
    return lambda: step[m](jax.random.key(1), logits).block_until_ready()

  def run_gen(m):
    return lambda: gen.generate(model, prompts, max_new_tokens=NEW, temperature=1.0, seed=0, method=m)

  for m in gen.METHODS:                       # compile outside the clock
    run_step(m)()
    run_gen(m)()
  head(h).block_until_ready()
  best = {(k, m): float("inf") for k in ("step", "generate") for m in gen.METHODS}
  for _ in range(_ROUNDS.value):
    for m in gen.METHODS:
      best["step", m] = min(best["step", m], _best(run_step(m), _STEPS.value))
      best["generate", m] = min(best["generate", m], _best(run_gen(m), 2))
  head_s = _best(lambda: head(h).block_until_ready(), _STEPS.value)
  steps = gen.generate(model, prompts, max_new_tokens=NEW, temperature=1.0, seed=0)
  n_steps = max(len(t) for t in steps.tokens)
  print(f"{os.cpu_count()} CPUs, jax {jax.__version__}, load average {os.getloadavg()[0]:.2f} at the end")
  print(f"{'what':<44} {'gumbel ms':>10} {'inverse_cdf ms':>15} {'gumbel / ours':>14}")
  for k, label in (("step", f"sampling step [{BATCH}, {vocab}]"),
                   ("generate", f"generate {BATCH} x {PROMPT}+{NEW} (ms per new token)")):
    g, o = best[k, "gumbel"], best[k, "inverse_cdf"]
    div = n_steps if k == "generate" else 1
    print(f"{label:<44} {1e3 * g / div:>10.2f} {1e3 * o / div:>15.2f} {g / o:>14.3f}")
  print(f"{'lm head alone [' + str(BATCH) + ', ' + str(vocab) + '] (scale)':<44} {1e3 * head_s:>10.2f}")
  print(f"ratio sampling_step_gumbel_vs_inverse_cdf {best['step', 'gumbel'] / best['step', 'inverse_cdf']:.4g}")
  print(f"ratio generate_smollm2_gumbel_vs_inverse_cdf "
        f"{best['generate', 'gumbel'] / best['generate', 'inverse_cdf']:.4g}")


if __name__ == "__main__":
  app.run(main)
