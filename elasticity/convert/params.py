"""Build a `CausalLM` from a name → tensor source, and flatten a model back to HF-named tensors.

Both layer layouts (`elasticity.models.scan`): an HF tensor of layer i fills (or is read from) slice i
of the stacked parameter when the model is scanned, so the tensors are bitwise the same either way.
"""

from __future__ import annotations

from typing import Callable, Iterable

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from elasticity.convert.mapping import entries, hf_shape, to_flax, to_hf
from elasticity.models.config import ModelConfig
from elasticity.models.registry import abstract_model
from elasticity.models.transformer import CausalLM

# Tensors some checkpoints carry that are recomputed here (RoPE tables) or duplicated (tied heads).
_IGNORED_SUFFIXES = ("rotary_emb.inv_freq",)


def _get(tree, path):
  for p in path:
    tree = tree[p]
  return tree


def _set(tree, path, value):
  for p in path[:-1]:
    tree = tree[p]
  tree[path[-1]] = value


def _locate(path: tuple, scanned: bool) -> tuple[tuple, int | None]:
  """(path of the parameter in the pure dict, layer slice or None) of a mapping entry's path."""
  if scanned and path[0] == "layers":
    return ("layers",) + tuple(path[2:]), int(path[1])
  return tuple(path), None


def model_from_tensors(cfg: ModelConfig, names: Iterable[str], get: Callable[[str], np.ndarray], *,
                       dtype=jnp.float32, param_dtype=None, source: str = "checkpoint",
                       scan_layers: bool = False) -> CausalLM:
  """Fill a model of ``cfg`` from HF-named tensors; ``get(name)`` returns one as a numpy array.

  ``scan_layers``: build the scanned layout (stacked layers) instead of the unrolled one.

  Raises ValueError naming the tensor for a missing tensor or a shape mismatch (with both shapes),
  and for tensors the model has no place for.
  """
  param_dtype = param_dtype or dtype
  np_dtype = np.dtype(jnp.dtype(param_dtype))
  abstract = abstract_model(cfg, dtype=dtype, param_dtype=param_dtype, scan_layers=scan_layers)
  graphdef, state = nnx.split(abstract)
  pure = nnx.to_pure_dict(state)
  available = set(names)
  expected = list(entries(cfg))
  wanted = {e.hf_name for e in expected}
  unknown = sorted(n for n in available - wanted
                   if not n.endswith(_IGNORED_SUFFIXES) and not (cfg.tie_embeddings and n == "lm_head.weight"))
  if unknown:
    raise ValueError(f"{source}: tensors with no place in the {cfg.family} model: {unknown[:10]}"
                     + (f" and {len(unknown) - 10} more" if len(unknown) > 10 else ""))
  slices: dict[tuple, list] = {}     # scanned: per stacked parameter, its layers' arrays in order
  for e in expected:
    if e.hf_name not in available:
      raise ValueError(f"{source}: missing tensor {e.hf_name!r} (needed for {'/'.join(map(str, e.path))})")
    path, layer = _locate(e.path, scan_layers)
    target = _get(pure, path)
    shape = tuple(target.shape) if layer is None else tuple(target.shape[1:])
    want = hf_shape(e, shape)
    w = np.asarray(get(e.hf_name))
    if tuple(w.shape) != want:
      raise ValueError(f"{source}: tensor {e.hf_name!r} has shape {tuple(w.shape)}, expected {want} "
                       f"for config {cfg.family} (flax shape {shape})")
    value = to_flax(e, w)
    if layer is None:
      _set(pure, path, _host(value, np_dtype, w))
    else:
      slices.setdefault(path, []).append(value)
  for path, values in slices.items():
    _set(pure, path, np.stack(values).astype(np_dtype, copy=False))
  # One transfer of the whole host tree, instead of one `jnp.asarray` per tensor (272 for SmolLM2).
  nnx.replace_by_pure_dict(state, jax.device_put(pure))
  return nnx.merge(graphdef, state)


def _host(w: np.ndarray, dtype: np.dtype, source: np.ndarray) -> np.ndarray:
  """``w`` (``source`` or a view of it) as a host array of ``dtype`` that shares no memory with
  ``source``: `jax.device_put` may alias a host buffer on CPU, and the caller's tensors (a reused
  buffer, a memory map) must not be able to change the model. The bfloat16 cast is ml_dtypes'
  round-to-nearest-even, bitwise XLA's convert."""
  out = np.asarray(w, dtype=dtype)
  return np.array(out, order="C") if np.may_share_memory(out, source) else out


def tensors_from_model(model: CausalLM, dtype=None) -> dict[str, np.ndarray]:
  """HF-named numpy tensors of ``model`` (in ``dtype`` if given, else the parameters' own), in
  the same order and bitwise the same for both layer layouts."""
  pure = nnx.to_pure_dict(nnx.state(model, nnx.Param))
  scanned = bool(getattr(model, "scan_layers", False))
  host: dict[tuple, np.ndarray] = {}
  out = {}
  for e in entries(model.config):
    path, layer = _locate(e.path, scanned)
    if path not in host:
      host[path] = np.asarray(jax.device_get(_get(pure, path)))
    w = host[path] if layer is None else host[path][layer]
    if dtype is not None:
      w = w.astype(dtype)
    out[e.hf_name] = np.ascontiguousarray(to_hf(e, w))
  return out
