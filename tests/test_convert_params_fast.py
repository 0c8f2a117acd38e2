"""The fast start-up paths of `abstract_model` and `model_from_tensors` against the slow ones they
replace: ``nnx.eval_shape`` of the real constructor (with an `nnx.Rngs`) for the abstract model, and
one ``jnp.asarray`` per tensor (``jnp.stack`` per stacked parameter) for the filled one.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from elasticity.convert.mapping import entries, hf_shape, to_flax
from elasticity.convert.params import model_from_tensors
from elasticity.models.registry import abstract_model, config_from_hf
from elasticity.models.transformer import CausalLM

from hf_reference import TINY, VARIANTS


def _cfg(variant: str):
  cls, kw = VARIANTS[variant]
  return config_from_hf(cls(**{**TINY, **kw}).to_dict())


def _traced_reference(cfg, dtype, param_dtype, scan_layers: bool):
  """The previous `abstract_model`: the constructor traced under ``nnx.eval_shape`` with real Rngs."""
  return nnx.split(nnx.eval_shape(lambda: CausalLM(cfg, dtype=dtype, param_dtype=param_dtype,
                                                   rngs=nnx.Rngs(0), scan_layers=scan_layers)))


def _variables(state) -> dict:
  """path → (Variable type, abstract value, metadata) of every variable in a state."""
  out = {}
  for path, var in nnx.to_flat_state(state):
    meta = {k: v for k, v in var.get_metadata().items()}
    out[path] = (type(var), var.get_value(), meta)
  return out


@pytest.mark.parametrize("scan_layers", [False, True], ids=["unrolled", "scanned"])
@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_abstract_model_matches_traced_constructor(variant, scan_layers):
  cfg = _cfg(variant)
  dtypes = [(jnp.float32, jnp.float32)] + ([(jnp.bfloat16, jnp.float32)] if variant == "smollm2" else [])
  for dtype, param_dtype in dtypes:
    ref_graphdef, ref_state = _traced_reference(cfg, dtype, param_dtype, scan_layers)
    graphdef, state = nnx.split(abstract_model(cfg, dtype=dtype, param_dtype=param_dtype,
                                               scan_layers=scan_layers))
    assert graphdef == ref_graphdef
    assert jax.tree.structure(state) == jax.tree.structure(ref_state)
    got, want = _variables(state), _variables(ref_state)
    assert list(got) == list(want)
    for path in want:
      (t1, v1, m1), (t2, v2, m2) = got[path], want[path]
      assert t1 is t2, path
      assert isinstance(v1, jax.ShapeDtypeStruct), (path, type(v1))
      assert (v1.shape, v1.dtype, v1.sharding, v1.weak_type) == (v2.shape, v2.dtype, v2.sharding,
                                                                 v2.weak_type), path
      assert m1 == m2, path


def _random_tensors(cfg, seed: int = 0) -> dict[str, np.ndarray]:
  """HF-named float32 tensors of the shapes ``cfg`` expects (from the traced reference's shapes)."""
  _, state = _traced_reference(cfg, jnp.float32, jnp.float32, False)
  pure = nnx.to_pure_dict(state)
  rng = np.random.default_rng(seed)
  out = {}
  for e in entries(cfg):
    leaf = pure
    for p in e.path:
      leaf = leaf[p]
    out[e.hf_name] = rng.standard_normal(hf_shape(e, tuple(leaf.shape))).astype(np.float32)
  return out


def _previous_model_from_tensors(cfg, tensors, param_dtype, scan_layers: bool):
  """The previous fill, written out: one ``jnp.asarray`` per tensor, ``jnp.stack`` per layer stack."""
  graphdef, state = _traced_reference(cfg, param_dtype, param_dtype, scan_layers)
  pure = nnx.to_pure_dict(state)
  stacks: dict[tuple, list] = {}
  for e in entries(cfg):
    value = jnp.asarray(to_flax(e, tensors[e.hf_name]), dtype=param_dtype)
    if scan_layers and e.path[0] == "layers":
      stacks.setdefault(("layers",) + tuple(e.path[2:]), []).append(value)
      continue
    leaf = pure
    for p in e.path[:-1]:
      leaf = leaf[p]
    leaf[e.path[-1]] = value
  for path, values in stacks.items():
    leaf = pure
    for p in path[:-1]:
      leaf = leaf[p]
    leaf[path[-1]] = jnp.stack(values)
  nnx.replace_by_pure_dict(state, pure)
  return nnx.merge(graphdef, state)


def _bits(x) -> np.ndarray:
  x = np.asarray(jax.device_get(x))
  return x.view(np.dtype(f"u{x.dtype.itemsize}"))


def _assert_bitwise_equal(model, ref) -> None:
  got = nnx.to_flat_state(nnx.state(model, nnx.Param))
  want = nnx.to_flat_state(nnx.state(ref, nnx.Param))
  assert [p for p, _ in got] == [p for p, _ in want]
  for (path, a), (_, b) in zip(got, want):
    assert a.get_value().dtype == b.get_value().dtype, path
    assert a.get_value().shape == b.get_value().shape, path
    np.testing.assert_array_equal(_bits(a.get_value()), _bits(b.get_value()), err_msg=str(path))


@pytest.mark.parametrize("scan_layers", [False, True], ids=["unrolled", "scanned"])
@pytest.mark.parametrize("variant,param_dtype", [("llama3", jnp.float32), ("qwen2", jnp.float32),
                                                 ("gemma3", jnp.float32), ("smollm2", jnp.bfloat16)])
def test_model_from_tensors_bitwise_equal_to_previous_fill(variant, param_dtype, scan_layers):
  cfg = _cfg(variant)
  tensors = _random_tensors(cfg)
  model = model_from_tensors(cfg, tensors.keys(), tensors.__getitem__, dtype=param_dtype,
                             scan_layers=scan_layers)
  _assert_bitwise_equal(model, _previous_model_from_tensors(cfg, tensors, param_dtype, scan_layers))
  # and against the tensors themselves, in numpy (ml_dtypes' bfloat16 cast), layer by layer
  pure = nnx.to_pure_dict(nnx.state(model, nnx.Param))
  for e in entries(cfg):
    if scan_layers and e.path[0] == "layers":
      path, layer = ("layers",) + tuple(e.path[2:]), int(e.path[1])
    else:
      path, layer = tuple(e.path), None
    leaf = pure
    for p in path:
      leaf = leaf[p]
    got = np.asarray(leaf) if layer is None else np.asarray(leaf)[layer]
    want = np.ascontiguousarray(to_flax(e, tensors[e.hf_name])).astype(np.dtype(param_dtype))
    np.testing.assert_array_equal(_bits(got), _bits(want), err_msg=e.hf_name)


def test_model_does_not_alias_the_source_tensors():
  cfg = _cfg("smollm2")
  tensors = _random_tensors(cfg)
  model = model_from_tensors(cfg, tensors.keys(), tensors.__getitem__)
  before = np.array(model.final_norm.scale[...])
  tensors["model.norm.weight"][...] = 123.0          # a plain (untransposed) float32 tensor
  np.testing.assert_array_equal(np.asarray(model.final_norm.scale[...]), before)
  assert not np.any(before == 123.0)


def test_model_from_tensors_errors_still_name_the_tensor():
  cfg = _cfg("llama2")
  tensors = _random_tensors(cfg)
  name = "model.layers.1.mlp.up_proj.weight"
  bad = dict(tensors, **{name: tensors[name][:, :-1]})
  with pytest.raises(ValueError, match=r"model\.layers\.1\.mlp\.up_proj\.weight.*has shape"):
    model_from_tensors(cfg, bad.keys(), bad.__getitem__, source="x.safetensors", scan_layers=True)
  missing = {k: v for k, v in tensors.items() if k != name}
  with pytest.raises(ValueError, match=r"x\.safetensors: missing tensor 'model\.layers\.1\.mlp\.up_proj"):
    model_from_tensors(cfg, missing.keys(), missing.__getitem__, source="x.safetensors")


@pytest.mark.slow   # ~10-25 s: the previous path's traced constructor is the slow part
def test_smollm2_gguf_load_bitwise_equal_to_previous_path(smollm2_gguf):
  from elasticity.convert import gguf as ggufr
  from elasticity.convert import load_pretrained
  model = load_pretrained(smollm2_gguf)
  cfg_dict, tensors = ggufr.read_gguf(smollm2_gguf)
  cfg = config_from_hf(cfg_dict)
  _assert_bitwise_equal(model, _previous_model_from_tensors(cfg, tensors, jnp.float32,
                                                           bool(model.scan_layers)))
