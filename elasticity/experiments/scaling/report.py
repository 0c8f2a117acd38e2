"""The scaling report (paper §5.3): each model's rebound speed against its parameters or pre-training
tokens, one point per model and one line per n⁺ (`elasticity.experiments.scaling.speed`).

The x values come from ``experiment.json`` (``config.models.<name>.params`` / ``.tokens``; the axis
from ``config.speed.axis``); the rebound grid's own plots are in the rebound report of each model.
"""

from __future__ import annotations

from collections.abc import Sequence

from elasticity.experiments.scaling.speed import rebound_speed
from elasticity.report import plots
from elasticity.report.document import Context, Section, image
from elasticity.report.results import Row, Stat
from elasticity.report.tables import markdown_table


def _fmt(s) -> str:
  if s is None:
    return "–"
  return f"{s['mean']:.4g}" + (f" ± {s['sd']:.2g}" if s.get("sd") is not None else "")


def resolve_metric(metric: str, rows: Sequence[Row]) -> str:
  """``auto``: the classifier's ``score`` when any row has one (a scorer was configured), else Δγ."""
  if metric != "auto":
    return metric
  return "score" if any(r.metric("score") is not None for r in rows) else "delta_gamma"


def build_scaling(rows: Sequence[Row], ctx: Context) -> list[Section]:
  cfg = dict(ctx.experiment.get("config") or {})
  speed_cfg = dict(cfg.get("speed") or {})
  metric = resolve_metric(str(speed_cfg.get("metric", "auto")), rows)
  axis = str(speed_cfg.get("axis", "params"))
  models = {str(m.get("name") or k): m for k, m in dict(cfg.get("models") or {}).items()}
  dict_rows = [{"coords": dict(r.coords), "metrics": dict(r.metrics), "seed": r.seed} for r in rows]
  summary = rebound_speed(dict_rows, metric=metric, first_points=int(speed_cfg.get("first_points", 1)))
  table = [{"model": e["model"], "n⁺": e["n_pos"], axis: models.get(e["model"], {}).get(axis, ""),
            "speed": _fmt(e["speed"]), "half n⁻": _fmt(e["half_n"]),
            "seeds reaching ½": f"{e['half_n_reached']}/{len(e['per_seed'])}"} for e in summary]
  body = [f"Rebound speed on `{metric}` (definition: `elasticity/experiments/scaling/speed.py`).", "",
          markdown_table(table) if table else "(no model has a base, stage-1 and stage-2 row yet)"]
  series: dict[str, list[tuple[float, Stat]]] = {}
  for e in summary:
    x = float(models.get(e["model"], {}).get(axis, 0) or 0)
    if x > 0 and e["speed"] is not None:
      s = e["speed"]
      series.setdefault(f"n⁺={e['n_pos']}", []).append((x, Stat(s["mean"], s["sd"], s["n"])))
  if series:
    path, ref = ctx.plot(f"rebound-speed-vs-{axis}")
    plots.curves(path, {k: sorted(v) for k, v in series.items()}, xlabel=axis, ylabel="rebound speed",
                 title=f"rebound speed against {axis}", xscale="count")
    body += ["", image("rebound speed", ref)]
  return [Section("Rebound speed", "\n".join(body))]
