"""GGUF load time: `elasticity.convert.load_pretrained` (direct reader) against transformers'
``AutoModelForCausalLM.from_pretrained(folder, gguf_file=...)``, on SmolLM2-135M-Instruct Q4_1.

    python bench/gguf_load.py [--repeats=2]

Each run is a fresh process (nothing cached in memory; the file itself is in the OS page cache after
the first run, for both sides alike); the clock runs around the load call only, after the imports.
The sides alternate (ours, transformers, ours, …) so that other load on a shared machine hits both
alike; reported: the fastest and the median per side, and our time split into header parse,
dequantization (`read_gguf`) and building the Flax model (`model_from_tensors`, of which
`abstract_model`: the shapes, traced by `nnx.eval_shape`). Ends with ``ratio gguf_load <number>``
(transformers' fastest over ours).
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("TQDM_DISABLE", "1")
_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]
sys.path.insert(0, str(_HERE.parent))

from absl import app, flags  # noqa: E402

_REPEATS = flags.DEFINE_integer("repeats", 2, "Timed loads per side (alternating, one process each).")
_CHILD = flags.DEFINE_enum("child", None, ["ours", "transformers"], "Internal: time one load.")


def _child(side: str) -> dict:
  from elasticity import paths
  path = paths.smollm2_gguf()
  if side == "transformers":
    import torch
    import transformers
    t0 = time.perf_counter()
    transformers.AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name,
                                                      dtype=torch.float32)
    return {"seconds": time.perf_counter() - t0}
  import jax.numpy as jnp
  from elasticity.convert import gguf as ggufr
  from elasticity.convert import load_pretrained
  from elasticity.convert.params import model_from_tensors
  from elasticity.models.registry import abstract_model, config_from_hf
  t0 = time.perf_counter()
  model = load_pretrained(path)
  total = time.perf_counter() - t0
  del model
  # the phases, in the same process (header now cached, so it is timed on a fresh parse)
  t = time.perf_counter()
  ggufr._read_header.cache_clear()
  ggufr.read_header(path)
  header = time.perf_counter() - t
  t = time.perf_counter()
  cfg_dict, tensors = ggufr.read_gguf(path)
  read = time.perf_counter() - t
  cfg = config_from_hf(cfg_dict)
  from elasticity.models import registry
  registry._abstract_parts.cache_clear()   # load_pretrained above filled it: time a fresh build
  t = time.perf_counter()
  abstract_model(cfg, dtype=jnp.float32)
  abstract = time.perf_counter() - t
  t = time.perf_counter()
  model_from_tensors(cfg, tensors.keys(), tensors.__getitem__, dtype=jnp.float32)
  build = time.perf_counter() - t
  return {"seconds": total, "header": header, "read_gguf": read, "model_from_tensors": build,
          "abstract_model": abstract}


def main(argv):
  del argv
  if _CHILD.value:
    print(json.dumps(_child(_CHILD.value)), flush=True)
    return
  from bench.common import environment, print_table, ratio, record
  runs: dict[str, list[dict]] = {"ours": [], "transformers": []}
  loads = []
  for r in range(_REPEATS.value):
    for side in runs:
      loads.append(os.getloadavg()[0])
      out = subprocess.run([sys.executable, __file__, f"--child={side}"], capture_output=True,
                           text=True, check=False, env={**os.environ, "JAX_PLATFORMS": "cpu"})
      if out.returncode:
        raise SystemExit(f"{side} run failed:\n{out.stderr[-3000:]}")
      runs[side].append(json.loads(out.stdout.strip().splitlines()[-1]))
      print(f"round {r + 1} {side}: {runs[side][-1]['seconds']:.2f} s", flush=True)
  rows = []
  for side, name in (("ours", "elasticity.convert.load_pretrained (direct GGUF reader)"),
                     ("transformers", "transformers from_pretrained(gguf_file=...)")):
    secs = [x["seconds"] for x in runs[side]]
    rows.append({"loader": name, "fastest s": min(secs), "median s": statistics.median(secs),
                 "runs": len(secs)})
  table = print_table(rows)
  phases = [{"phase": k, "seconds (fastest run)": min(x[k] for x in runs["ours"])}
            for k in ("header", "read_gguf", "model_from_tensors", "abstract_model")]
  phase_table = print_table(phases)
  speedup = rows[1]["fastest s"] / rows[0]["fastest s"]
  line = ratio("gguf_load", speedup)
  record("GGUF load (bench/gguf_load.py)",
         f"{environment()}; SmolLM2-135M-Instruct Q4_1 (98 MB), float32 parameters; one fresh process "
         f"per load, clock around the load call only; load averages before the runs: "
         f"{', '.join(f'{x:.2f}' for x in loads)}.\n\n{table}\nOur load by phase (`read_gguf` = header + "
         f"dequantization; `model_from_tensors` includes `abstract_model`):\n\n{phase_table}\n"
         f"`{line}`\n")


if __name__ == "__main__":
  app.run(main)
