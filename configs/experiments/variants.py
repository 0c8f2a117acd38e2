"""Variant strings ``<model>[,<field>]…`` whose optional fields are recognised by their values, and
the model part's preset: a CPU preset by name, or a paper preset on a mesh."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import ml_collections

from configs import models as model_presets


def parse(arg: str, fields: Sequence[tuple[str, Sequence[str], str]]) -> tuple[str, dict[str, str], list[str]]:
  """``(model, {field: value}, leftover parts)``: each field, in order, takes the next part if that part
  is one of its allowed values, else its default. Callers refuse a variant with leftovers."""
  parts = [p for p in arg.split(",") if p]
  model, rest = parts[0], parts[1:]
  values = {}
  for name, allowed, default in fields:
    values[name] = rest.pop(0) if rest and rest[0] in allowed else default
  return model, values, rest


def base_config(file: str, arg: str, model: str, mesh: str, rest: Sequence[str], grammar: str,
                cpu: Mapping[str, Callable[[], ml_collections.ConfigDict]],
                paper: Callable[[str, str], ml_collections.ConfigDict]) -> ml_collections.ConfigDict:
  """The preset ``model`` names: ``cpu[model]()`` (no mesh preset allowed), or ``paper(model, mesh)``
  for a model of `configs.models`; a ``ValueError`` naming ``file`` for leftovers or an unknown model.
  ``grammar`` is the variant syntax shown in the error."""
  known = ", ".join([*cpu, *model_presets.MODELS])
  if rest or (model in cpu and mesh):
    raise ValueError(f"{file}: variant {arg!r} is not {grammar} (models: {known})")
  if model in cpu:
    return cpu[model]()
  if model in model_presets.MODELS:
    return paper(model, mesh)
  raise ValueError(f"{file}: unknown model {model!r}; known: {known}")
