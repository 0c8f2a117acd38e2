"""Every training preset builds and validates without loading anything; values and keys are checked."""

from __future__ import annotations

import os
import sys

import pytest

from elasticity import paths
from elasticity.train.config import default_config, parse_snapshots, validate

sys.path.insert(0, str(paths.PROJECT_ROOT))
from configs import dpo, kto, mesh, models, sft  # noqa: E402

PAPER_MODELS = ["llama2-7b", "llama2-13b", "llama3-8b", "tinyllama-1.1b", "qwen1.5-0.5b", "qwen1.5-4b",
                "qwen1.5-7b", "gemma-2b"]


@pytest.mark.parametrize("model", PAPER_MODELS)
def test_alignment_presets_have_the_paper_hyperparameters(model):
  for direction in sft.DIRECTIONS:
    for mesh_name in ("", "gpu1", "gpu8", "tpu_v4", "tpu_v5e"):
      c = sft.get_config(",".join(p for p in (model, "alpaca", direction, mesh_name) if p))
      validate(c)
      assert (c.data.max_length, c.train.num_epochs, c.train.global_batch_size) == (512, 1, 8)
      assert (c.optimizer.lr, c.optimizer.schedule, c.optimizer.warmup_steps) == (1e-5, "constant", 0)
      assert (c.optimizer.weight_decay, c.seed, c.model.dtype, c.model.param_dtype) == (
          0.0, 42, "bfloat16", "float32")
      assert c.model.remat != "none"
      if mesh_name:
        assert c.mesh.tensor == mesh.PRESETS[mesh_name]["tensor"]
  fwd, inv = sft.get_config(f"{model},alpaca,forward"), sft.get_config(f"{model},alpaca,inverse")
  assert fwd.model.path.endswith("theta1") and tuple(fwd.data.slice) == (600, 1200)
  assert inv.model.path.endswith("theta2") and tuple(inv.data.slice) == (0, 600)
  # the base run exports θ1..θ3 after each third of the epoch, exactly where forward/inverse start
  base = sft.get_config(f"{model},alpaca,base")
  assert parse_snapshots(base.export.snapshots) == {"theta1": 75, "theta2": 150, "theta3": 225}
  assert base.export.snapshot_dir == ""             # into the base run's own workdir
  assert fwd.model.path == os.path.join(sft.base_run_dir(model, "alpaca"), "theta1")
  assert inv.model.path == os.path.join(sft.base_run_dir(model, "alpaca"), "theta2")
  assert models.default_mesh(model) in mesh.PRESETS
  validate(dpo.get_config(f"{model},simpo"))


def test_bad_values_and_variants_name_the_key():
  c = default_config()
  c.model.path = "x"
  validate(c)
  for key, value, message in [("train.num_microbatches", 3, "config.train.num_microbatches"),
                              ("model.remat", "some", "config.model.remat"),
                              ("optimizer.schedule", "poly", "config.optimizer.schedule"),
                              ("sharding.rules", (("embed", "fsdpp"),), "sharding.rules"),
                              ("mesh.fsdp", -2, "config.mesh.fsdp"),
                              ("export.snapshots", "theta1=0", "config.export.snapshots"),
                              ("export.snapshots", "theta1", "config.export.snapshots"),
                              ("export.snapshots", "a/b=3", "config.export.snapshots")]:
    bad = default_config()
    bad.model.path = "x"
    section, name = key.split(".")
    bad[section][name] = value
    with pytest.raises(ValueError, match=message.replace(".", r"\.")):
      validate(bad)
  with pytest.raises(ValueError, match="unknown direction"):
    sft.get_config("llama2-7b,alpaca,sideways")
  with pytest.raises(ValueError, match="unknown mesh preset"):
    sft.get_config("llama2-7b,alpaca,base,tpu_v9")
  locked = sft.get_config("tiny")
  with pytest.raises(AttributeError, match="num_stepz"):
    locked.train.num_stepz = 3


@pytest.mark.parametrize("model", PAPER_MODELS)
def test_kto_presets_have_the_paper_hyperparameters(model):
  for mesh_name in ("", "gpu1", "tpu_v5e"):
    c = kto.get_config(",".join(p for p in (model, mesh_name) if p))
    validate(c)
    assert (c.objective.name, c.objective.beta, c.objective.desirable_weight,
            c.objective.undesirable_weight, c.objective.reference) == ("kto", 0.1, 1.0, 1.0,
                                                                       "precomputed")
    assert (c.data.name, c.data.n, c.data.max_length, c.data.pack) == ("hh_rlhf", 2000, 512, False)
    assert (c.train.num_epochs, c.train.global_batch_size) == (1, 8)
    assert (c.optimizer.lr, c.optimizer.schedule, c.optimizer.warmup_steps) == (1e-5, "constant", 0)
    assert (c.optimizer.weight_decay, c.seed, c.model.dtype, c.model.param_dtype) == (
        0.0, 42, "bfloat16", "float32")
    assert c.model.remat != "none"
    assert c.mesh.tensor == mesh.PRESETS[mesh_name or models.default_mesh(model)]["tensor"]


def test_kto_tiny_is_accepted_and_kto_refuses_packing_naming_the_key():
  c = kto.get_config("tiny")
  validate(c)
  assert (c.objective.name, c.data.name, c.data.label_field, tuple(c.data.desirable)) == (
      "kto", "imdb", "label", ("pos",))
  assert c.data.load_kwargs.prompt_len == 8 and c.data.max_length <= 128
  assert c.mesh.fsdp == -1 and c.objective.reference == "precomputed"
  c.unlock()
  c.data.pack = True
  with pytest.raises(ValueError, match=r"config\.data\.pack"):
    validate(c)
  with pytest.raises(ValueError, match="configs/kto.py"):
    kto.get_config("llama2-7b,gpu8,extra")
  with pytest.raises(ValueError, match="unknown mesh preset"):
    kto.get_config("llama2-7b,tpu_v9")


def test_scan_layers_default_is_per_backend_and_an_explicit_value_wins(monkeypatch):
  from elasticity.train import config as train_config
  c = default_config()
  assert c.model.scan_layers is None                 # per backend
  monkeypatch.setattr(train_config.jax, "default_backend", lambda: "cpu")
  assert train_config.scan_layers(c) is False        # CPU: the unrolled step is faster
  monkeypatch.setattr(train_config.jax, "default_backend", lambda: "gpu")
  assert train_config.scan_layers(c) is True         # accelerators: one layer compiled
  for value in (True, False):
    c.model.scan_layers = value
    assert train_config.scan_layers(c) is value
    monkeypatch.setattr(train_config.jax, "default_backend", lambda: "cpu")
    assert train_config.scan_layers(c) is value
  bad = default_config()
  bad.model.path = "x"
  with pytest.raises(TypeError):                     # the locked config keeps the type: bool or None
    bad.model.scan_layers = "yes"
