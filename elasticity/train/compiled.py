"""Jitted functions kept across `train` calls, so a process that trains many runs compiles each once.

An experiment runner calls `elasticity.train.loop.train` once per grid cell. Each call builds its
train step (and optimizer initialiser, reference function) anew; a new Python function is a new
`jax.jit`, which traces and compiles again even when nothing changed. Here they are memoized by a
hashable key of everything the traced computation depends on: the model structure (its
``GraphDef``), the objective, the optimizer and its schedule, the mesh, the shardings and the options.
JAX's own cache inside one jitted function then handles batch shapes: a known shape runs the
executable it compiled before; a new one compiles once.

The optimizer enters the key through `optimizer_key`: its config section, plus the run's total
steps only when the schedule depends on them (linear and cosine decay; a constant schedule with or
without warmup does not), so runs of different lengths with a constant learning rate share a step.

The cache holds at most `MAX_ENTRIES` functions (least recently used dropped first): a compiled
executable is device memory.
"""

from __future__ import annotations

import collections
from collections.abc import Callable, Hashable, Mapping
from typing import Any

import jax

MAX_ENTRIES = 16
_CACHE: collections.OrderedDict[Hashable, Callable] = collections.OrderedDict()


def get(key: Hashable, build: Callable[[], Callable]) -> Callable:
  """The function cached under ``key``, built by ``build()`` the first time."""
  hash(key)                                   # an unhashable key fails here, naming its type
  if key in _CACHE:
    _CACHE.move_to_end(key)
    return _CACHE[key]
  fn = build()
  _CACHE[key] = fn
  while len(_CACHE) > MAX_ENTRIES:
    _CACHE.popitem(last=False)
  return fn


def clear() -> None:
  """Forget every cached function (their executables are freed once unreferenced)."""
  _CACHE.clear()


def size() -> int:
  return len(_CACHE)


def tree_key(tree: Any) -> Hashable:
  """A pytree of hashable leaves (shardings, shapes) as ``(treedef, leaves)``."""
  leaves, treedef = jax.tree.flatten(tree)
  return treedef, tuple(leaves)


def optimizer_key(cfg: Mapping[str, Any], total_steps: int) -> Hashable:
  """What the optimizer and its schedule compute, as a hashable value (see the module docstring)."""
  items = tuple(sorted((str(k), hashable(v)) for k, v in dict(cfg).items()))
  depends_on_length = cfg.get("schedule", "constant") != "constant"
  return items + ((("total_steps", int(total_steps)),) if depends_on_length else ())


def hashable(v: Any) -> Hashable:
  """Lists and mappings (config values) as nested tuples."""
  if isinstance(v, (list, tuple)):
    return tuple(hashable(x) for x in v)
  if isinstance(v, Mapping):
    return tuple(sorted((str(k), hashable(x)) for k, x in v.items()))
  return v
