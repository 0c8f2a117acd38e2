"""Variant strings ``<model>[,<field>]…`` whose optional fields are recognised by their values."""

from __future__ import annotations

from collections.abc import Sequence


def parse(arg: str, fields: Sequence[tuple[str, Sequence[str], str]]) -> tuple[str, dict[str, str], list[str]]:
  """``(model, {field: value}, leftover parts)``: each field, in order, takes the next part if that part
  is one of its allowed values, else its default. Callers refuse a variant with leftovers."""
  parts = [p for p in arg.split(",") if p]
  model, rest = parts[0], parts[1:]
  values = {}
  for name, allowed, default in fields:
    values[name] = rest.pop(0) if rest and rest[0] in allowed else default
  return model, values, rest
