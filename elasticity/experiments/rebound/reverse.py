"""The reverse step's own settings: which algorithm, what it is rewarded or labelled by, and the checks.

Stage 2 pulls toward the side stage 1 did not train on: toward the negative label for ``order =
pos_first`` (``pull(c) = −1``), toward the positive one for ``neg_first`` (+1).

- ``sft``: SFT on the n⁻ stage-2 examples (no scorer).
- ``dpo``, ``simpo``, ``kto``: preference pairs with the pulled-toward side chosen, built in one of two
  ways (``config.pairs.construction``):

  - ``matched`` (default): both responses continue the *same* prompt. For each stage-2 prompt the
    stage's start model samples ``pairs.samples_per_prompt`` continuations, the task's scorer
    (``config.eval.scorer``) rates them, chosen = the extreme on the pulled-toward side, rejected = the
    other extreme, kept when they differ by at least ``pairs.margin``, from at most ``pairs.max_prompts``
    prompts (0: twice the largest n⁻); built after stage 1 (`elasticity.experiments.rebound.pairs`).
  - ``mismatched``: a stage-2 example as chosen and a stage-1-side example continuing *another*
    prompt as rejected (`elasticity.experiments.rebound.data.pairs`); needs no scorer.

- ``ppo``: PPO from the stage's start model (the frozen reference), rollouts on the first n⁻
  stage-2 prompts, reward = ``reward_sign`` · the scorer's score, with ``reward_sign = pull(c)`` unless
  ``config.ppo_train.reward_sign`` sets it (0: from the order). The scorer is
  ``config.ppo_train.scorer`` when its path is set, else ``config.eval.scorer`` (the task's); PPO's
  other knobs are ``config.ppo_train`` (`elasticity.train.config.ppo_section`). A rollout batch is
  ``config.train.train.global_batch_size`` prompts, so every n⁻ is a multiple of it.

The neutral arm trains by SFT on its neutral data whatever the reverse step.
"""

from __future__ import annotations

import copy
import os

from elasticity.eval.scorer_config import ScorerConfigError, require_scorer
from elasticity.experiments.core import cells as cells_lib
from elasticity.experiments.rebound.stats import direction
from elasticity.train import config as config_lib

PREFERENCE = ("dpo", "simpo", "kto")
REVERSES = ("sft", *PREFERENCE, "ppo")
CONSTRUCTIONS = ("matched", "mismatched")


def pull(c) -> float:
  """The side the reverse step pulls toward: −1 (negative) for pos_first, +1 for neg_first."""
  return -direction(c.order)


def mismatched_pairs(c) -> bool:
  return c.reverse in PREFERENCE and c.pairs.construction == "mismatched"


def matched_pairs(c) -> bool:
  return c.reverse in PREFERENCE and c.pairs.construction == "matched"


def max_pair_prompts(c) -> int:
  """Prompts a matched-pairs cell may sample from (``pairs.max_prompts``; 0: twice the largest n⁻)."""
  return int(c.pairs.max_prompts) or 2 * max(int(n) for n in c.n_neg)


def prompt_count(c) -> int:
  """How many stage-2 prompts the reverse step reads (PPO's rollouts, matched pairs); 0: none."""
  if c.reverse == "ppo":
    return max(int(n) for n in c.n_neg)
  return max_pair_prompts(c) if matched_pairs(c) else 0


def new_tokens(c) -> int:
  """Tokens sampled after each stage-2 prompt (a prompt must leave room for them)."""
  return int(c.ppo_train.max_new_tokens if c.reverse == "ppo" else c.eval.sampling.max_new_tokens)


def reward_sign(c) -> float:
  return float(c.ppo_train.reward_sign) or pull(c)


def ppo_scorer(c) -> tuple:
  """(the scorer section of PPO's reward, the config key that set it)."""
  if str(c.ppo_train.scorer.path):
    return c.ppo_train.scorer, "config.ppo_train.scorer"
  return c.eval.scorer, "config.eval.scorer"


def ppo_section(c):
  """The ``ppo`` section of a PPO stage-2 cell: ``config.ppo_train`` with its scorer and sign resolved."""
  p = copy.deepcopy(c.ppo_train)
  p.unlock()
  p.scorer = copy.deepcopy(ppo_scorer(c)[0])
  p.reward_sign = reward_sign(c)
  p.lock()
  return p


