"""What a report builder gets and returns: a `Context` (where plots go, the experiment's metadata) and
a list of `Section`s (a heading and a markdown body), rendered into one ``report.md`` by `render`.

A builder is ``build(rows, ctx) -> list[Section]``: it reads the validated rows of one experiment,
writes its PNGs with ``ctx.plot(name)`` and references them in a body as ``![...](plots/name.png)``.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Callable

from elasticity.report.results import Row


@dataclasses.dataclass(frozen=True)
class Section:
  """A ``## title`` and its markdown body."""
  title: str
  body: str


@dataclasses.dataclass
class Context:
  """workdir: the experiment folder; plots_dir: where PNGs are written now (a temporary folder that
  becomes ``workdir/plots`` when the report is complete); experiment: ``experiment.json`` ({} if
  absent); experiment_file: its path, for error messages."""
  workdir: Path
  plots_dir: Path
  experiment: Mapping[str, Any]
  experiment_file: Path
  plots: list[str] = dataclasses.field(default_factory=list)

  def plot(self, name: str) -> tuple[Path, str]:
    """(the file to write, the reference ``plots/<name>.png`` for report.md) for a plot ``name``."""
    name = slug(name)
    if name in self.plots:
      raise ValueError(f"plot {name!r} written twice in one report")
    self.plots.append(name)
    return self.plots_dir / f"{name}.png", f"plots/{name}.png"


Builder = Callable[[Sequence[Row], Context], list[Section]]


def slug(text: str) -> str:
  """A file-name-safe form of ``text`` (letters, digits, ``.``, ``_``, ``-``)."""
  out = re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-.")
  if not out:
    raise ValueError(f"no file name can be made from {text!r}")
  return out


def image(title: str, ref: str) -> str:
  """A markdown image line."""
  return f"![{title}]({ref})"


def render(title: str, preamble: Sequence[str], sections: Sequence[Section]) -> str:
  """``# title``, the preamble lines, then each section as ``## heading`` + body."""
  parts = [f"# {title}\n", *(line for line in preamble), ""]
  for s in sections:
    parts += [f"## {s.title}\n", s.body.rstrip(), ""]
  return "\n".join(parts).rstrip() + "\n"
