"""Model export/import as an orbax checkpoint: ``<dir>/config.json`` (the HF config) + ``<dir>/params``.

The parameters are saved with ``ocp.StandardCheckpointer`` as a pure-dict pytree, so they restore on any
mesh: pass ``shardings`` (a matching pytree of `jax.sharding.Sharding`, of the layout asked for) to
`load_orbax`. They are always saved in the unrolled layer layout (HF's), so an export is the same
from a scanned or an unrolled model; ``load_orbax(scan_layers=True)`` stacks them on load. The directory
appears only when complete (`elasticity.atomic.directory`: the old one is kept until the new one is in).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import jax
import jax.numpy as jnp
import orbax.checkpoint as ocp
from flax import nnx

from elasticity import atomic
from elasticity.models.registry import abstract_model, config_from_hf, config_to_hf
from elasticity.models.scan import convert_tree, stack_params, unstack_params
from elasticity.models.transformer import CausalLM


def save_orbax(model: CausalLM, out_dir: str | os.PathLike, *, overwrite: bool = False) -> Path:
  """Write ``config.json`` + ``params/`` (unrolled layout) atomically (`elasticity.atomic`); an
  existing folder is replaced only as `elasticity.atomic.check_replaceable` allows."""
  out_dir = Path(out_dir).absolute()
  with atomic.directory(out_dir, overwrite=overwrite) as tmp:
    (tmp / "config.json").write_text(json.dumps(config_to_hf(model.config), indent=2, sort_keys=True))
    params = unstack_params(nnx.to_pure_dict(nnx.state(model, nnx.Param)))
    ckptr = ocp.StandardCheckpointer()
    ckptr.save(tmp / "params", _str_keys(params))
    ckptr.wait_until_finished()
  return out_dir


def load_orbax(path: str | os.PathLike, *, dtype=jnp.float32, param_dtype=None,
               shardings=None, scan_layers: bool = False) -> CausalLM:
  path = Path(path).absolute()
  cfg = config_from_hf(json.loads((path / "config.json").read_text()))
  graphdef, state = nnx.split(abstract_model(cfg, dtype=dtype, param_dtype=param_dtype,
                                             scan_layers=scan_layers))
  pure = nnx.to_pure_dict(state)
  target = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), pure)
  if shardings is not None:
    target = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), target,
                          shardings)
  if scan_layers:   # the file is unrolled: restore each layer into a slice of the stacked target
    target = convert_tree(target, False, abstract=True)
  restored = _int_keys(ocp.StandardCheckpointer().restore(path / "params", _str_keys(target)))
  if scan_layers:
    restored = stack_params(restored)
    if shardings is not None:
      restored = jax.device_put(restored, shardings)
  nnx.replace_by_pure_dict(state, restored)
  return nnx.merge(graphdef, state)


def _str_keys(tree):
  """orbax wants string keys; layer indices become "0", "1", …"""
  if isinstance(tree, dict):
    return {str(k): _str_keys(v) for k, v in tree.items()}
  return tree


def _int_keys(tree):
  if isinstance(tree, dict):
    return {(int(k) if isinstance(k, str) and k.isdigit() else k): _int_keys(v) for k, v in tree.items()}
  return tree
