"""What names a scorer, without loading one: the `Scorer` protocol, the folder kinds, the config section.

Configs name a scorer by a `scorer_section`; a task that needs one calls
``require_scorer(section, "config.eval.scorer.path")`` first (before any compilation), which raises
`ScorerConfigError` naming that key when no scorer is configured. Nothing here imports jax or torch
(`elasticity.eval.scorers.load_scorer` does), so configs and ``import elasticity.eval`` stay light.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol, runtime_checkable

import ml_collections
import numpy as np

SENTIMENT_FORMAT = "elasticity-sentiment"   # config.json "format" of the built-in classifier
KINDS = ("auto", SENTIMENT_FORMAT, "hf")
SECTION_KEYS = ("path", "kind", "sign", "positive_label", "allow_pickle", "batch_size",
                "max_length")


class ScorerConfigError(ValueError):
  """A scorer is missing or misconfigured; the message names the config key to set. ``note``: what
  else a dry run, which goes on past it, should say (e.g. that cell ids depend on the scorer)."""

  note: str = ""


@runtime_checkable
class Scorer(Protocol):
  """Scores texts: higher = more positive / more rewarded / safer."""
  kind: str

  def score(self, texts: Sequence[str]) -> np.ndarray:
    """float64 [len(texts)]."""


def scorer_section(**overrides) -> ml_collections.ConfigDict:
  """The config section naming a scorer (``config.eval.scorer`` or wherever a task keeps it)."""
  s = ml_collections.ConfigDict()
  s.path = ""               # checkpoint folder; "" = none configured
  s.kind = "auto"           # auto | elasticity-sentiment | hf
  s.sign = 1.0              # one-logit models: +1 the logit is a reward, -1 it is a cost
  s.positive_label = ""     # classifiers: the positive class, an index ("1") or an id2label name;
  #                           "" = the id2label entry that looks positive (POSITIVE, pos, …)
  s.allow_pickle = False    # allow a pickled PyTorch .bin checkpoint (runs arbitrary code if hostile)
  s.batch_size = 16
  s.max_length = 512        # tokens per text (longer texts are truncated from the right)
  for k, v in overrides.items():
    if k not in SECTION_KEYS:
      raise ScorerConfigError(f"scorer_section: unknown key {k!r}; known keys: {SECTION_KEYS}")
    setattr(s, k, v)
  return s


def detect_kind(path: str | os.PathLike) -> str:
  """``"elasticity-sentiment"`` or ``"hf"`` for the folder ``path``; ``ValueError`` naming it if neither."""
  path = Path(path)
  if not path.is_dir():
    raise FileNotFoundError(f"scorer folder {path} does not exist (or is not a folder)")
  cfg_file = path / "config.json"
  if not cfg_file.is_file():
    raise ValueError(f"{path}: not a scorer folder: no config.json (expected the built-in sentiment "
                     f"classifier or a Hugging Face sequence-classification model)")
  try:
    cfg = json.loads(cfg_file.read_text(encoding="utf-8"))
  except json.JSONDecodeError as e:
    raise ValueError(f"{cfg_file}: not valid JSON ({e.msg}, line {e.lineno})") from None
  if not isinstance(cfg, dict):
    raise ValueError(f"{cfg_file}: expected a JSON object")
  if cfg.get("format") == SENTIMENT_FORMAT:
    return SENTIMENT_FORMAT
  if "model_type" in cfg or "architectures" in cfg:
    return "hf"
  raise ValueError(f"{path}: not a scorer folder: {cfg_file.name} has neither 'format': "
                   f"{SENTIMENT_FORMAT!r} (the built-in classifier) nor 'model_type'/"
                   f"'architectures' (a Hugging Face model)")


def require_scorer(section: ml_collections.ConfigDict | None, key: str) -> Path:
  """The configured scorer folder; `ScorerConfigError` naming ``key`` if none is set or it is unusable.

  Cheap (reads only ``config.json``), so a task can call it before loading or compiling anything.
  ``key`` is the full config key of the path, e.g. ``"config.eval.scorer.path"``.
  """
  path = getattr(section, "path", "") if section is not None else ""
  if not path:
    raise ScorerConfigError(
        f"this task needs a scorer and none is configured: set {key}=DIR (the built-in IMDb or "
        f"safety classifier from `python -m launch.scorer --config=configs/scorer.py:imdb|safety "
        f"--workdir=DIR`, or a local Hugging Face sequence-classification / reward / cost model "
        f"folder)")
  try:
    detect_kind(path)
  except (FileNotFoundError, ValueError) as e:
    raise ScorerConfigError(f"{key}={path!r}: {e}") from None
  return Path(path)
