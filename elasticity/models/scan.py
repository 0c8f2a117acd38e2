"""Scanned and unrolled layer layouts of `CausalLM`, and the conversions between them.

Unrolled (``scan_layers=False``): ``params["layers"]`` is ``{0: layer_0, 1: layer_1, …}``, one
`DecoderLayer` per layer, as Hugging Face lays checkpoints out. Scanned (``scan_layers=True``):
``params["layers"]`` is one layer's tree whose arrays have a leading axis of length L (logical axis
``layers``, unsharded), so the forward is one `lax.scan` and compiles one layer instead of L.

The conversions are pure restacking (no arithmetic), so both layouts hold bitwise the same weights:

* modules: `stack_modules` / `unstack_modules` (lists of `DecoderLayer` ↔ one stacked layer);
* models: `stack_layers(model)` / `unstack_layers(model)` / `to_layout(model, scan_layers)`;
* pure parameter dicts (train states, checkpoints): `stack_params` / `unstack_params`,
  `params_layout` tells which one a tree is.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec as P

LAYERS_AXIS = "layers"
SCANNED, UNROLLED = "scanned", "unrolled"


def layout_name(scan_layers: bool) -> str:
  return SCANNED if scan_layers else UNROLLED


def with_layers_rule(rules: Sequence[tuple[str, Any]]) -> tuple[tuple[str, Any], ...]:
  """``rules`` plus ``("layers", None)`` (the stacked axis is never sharded) if they lack it."""
  rules = tuple(rules)
  if any(name == LAYERS_AXIS for name, _ in rules):
    return rules
  return rules + ((LAYERS_AXIS, None),)


def _is_var(x) -> bool:
  return isinstance(x, nnx.Variable)


def _axes(var: nnx.Variable):
  return var.get_metadata().get("logical_axes")


def stack_modules(modules: Sequence[nnx.Module]) -> nnx.Module:
  """One module whose every variable is the stack (leading ``layers`` axis) of ``modules``' own."""
  if not modules:
    raise ValueError("stack_modules: no modules to stack (a model with 0 layers?)")
  graphdef, first = nnx.split(modules[0])
  states = [first]
  for i, m in enumerate(modules[1:], 1):
    g, st = nnx.split(m)
    if g != graphdef:
      raise ValueError(f"stack_modules: layer {i} differs in structure from layer 0")
    states.append(st)

  def stack(*vs):
    axes = _axes(vs[0])
    meta = {} if axes is None else {"logical_axes": (LAYERS_AXIS,) + tuple(axes)}
    return vs[0].replace(jnp.stack([v[...] for v in vs]), **meta)
  return nnx.merge(graphdef, jax.tree.map(stack, *states, is_leaf=_is_var))


def unstack_modules(stacked: nnx.Module) -> list[nnx.Module]:
  """The per-layer modules of a `stack_modules` result (its leading axis sliced)."""
  graphdef, state = nnx.split(stacked)
  n = {v.shape[0] for v in jax.tree.leaves(state, is_leaf=_is_var)}
  if len(n) != 1:
    raise ValueError(f"unstack_modules: variables disagree on the number of layers: {sorted(n)}")
  n = n.pop()

  def take(i):
    def one(v):
      axes = _axes(v)
      if axes is not None and (not axes or axes[0] != LAYERS_AXIS):
        raise ValueError(f"unstack_modules: a variable's logical axes {axes} lack the leading "
                         f"{LAYERS_AXIS!r} axis")
      meta = {} if axes is None else {"logical_axes": tuple(axes[1:])}
      return v.replace(v[...][i], **meta)
    return one
  return [nnx.merge(graphdef, jax.tree.map(take(i), state, is_leaf=_is_var)) for i in range(n)]


def stack_layers(model):
  """``model`` in the scanned layout (a new module sharing the other parameters; itself if scanned)."""
  if model.scan_layers:
    return model
  new = nnx.merge(*nnx.split(model))
  new.layers = stack_modules(list(new.layers))
  new.scan_layers = True
  return new


def unstack_layers(model):
  """``model`` in the unrolled layout (a new module; itself if already unrolled)."""
  if not model.scan_layers:
    return model
  new = nnx.merge(*nnx.split(model))
  new.layers = nnx.List(unstack_modules(new.layers))
  new.scan_layers = False
  return new


def to_layout(model, scan_layers: bool):
  """``model`` in the scanned (True) or unrolled (False) layout."""
  return stack_layers(model) if scan_layers else unstack_layers(model)


