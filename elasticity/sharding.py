"""Device meshes, logical-axis rules, and the shardings of parameters, optimizer state and batches.

One mesh shape serves every layout: axes ``data`` (pure data parallel: parameters replicated),
``fsdp`` (data parallel with parameters, gradients and optimizer state sharded — ZeRO-3) and
``tensor`` (Megatron-style tensor parallel over heads / MLP width / vocabulary). A size of 1 switches
an axis off, so (N,1,1) is data parallel, (1,N,1) FSDP, (1,1,N) tensor parallel, and anything in
between a mix. Sizes may be −1 ("the rest of the devices").

Models name every parameter dimension (``logical_axes`` metadata: ``vocab``, ``embed``, ``heads``,
``kv_heads``, ``head_dim``, ``mlp``, ``norm``); activations and batches use ``batch`` and
``length``. ``rules`` map each logical name to mesh axes, e.g. ``(("embed", "fsdp"), ("mlp",
"tensor"), ("batch", ("data", "fsdp")))``. A dimension whose size the mesh axes do not divide, or
whose mesh axes an earlier dimension already uses, is replicated instead (logged once).

Multi-host: `initialize_distributed` calls ``jax.distributed.initialize()`` when the process was
launched as one of several (SLURM with several tasks, a TPU pod slice started by launch/tpu/run.sh,
which sets ``ELASTICITY_DISTRIBUTED=1``, or explicit coordinator settings) and must run
before anything touches a device. On several TPU slices (``dcn_*`` sizes > 1) the mesh is built with
`mesh_utils.create_hybrid_device_mesh`, so the ``data`` axis crosses the slower data-centre network
and ``fsdp``/``tensor`` stay on the fast inter-chip links.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import numpy as np
import optax
from absl import logging
from flax import nnx
from jax.experimental import mesh_utils, multihost_utils
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P

MESH_AXES = ("data", "fsdp", "tensor")
BATCH_AXES = ("data", "fsdp")

# The default rules: FSDP shards the model width, tensor parallelism splits heads, MLP width and
# vocabulary; batches go over data × fsdp. With mesh axes of size 1 they reduce to pure data parallel.
DEFAULT_RULES: tuple[tuple[str, Any], ...] = (
    ("batch", BATCH_AXES),
    ("length", None),
    ("layers", None),          # the stacked axis of scanned layers: never sharded
    ("vocab", "tensor"),
    ("embed", "fsdp"),
    ("heads", "tensor"),
    ("kv_heads", "tensor"),
    ("head_dim", None),
    ("mlp", "tensor"),
    ("norm", None),
)

AXIS_TYPES = {"auto": AxisType.Auto, "explicit": AxisType.Explicit}

Rules = Sequence[tuple[str, Any]]


# -- processes ------------------------------------------------------------------------------------
def _launched_as_several() -> bool:
  env = os.environ
  if env.get("ELASTICITY_DISTRIBUTED") == "1":   # set by launch/tpu/run.sh on every worker
    return True
  if int(env.get("SLURM_NTASKS", "1")) > 1 and "SLURM_PROCID" in env:
    return True
  if env.get("JAX_COORDINATOR_ADDRESS"):
    return True
  # A TPU VM pod slice: the metadata server lists the workers; libtpu sets this for multi-host slices.
  hosts = env.get("TPU_WORKER_HOSTNAMES", "")
  return len([h for h in hosts.split(",") if h]) > 1


def initialize_distributed(coordinator_address: str | None = None, num_processes: int | None = None,
                           process_id: int | None = None, *, force: bool = False) -> bool:
  """Join the other processes of a multi-process run (idempotent). Returns True if distributed.

  Explicit arguments win; otherwise JAX's cluster auto-detection (SLURM, TPU pod slices, the
  ``JAX_COORDINATOR_ADDRESS``/``JAX_NUM_PROCESSES``/``JAX_PROCESS_ID`` variables) fills them in. A plain
  single process (a laptop) is left alone unless ``force``.
  """
  if jax.distributed.is_initialized():
    return True
  explicit = coordinator_address is not None
  if not (explicit or force or _launched_as_several()):
    return False
  if explicit:
    jax.distributed.initialize(coordinator_address=coordinator_address, num_processes=num_processes,
                               process_id=process_id)
  elif os.environ.get("JAX_COORDINATOR_ADDRESS"):
    env = os.environ
    jax.distributed.initialize(coordinator_address=env["JAX_COORDINATOR_ADDRESS"],
                               num_processes=int(env["JAX_NUM_PROCESSES"]),
                               process_id=int(env["JAX_PROCESS_ID"]))
  else:
    jax.distributed.initialize()
  logging.info("jax.distributed: process %d of %d, %d local / %d global devices", jax.process_index(),
               jax.process_count(), jax.local_device_count(), jax.device_count())
  return True


# -- meshes ---------------------------------------------------------------------------------------
def resolve_axis_sizes(sizes: Sequence[int], n_devices: int, what: str = "mesh") -> tuple[int, ...]:
  """Replace one −1 by the devices left over; check the product equals ``n_devices``."""
  sizes = [int(s) for s in sizes]
  if sizes.count(-1) > 1:
    raise ValueError(f"{what}: at most one axis may be -1, got {dict(zip(MESH_AXES, sizes))}")
  for name, s in zip(MESH_AXES, sizes):
    if s == 0 or s < -1:
      raise ValueError(f"{what}.{name}: size must be positive or -1, got {s}")
  known = math.prod(s for s in sizes if s != -1)
  if -1 in sizes:
    if n_devices % known:
      raise ValueError(f"{what}: {n_devices} devices are not divisible by the fixed axes "
                       f"{dict(zip(MESH_AXES, sizes))}")
    sizes[sizes.index(-1)] = n_devices // known
  if math.prod(sizes) != n_devices:
    raise ValueError(f"{what}: axes {dict(zip(MESH_AXES, sizes))} use {math.prod(sizes)} devices, "
                     f"but {n_devices} are available")
  return tuple(sizes)


def make_mesh(data: int = 1, fsdp: int = -1, tensor: int = 1, *, dcn_data: int = 1, dcn_fsdp: int = 1,
              dcn_tensor: int = 1, axis_types: str = "auto",
              devices: Sequence[jax.Device] | None = None) -> Mesh:
  """A ``(data, fsdp, tensor)`` mesh over ``devices`` (default: all of them).

  ``dcn_*`` > 1 describes several slices joined by the data-centre network (a multi-slice TPU job):
  then the per-slice sizes are ``data/dcn_data`` etc. and the hybrid mesh keeps slices contiguous.
  ``axis_types``: "auto" (the compiler propagates shardings from the annotated inputs/outputs; the
  models need no per-op annotations) or "explicit" (sharding in JAX types: arrays carry their
  shardings, inspectable with `jax.typeof`); the project's jitted programs go through `jit` below,
  which runs the model bodies with Auto axes on either kind, with the same numbers.
  """
  if axis_types not in AXIS_TYPES:
    raise ValueError(f"mesh.axis_types: {axis_types!r} is not one of {sorted(AXIS_TYPES)}")
  devices = list(devices) if devices is not None else jax.devices()
  sizes = resolve_axis_sizes((data, fsdp, tensor), len(devices))
  types = (AXIS_TYPES[axis_types],) * 3
  dcn = (int(dcn_data), int(dcn_fsdp), int(dcn_tensor))
  if math.prod(dcn) > 1:
    for name, s, d in zip(MESH_AXES, sizes, dcn):
      if s % d:
        raise ValueError(f"mesh.dcn_{name}={d} does not divide mesh.{name}={s}")
    ici = tuple(s // d for s, d in zip(sizes, dcn))
    arr = mesh_utils.create_hybrid_device_mesh(ici, dcn, devices)
    return Mesh(arr, MESH_AXES, axis_types=types)
  return jax.make_mesh(sizes, MESH_AXES, axis_types=types, devices=devices)


def mesh_from_config(cfg: Mapping[str, Any], devices: Sequence[jax.Device] | None = None) -> Mesh:
  """`make_mesh` from a config section with keys data, fsdp, tensor (and optional dcn_*, axis_types)."""
  known = {"data", "fsdp", "tensor", "dcn_data", "dcn_fsdp", "dcn_tensor", "axis_types"}
  unknown = sorted(set(cfg) - known)
  if unknown:
    raise ValueError(f"mesh: unknown key(s) {unknown}; known: {sorted(known)}")
  return make_mesh(devices=devices, **dict(cfg))


# -- logical axes → specs -------------------------------------------------------------------------
def _as_tuple(axes) -> tuple[str, ...]:
  if axes is None:
    return ()
  if isinstance(axes, str):
    return (axes,)
  return tuple(axes)


def validate_rules(rules: Rules, mesh_axes: Sequence[str] = MESH_AXES) -> dict[str, tuple[str, ...]]:
  """Rules as a dict logical name → tuple of mesh axes; raises naming a bad rule."""
  out: dict[str, tuple[str, ...]] = {}
  for i, rule in enumerate(rules):
    if len(rule) != 2 or not isinstance(rule[0], str):
      raise ValueError(f"sharding.rules[{i}]: want (logical_name, mesh_axes), got {rule!r}")
    name, axes = rule
    axes = _as_tuple(axes)
    for a in axes:
      if a not in mesh_axes:
        raise ValueError(f"sharding.rules[{i}] ({name!r}): mesh axis {a!r} is not one of {tuple(mesh_axes)}")
    if name in out:
      raise ValueError(f"sharding.rules[{i}]: logical axis {name!r} appears twice")
    out[name] = axes
  return out


def logical_to_spec(logical_axes: Sequence[str | None], shape: Sequence[int], mesh: Mesh,
                    rules: Rules = DEFAULT_RULES, *, what: str = "array") -> P:
  """The `PartitionSpec` of an array with these logical axes, skipping non-dividing/reused mesh axes."""
  table = validate_rules(rules, mesh.axis_names)
  if len(logical_axes) != len(shape):
    raise ValueError(f"{what}: {len(logical_axes)} logical axes {tuple(logical_axes)} for shape {tuple(shape)}")
  used: set[str] = set()
  spec = []
  for name, size in zip(logical_axes, shape):
    axes = tuple(a for a in table.get(name, ()) if mesh.shape[a] > 1) if name is not None else ()
    if name is not None and name not in table:
      raise ValueError(f"{what}: logical axis {name!r} has no sharding rule (rules: {sorted(table)})")
    if any(a in used for a in axes) or (axes and size % math.prod(mesh.shape[a] for a in axes)):
      logging.log_first_n(logging.INFO, "%s: dimension %r (size %d) replicated instead of over %s",
                          8, what, name, size, axes)
      axes = ()
    used.update(axes)
    spec.append(axes[0] if len(axes) == 1 else (axes or None))
  return P(*spec)


def _is_variable(x) -> bool:
  return isinstance(x, nnx.Variable)


def param_specs(abstract_state, mesh: Mesh, rules: Rules = DEFAULT_RULES):
  """A pure-dict tree of `PartitionSpec` for an `nnx.State` of parameters (from ``logical_axes``)."""
  def one(path, var):
    where = "params" + jax.tree_util.keystr(path)
    axes = var.get_metadata().get("logical_axes")
    if axes is None:
      raise ValueError(f"{where}: parameter has no logical_axes metadata")
    return logical_to_spec(axes, var.shape, mesh, rules, what=where)
  specs = jax.tree_util.tree_map_with_path(one, abstract_state, is_leaf=_is_variable)
  return nnx.to_pure_dict(specs) if isinstance(specs, nnx.State) else specs


def named(mesh: Mesh, specs):
  """`NamedSharding` for every `PartitionSpec` in a tree."""
  return jax.tree.map(lambda s: NamedSharding(mesh, s), specs, is_leaf=lambda x: isinstance(x, P))


def param_shardings(abstract_state, mesh: Mesh, rules: Rules = DEFAULT_RULES):
  """Pure-dict tree of `NamedSharding` for the parameters of an (abstract) `nnx.State`."""
  return named(mesh, param_specs(abstract_state, mesh, rules))


def optimizer_shardings(tx, abstract_opt_state, params_shardings, mesh: Mesh):
  """Shardings of an optax state: parameter-shaped leaves follow their parameter, the rest replicate."""
  replicated = NamedSharding(mesh, P())
  return optax.tree_map_params(
      tx, lambda _, s: s, abstract_opt_state, params_shardings,
      transform_non_params=lambda _: replicated,
      is_leaf=lambda x: isinstance(x, NamedSharding))


def batch_spec(ndim: int, rules: Rules = DEFAULT_RULES, mesh: Mesh | None = None) -> P:
  """Batch arrays: leading dimension over the ``batch`` rule (data × fsdp), the rest replicated."""
  axes = validate_rules(rules).get("batch", ())
  if mesh is not None:
    axes = tuple(a for a in axes if mesh.shape[a] > 1)
  lead = axes[0] if len(axes) == 1 else (axes or None)
  return P(lead, *([None] * (ndim - 1)))


def batch_sharding(mesh: Mesh, ndim: int = 2, rules: Rules = DEFAULT_RULES) -> NamedSharding:
  return NamedSharding(mesh, batch_spec(ndim, rules, mesh))


def is_explicit(mesh: Mesh) -> bool:
  """Whether any axis of ``mesh`` has the Explicit type (sharding in JAX types)."""
  return any(t == AxisType.Explicit for t in mesh.axis_types)


def jit(fn, mesh: Mesh, *, in_shardings, out_shardings, **kw):
  """`jax.jit` with shardings that also works on an Explicit mesh.

  The models name logical axes for the compiler's sharding propagation (Auto mode, as MaxText
  does). On a mesh with Explicit axes the body therefore runs under `jax.sharding.auto_axes`: the
  arguments and results keep their explicit shardings, inside the axes are Auto, and calls happen
  under the mesh (`jax.set_mesh`). Inside such a body, sharding constraints must name
  PartitionSpecs (see `constraint`). On an Auto mesh this is plain `jax.jit`.
  """
  if not is_explicit(mesh):
    return jax.jit(fn, in_shardings=in_shardings, out_shardings=out_shardings, **kw)
  specs = jax.tree.map(lambda s: s.spec, out_shardings,
                       is_leaf=lambda x: isinstance(x, NamedSharding))
  body = lambda *args: jax.sharding.auto_axes(fn, out_sharding=specs)(*args)  # noqa: E731
  jitted = jax.jit(body, in_shardings=in_shardings, out_shardings=out_shardings, **kw)

  def call(*args):
    with jax.set_mesh(mesh):
      return jitted(*args)
  return call


def constraint(sharding: NamedSharding, mesh: Mesh):
  """What `jax.lax.with_sharding_constraint` takes inside a `jit` body: the sharding itself on an
  Auto mesh, its PartitionSpec (of the context mesh) on an Explicit one."""
  return sharding.spec if is_explicit(mesh) else sharding


def batch_divisor(mesh: Mesh, rules: Rules = DEFAULT_RULES) -> int:
  """How many ways the batch dimension is split (global batch sizes must be multiples of it)."""
  return math.prod(mesh.shape[a] for a in validate_rules(rules).get("batch", ()))


def global_batch(batch: Mapping[str, np.ndarray], mesh: Mesh, rules: Rules = DEFAULT_RULES,
                 ) -> dict[str, jax.Array]:
  """Place a host batch (the same full global batch on every process) sharded over the batch axes.

  Each process builds only the shards its devices hold (``make_array_from_callback``), so this is
  correct with one process or many.
  """
  out = {}
  div = batch_divisor(mesh, rules)
  for k, v in batch.items():
    v = np.asarray(v)
    if v.ndim == 0 or v.shape[0] % div:
      raise ValueError(f"batch[{k!r}]: leading dimension {v.shape[:1]} is not divisible by the "
                       f"{div} batch shards of mesh {dict(mesh.shape)}")
    sh = batch_sharding(mesh, v.ndim, rules)
    out[k] = jax.make_array_from_callback(v.shape, sh, lambda idx, v=v: v[idx])
  return out


def host_to_global(tree, shardings):
  """Place host (numpy or single-device) arrays as global arrays with the given shardings.

  Every process must hold the full value; each builds only its addressable shards, so a large model
  loaded on the host is never materialised whole on one accelerator.
  """
  def put(x, s):
    x = np.asarray(jax.device_get(x)) if not isinstance(x, np.ndarray) else x
    return jax.make_array_from_callback(x.shape, s, lambda idx: x[idx])
  return jax.tree.map(put, tree, shardings)


def gather_to_host(tree):
  """Full numpy values of (possibly multi-host sharded) arrays, on every process."""
  if jax.process_count() == 1:
    return jax.device_get(tree)
  return multihost_utils.process_allgather(tree, tiled=True)
