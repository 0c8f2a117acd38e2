"""Hugging Face checkpoint directories: ``config.json`` + ``*.safetensors`` (single or sharded).

Reading is lazy (one tensor at a time through ``safetensors.safe_open``); writing is atomic
(`elasticity.atomic.directory`): files go to a temporary sibling directory that is renamed into place
only when complete.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import jax.numpy as jnp
from safetensors import safe_open
from safetensors.numpy import save_file

from elasticity import atomic
from elasticity.convert.params import model_from_tensors, tensors_from_model
from elasticity.models.registry import config_from_hf, config_to_hf
from elasticity.models.transformer import CausalLM
from elasticity.tokenizers import as_tokenizer

INDEX = "model.safetensors.index.json"
EXPORT_DTYPES = ("float32", "bfloat16", "float16")


def read_config(path: str | os.PathLike) -> dict:
  f = Path(path) / "config.json"
  if not f.is_file():
    raise FileNotFoundError(f"{path}: no config.json (not a Hugging Face model directory)")
  try:
    return json.loads(f.read_text())
  except json.JSONDecodeError as e:
    raise ValueError(f"{f}: invalid JSON ({e})") from None


def _tensor_files(path: Path) -> dict[str, Path]:
  """name → safetensors file, from the index when sharded."""
  index = path / INDEX
  if index.is_file():
    weight_map = json.loads(index.read_text())["weight_map"]
    return {name: path / fname for name, fname in weight_map.items()}
  files = sorted(path.glob("*.safetensors"))
  if not files:
    raise FileNotFoundError(f"{path}: no *.safetensors files (PyTorch .bin checkpoints: convert with "
                            "transformers' save_pretrained(safe_serialization=True) first)")
  out = {}
  for f in files:
    with safe_open(f, framework="np") as h:
      out.update({k: f for k in h.keys()})
  return out


def load_hf(path: str | os.PathLike, *, dtype=jnp.float32, param_dtype=None) -> CausalLM:
  """A Flax model from a Hugging Face directory."""
  path = Path(path)
  cfg = config_from_hf(read_config(path))
  files = _tensor_files(path)
  handles = {}

  def get(name):
    f = files[name]
    if f not in handles:
      handles[f] = safe_open(f, framework="np")
    return handles[f].get_tensor(name)

  try:
    return model_from_tensors(cfg, files.keys(), get, dtype=dtype, param_dtype=param_dtype,
                              source=str(path))
  finally:
    handles.clear()


def save_hf(model: CausalLM, out_dir: str | os.PathLike, *, dtype: str | None = None,
            max_shard_bytes: int = 5 * 2**30, tokenizer=None, overwrite: bool = False,
            ours=None) -> Path:
  """Write ``config.json`` and safetensors (sharded past ``max_shard_bytes``) atomically.

  ``dtype``: "float32" | "bfloat16" | "float16" (default: the parameters' dtype). ``tokenizer``: an
  `elasticity.tokenizers.Tokenizer` (or a transformers tokenizer, wrapped) whose files go into the same directory (same atomic write), so
  that the export is self-contained for `load_tokenizer` (and `transformers` for HF tokenizers).
  """
  out_dir = Path(out_dir)
  if dtype is not None and dtype not in EXPORT_DTYPES:
    raise ValueError(f"dtype {dtype!r} is not one of {list(EXPORT_DTYPES)}")
  if tokenizer is not None:
    tokenizer = as_tokenizer(tokenizer)
  tensors = tensors_from_model(model, jnp.dtype(dtype) if dtype else None)
  cfg = config_to_hf(model.config)
  cfg["dtype"] = jnp.dtype(next(iter(tensors.values())).dtype).name
  with atomic.directory(out_dir, overwrite=overwrite, ours=ours) as tmp:
    (tmp / "config.json").write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")
    shards, current, size = [], {}, 0
    for name, w in tensors.items():
      if current and size + w.nbytes > max_shard_bytes:
        shards.append(current)
        current, size = {}, 0
      current[name] = w
      size += w.nbytes
    shards.append(current)
    if len(shards) == 1:
      save_file(shards[0], str(tmp / "model.safetensors"), metadata={"format": "pt"})
    else:
      weight_map = {}
      for i, shard in enumerate(shards):
        fname = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
        save_file(shard, str(tmp / fname), metadata={"format": "pt"})
        weight_map.update({k: fname for k in shard})
      total = sum(w.nbytes for w in tensors.values())
      (tmp / INDEX).write_text(json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map},
                                          indent=2) + "\n")
    if tokenizer is not None:
      tokenizer.save(tmp)
  return out_dir


HF_EXPORT_FILES = re.compile(r"^(config\.json|generation_config\.json|model(-\d+-of-\d+)?\.safetensors|"
                             r"model\.safetensors\.index\.json|tokenizer.*|special_tokens_map\.json|"
                             r"vocab\..*|merges\.txt|added_tokens\.json|chat_template.*|.*\.model|"
                             r"tok\d*\.bin|\.elasticity-output)$")


def is_hf_export(out_dir: str | os.PathLike) -> bool:
  """True if ``out_dir`` holds an HF export and nothing else (an export of a run, made before exports
  carried their marker): the run that owns the folder may replace it."""
  files = [p for p in Path(out_dir).iterdir()]
  return (Path(out_dir, "config.json").is_file() and any(p.name.endswith(".safetensors") for p in files)
          and all(p.is_file() and HF_EXPORT_FILES.match(p.name) for p in files))
