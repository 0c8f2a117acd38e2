"""Model presets for training configs: where each of the paper's checkpoints lives and how to shard it.

Paths are local Hugging Face directories under ``$ELASTICITY_MODELS`` (default ``~/models``), named
after the hub repositories (download them once with ``huggingface-cli download <repo>``); the launcher
never downloads. ``mesh`` names a preset of ``configs/mesh.py`` that fits the model in bf16 compute
with fp32 master weights.
"""

from __future__ import annotations

import os

from elasticity import paths
from elasticity.paths import shared_path

# name -> (hub repository, tokenizer path or "" for the model directory, default mesh preset)
MODELS = {
    "llama2-7b": ("meta-llama/Llama-2-7b-hf", "", "gpu8"),
    "llama2-13b": ("meta-llama/Llama-2-13b-hf", "", "gpu8"),
    "llama3-8b": ("meta-llama/Meta-Llama-3-8B", "", "gpu8"),
    "tinyllama-1.1b": ("TinyLlama/TinyLlama-1.1B-intermediate-step-480k-1T", "", "gpu1"),
    "qwen1.5-0.5b": ("Qwen/Qwen1.5-0.5B", "", "gpu1"),
    "qwen1.5-4b": ("Qwen/Qwen1.5-4B", "", "gpu8"),
    "qwen1.5-7b": ("Qwen/Qwen1.5-7B", "", "gpu8"),
    "gemma-2b": ("google/gemma-2b", "", "gpu8"),
}


def model_path(name: str) -> tuple[str, str]:
  """(checkpoint path, tokenizer path) of a preset name; the stories260K tiny model included."""
  if name == "stories260K":
    return (str(shared_path("models", "stories260K", "stories260K.bin")),
            str(shared_path("models", "stories260K", "tok512.bin")))
  if name not in MODELS:
    raise ValueError(f"unknown model preset {name!r}; known: stories260K, {', '.join(MODELS)}")
  repo, tok, _ = MODELS[name]
  path = os.path.join(paths.models_dir(), repo.split("/")[-1])
  return path, tok or path


def default_mesh(name: str) -> str:
  return MODELS[name][2] if name in MODELS else "cpu"


def preset_of_path(path: str) -> str | None:
  """The preset whose checkpoint directory ``path`` names (``…/Llama-2-7b-hf`` → llama2-7b), or None;
  a forward/inverse run's ``<runs>/<model>-<dataset>/theta1`` names its model in the run folder."""
  base = os.path.basename(os.path.normpath(path or ""))
  for name, (repo, _, _) in MODELS.items():
    if base == repo.split("/")[-1]:
      return name
  run = os.path.basename(os.path.dirname(os.path.normpath(path or "")))
  return next((n for n in sorted(MODELS, key=len, reverse=True) if run.startswith(n + "-")), None)
