"""``launch.convert`` end to end, the orbax export, and the errors a bad checkpoint gets."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from elasticity import paths
from elasticity.convert import load_pretrained, save_pretrained

from conftest import require
from hf_reference import tiny_hf_model


def run_convert(*args):
  return subprocess.run([sys.executable, "-m", "launch.convert", *args], cwd=paths.PROJECT_ROOT,
                        capture_output=True, text=True, timeout=300)


def test_llama2c_to_hf_to_orbax_keeps_logits(shared, tmp_path):
  ckpt = require(shared / "models" / "stories260K" / "stories260K.bin")
  tok = require(shared / "models" / "stories260K" / "tok512.bin")
  r = run_convert(f"--src={ckpt}", f"--tokenizer={tok}", f"--dst={tmp_path / 'hf'}")
  assert r.returncode == 0, r.stderr[-2000:]
  r = run_convert(f"--src={tmp_path / 'hf'}", f"--dst={tmp_path / 'orbax'}", "--to=orbax")
  assert r.returncode == 0, r.stderr[-2000:]
  ids = np.array([[1, 403, 407, 261, 378, 11, 27]], np.int32)
  want = np.asarray(load_pretrained(ckpt)(ids))
  np.testing.assert_array_equal(np.asarray(load_pretrained(tmp_path / "hf")(ids)), want)
  np.testing.assert_array_equal(np.asarray(load_pretrained(tmp_path / "orbax")(ids)), want)
  # load_config reads the same config from every format without building the model
  from elasticity.convert import load_config
  for src in (ckpt, tmp_path / "hf", tmp_path / "orbax"):
    assert load_config(src) == load_pretrained(src).config, src
  # the HF export carries the tokenizer given with --tokenizer
  from elasticity.tokenizers import load_tokenizer
  text = "Once upon a time, Lily saw a big dog."
  assert load_tokenizer(tmp_path / "hf").encode(text) == load_tokenizer(tok).encode(text)


def test_bfloat16_export_loads_in_transformers(tmp_path):
  import torch
  import transformers
  ref = tiny_hf_model("smollm2")
  ref.save_pretrained(tmp_path / "src")
  r = run_convert(f"--src={tmp_path / 'src'}", f"--dst={tmp_path / 'bf16'}", "--dtype=bfloat16")
  assert r.returncode == 0, r.stderr[-2000:]
  assert json.loads((tmp_path / "bf16" / "config.json").read_text())["dtype"] == "bfloat16"
  back = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "bf16", dtype=torch.bfloat16)
  for name, p in back.state_dict().items():
    want = ref.state_dict()[name].to(torch.bfloat16)
    assert torch.equal(p, want), name


def test_shape_mismatch_and_missing_tensor_are_named(tmp_path):
  ref = tiny_hf_model("llama3")
  ref.save_pretrained(tmp_path / "m")
  f = tmp_path / "m" / "model.safetensors"
  tensors = load_file(str(f))
  tensors["model.layers.1.mlp.up_proj.weight"] = tensors["model.layers.1.mlp.up_proj.weight"][:, :10]
  del tensors["model.layers.2.self_attn.k_proj.weight"]
  save_file(tensors, str(f))
  with pytest.raises(ValueError, match=r"tensor 'model.layers.1.mlp.up_proj.weight' has shape \(96, 10\), "
                                       r"expected \(96, 64\)"):
    load_pretrained(tmp_path / "m")
  tensors["model.layers.1.mlp.up_proj.weight"] = np.zeros((96, 64), np.float32)
  save_file(tensors, str(f))
  with pytest.raises(ValueError, match="missing tensor 'model.layers.2.self_attn.k_proj.weight'"):
    load_pretrained(tmp_path / "m")


def test_unsupported_model_type_names_supported_ones(tmp_path):
  (tmp_path / "m").mkdir()
  (tmp_path / "m" / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
  with pytest.raises(ValueError, match=r"unsupported model_type 'gpt2'; supported: gemma, gemma2, "
                                       r"gemma3_text, llama, qwen2"):
    load_pretrained(tmp_path / "m")


def test_sharded_export_round_trips(tmp_path):
  from elasticity.convert.hf import save_hf
  ref = tiny_hf_model("qwen2")
  ref.save_pretrained(tmp_path / "src")
  model = load_pretrained(tmp_path / "src")
  out = save_hf(model, tmp_path / "sharded", max_shard_bytes=100_000)
  index = json.loads((out / "model.safetensors.index.json").read_text())
  assert len(set(index["weight_map"].values())) > 1
  ids = np.array([[3, 4, 5, 6]], np.int32)
  np.testing.assert_array_equal(np.asarray(load_pretrained(out)(ids)), np.asarray(model(ids)))


def test_failed_export_leaves_previous_export_intact(tmp_path, monkeypatch):
  import elasticity.convert.hf as hf
  ref = tiny_hf_model("gemma")
  ref.save_pretrained(tmp_path / "src")
  model = load_pretrained(tmp_path / "src")
  out = save_pretrained(model, tmp_path / "export")
  before = sorted(p.name for p in out.iterdir())

  def boom(*a, **k):
    raise OSError("disk full")
  monkeypatch.setattr(hf, "save_file", boom)
  with pytest.raises(OSError, match="disk full"):
    save_pretrained(model, tmp_path / "export")
  assert sorted(p.name for p in out.iterdir()) == before
  assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []
  load_pretrained(out)
