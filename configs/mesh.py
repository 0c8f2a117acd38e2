"""Mesh presets: (data, fsdp, tensor) sizes for one GPU, one 8-GPU node, and TPU v4 / v5 pod slices.

``-1`` takes the rest of the devices, so a preset also fits a larger job of the same kind (several
8-GPU nodes under SLURM: fsdp spans them all). Multi-slice TPU jobs set ``dcn_data`` to the number of
slices: the data axis then crosses the data-centre network and fsdp/tensor stay on ICI.
"""

from __future__ import annotations

import ml_collections

PRESETS = {
    # laptop / CI: all (fake) CPU devices on fsdp
    "cpu": dict(data=1, fsdp=-1, tensor=1),
    # one GPU: everything on one device
    "gpu1": dict(data=1, fsdp=1, tensor=1),
    # one 8-GPU node (or N nodes): ZeRO-3-style FSDP over every GPU
    "gpu8": dict(data=1, fsdp=-1, tensor=1),
    # 8 GPUs with 2-way tensor parallelism inside NVLink pairs (13B at long sequence lengths)
    "gpu8_tp2": dict(data=1, fsdp=-1, tensor=2),
    # TPU v4-32 / v5p-32 slice (16 chips): FSDP over the slice
    "tpu_v4": dict(data=1, fsdp=-1, tensor=1),
    "tpu_v5p": dict(data=1, fsdp=-1, tensor=1),
    # TPU v5e-16 (16 chips, 16 GiB HBM each): FSDP × 2-way tensor parallel
    "tpu_v5e": dict(data=1, fsdp=-1, tensor=2),
    # two v5e-256 slices over DCN: data parallel across slices, FSDP within
    "tpu_v5e_2slices": dict(data=2, fsdp=-1, tensor=1, dcn_data=2),
}


def get(name: str) -> dict:
  if name not in PRESETS:
    raise ValueError(f"unknown mesh preset {name!r}; known: {', '.join(PRESETS)}")
  return dict(PRESETS[name])


def apply(cfg: ml_collections.ConfigDict, name: str) -> None:
  """Set ``cfg.mesh`` to a preset (other mesh keys back to their defaults)."""
  values = dict(data=1, fsdp=-1, tensor=1, dcn_data=1, dcn_fsdp=1, dcn_tensor=1)
  values.update(get(name))
  for k, v in values.items():
    cfg.mesh[k] = v


def get_config(arg: str = "cpu") -> ml_collections.ConfigDict:
  """So ``--config=configs/mesh.py:gpu8`` prints a preset (debugging aid)."""
  return ml_collections.ConfigDict(get(arg))
