"""One helper for the experiment tests: a preset of ``configs/experiments/<name>.py`` with overrides."""

from __future__ import annotations

import importlib


def preset(name: str, variant: str, **overrides):
  """``get_config(variant)`` of ``configs/experiments/<name>.py`` with dotted-key ``overrides`` set."""
  c = importlib.import_module(f"configs.experiments.{name}").get_config(variant)
  c.unlock()
  for k, v in overrides.items():
    node = c
    *parents, last = k.split(".")
    for p in parents:
      node = node[p]
    node[last] = v
  c.lock()
  return c
