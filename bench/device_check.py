"""The GPU subset of the project on one accelerator, each check against the same code on the CPU.

    python bench/device_check.py [--rehearse]

Run by bench/device_check.sh (which adds the MFU runs and the time limits). Every check prints one
line ``check <name> <ok|FAIL> <detail>``; the exit status is the number of failed checks.

* ``attention``: the decoder's forward with ``attention_impl="cudnn"`` (cuDNN flash attention) vs
  ``"xla"`` on the same inputs, bf16 compute (on a CPU rehearsal both are XLA).
* ``train_step``: one bf16-compute / float32-master-weights SFT step (`make_train_step`, the
  one-device mesh, microbatches 2) on the device vs the same step in float32 on the CPU backend of the
  same process: loss and gradient norm within bf16's error.
* ``generate``: greedy float32 decoding on the device vs the CPU: the same tokens.
* ``compression``: `code_lengths` (the compression kernel) in float32 on the device vs the CPU.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]
sys.path.insert(0, str(_HERE.parent))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from flax import nnx  # noqa: E402

from elasticity import compile_cache, sharding as shd  # noqa: E402
from elasticity.compression.kernel import code_lengths  # noqa: E402
from elasticity.models import ModelConfig, abstract_model  # noqa: E402
from elasticity.models.generate import generate  # noqa: E402
from elasticity.train.losses import Objective  # noqa: E402
from elasticity.train.optimizer import make_optimizer  # noqa: E402
from elasticity.train.step import (batch_shardings, init_train_state, make_train_step,  # noqa: E402
                                   split_params, state_shardings)

REHEARSE = "--rehearse" in sys.argv[1:]
# A small Llama, big enough for cuDNN's kernels (head_dim 64); one smaller layer for the CPU rehearsal.
CFG = (ModelConfig(family="llama", vocab_size=256, hidden_size=64, intermediate_size=128, num_layers=1,
                   num_heads=2, num_kv_heads=1, head_dim=32) if REHEARSE else
       ModelConfig(family="llama", vocab_size=512, hidden_size=128, intermediate_size=256, num_layers=2,
                   num_heads=2, num_kv_heads=1, head_dim=64))
B, T = (4, 32) if REHEARSE else (8, 256)


def batch(seed: int = 0) -> dict[str, np.ndarray]:
  ids = np.random.default_rng(seed).integers(0, CFG.vocab_size, (B, T)).astype(np.int32)
  return {"input_ids": ids, "loss_mask": np.ones_like(ids), "attention_mask": np.ones_like(ids),
          "positions": np.broadcast_to(np.arange(T, dtype=np.int32), (B, T)).copy()}


def model_on(dev, dtype=jnp.float32, attention_impl: str = "xla"):
  """The check model on ``dev``: N(0, 0.05) weights drawn on the host (no initialiser to compile),
  float32 master weights, ``dtype`` compute."""
  graphdef, abstract = nnx.split(abstract_model(CFG, dtype=dtype, param_dtype=jnp.float32,
                                                attention_impl=attention_impl))
  rng = np.random.default_rng(0)
  values = jax.tree.map(lambda x: np.asarray(rng.normal(0.0, 0.05, x.shape), x.dtype), abstract)
  return nnx.merge(graphdef, jax.device_put(values, dev))


def check_attention(dev) -> str:
  ids = batch()["input_ids"]
  out = {}
  for impl in ("xla", "cudnn"):
    model = model_on(dev, jnp.bfloat16, impl if not REHEARSE else "xla")
    with jax.default_device(dev):
      out[impl] = np.asarray(jax.jit(lambda m, x: m(x))(model, ids), np.float32)
  err = float(np.max(np.abs(out["cudnn"] - out["xla"])) / np.max(np.abs(out["xla"])))
  # bf16 compute: two orderings of the same sums differ by a few bf16 ulps (2^-8) of the largest logit
  assert err < 2e-2, f"max |cudnn - xla| / max |xla| = {err:.3g}"
  return f"max|cudnn-xla|/max|xla| {err:.2e}"


def train_once(dev, dtype) -> tuple[float, float]:
  mesh = shd.make_mesh(1, 1, 1, devices=[dev])
  with jax.default_device(dev):
    model = model_on(dev, dtype)
    graphdef, params = split_params(model)
    tx, schedule = make_optimizer({"name": "adamw", "lr": 1e-3, "weight_decay": 0.0, "clip_norm": 1.0}, 10)
    _, sh = state_shardings(model, tx, mesh)
    state = init_train_state(params, tx, sh, seed=0)
    host = batch(1)
    step = make_train_step(graphdef, Objective("sft"), tx, schedule, mesh, sh, batch_shardings(host, mesh),
                           num_microbatches=2)
    _, metrics = step(state, shd.global_batch(host, mesh))
    return float(metrics["loss"]), float(metrics["grad_norm"])


def check_train_step(dev, cpu) -> str:
  loss, gnorm = train_once(dev, jnp.bfloat16)
  ref_loss, ref_gnorm = train_once(cpu, jnp.float32)
  dl, dg = abs(loss - ref_loss) / ref_loss, abs(gnorm - ref_gnorm) / ref_gnorm
  # bf16 activations (8-bit mantissa) through 2 layers: a few 2^-8 relative on the loss
  assert dl < 2e-2 and dg < 1e-1, f"loss {loss} vs {ref_loss}, grad norm {gnorm} vs {ref_gnorm}"
  return f"loss {loss:.5f} vs f32 CPU {ref_loss:.5f} (rel {dl:.1e}); grad norm rel {dg:.1e}"


def check_generate(dev, cpu) -> str:
  prompts = [list(range(1, 9)), list(range(20, 25))]
  got = {}
  for name, d in (("dev", dev), ("cpu", cpu)):
    with jax.default_device(d):
      got[name] = generate(model_on(d), prompts, max_new_tokens=8).tokens
  assert got["dev"] == got["cpu"], f"{got['dev']} vs {got['cpu']}"
  return f"{sum(map(len, got['dev']))} greedy tokens equal"


def check_compression(dev, cpu) -> str:
  rows = batch(2)
  seg = np.ones((B, T), np.int32)
  got = {}
  for name, d in (("dev", dev), ("cpu", cpu)):
    with jax.default_device(d):
      graphdef, state = nnx.split(model_on(d))
      fn = jax.jit(lambda s, *a: code_lengths(nnx.merge(graphdef, s), *a))
      bits, counts = fn(state, rows["input_ids"], rows["loss_mask"], seg, rows["positions"])
      got[name] = (np.asarray(bits, np.float64), np.asarray(counts))
  assert (got["dev"][1] == got["cpu"][1]).all()
  rel = float(np.max(np.abs(got["dev"][0] - got["cpu"][0]) / got["cpu"][0]))
  assert rel < 1e-4, f"bits differ by {rel:.3g} (relative)"      # float32 sums over T·V terms
  return f"bits rel diff {rel:.1e} over {int(got['cpu'][1].sum())} tokens"


def main() -> int:
  compile_cache.enable()
  cpu = jax.devices("cpu")[0]
  dev = cpu if REHEARSE else jax.devices()[0]
  print(f"check env ok jax {jax.__version__} on {dev.device_kind} ({dev.platform})"
        f"{' (rehearsal)' if REHEARSE else ''}", flush=True)
  failed = 0
  checks = [("attention", lambda: check_attention(dev)), ("train_step", lambda: check_train_step(dev, cpu)),
            ("generate", lambda: check_generate(dev, cpu)),
            ("compression", lambda: check_compression(dev, cpu))]
  for name, fn in checks:
    t0 = time.perf_counter()
    try:
      detail, ok = fn(), "ok"
    except Exception as e:  # noqa: BLE001 — each check reports its own failure and the next runs
      detail, ok = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}", "FAIL"
      failed += 1
    print(f"check {name} {ok} {detail} ({time.perf_counter() - t0:.1f} s)", flush=True)
  return failed


if __name__ == "__main__":
  sys.exit(main())
