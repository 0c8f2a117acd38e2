"""A compiled program's per-chip memory against the chip's HBM, its FLOPs, and a predicted step time.

`report(compiled, topology, program, mfu)` reads XLA's own accounting of the executable
(``compiled.memory_analysis()``: argument, temporary, output, aliased (donated) and generated-code
bytes, per device) and its cost analysis (FLOPs per device). The memory a step needs on one chip is
``arguments + temporaries + outputs − aliased`` (a donated argument's buffer is reused for an output);
it fits when that plus the generated code is at most the chip's HBM. `knobs` names what would make
a program that does not fit fit.
"""

from __future__ import annotations

import dataclasses

import math
import re

import jax

from elasticity.aot.programs import Program
from elasticity.aot.topologies import GIB, Topology


@dataclasses.dataclass(frozen=True)
class Usage:
  arguments: int
  temporaries: int
  outputs: int
  aliased: int
  code: int
  capacity: int
  flops_per_chip: float        # XLA's cost analysis, one device
  model_flops: float           # the 6·N / 2·N rule, the whole program
  chips: int

  @property
  def used(self) -> int:
    """Buffers live during a call: arguments + temporaries + outputs − aliased."""
    return self.arguments + self.temporaries + self.outputs - self.aliased

  @property
  def fits(self) -> bool:
    return self.used + self.code <= self.capacity


def usage(compiled, topology: Topology, program: Program) -> Usage:
  m = compiled.memory_analysis()
  cost = compiled.cost_analysis() or {}
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  return Usage(int(m.argument_size_in_bytes), int(m.temp_size_in_bytes), int(m.output_size_in_bytes),
               int(m.alias_size_in_bytes), int(m.generated_code_size_in_bytes), topology.hbm_bytes,
               float(cost.get("flops", 0.0)), float(program.flops), topology.chips)


def argument_bytes(program: Program) -> int:
  """Bytes of the program's arguments on one chip (the largest shard of each), from their shardings."""
  def one(a):
    shape = a.sharding.shard_shape(a.shape) if a.sharding is not None else a.shape
    return math.prod(shape) * a.dtype.itemsize
  return int(sum(one(a) for a in jax.tree.leaves(program.args)))


_REQUIRED = re.compile(r"required for [^(]*\((\d+(?:\.\d+)?)([KMGT])\)")


def out_of_memory(error: Exception, topology: Topology, program: Program) -> Usage | None:
  """The `Usage` XLA's compile-time ``RESOURCE_EXHAUSTED: Ran out of memory on HBM`` implies (the
  compiler stops before a memory analysis exists): the required total it names, the arguments
  from their shardings; None for any other error."""
  text = str(error)
  if "RESOURCE_EXHAUSTED" not in text:
    return None
  m = _REQUIRED.search(text)
  scale = {"K": 2 ** 10, "M": 2 ** 20, "G": 2 ** 30, "T": 2 ** 40}
  args = argument_bytes(program)
  required = int(float(m.group(1)) * scale[m.group(2)]) if m else 0
  return Usage(args, max(0, required - args), 0, 0, 0, topology.hbm_bytes, float("nan"),
               float(program.flops), topology.chips)


def table(u: Usage, topology: Topology, program: Program, mfu: float) -> list[str]:
  """The per-chip lines, then the FLOPs and the predicted step time at ``mfu``."""
  gib = lambda b: f"{b / GIB:9.3f} GiB"  # noqa: E731
  peak = topology.chip.peak_tflops * 1e12
  seconds = program.flops / (u.chips * peak * mfu) if mfu > 0 else float("nan")
  lines = [f"per chip ({topology.name}: {u.chips} chips {topology.chip.prefix} "
           f"{topology.topology_name}, mesh {dict(program.mesh.shape)}):",
           f"  arguments    {gib(u.arguments)}",
           f"  temporaries  {gib(u.temporaries)}",
           f"  outputs      {gib(u.outputs)}",
           f"  aliased      {gib(u.aliased)}  (donated inputs reused as outputs)",
           f"  code         {gib(u.code)}",
           f"  used         {gib(u.used)}  (arguments + temporaries + outputs - aliased)",
           f"  used + code  {gib(u.used + u.code)}  of {topology.chip.hbm_gib:g} GiB HBM: "
           f"{'fits' if u.fits else 'does NOT fit'} ({100 * (u.used + u.code) / u.capacity:.1f}%)",
           f"flops: {program.flops:.4g} model ({program.flops / u.chips:.4g} per chip; XLA's cost "
           f"analysis, which counts a loop body once: {u.flops_per_chip:.4g}) "
           f"({program.what}, {program.tokens} tokens)",
           f"predicted step: {seconds:.3f} s at MFU {mfu:g} ({topology.chip.peak_tflops:g} TFLOP/s bf16 "
           f"per chip), {program.tokens / seconds:,.0f} tokens/s"]
  return lines


def knobs(u: Usage, program: Program) -> str:
  """One line naming what would make it fit, from where the memory goes."""
  state = u.arguments
  cut = ("; mesh.fsdp was cut down to the rows of one microbatch, so FSDP does not shard the state "
         "over every chip: fewer --config.train.num_microbatches (or a larger "
         "--config.train.global_batch_size) lets it" if program.note else "")
  if program.what == "train":
    if state > u.capacity:
      return ("the train state alone is {:.1f} GiB per chip: shard it over more chips (a larger "
              "--topology; mesh.fsdp over all of them) or keep master weights in bfloat16 "
              "(--config.model.param_dtype=bfloat16){}".format(state / GIB, cut))
    return ("activations take {:.1f} GiB per chip: --config.model.remat=full, more "
            "--config.train.num_microbatches, a shorter --config.data.max_length, or a larger "
            "--topology / mesh.fsdp{}".format((u.used + u.code - state) / GIB, cut))
  if state > u.capacity:
    return (f"the weights alone are {state / GIB:.1f} GiB per chip: a larger --topology, or "
            "mesh.fsdp/tensor over more chips")
  return "activations: a smaller --batch or --length (fewer rows or positions per call)"


__all__ = ["Usage", "knobs", "table", "usage"]
