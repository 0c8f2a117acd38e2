"""The resistance report (paper §5.1, Tables 1–2) from results rows.

The headline (first section) is the design without the inverse run's head start — ``dk = generated``
when its rows are there — on the measures that do not carry each run's starting loss: how far each run
moved on its own data over the whole D_k (``dk_fall``), the end model's loss over the whole D_k
(``dk_loss_end``) and the held-out change (``heldout_fall``), each as forward − inverse with a 95%
bootstrap interval over seeds. Then the paper's sections: a Table 1-style table (forward θ_k → D_l against inverse θ_l → D_k, final training loss,
mean ± s.d. over seeds, mean ± s.d. of forward − inverse, how many seeds have inverse < forward), a
Table 2-style KL table (start ‖ end models), the Δγ columns (bits/byte change on each D_j), the
memorisation control (held-out loss before and after, forward against inverse), and one loss-curve
plot per pair with forward and inverse overlaid (from each cell's ``points/final/loss_curve.json``).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from elasticity.report import plots
from elasticity.report.intervals import fmt_interval, seed_interval
from elasticity.report.document import Context, Section, image
from elasticity.report.results import Row, fmt, mean_sd
from elasticity.report.tables import markdown_table

GROUP = ("model", "dataset", "dk")


def _pairs(rows: Sequence[Row]) -> dict[tuple, dict[int, dict[str, Row]]]:
  """{(model, dataset, dk, pair): {seed: {"forward": row, "inverse": row}}} of the pair cells."""
  out: dict[tuple, dict[int, dict[str, Row]]] = {}
  for r in rows:
    if r.coords.get("role") != "pair":
      continue
    key = tuple(r.coords.get(k) for k in GROUP) + (r.coords.get("pair"),)
    out.setdefault(key, {}).setdefault(r.seed, {})[str(r.coords.get("direction"))] = r
  return dict(sorted(out.items(), key=lambda kv: tuple(str(x) for x in kv[0])))


def _label(pair: str, direction: str) -> str:
  k, l = pair.split("-")
  return f"θ{k}→D{l}" if direction == "forward" else f"θ{l}→D{k}"


def compare(rows: Sequence[Row], metric: str) -> list[dict]:
  """Per (model, dataset, dk, pair): forward and inverse ``metric`` (mean ± s.d. over seeds), the
  differences forward − inverse over the seeds that have both, and how many are > 0."""
  table = []
  for key, seeds in _pairs(rows).items():
    fwd = [s["forward"].metric(metric) for s in seeds.values() if "forward" in s]
    inv = [s["inverse"].metric(metric) for s in seeds.values() if "inverse" in s]
    diffs = [s["forward"].metric(metric) - s["inverse"].metric(metric) for s in seeds.values()
             if "forward" in s and "inverse" in s and s["forward"].metric(metric) is not None
             and s["inverse"].metric(metric) is not None]
    table.append({"model": key[0], "dataset": key[1], "dk": key[2], "pair": key[3],
                  "forward": mean_sd([v for v in fwd if v is not None]),
                  "inverse": mean_sd([v for v in inv if v is not None]),
                  "diff": mean_sd(diffs), "inverse_lower": sum(d > 0 for d in diffs),
                  "n": len(diffs)})
  return table


def _fmt_table(t: list[dict], metric_label: str) -> str:
  out = []
  for e in t:
    k, l = e["pair"].split("-")
    out.append({"model": e["model"], "dataset": e["dataset"], "D_k": e["dk"], "pair": f"{k},{l}",
                "forward / inverse": f"θ{k}→D{l} / θ{l}→D{k}",
                f"forward {metric_label}": fmt(e["forward"]),
                f"inverse {metric_label}": fmt(e["inverse"]),
                "forward − inverse": fmt(e["diff"]),
                "inverse < forward": f"{e['inverse_lower']}/{e['n']}"})
  return markdown_table(out) if out else "(no pair cells)"


def _totals(t: list[dict]) -> tuple[int, int]:
  return sum(e["inverse_lower"] for e in t), sum(e["n"] for e in t)


def _curves(rows: Sequence[Row], ctx: Context) -> list[str]:
  """One PNG per (group, pair): the mean training loss per step, forward and inverse overlaid."""
  from matplotlib.figure import Figure
  lines = []
  for key, seeds in _pairs(rows).items():
    fig = Figure(figsize=(6, 3.6))
    ax = fig.add_subplot(1, 1, 1)
    drawn = False
    for direction, color in (("forward", "tab:red"), ("inverse", "tab:blue")):
      per_step: dict[int, list[float]] = {}
      n_seeds = 0
      for s in seeds.values():
        if direction not in s:
          continue
        f = Path(ctx.workdir) / "cells" / s[direction].cell / "points" / s[direction].point / \
            "loss_curve.json"
        if not f.is_file():
          continue
        n_seeds += 1
        for step, v in json.loads(f.read_text(encoding="utf-8"))["curve"]:
          per_step.setdefault(int(step), []).append(float(v))
      if per_step:
        xs = sorted(per_step)
        ys = [sum(per_step[x]) / len(per_step[x]) for x in xs]
        ax.plot(xs, ys, color=color, marker="o", ms=3,
                label=f"{direction} {_label(key[3], direction)} (mean of {n_seeds} seeds)")
        drawn = True
    if not drawn:
      continue
    ax.set_xlabel("step")
    ax.set_ylabel("training loss (nats/token)")
    ax.set_title(f"{key[0]}, {key[1]} ({key[2]}): pair {key[3]}")
    ax.legend(fontsize=8)
    fig.tight_layout()
    path, ref = ctx.plot(f"loss-{key[0]}-{key[1]}-{key[2]}-pair{key[3]}")
    plots.save(fig, path)
    lines.append(image(f"loss curves, pair {key[3]}", ref))
  return lines


def dgamma_table(rows: Sequence[Row]) -> list[dict]:
  """Δγ (bits/byte, end − start) on each D_j, per pair cell kind, mean ± s.d. over seeds."""
  groups: dict[tuple, list[Row]] = {}
  for r in rows:
    if r.coords.get("role") == "pair":
      key = tuple(r.coords.get(k) for k in GROUP) + (r.coords.get("pair"), r.coords.get("direction"))
      groups.setdefault(key, []).append(r)
  out = []
  for key, rs in sorted(groups.items(), key=lambda kv: tuple(str(x) for x in kv[0])):
    entry = {"model": key[0], "dataset": key[1], "D_k": key[2], "cell": _label(key[3], key[4])}
    names = sorted({k[len("dgamma_"):] for r in rs for k in r.metrics if k.startswith("dgamma_")},
                   key=lambda x: (x == "heldout", len(x), x))
    for name in names:
      entry[f"Δγ {name}"] = fmt(mean_sd([v for v in (r.metric(f"dgamma_{name}") for r in rs)
                                         if v is not None]))
    out.append(entry)
  return out


HEADLINE = (("dk_fall", "how far the run moved on its own data: loss over the whole D_k, start − end"),
            ("dk_loss_end", "the end model's loss over the whole D_k"),
            ("heldout_fall", "held-out loss, start − end"),
            ("train_fall", "the training loss's fall from the first step to the last few (batches: noisy)"))


def headline(rows: Sequence[Row]) -> Section | None:
  """Forward − inverse on the whole-D_k measures with 95% intervals over seeds (module docstring)."""
  designs = {r.coords.get("dk") for r in rows if r.coords.get("role") == "pair"}
  dk = "generated" if "generated" in designs else None
  if dk is None:
    return None
  picked = [r for r in rows if r.coords.get("dk") == dk]
  out = []
  for metric, what in HEADLINE:
    for key, seeds in _pairs(picked).items():
      diffs = [s["forward"].metric(metric) - s["inverse"].metric(metric) for s in seeds.values()
               if "forward" in s and "inverse" in s and s["forward"].metric(metric) is not None
               and s["inverse"].metric(metric) is not None]
      if not diffs:
        continue
      k, l = key[3].split("-")
      out.append({"measure": metric, "model": key[0], "dataset": key[1], "pair": f"{k},{l}",
                  "forward − inverse (95% CI over seeds)": fmt_interval(seed_interval(diffs)),
                  "seeds": len(diffs), "forward > inverse": f"{sum(d > 0 for d in diffs)}/{len(diffs)}"})
  if not out:
    return None
  lines = [f"- `{m}`: {w}" for m, w in HEADLINE]
  return Section(
      "Headline: the generated design on whole-D_k measures",
      "D_k = θ_k's own responses (no θ has trained on them, so the inverse run has no head start "
      "from memorisation). Measures:\n\n" + "\n".join(lines) + "\n\nThe paper's claim is a lower "
      "final loss for the inverse run: forward − inverse > 0 on `dk_loss_end`; `dk_fall` and "
      "`heldout_fall` say how far each run moved on its own data and on data no θ has seen. An "
      "interval that contains 0 decides nothing.\n\n"
      + markdown_table(out))


def build_resistance(rows: Sequence[Row], ctx: Context) -> list[Section]:
  head = headline(rows)
  loss = compare(rows, "final_loss")
  won, total = _totals(loss)
  body = [f"Final training loss = mean of the last `loss.last_steps` steps' training loss "
          f"(nats/token). **Inverse < forward in {won} of {total} (pair, seed) cells.**", "",
          _fmt_table(loss, "loss")]
  sections = ([head] if head else []) + [
      Section("Table 1: forward vs inverse final training loss", "\n".join(body))]
  kl = compare(rows, "kl_start_end")
  sections.append(Section("Table 2: KL(end ‖ start) on held-out examples",
                          "Per token, exact over the vocabulary, teacher-forced on the held-out "
                          "responses.\n\n" + _fmt_table(kl, "KL")))
  sections.append(Section("Δγ on each D_j (bits/byte, end − start)",
                          markdown_table(dgamma_table(rows)) if dgamma_table(rows) else "(none)"))
  ctrl = []
  for metric, what in (("first_loss", "loss of the first step (before any update)"),
                       ("train_loss_start", "start model's loss on the cell's training data"),
                       ("heldout_loss_start", "held-out loss before"),
                       ("heldout_loss_end", "held-out loss after"),
                       ("heldout_fall", "held-out fall (before − after)")):
    t = compare(rows, metric)
    w, n = _totals(t)
    ctrl += [f"**{what}** (`{metric}`): forward > inverse in {w} of {n} cells", "",
             _fmt_table(t, metric), ""]
  sections.append(Section("Memorisation control", "\n".join(ctrl)))
  curves = _curves(rows, ctx)
  if curves:
    sections.append(Section("Loss curves", "\n\n".join(curves)))
  return sections