def scorer_identity(section) -> str:
  """A scorer's part in a cell's identity: its section without the path (a moved folder is the same
  scorer) and the folder's file names, sizes and modification times (a retrained one is not)."""
  entries = []
  path = os.fspath(section.path) if section.path not in ("", "none") else ""
  for root, _, files in (os.walk(path) if path else ()):
    for f in sorted(files):
      st = os.stat(os.path.join(root, f))
      entries.append((os.path.relpath(os.path.join(root, f), path), st.st_size, st.st_mtime_ns))
  return cells_lib.digest({**{k: v for k, v in section.to_dict().items() if k != "path"},
                           "files": sorted(entries)})


def cell_inputs(c) -> dict:
  """What decides a stage-2 cell beyond its training config: the matched pairs' settings and scorer,
  or PPO's reward scorer's files (its path is in the config)."""
  if matched_pairs(c):
    s = c.eval.sampling
    return {"pairs": {"samples_per_prompt": int(c.pairs.samples_per_prompt),
                      "margin": float(c.pairs.margin), "max_prompts": max_pair_prompts(c),
                      "max_new_tokens": int(s.max_new_tokens), "temperature": float(s.temperature),
                      "top_p": float(s.top_p), "batch_size": int(s.batch_size),
                      "score_text": str(c.eval.score_text)},
            "scorer": scorer_identity(c.eval.scorer)}
  if c.reverse == "ppo":
    return {"reward_scorer": scorer_identity(ppo_scorer(c)[0])}
  return {}


# -- checks -----------------------------------------------------------------------------------------


def validate(c, ppo_cell=None) -> None:
  """The reverse step's settings (no scorer is read: `validate_scorers` does that, last);
  ``ppo_cell``: a PPO stage-2 cell's training config, whose ``ppo`` section is checked here."""
  if c.pairs.construction not in CONSTRUCTIONS:
    raise ValueError(f"config.pairs.construction: {c.pairs.construction!r} is not one of "
                     f"{CONSTRUCTIONS}")
  if int(c.pairs.samples_per_prompt) < 2:
    raise ValueError(f"config.pairs.samples_per_prompt: a pair needs two samples of a prompt, got "
                     f"{c.pairs.samples_per_prompt}")
  if float(c.pairs.margin) < 0:
    raise ValueError(f"config.pairs.margin: must be >= 0, got {c.pairs.margin}")
  if int(c.pairs.max_prompts) < 0:
    raise ValueError(f"config.pairs.max_prompts: must be >= 0 (0: twice the largest n⁻), got "
                     f"{c.pairs.max_prompts}")
  if c.reverse != "ppo":
    return
  if c.ppo_train.reward_sign not in (0, 1, -1, 0.0, 1.0, -1.0):
    raise ValueError(f"config.ppo_train.reward_sign: 0 (from config.order), +1 or -1, got "
                     f"{c.ppo_train.reward_sign!r}")
  batch = int(c.train.train.global_batch_size)
  odd = [int(n) for n in c.n_neg if int(n) % batch]
  if odd:
    raise ValueError(f"config.n_neg: the ppo reverse step's points are whole rollout batches of "
                     f"config.train.train.global_batch_size={batch} prompts; {odd} are not multiples")
  if ppo_cell is not None:
    try:
      config_lib.validate_ppo(ppo_cell, check_scorer=False)
    except ValueError as e:
      raise ValueError(str(e).replace("config.ppo.", "config.ppo_train.")) from None


def validate_scorers(c) -> None:
  """The scorers the reverse step reads (reads only their config.json): `ScorerConfigError` naming
  the key, so that a dry run can report it and go on."""
  if matched_pairs(c) and str(c.eval.scorer.path) == "none":
    raise ScorerConfigError(
        f"config.pairs.construction: matched pairs are labelled by the task's scorer and "
        f"config.eval.scorer.path is 'none'; set a scorer or config.pairs.construction=mismatched")
  if matched_pairs(c) and float(c.pairs.margin) > 1 and not config_lib.one_logit(
      require_scorer(c.eval.scorer, "config.eval.scorer.path")):
    raise ScorerConfigError(f"config.pairs.margin: {c.pairs.margin} is more than any difference of "
                            f"two probabilities (the scorer gives P in [0, 1]): no pair can pass")
  if c.reverse != "ppo":
    return
  section, key = ppo_scorer(c)
  if str(section.path) in ("", "none"):
    raise ScorerConfigError(
        f"{key}.path: the ppo reverse step is rewarded by a scorer and none is set "
        f"({key}.path={str(section.path)!r}); set config.eval.scorer.path (the task's scorer) or "
        f"config.ppo_train.scorer.path")
  path = require_scorer(section, f"{key}.path")
  if float(section.sign) not in (1.0, -1.0) and config_lib.one_logit(path):
    raise ScorerConfigError(f"{key}.sign: {path} is a one-logit reward/cost model; set +1 (its "
                            f"logit is a reward) or -1 (a cost), got {section.sign!r}")