# -- pure parameter dicts ---------------------------------------------------------------------------
def _is_index(k) -> bool:
  return isinstance(k, int) or (isinstance(k, str) and k.isdigit())


def params_layout(params: Mapping) -> str:
  """"scanned" or "unrolled": the layout of a pure parameter dict (``params["layers"]``)."""
  if not isinstance(params, Mapping) or LAYERS_AXIS not in params:
    raise ValueError("params_layout: not a model parameter tree (no 'layers' entry)")
  layers = params[LAYERS_AXIS]
  if isinstance(layers, Mapping) and layers and all(_is_index(k) for k in layers):
    return UNROLLED
  return SCANNED


def stack_params(params: Mapping) -> dict:
  """Unrolled pure dict → scanned (leading layer axis); a scanned dict comes back unchanged."""
  if params_layout(params) == SCANNED:
    return dict(params)
  layers = params[LAYERS_AXIS]
  order = sorted(layers, key=int)
  stacked = jax.tree.map(lambda *xs: jnp.stack(xs), *[layers[k] for k in order])
  return {**params, LAYERS_AXIS: stacked}


def unstack_params(params: Mapping, key=int) -> dict:
  """Scanned pure dict → unrolled (``{key(0): layer_0, …}``); an unrolled one comes back unchanged."""
  if params_layout(params) == UNROLLED:
    return dict(params)
  stacked = params[LAYERS_AXIS]
  n = {x.shape[0] for x in jax.tree.leaves(stacked)}
  if len(n) != 1:
    raise ValueError(f"unstack_params: leaves disagree on the number of layers: {sorted(n)}")
  layers = {key(i): jax.tree.map(lambda x, i=i: x[i], stacked) for i in range(n.pop())}
  return {**params, LAYERS_AXIS: layers}


# -- whole trees (train states: params and the optimizer's parameter-shaped moments) ---------------
def _is_params(x) -> bool:
  return isinstance(x, Mapping) and LAYERS_AXIS in x and isinstance(x[LAYERS_AXIS], Mapping)


def _abstract_stack(params: Mapping) -> dict:
  """`stack_params` for `jax.ShapeDtypeStruct` leaves (the layer axis unsharded)."""
  if params_layout(params) == SCANNED:
    return dict(params)
  layers = params[LAYERS_AXIS]
  order = sorted(layers, key=int)

  def one(*xs):
    x, sh = xs[0], xs[0].sharding
    if isinstance(sh, NamedSharding):
      sh = NamedSharding(sh.mesh, P(None, *tuple(sh.spec)))
    return jax.ShapeDtypeStruct((len(xs),) + tuple(x.shape), x.dtype, sharding=sh)
  return {**params, LAYERS_AXIS: jax.tree.map(one, *[layers[k] for k in order])}


def _abstract_unstack(params: Mapping) -> dict:
  """`unstack_params` for `jax.ShapeDtypeStruct` leaves (the layer axis dropped from the sharding)."""
  if params_layout(params) == UNROLLED:
    return dict(params)
  stacked = params[LAYERS_AXIS]

  def one(x):
    sh = x.sharding
    if isinstance(sh, NamedSharding):
      sh = NamedSharding(sh.mesh, P(*tuple(sh.spec)[1:]))
    return jax.ShapeDtypeStruct(tuple(x.shape[1:]), x.dtype, sharding=sh)
  n = jax.tree.leaves(stacked)[0].shape[0]
  layer = jax.tree.map(one, stacked)
  return {**params, LAYERS_AXIS: {i: layer for i in range(n)}}


def tree_layout(tree) -> str | None:
  """The layer layout of the first parameter tree inside ``tree`` (None if it holds none)."""
  found = [x for x in jax.tree.leaves(tree, is_leaf=_is_params) if _is_params(x)]
  return params_layout(found[0]) if found else None


def convert_tree(tree, scan_layers: bool, *, abstract: bool = False):
  """Every parameter tree inside ``tree`` (a train state: params, Adam moments, …) in the layout
  asked for; ``abstract``: the leaves are `jax.ShapeDtypeStruct` (restore targets)."""
  if abstract:
    fn = _abstract_stack if scan_layers else _abstract_unstack
  else:
    fn = stack_params if scan_layers else unstack_params
  return jax.tree.map(lambda x: fn(x) if _is_params(x) else x, tree, is_leaf=_is_params)
