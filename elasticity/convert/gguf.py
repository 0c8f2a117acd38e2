"""GGUF files → Flax models, through transformers' GGUF reader (dequantized to float).

transformers parses the GGUF metadata into a Hugging Face config and maps and dequantizes the tensors
(undoing llama.cpp's q/k row permutation) to HF names; from there the HF mapping applies. Reading
needs ``torch`` and ``gguf`` (the ``gguf`` extra).
"""

from __future__ import annotations

import os
from pathlib import Path

import jax.numpy as jnp

from elasticity.convert.params import model_from_tensors
from elasticity.models.registry import config_from_hf
from elasticity.models.transformer import CausalLM


def _hf_config(path: Path):
  """The transformers config object of a GGUF file (metadata only, no tensors)."""
  try:
    import transformers
    from transformers.modeling_gguf_pytorch_utils import load_gguf_checkpoint
  except ImportError as e:  # pragma: no cover - depends on the environment
    raise ImportError(f"reading {path} needs torch and gguf: pip install 'elasticity[gguf]' ({e})") from e
  parsed = load_gguf_checkpoint(str(path), return_tensors=False)
  cfg_dict = dict(parsed["config"])
  model_type = cfg_dict.pop("model_type")
  return transformers.AutoConfig.for_model(model_type, **cfg_dict)


def read_gguf_config(path: str | os.PathLike) -> dict:
  """The HF config dict of a GGUF file, without reading its tensors."""
  return _hf_config(Path(path)).to_dict()


def read_gguf(path: str | os.PathLike) -> tuple[dict, dict]:
  """(HF config dict, HF-named float32 numpy tensors) of a GGUF file."""
  import torch
  import transformers
  from transformers.modeling_gguf_pytorch_utils import load_gguf_checkpoint
  path = Path(path)
  hf_cfg = _hf_config(path)
  with torch.device("meta"):
    meta = transformers.AutoModelForCausalLM.from_config(hf_cfg)
  parsed = load_gguf_checkpoint(str(path), return_tensors=True, model_to_load=meta)
  tensors = {k: v.float().numpy() for k, v in parsed["tensors"].items()}
  return hf_cfg.to_dict(), tensors


def load_gguf(path: str | os.PathLike, *, dtype=jnp.float32, param_dtype=None) -> CausalLM:
  cfg_dict, tensors = read_gguf(path)
  cfg = config_from_hf(cfg_dict)
  return model_from_tensors(cfg, tensors.keys(), tensors.__getitem__, dtype=dtype,
                            param_dtype=param_dtype, source=str(path))
