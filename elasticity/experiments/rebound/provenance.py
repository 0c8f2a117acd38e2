"""The report's "Scorers and the reverse step": which scorer (path, sign) made every number, and which
algorithm was the reverse step, with its reward's sign — read from ``experiment.json``'s config (and its
``rescored`` record, when `elasticity.experiments.rebound.rescore` replaced the scores)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import ml_collections

from elasticity.experiments.rebound import reverse
from elasticity.report.document import Section

SIDES = {"imdb": ("negative", "positive"), "safety": ("unsafe", "safe")}


def _scorer(s: Mapping[str, Any]) -> str:
  path = str(s.get("path", ""))
  if path in ("", "none"):
    return "none"
  return f"`{path}` (sign {float(s.get('sign', 1.0)):+g})"


def _config(meta: Mapping[str, Any]):
  """The experiment config, with the keys that older runs lack at the values those runs used."""
  c = dict(meta.get("config") or {})
  if not c or "reverse" not in c:
    return None
  c.setdefault("pairs", {"construction": "mismatched"})      # before matched pairs existed
  return ml_collections.ConfigDict(c)


def reverse_step(c) -> str:
  """One line on the reverse step: its algorithm, its data, and its scorer with the reward's sign."""
  low, high = SIDES.get(c.task, ("negative", "positive"))
  toward = low if reverse.pull(c) < 0 else high
  if c.reverse == "sft":
    return f"SFT on the n⁻ stage-2 ({toward}) examples; no scorer."
  name = c.reverse.upper() if c.reverse != "simpo" else "SimPO"
  if c.reverse == "ppo":
    sign = reverse.reward_sign(c)
    section, key = reverse.ppo_scorer(c)
    return (f"PPO from the stage's start model (also the KL reference, β = {float(c.ppo_train.kl_coef):g}"
            f", {c.ppo_train.kl_control}) on the first n⁻ stage-2 prompts, reward = {sign:+g} · the score "
            f"of {_scorer(section)} (`{key}`): toward the {low if sign < 0 else high} side.")
  if c.pairs.construction == "matched":
    p = c.pairs
    return (f"{name} on prompt-matched pairs: {int(p.samples_per_prompt)} continuations of each "
            f"stage-2 prompt sampled from the stage's start model, rated by {_scorer(c.eval.scorer)}; "
            f"chosen = the one rated furthest toward the {toward} side, rejected = furthest the other "
            f"way, kept when they differ by ≥ {float(p.margin):g}, from at most "
            f"{reverse.max_pair_prompts(c)} prompts.")
  return (f"{name} on mismatched pairs (chosen: a stage-2 ({toward}) example; rejected: a response "
          f"continuing another prompt); no scorer.")


def section(meta: Mapping[str, Any]) -> Section | None:
  c = _config(meta)
  if c is None:
    return None
  ev = c.eval.scorer
  lines = []
  rescored = meta.get("rescored")
  if rescored:
    lines.append(f"- **Scores** (`score`, `p_positive`, `score_values` and everything computed from "
                 f"them): re-scored after the run by `{rescored.get('scorer')}` "
                 f"({rescored.get('score_text', c.eval.score_text)}); the run itself was scored by "
                 f"{_scorer(ev)}.")
  elif str(ev.path) in ("", "none"):
    lines.append("- **Scores**: none (`config.eval.scorer.path = none`): Δγ and the KL only.")
  else:
    lines.append(f"- **Scores** (`score`, `p_positive`, `score_values` and everything computed from "
                 f"them): {_scorer(ev)} on the {c.eval.score_text.replace('_', ' + ')}.")
  if c.eval.get("score_as", "share") == "probability" and str(ev.path) not in ("", "none"):
    lines[-1] += (" A classifier's `score` is its mean probability (`eval.score_as = probability`), "
                  "not the share of continuations over 0.5.")
  lines.append("- **Δγ and the KL to the base**: no scorer (compression of held-out responses; the "
               "policy's own continuations).")
  lines.append(f"- **Reverse step** ({c.reverse}): {reverse_step(c)}")
  if c.get("neutral") and c.neutral.dataset:
    lines.append(f"- **Neutral arm**: SFT on {c.neutral.dataset} data, whatever the reverse step.")
  return Section("Scorers and the reverse step", "\n".join(lines))
