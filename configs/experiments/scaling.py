"""Scaling (paper §5.3): the rebound grid over models: ``--config=configs/experiments/scaling.py:<variant>``.

    tiny                stories260K only (tests add a second local model with --config / in code)
    qwen                Qwen1.5-0.5B / 4B / 7B (paper presets; parameters in config), IMDb
    tinyllama           TinyLlama-1.1B pre-training checkpoints at 0.1T … 3.0T tokens, IMDb: local
                        paths ``<models_dir>/tinyllama-<T>T`` (override config.models.<name>.path)

``config.rebound`` is a full ``configs/experiments/rebound.py`` config (the grid, training and
evaluation of every model); ``config.models``: key → name (default the key), path, tokenizer, params, tokens;
``config.speed``: the rebound-speed summary (`elasticity.experiments.scaling`); its ``metric`` is
``auto`` by default: the classifier's ``score`` where the rows have one (a scorer is configured), else
``delta_gamma``.
"""

from __future__ import annotations

import os

import ml_collections

from configs import models as model_presets
from configs.experiments import rebound as rebound_configs
from elasticity import paths

QWEN = {"qwen1.5-0.5b": 0.46e9, "qwen1.5-4b": 3.95e9, "qwen1.5-7b": 7.72e9}
TINYLLAMA_TOKENS = (0.1e12, 0.5e12, 1.0e12, 1.5e12, 2.0e12, 2.5e12, 3.0e12)


def model_entry(path: str, tokenizer: str = "", params: float = 0.0, tokens: float = 0.0,
                name: str = ""):
  """One model; ``name`` (default: its key) labels its cells and rows and may hold dots."""
  return ml_collections.ConfigDict(dict(name=name, path=path, tokenizer=tokenizer,
                                        params=float(params), tokens=float(tokens)))


def key(name: str) -> str:
  """A config key for a model name (ConfigDict keys cannot hold dots)."""
  return name.replace(".", "_")


def base(rebound_variant: str) -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.experiment = "scaling"
  c.variant = ""
  r = rebound_configs.get_config(rebound_variant)
  r.unlock()
  c.rebound = r
  c.models = ml_collections.ConfigDict()
  c.speed = ml_collections.ConfigDict(dict(metric="auto", first_points=1, axis="params"))
  c.runner = r.runner
  return c


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  arg = arg or "tiny"
  if arg == "tiny":
    c = base("tiny")
    path, tok = model_presets.model_path("stories260K")
    c.models["stories260K"] = model_entry(path, tok, params=2.6e5)
  elif arg == "qwen":
    c = base("qwen1.5-0.5b,imdb")
    for name, params in QWEN.items():
      path, tok = model_presets.model_path(name)
      c.models[key(name)] = model_entry(path, tok if tok != path else "", params=params, name=name)
  elif arg == "tinyllama":
    c = base("tinyllama-1.1b,imdb")
    c.speed.axis = "tokens"
    for t in TINYLLAMA_TOKENS:
      name = f"tinyllama-{t / 1e12:g}T"
      c.models[key(name)] = model_entry(os.path.join(paths.models_dir(), name), params=1.1e9, tokens=t,
                                        name=name)
  else:
    raise ValueError(f"configs/experiments/scaling.py: unknown variant {arg!r}; known: tiny, qwen, "
                     "tinyllama")
  c.variant = arg
  c.lock()
  return c
