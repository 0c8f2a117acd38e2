"""TPU slices by the names users type (``v4-8`` … ``v5p-128``, ``v5e-4`` … ``v5e-256``, ``…xN`` slices).

The name counts TensorCores on v4 and v5p (two per chip: ``v5p-64`` is 32 chips) and chips on v5e
(``v5e-16`` is 16 chips). `parse` maps a name to the chip grid `jax.experimental.topologies` wants
(``v5:2x4x4``), the host bounds and wrap-around links of that slice shape, and the chip's HBM and peak
bf16 FLOP rate (Google Cloud's published figures). `devices` returns the slice's abstract devices: a
`jax.jit(...).lower(...).compile()` over a mesh of them yields the real TPU executable, on a CPU host,
provided ``libtpu`` is installed (the ``aot`` extra).
"""

from __future__ import annotations

import dataclasses
import re

from jax.experimental import topologies as jax_topologies

GIB = 2 ** 30


@dataclasses.dataclass(frozen=True)
class Chip:
  """One TPU generation: how its slice names count, its HBM and its peak bf16 rate per chip."""
  prefix: str                 # the generation in `get_topology_desc` names ("v4", "v5", "v5e")
  cores_per_name_unit: int    # 2: names count TensorCores (v4, v5p); 1: names count chips (v5e)
  hbm_gib: float              # HBM per chip
  peak_tflops: float          # dense bf16, per chip
  chip_config: str            # "megacore" (two cores as one device) or "default"
  dims: int                   # 3-D torus (v4, v5p) or 2-D (v5e)


CHIPS = {
    "v4": Chip("v4", 2, 32.0, 275.0, "megacore", 3),
    "v5p": Chip("v5", 2, 95.0, 459.0, "megacore", 3),
    "v5e": Chip("v5e", 1, 16.0, 197.0, "default", 2),
}

# Chip grids of the slice shapes Google Cloud offers, by chip count. A full 4×4×4 cube (and larger)
# has wrap-around links on every axis; on v5e the 8×16 and 16×16 slices wrap their long axes.
_GRID_3D = {4: (2, 2, 1), 8: (2, 2, 2), 16: (2, 2, 4), 32: (2, 4, 4), 64: (4, 4, 4), 128: (4, 4, 8)}
_GRID_2D = {4: (2, 2), 8: (2, 4), 16: (4, 4), 32: (4, 8), 64: (8, 8), 128: (8, 16), 256: (16, 16)}
_WRAP_2D = {128: (False, True, False), 256: (True, True, False)}

_NAME = re.compile(r"^(v4|v5p|v5e)-(\d+)(?:x(\d+))?$")


class TopologyError(ValueError):
  """A slice name this table does not know (the message lists the known ones)."""


@dataclasses.dataclass(frozen=True)
class Topology:
  name: str                   # as typed: "v5p-64", "v5e-256x2"
  chip: Chip
  chips_per_slice: int
  grid: tuple[int, ...]
  num_slices: int = 1

  @property
  def chips(self) -> int:
    return self.chips_per_slice * self.num_slices

  @property
  def generation(self) -> str:
    return self.name.split("-")[0]

  @property
  def topology_name(self) -> str:
    """The name `jax.experimental.topologies.get_topology_desc` takes: ``v5:2x4x4``."""
    return f"{self.chip.prefix}:{'x'.join(map(str, self.grid))}"

  @property
  def wrap(self) -> tuple[bool, bool, bool]:
    if self.chip.dims == 2:
      return _WRAP_2D.get(self.chips_per_slice, (False, False, False))
    return (True, True, True) if self.chips_per_slice >= 64 else (False, False, False)

  @property
  def hbm_bytes(self) -> int:
    return int(self.chip.hbm_gib * GIB)


def known_names() -> list[str]:
  out = []
  for gen, chip in CHIPS.items():
    grids = _GRID_3D if chip.dims == 3 else _GRID_2D
    out += [f"{gen}-{n * chip.cores_per_name_unit}" for n in sorted(grids)]
  return out


def parse(name: str) -> Topology:
  """``v5p-64`` → 32 v5p chips on a 2×4×4 grid; ``v5e-256x2`` → two 256-chip v5e slices."""
  m = _NAME.match(name.strip().lower())
  if not m:
    raise TopologyError(f"--topology={name!r}: not <v4|v5p|v5e>-<size>[x<slices>]; known sizes: "
                        f"{', '.join(known_names())}")
  gen, size, slices = m.group(1), int(m.group(2)), int(m.group(3) or 1)
  chip = CHIPS[gen]
  grids = _GRID_3D if chip.dims == 3 else _GRID_2D
  chips = size // chip.cores_per_name_unit
  if size % chip.cores_per_name_unit or chips not in grids:
    raise TopologyError(f"--topology={name!r}: no {gen} slice of that size; known: "
                        f"{', '.join(n for n in known_names() if n.startswith(gen + '-'))}")
  if slices < 1:
    raise TopologyError(f"--topology={name!r}: the number of slices must be at least 1")
  return Topology(name, chip, chips, grids[chips], slices)


def devices(topology: Topology) -> list:
  """The slice's abstract TPU devices (`get_topology_desc`; needs ``libtpu``: the ``aot`` extra)."""
  try:
    desc = jax_topologies.get_topology_desc(
        platform="tpu", topology_name=topology.topology_name, chip_config_name=topology.chip.chip_config,
        chips_per_host_bounds=(2, 2, 1), num_slices=topology.num_slices, wrap=topology.wrap)
  except RuntimeError as e:
    if "support not installed" in str(e):
      raise TopologyError(f"--topology={topology.name}: JAX has no TPU compiler here ({e}); "
                          "install it with `pip install -e '.[aot]'` (libtpu)") from None
    raise TopologyError(f"--topology={topology.name}: libtpu refused the topology: "
                        f"{str(e).splitlines()[0]}") from None
  return list(desc.devices)


__all__ = ["CHIPS", "Chip", "GIB", "Topology", "TopologyError", "devices", "known_names", "parse"]
