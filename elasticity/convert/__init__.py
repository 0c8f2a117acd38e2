"""Checkpoint import and export, and the public load/save API.

    from elasticity.convert import load_pretrained, save_pretrained
    model = load_pretrained(path, dtype=jnp.float32)   # HF dir, orbax export, .gguf, llama2.c .bin
    cfg = load_config(path)                            # the ModelConfig only, no tensors read
    save_pretrained(model, out_dir)                    # HF directory transformers loads

Readers: `hf` (safetensors directories), `gguf` (direct GGUF reader), `llama2c` (Karpathy's ``.bin``),
`orbax_model` (orbax exports); `mapping` and `params` are the pure HF-name ↔ Flax-tree mapping they
share. The models (`elasticity.models`) never import this package: import these four from here.
"""

from __future__ import annotations

import os
from pathlib import Path

import jax.numpy as jnp

from elasticity.convert.gguf import load_gguf, read_gguf_config
from elasticity.convert.hf import load_hf, read_config, save_hf
from elasticity.convert.llama2c import load_llama2c, read_llama2c
from elasticity.convert.orbax_model import load_orbax
from elasticity.models.config import ModelConfig
from elasticity.models.registry import config_from_hf
from elasticity.models.transformer import CausalLM

__all__ = ["checkpoint_kind", "load_pretrained", "load_config", "save_pretrained"]

_SUFFIXES = {".gguf": "gguf", ".bin": "llama2c"}


def checkpoint_kind(path: str | os.PathLike) -> str:
  """"orbax" | "hf" | "gguf" | "llama2c": which reader `load_pretrained` and `load_config` use."""
  p = Path(path)
  if p.is_dir():
    return "orbax" if (p / "params").is_dir() and not any(p.glob("*.safetensors")) else "hf"
  if not p.exists():
    raise FileNotFoundError(f"{p}: no such checkpoint")
  if p.suffix in _SUFFIXES:
    return _SUFFIXES[p.suffix]
  raise ValueError(f"{p}: unknown checkpoint kind (want a Hugging Face directory, .gguf or llama2.c .bin)")


def load_pretrained(path: str | os.PathLike, *, dtype=jnp.float32, param_dtype=None,
                    tokenizer: str | os.PathLike | None = None) -> CausalLM:
  """Load a checkpoint into a Flax model.

  Args:
    path: a Hugging Face directory (``config.json`` + safetensors, sharded or not), an orbax export
      (``config.json`` + ``params/``, from ``launch.convert --to=orbax``), a ``.gguf`` file
      (dequantized to float32 by `elasticity.convert.gguf`), or a llama2.c ``.bin`` checkpoint.
    dtype: compute dtype (and parameter dtype unless ``param_dtype`` is given).
    tokenizer: for llama2.c checkpoints, the ``tokenizer.bin`` whose size must match the model's vocab.
  """
  p = Path(path)
  kind = checkpoint_kind(p)
  if kind == "orbax":
    return load_orbax(p, dtype=dtype, param_dtype=param_dtype)
  if kind == "hf":
    return load_hf(p, dtype=dtype, param_dtype=param_dtype)
  if kind == "gguf":
    return load_gguf(p, dtype=dtype, param_dtype=param_dtype)
  return load_llama2c(p, tokenizer=tokenizer, dtype=dtype, param_dtype=param_dtype)


def load_config(path: str | os.PathLike) -> ModelConfig:
  """The `ModelConfig` of a checkpoint ``load_pretrained`` reads, without building the model.

  HF directories and orbax exports: their ``config.json``; GGUF: the header only; llama2.c: the
  header (the file is small and read whole).
  """
  p = Path(path)
  kind = checkpoint_kind(p)
  if kind in ("hf", "orbax"):
    return config_from_hf(read_config(p))
  if kind == "gguf":
    return config_from_hf(read_gguf_config(p))
  return read_llama2c(p)[0]


def save_pretrained(model: CausalLM, out_dir: str | os.PathLike, *, dtype: str | None = None,
                    tokenizer=None, overwrite: bool = False, ours=None) -> Path:
  """Export to a Hugging Face directory that ``AutoModelForCausalLM.from_pretrained`` loads.

  ``dtype``: a parameter dtype name ("float32", "bfloat16", "float16"; default: the parameters' own).
  With ``tokenizer`` (an `elasticity.tokenizers.Tokenizer` or a transformers tokenizer) its files
  are written there too, in the same atomic write.

  An existing ``out_dir`` is replaced only if an earlier export of ours wrote it, it is empty,
  ``ours(out_dir)`` says so, or ``overwrite`` — never a training workdir (`elasticity.atomic`).
  """
  return save_hf(model, out_dir, dtype=dtype, tokenizer=tokenizer, overwrite=overwrite, ours=ours)
