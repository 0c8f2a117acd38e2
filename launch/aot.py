"""Compile a training config for a TPU pod slice on this (CPU) machine, and say whether it fits.

    python -m launch.aot --config=configs/sft.py:llama2-7b,alpaca,base --topology=v5p-64
    python -m launch.aot --config=configs/sft.py:llama2-7b,alpaca,base --topology=v5e-4    # exit 3
    python -m launch.aot --config=configs/sft.py:gemma-2b --topology=v5e-16 --what=measure

Builds the config's model, optimizer, objective and train step (or the compression kernel, the
generation loop or the KL evaluator: ``--what``) from shapes alone — no weights, no data — on the
slice's abstract devices (`elasticity.aot`), compiles the real TPU executable with libtpu (``pip
install -e '.[aot]'``) and prints per chip: arguments, temporaries, outputs, aliased (donated) bytes,
generated code, the total against the chip's HBM, the FLOPs and a predicted step time at ``--mfu``.
The last line is ``hbm_per_chip_gb <used> <capacity>`` (GiB, used = arguments + temporaries + outputs
− aliased). Exit 0 when it fits, 3 when it does not (one line naming the knobs that would help).

The mesh: ``--mesh=<preset of configs/mesh.py>``; by default the slice's own preset (tpu_v4,
tpu_v5p, tpu_v5e; multi-slice: data parallel over the slices), its batch axes cut down when one
microbatch's rows do not split over them (the rest goes to tensor parallelism; the table says so).
The model: the config's checkpoint directory names its preset (`configs.models.preset_of_path`);
``--model=<preset>`` names one outright.
"""

from __future__ import annotations

import os
import sys
import time

import jax
from absl import flags

from configs import mesh as mesh_presets
from configs import models as model_presets
from elasticity.aot import memory, programs, topologies
from elasticity.models.presets import preset_config, preset_names
from elasticity.train import config as config_lib
from elasticity.train.init import dtypes
from launch import app

EXIT_FITS, EXIT_DOES_NOT_FIT = 0, 3

# Compiling for a topology holds no TPU: several of these (and a test process) may load libtpu at once.
os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
NATURAL = {"v4": "tpu_v4", "v5p": "tpu_v5p", "v5e": "tpu_v5e"}

_CONFIG = app.config_file("config", None, "Training config file (configs/<x>.py:<variant>).")
_TOPOLOGY = flags.DEFINE_string("topology", None, "TPU slice: v4-8 … v5p-128, v5e-4 … v5e-256, "
                                "with xN for N slices (v5e-256x2).")
_WHAT = flags.DEFINE_enum("what", "train", programs.WHATS, "Which program to compile.")
_MESH = flags.DEFINE_string("mesh", "", "Mesh preset of configs/mesh.py (default: the slice's own).")
_MODEL = flags.DEFINE_string("model", "", "Model preset (default: from config.model).")
_MFU = flags.DEFINE_float("mfu", 0.4, "Model FLOPs utilisation the predicted step time assumes.")
_BATCH = flags.DEFINE_integer("batch", 0, "Rows per call of measure/generate/kl (default: the "
                              "global batch size).")
_LENGTH = flags.DEFINE_integer("length", 0, "Row length of measure/kl, prompt length of generate "
                               "(default: data.max_length).")
_NEW_TOKENS = flags.DEFINE_integer("new_tokens", 128, "Tokens generate decodes.")
flags.mark_flags_as_required(["config", "topology"])


def model_config(cfg):
  name = _MODEL.value or cfg.model.random_init or model_presets.preset_of_path(cfg.model.path)
  if not name or name not in preset_names():
    raise app.UsageError(f"--model: cannot tell the model preset of config.model.path="
                         f"{cfg.model.path!r}; name one of {', '.join(preset_names())}")
  return name, preset_config(name)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  cfg = _CONFIG.value
  try:
    config_lib.validate(cfg)
    topo = topologies.parse(_TOPOLOGY.value)
    preset = mesh_presets.get(_MESH.value or NATURAL[topo.generation])
  except ValueError as e:
    raise app.UsageError(str(e)) from None
  if topo.num_slices > 1 and not _MESH.value:
    preset = dict(preset, data=topo.num_slices, dcn_data=topo.num_slices)
  name, mcfg = model_config(cfg)
  rows = int(cfg.train.global_batch_size) // int(cfg.train.num_microbatches)
  batch = _BATCH.value or int(cfg.train.global_batch_size)
  length = _LENGTH.value or int(cfg.data.max_length)
  try:
    sizes, note = programs.mesh_sizes(preset, topo.chips, rows if _WHAT.value == "train" else batch)
    mesh = programs.make_mesh(topologies.devices(topo), sizes)
    dtype = dtypes(cfg)[0]
    if _WHAT.value == "train":
      program = programs.train_program(cfg, mcfg, mesh)
    elif _WHAT.value == "measure":
      program = programs.measure_program(mcfg, mesh, batch=batch, length=length, dtype=dtype)
    elif _WHAT.value == "generate":
      program = programs.generate_program(mcfg, mesh, batch=batch, prompt_length=length,
                                          new_tokens=_NEW_TOKENS.value, dtype=dtype)
    else:
      program = programs.kl_program(mcfg, mesh, batch=batch, length=length, dtype=dtype)
  except ValueError as e:
    print(f"FATAL: {e}", file=sys.stderr, flush=True)
    sys.exit(app.EXIT_ERROR)
  program.note = note
  print(f"{_WHAT.value} of {name} ({cfg.model.dtype} compute, {cfg.model.param_dtype} params, remat "
        f"{cfg.model.remat}, batch {cfg.train.global_batch_size} × {length}, "
        f"{cfg.train.num_microbatches} microbatches, layers {'scanned' if program.scanned else 'unrolled'})"
        f" for {topo.name}, mesh {dict(mesh.shape)}"
        + (f"\n  note: {note}" if note else ""), flush=True)
  t0 = time.perf_counter()
  try:
    u = memory.usage(program.compile(), topo, program)
  except jax.errors.JaxRuntimeError as e:     # XLA refuses a program over the chip's HBM
    u = memory.out_of_memory(e, topo, program)
    if u is None:
      raise
    print(f"XLA: {str(e).splitlines()[0]}")
    print(f"  arguments    {u.arguments / topologies.GIB:9.3f} GiB per chip (from their shardings); "
          f"XLA's required total is the 'used' below")
  else:
    print("\n".join(memory.table(u, topo, program, _MFU.value)))
  print(f"lowered and compiled in {time.perf_counter() - t0:.1f} s")
  if not u.fits:
    print(f"does not fit: {memory.knobs(u, program)}")
  print(f"hbm_per_chip_gb {u.used / topologies.GIB:.3f} {topo.chip.hbm_gib:g}", flush=True)
  sys.exit(EXIT_FITS if u.fits else EXIT_DOES_NOT_FIT)


if __name__ == "__main__":
  app.run(main, cache=False, threefry=True)
