"""The theory lab's report, regenerated from its ``results.jsonl`` alone (`elasticity.theory.lab`).

    write_report("runs/theory_lab")   # -> report.md, plots/*.png, results.csv

Sections: the exact γ of D_p and D_a against l for each k; the law measured on networks (the
ratio of the slopes dγ_a/dl ÷ dγ_p/dl under joint training and under fine-tuning on D_t, mean ± s.d.
over seeds, against −k and the exact ratio of the same world); resistance; rebound; scaling;
several rounds. Built from the report kit (`elasticity.report`: rows, `mean_sd`, `plots.curves`,
`Section`) and written by its generic builder, as every experiment's report; `build` is registered
for experiment ``theory_lab`` (`elasticity.experiments`), so ``launch.report`` regenerates it too.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from elasticity.report import builder, plots
from elasticity.report.document import Context, Section, image
from elasticity.report.results import Row, Stat, fmt, mean_sd
from elasticity.report.tables import markdown_table

EXPERIMENT = "theory_lab"      # the rows' ``experiment`` (`elasticity.theory.lab`)
TITLE = "Theory lab: the elasticity law on trained networks"


def _part(rows: Sequence[Row], part: str, **coords) -> list[Row]:
  return [r for r in rows if r.coords.get("part") == part
          and all(r.coords.get(k) == v for k, v in coords.items())]


def _stat(rows: Sequence[Row], metric: str) -> Stat | None:
  return mean_sd([r.metric(metric) for r in rows if r.metric(metric) is not None])


def _g(x: float) -> str:
  return f"{x:g}"


def exact_section(rows: Sequence[Row], ctx: Context) -> list[Section]:
  ex = _part(rows, "law", protocol="exact")
  if not ex:
    return []
  ks = sorted({r.coords["k"] for r in ex})
  body = ["The exact joint code of the world (unbounded model: the size-weighted mixture) at sizes "
          "(k, 1, l); γ normalized as on the networks. Shown as the change from l = 0."]
  for name, label in (("p", "D_p"), ("a", "D_a")):
    series = {}
    for k in ks:
      pts = sorted(_part(ex, "law", k=k), key=lambda r: r.coords["l"])
      g0 = pts[0].metric(f"gamma_{name}")
      series[f"k = {_g(k)}"] = [(r.coords["l"], Stat(r.metric(f"gamma_{name}") - g0, None, 1))
                                for r in pts]
    path, ref = ctx.plot(f"exact_gamma_{name}")
    plots.curves(path, series, xlabel="l = |D_t| / |D_a|", ylabel=f"γ^({label}/D)(l) − γ(0), bits/token",
                 title=f"exact: γ of {label} against l", ylinthresh=1e-6)
    body.append(image(f"exact γ of {label}", ref))
  table = []
  for k in ks:
    pts = sorted(_part(ex, "law", k=k), key=lambda r: r.coords["l"])
    for r in pts:
      table.append({"k": _g(k), "l": _g(r.coords["l"]), "γ_p": r.metric("gamma_p"), "γ_a": r.metric("gamma_a"),
                    "γ_t": r.metric("gamma_t")})
  body.append(markdown_table(table, digits=6))
  return [Section("Exact theory: γ against l", "\n\n".join(body))]


def law_section(rows: Sequence[Row], ctx: Context) -> list[Section]:
  summ = _part(rows, "law", protocol="summary")
  if not summ:
    return []
  ks = sorted({r.coords["k"] for r in summ})
  table = []
  meas, ft, exact, minus_k = {}, {}, {}, {}
  for k in ks:
    rs = _part(summ, "law", k=k)
    ratio, fr = _stat(rs, "ratio"), _stat(rs, "finetune_ratio")
    er, e0 = _stat(rs, "exact_ratio"), _stat(rs, "exact_ratio_l0")
    table.append({
        "k": _g(k), "seeds": len(rs),
        "dγ_p/dl (net)": fmt(_stat(rs, "slope_p"), 6), "dγ_a/dl (net)": fmt(_stat(rs, "slope_a"), 6),
        "ratio joint (net)": fmt(ratio, 3), "Θ = ratio/(−k)": fmt(_stat(rs, "theta"), 3),
        "signs hold": f"{sum(r.metric('signs_hold') == 1.0 for r in rs)}/{len(rs)}",
        "ratio finetune (net)": fmt(fr, 3), "Θ finetune": fmt(_stat(rs, "finetune_theta"), 3),
        "exact ratio (same l)": fmt(er, 3), "exact ratio (l→0)": fmt(e0, 3), "−k": _g(-k),
        "pretrain gap p, a (bits/token)": f"{fmt(_stat(rs, 'pretrained_gap_p'), 3)}, "
                                          f"{fmt(_stat(rs, 'pretrained_gap_a'), 3)}"})
    if ratio:
      meas[k] = Stat(-ratio.mean, ratio.sd, ratio.n)
    if fr:
      ft[k] = Stat(-fr.mean, fr.sd, fr.n)
    if er:
      exact[k] = Stat(-er.mean, None, 1)
    minus_k[k] = Stat(k, None, 1)
  path, ref = ctx.plot("law_ratio")
  plots.curves(path, {"measured, joint training + D_t": sorted(meas.items()),
                      "measured, fine-tuning on D_t": sorted(ft.items()),
                      "exact, same world and l": sorted(exact.items()),
                      "Theorem 4.2: k": sorted(minus_k.items())},
               xlabel="k = |D_p| / |D_a|", ylabel="−(dγ_a/dl) / (dγ_p/dl)",
               title="measured against predicted ratio of changes", ylinthresh=1.0)
  body = ["Networks pre-trained on D_p ∪ D_a (sizes k : 1), then perturbed. Slopes: least squares "
          "of γ over the l grid (joint training; the same rows at every l, l = 0 the control). "
          "Fine-tuning ratio: least squares of Δγ_a on Δγ_p along the fine-tuning run. Mean ± s.d. "
          "over seeds. Theorem 4.2 predicts ratio = Θ(−k) with dγ_p/dl < 0 < dγ_a/dl.",
          markdown_table(table), image("ratio", ref)]
  # Δγ_a and Δγ_p against l on the networks, next to the exact ones.
  joint = _part(rows, "law", protocol="joint")
  for name in ("a", "p"):
    series = {}
    for k in ks:
      pts = _part(joint, "law", k=k)
      base = {r.seed: r.metric(f"gamma_{name}") for r in pts if r.coords["l"] == 0}
      by_l: dict[float, list[float]] = {}
      for r in pts:
        by_l.setdefault(r.coords["l"], []).append(r.metric(f"gamma_{name}") - base[r.seed])
      series[f"net, k = {_g(k)}"] = [(l, mean_sd(v)) for l, v in sorted(by_l.items())]
      ex = {r.coords["l"]: r.metric(f"exact_gamma_{name}") for r in pts}
      series[f"exact, k = {_g(k)}"] = [(l, Stat(v - ex[0], None, 1)) for l, v in sorted(ex.items())]
    path, ref = ctx.plot(f"law_delta_gamma_{name}")
    plots.curves(path, series, xlabel="l", ylabel=f"γ_{name}(l) − γ_{name}(0), bits/token",
                 title=f"joint training with D_t: change of γ on D_{name}", ylinthresh=1e-5)
    body.append(image(f"Δγ_{name}", ref))
  return [Section("Theorem 4.2 measured on networks", "\n\n".join(body))]


def resistance_section(rows: Sequence[Row], ctx: Context) -> list[Section]:
  rs = _part(rows, "resistance")
  if not rs:
    return []
  del ctx
  table = []
  for pair in sorted({r.coords["pair"] for r in rs}):
    f = [r for r in rs if r.coords["pair"] == pair and r.coords["direction"] == "forward"]
    i = [r for r in rs if r.coords["pair"] == pair and r.coords["direction"] == "inverse"]
    fi = {r.seed: r for r in f}
    wins = sum(r.metric("final_loss") < fi[r.seed].metric("final_loss") for r in i if r.seed in fi)
    wins_x = sum(r.metric("excess") < fi[r.seed].metric("excess") for r in i if r.seed in fi)
    a, b = pair.split("-")
    table.append({"pair": f"{a}, {b}", "forward (θ_i on D_j) loss": fmt(_stat(f, "final_loss")),
                  "inverse (θ_j on D_i) loss": fmt(_stat(i, "final_loss")),
                  "inverse < forward (loss)": f"{wins}/{len(i)}",
                  "forward excess": fmt(_stat(f, "excess")), "inverse excess": fmt(_stat(i, "excess")),
                  "inverse < forward (excess)": f"{wins_x}/{len(i)}"})
  body = ["θ_1 < θ_2 < θ_3: checkpoints of aligning θ0 on D_a; D_j: samples of θ_j. Forward: θ_i "
          "trained on D_j (i < j); inverse: θ_j trained on D_i, the same steps. Final training "
          "loss in bits/token on the target samples; excess = loss − the target model's own rate "
          "on them (an estimate of KL(θ_target ‖ θ_trained) per token).", markdown_table(table)]
  return [Section("Resistance in the world", "\n\n".join(body))]


def _share_curves(rows: Sequence[Row], key_fn, label_fn) -> dict:
  groups: dict = {}
  for r in rows:
    groups.setdefault(key_fn(r), {}).setdefault(r.coords["n_neg"], []).append(r.metric("share_a"))
  return {label_fn(k): [(x, mean_sd(v)) for x, v in sorted(pts.items())]
          for k, pts in sorted(groups.items())}


def rebound_section(rows: Sequence[Row], ctx: Context) -> list[Section]:
  rs = [r for r in _part(rows, "rebound") if r.coords.get("stage") != "base"]
  if not rs:
    return []
  base = _stat(_part(rows, "rebound", stage="base"), "share_a")
  series = _share_curves(rs, lambda r: r.coords["n_pos"], lambda k: f"n⁺ = {k} steps")
  path, ref = ctx.plot("rebound_share_a")
  plots.curves(path, series, xlabel="n⁻ (perturbation steps on D_t)",
               ylabel="share of the model's distribution on D_a", title="rebound in the world",
               baseline=base, baseline_label="pre-trained θ0")
  table = [{"n⁺": k.split("= ")[1], **{f"n⁻={x:g}": fmt(s, 4) for x, s in pts}}
           for k, pts in series.items()]
  body = ["θ0 aligned on D_a for n⁺ steps, then trained on D_t (near D_p) for n⁻ steps. Score: the "
          "exact probability that a sample of the model is a sequence of D_a (Σ over D_a's support "
          "of p_θ), mean ± s.d. over seeds.", image("rebound", ref), markdown_table(table)]
  return [Section("Rebound in the world", "\n\n".join(body))]


def scaling_section(rows: Sequence[Row], ctx: Context) -> list[Section]:
  rs = _part(rows, "scaling")
  if not rs:
    return []
  key = lambda r: (r.coords["params"], r.coords["hidden"], r.coords["layers"], r.coords["pretrain_steps"])
  series = _share_curves(rs, key, lambda k: f"{k[1]}x{k[2]} ({k[0]} params), pre {k[3]} steps")
  path, ref = ctx.plot("scaling_share_a")
  plots.curves(path, series, xlabel="n⁻ (perturbation steps on D_t)", ylabel="share on D_a",
               title="rebound by model size and pre-training length")
  table = []
  for k in sorted({key(r) for r in rs}):
    cell = [r for r in rs if key(r) == k]
    by_seed: dict = {}
    for r in cell:
      by_seed.setdefault(r.seed, {})[r.coords["n_neg"]] = r.metric("share_a")
    marks = sorted({r.coords["n_neg"] for r in cell})
    first, last = marks[1] if len(marks) > 1 else marks[0], marks[-1]
    lost1 = mean_sd([1 - s[first] / s[0] for s in by_seed.values() if s.get(0)])
    lost = mean_sd([1 - s[last] / s[0] for s in by_seed.values() if s.get(0)])
    table.append({"model": f"{k[1]}x{k[2]}", "params": k[0], "pre-train steps": k[3],
                  "pre-train tokens": cell[0].coords["pretrain_tokens"],
                  "share_a aligned": fmt(_stat([r for r in cell if r.coords["n_neg"] == 0], "share_a")),
                  f"share lost after {first}": fmt(lost1, 3), f"share lost after {last}": fmt(lost, 3),
                  "γ_p aligned": fmt(_stat([r for r in cell if r.coords["n_neg"] == 0], "gamma_p"))})
  body = ["The rebound for each architecture (hidden × layers) and pre-training length; 'share "
          "lost' = 1 − share(n⁻)/share(0), the speed of the rebound (the paper's §5.3: larger models "
          "and more pre-training rebound faster).", image("scaling", ref), markdown_table(table)]
  return [Section("Scaling: model size and pre-training length", "\n\n".join(body))]


def rounds_section(rows: Sequence[Row], ctx: Context) -> list[Section]:
  rs = _part(rows, "rounds")
  if not rs:
    return []
  order = sorted({(r.coords["round"], r.coords["phase"] != "perturb", r.point) for r in rs},
                 key=lambda t: (t[0], not t[1]))
  labels = [t[2] for t in order]
  table, pts = [], []
  for i, lab in enumerate(labels):
    cell = [r for r in rs if r.point == lab]
    table.append({"phase": lab, "share_a": fmt(_stat(cell, "share_a")),
                  "γ_a": fmt(_stat(cell, "gamma_a")), "γ_p": fmt(_stat(cell, "gamma_p"))})
    pts.append((float(i), _stat(cell, "share_a")))
  path, ref = ctx.plot("rounds_share_a")
  plots.curves(path, {"share on D_a": pts}, xlabel="phase (" + ", ".join(labels) + ")",
               ylabel="share on D_a", title="several rounds of align / perturb", xscale="linear")
  body = ["Align on D_a, perturb with D_t, repeated; the exact share on D_a and γ after each phase.",
          image("rounds", ref), markdown_table(table)]
  return [Section("Several rounds of align / perturb", "\n\n".join(body))]


BUILDERS = (exact_section, law_section, resistance_section, rebound_section, scaling_section,
            rounds_section)


def build(rows: Sequence[Row], ctx: Context) -> list[Section]:
  """Every section of the lab's report (the builder registered for experiment ``theory_lab``)."""
  return [s for b in BUILDERS for s in b(rows, ctx)]


def preamble(rows: Sequence[Row], measured: Sequence[Row], files: Sequence[Path],
             experiment: Mapping[str, Any]) -> list[str]:
  """The lab's lines under the title: variant, rows, seeds, world, network, the lab's time."""
  del measured, files
  seeds = sorted({r.seed for r in rows if r.seed is not None})
  return [f"- experiment: `{experiment.get('name', 'theory_lab')}`, variant "
          f"`{experiment.get('variant', '?')}`; {len(rows)} rows; seeds {seeds}",
          f"- world: {experiment.get('world')}",
          f"- network: {experiment.get('net')}; {experiment.get('params')} parameters",
          f"- lab time: {experiment.get('seconds_lab', math.nan):.1f} s wall, "
          f"{experiment.get('cpu_seconds_lab', math.nan):.1f} s CPU (this process)",
          "- every number below is read from `results.jsonl` (all rows also in `results.csv`)"]


def write_report(workdir: str | os.PathLike) -> Path:
  """Regenerate ``report.md``, ``plots/`` and ``results.csv`` in ``workdir`` from its results, by
  the same path as every experiment's report (`elasticity.report.builder.build_report`)."""
  return builder.build_report(workdir, {EXPERIMENT: build}, title=TITLE, preamble=preamble)
