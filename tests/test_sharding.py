"""Meshes from config, logical-axis rules, and sharded creation of parameters and batches (8 fake CPUs)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from jax.sharding import PartitionSpec as P

from elasticity import sharding as shd
from elasticity.models import ModelConfig, abstract_model, create_model
from elasticity.train.step import init_train_state, split_params, state_shardings

CFG = ModelConfig(family="llama", vocab_size=128, hidden_size=32, intermediate_size=64, num_layers=2,
                  num_heads=4, num_kv_heads=2, head_dim=8)


def test_axis_sizes_resolve_and_fail_with_names():
  assert shd.resolve_axis_sizes((2, -1, 2), 8) == (2, 2, 2)
  assert shd.resolve_axis_sizes((1, -1, 1), 8) == (1, 8, 1)
  with pytest.raises(ValueError, match="at most one axis"):
    shd.resolve_axis_sizes((-1, -1, 1), 8)
  with pytest.raises(ValueError, match="use 12 devices"):
    shd.resolve_axis_sizes((3, 2, 2), 8)
  with pytest.raises(ValueError, match="mesh.tensor"):
    shd.resolve_axis_sizes((1, 1, 0), 8)
  with pytest.raises(ValueError, match="unknown key"):
    shd.mesh_from_config({"data": 1, "fsdp": -1, "tensr": 1})


def test_mesh_axis_types_are_explicitly_chosen():
  mesh = shd.make_mesh(2, 2, 2)
  assert mesh.axis_names == shd.MESH_AXES and dict(mesh.shape) == {"data": 2, "fsdp": 2, "tensor": 2}
  assert set(mesh.axis_types) == {jax.sharding.AxisType.Auto}
  assert set(shd.make_mesh(1, -1, 1, axis_types="explicit").axis_types) == {jax.sharding.AxisType.Explicit}
  one = shd.make_mesh(1, 1, 1, devices=jax.devices()[:1])
  assert one.size == 1


def test_rules_map_logical_axes_and_replicate_what_does_not_divide():
  mesh = shd.make_mesh(1, 2, 4)
  assert shd.logical_to_spec(("embed", "heads", "head_dim"), (32, 4, 8), mesh) == P("fsdp", "tensor", None)
  # kv_heads = 2 is not divisible by tensor = 4: replicated.
  assert shd.logical_to_spec(("embed", "kv_heads", "head_dim"), (32, 2, 8), mesh) == P("fsdp", None, None)
  # a mesh axis used once per array
  rules = (("embed", "fsdp"), ("mlp", "fsdp"))
  assert shd.logical_to_spec(("embed", "mlp"), (32, 64), mesh, rules) == P("fsdp", None)
  # pure data parallel: every parameter replicated
  dp = shd.make_mesh(8, 1, 1)
  assert shd.logical_to_spec(("embed", "mlp"), (32, 64), dp) == P(None, None)
  with pytest.raises(ValueError, match="no sharding rule"):
    shd.logical_to_spec(("embedding",), (32,), mesh)
  with pytest.raises(ValueError, match=r"rules\[0\].*'fsdpp'"):
    shd.validate_rules((("embed", "fsdpp"),))
  assert shd.batch_spec(2, mesh=shd.make_mesh(2, 2, 2)) == P(("data", "fsdp"), None)
  assert shd.batch_spec(2, mesh=mesh) == P("fsdp", None)


def test_params_and_optimizer_state_are_created_sharded():
  mesh = shd.make_mesh(1, 2, 4)
  tx = optax.adamw(1e-3)
  abstract, sh = state_shardings(abstract_model(CFG), tx, mesh)
  graphdef, _ = split_params(abstract_model(CFG))
  init = lambda: split_params(create_model(CFG, seed=0))[1]
  state = init_train_state(init, tx, sh, seed=0)
  q = state["params"]["layers"][0]["attn"]["q"]
  assert q.sharding.spec == P("fsdp", "tensor", None)
  assert {s.data.shape for s in q.addressable_shards} == {(16, 1, 8)}
  mu = state["opt_state"][0].mu["layers"][0]["attn"]["q"]
  assert mu.sharding.spec == P("fsdp", "tensor", None)
  assert state["opt_state"][0].count.sharding.spec == P()
  # values are those of the unsharded init (up to XLA fusing the jitted init differently)
  ref = split_params(create_model(CFG, seed=0))[1]
  np.testing.assert_allclose(np.asarray(q), np.asarray(ref["layers"][0]["attn"]["q"]), rtol=1e-6)
  # host (pretrained) params placed shard by shard: the same shardings, and exactly the host values
  state2 = init_train_state(ref, tx, sh, seed=0)
  placed, host = jax.tree.leaves_with_path(state2["params"]), jax.tree.leaves_with_path(ref)
  assert [p for p, _ in placed] == [p for p, _ in host]
  for (path, got), (_, want), made in zip(placed, host, jax.tree.leaves(state["params"])):
    assert got.sharding == made.sharding, jax.tree_util.keystr(path)
    for shard in got.addressable_shards:   # every device holds its slice of the host array
      np.testing.assert_array_equal(np.asarray(shard.data), np.asarray(want)[shard.index],
                                    err_msg=jax.tree_util.keystr(path))
    np.testing.assert_array_equal(np.asarray(got), np.asarray(want), err_msg=jax.tree_util.keystr(path))
  del graphdef


def test_global_batch_is_split_over_data_and_fsdp():
  mesh = shd.make_mesh(2, 2, 2)
  ids = np.arange(8 * 5).reshape(8, 5)
  g = shd.global_batch({"input_ids": ids}, mesh)["input_ids"]
  assert g.sharding.spec == P(("data", "fsdp"), None)
  assert {s.data.shape for s in g.addressable_shards} == {(2, 5)}
  np.testing.assert_array_equal(np.asarray(g), ids)
  with pytest.raises(ValueError, match="batch\\['input_ids'\\].*not divisible"):
    shd.global_batch({"input_ids": ids[:6]}, mesh)
