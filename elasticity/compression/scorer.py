"""`Scorer`: the compression kernel of one model, split once and jitted once per batch shape under a mesh.

Sharding: the batch over the mesh's batch axes (``data`` × ``fsdp``), the parameters by their logical
axes (`elasticity.sharding` rules; replicated on a pure ``data`` mesh). A scorer outlives the model
it was built from: ``update(model)`` swaps in new weights of the same structure without recompiling,
and ``Scorer.reuse(previous, model)`` is the one way to keep a scorer across checkpoints (the previous
one updated when the structure allows, else a new one).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping

import jax
import numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from elasticity import sharding as shd
from elasticity.compression.kernel import code_lengths
from elasticity.models.scan import to_layout, with_layers_rule
from elasticity.models.transformer import CausalLM

Array = jax.Array


def default_mesh(devices: list | None = None) -> Mesh:
  """A pure data-parallel ``(data, fsdp, tensor)`` mesh over ``devices`` (default: all)."""
  return shd.make_mesh(data=-1, fsdp=1, tensor=1, devices=devices)


class Scorer:
  """`code_lengths` of one model, jitted once per batch shape under a mesh.

  The model is split once; its parameters are placed on the mesh by their logical axes (``rules``;
  a mesh without the ``(data, fsdp, tensor)`` axes gets them replicated and the batch over its
  ``data``/``fsdp`` axes). ``scan_layers`` (default True) scores with the decoder stack as one
  `lax.scan` (a model in the other layout is converted; the numbers agree to float rounding, and
  each bucket shape compiles one layer instead of L). ``update(model)`` swaps in new weights of the
  same structure without recompiling. Calling the scorer on a planned batch dispatches asynchronously and returns device
  arrays ``(bits, counts)`` [B, S], replicated.
  """

  def __init__(self, model: CausalLM, *, mesh: Mesh | None = None, rules: shd.Rules | None = None,
               chunk_size: int = 512, scan_layers: bool = True):
    self.mesh = mesh if mesh is not None else default_mesh()
    self.rules = with_layers_rule(rules if rules is not None else shd.DEFAULT_RULES)
    self.chunk_size = int(chunk_size)
    self.vocab_size = int(model.config.vocab_size)
    self.scan_layers = bool(scan_layers)
    self.graphdef, state = nnx.split(to_layout(model, self.scan_layers))
    self.replicated = NamedSharding(self.mesh, P())
    if set(shd.MESH_AXES) <= set(self.mesh.axis_names):
      self.param_shardings = shd.param_shardings(state, self.mesh, self.rules)
      self.batch_sharding = shd.batch_sharding(self.mesh, 2, self.rules)
      self.shards = shd.batch_divisor(self.mesh, self.rules)
    else:
      axes = tuple(a for a in shd.BATCH_AXES if a in self.mesh.axis_names)
      if not axes:
        raise ValueError(f"mesh axes {self.mesh.axis_names} name no batch axis {shd.BATCH_AXES}")
      self.param_shardings = jax.tree.map(lambda _: self.replicated, nnx.to_pure_dict(state))
      self.batch_sharding = NamedSharding(self.mesh, P(axes))
      self.shards = math.prod(self.mesh.shape[a] for a in axes)
    self.params = jax.device_put(nnx.to_pure_dict(state), self.param_shardings)
    self._fns: dict[tuple[int, int, int], Callable] = {}
    self._capacity: dict[tuple[int, int], int] = {}

  @classmethod
  def reuse(cls, previous: "Scorer | None", model: CausalLM, *, mesh: Mesh | None = None,
            rules: shd.Rules | None = None, chunk_size: int = 512,
            scan_layers: bool = True) -> "Scorer":
    """``previous`` scoring ``model``'s weights (no recompilation), or a new scorer of ``model``.

    ``previous`` is kept when there is one, it was built with the same options (``mesh`` and
    ``rules`` of None: whatever it has) and ``model`` has its structure; otherwise (none yet, a model
    of another structure or config, other options) a new `Scorer` is built with these options.
    """
    if previous is not None and previous._built_with(mesh, rules, chunk_size, scan_layers):
      try:
        previous.update(model)
        return previous
      except ValueError:          # another structure (e.g. another config): compile anew
        pass
    return cls(model, mesh=mesh, rules=rules, chunk_size=chunk_size, scan_layers=scan_layers)

  def _built_with(self, mesh: Mesh | None, rules: shd.Rules | None, chunk_size: int,
                  scan_layers: bool) -> bool:
    return ((mesh is None or mesh == self.mesh)
            and (rules is None or with_layers_rule(rules) == self.rules)
            and int(chunk_size) == self.chunk_size and bool(scan_layers) == self.scan_layers)

  def update(self, model: CausalLM) -> None:
    """Score with ``model``'s weights from now on (same structure: no recompilation)."""
    graphdef, state = nnx.split(to_layout(model, self.scan_layers))
    if graphdef != self.graphdef:
      raise ValueError("Scorer.update: the model's structure differs from the one compiled")
    self.params = jax.device_put(nnx.to_pure_dict(state), self.param_shardings)

  def _fn(self, length: int, num_segments: int, capacity: int) -> Callable:
    key = (length, num_segments, capacity)
    if key not in self._fns:
      graphdef, shards, chunk = self.graphdef, self.shards, self.chunk_size

      def score(params, ids, loss_mask, segment_ids, positions):
        return code_lengths(nnx.merge(graphdef, params), ids, loss_mask, segment_ids, positions,
                            num_segments=num_segments, shards=shards, capacity=capacity,
                            chunk_size=chunk)

      b = self.batch_sharding
      self._fns[key] = shd.jit(score, self.mesh, in_shardings=(self.param_shardings, b, b, b, b),
                               out_shardings=(self.replicated, self.replicated))
    return self._fns[key]

  def put(self, x: np.ndarray) -> Array:
    """A host array (the same on every process) as a global array over the batch axes."""
    return jax.make_array_from_callback(x.shape, self.batch_sharding, lambda idx: x[idx])

  def __call__(self, rows: Mapping[str, np.ndarray], *, num_segments: int = 1,
               capacity: int | None = None) -> tuple[Array, Array]:
    """Score ``rows`` (``input_ids``, ``loss_mask``, ``segment_ids``, ``positions``: [B, T]).

    ``capacity``: scored positions per batch shard to keep (None: all). A compiled capacity at
    least as large for the same shape is reused rather than compiling another.
    """
    arrays = [np.asarray(rows[k]) for k in ("input_ids", "loss_mask", "segment_ids", "positions")]
    extra = -arrays[0].shape[0] % self.shards           # empty rows (segment 0) so the batch splits
    if extra:
      arrays = [np.pad(a, ((0, extra), (0, 0))) for a in arrays]
    b, t = arrays[0].shape
    full = (b // self.shards) * t
    need = full if capacity is None else min(int(capacity), full)
    shape = (t, num_segments)
    if self._capacity.get(shape, 0) < need:
      self._capacity[shape] = need
    fn = self._fn(t, num_segments, self._capacity[shape])
    with jax.set_mesh(self.mesh):
      return fn(self.params, *map(self.put, arrays))


__all__ = ["Scorer", "default_mesh"]
