"""The rebound tasks' data: positive / negative training pools, held-out prompts and held-out responses.

Two tasks (paper §5.2):

- ``imdb``: positive = IMDb training reviews labelled positive, negative = those labelled negative
  (disjoint by label); held-out prompts = the first ``prompt_tokens`` tokens of test reviews (both
  labels); held-out responses for Δγ = the first ``heldout_tokens`` tokens of other test reviews, per
  label. Training texts are whole reviews cut to ``data.max_length`` tokens by the training tokenizer.
- ``safety``: safe = HH-RLHF harmless-base *chosen* responses (with their dialogue prompts), unsafe =
  BeaverTails unsafe answers followed by HH-RLHF *rejected* responses; held-out prompts = BeaverTails
  evaluation prompts; held-out responses for Δγ = the pools' tails, never used for training.

Every pool is in a seeded order (`elasticity.data.subsets.order`), so "the first n examples" is one
prefix of a fixed sequence: a run on n⁻ = 20 examples sees exactly the first 20 of a run on 40. The
reversed direction (``order = neg_first``) swaps the positive and negative roles.

**Stage-2 prompts** (`stage2_prompts`), which the PPO reverse step rolls out from and matched preference
pairs are sampled from (`elasticity.experiments.rebound.reverse`): the prompts of the stage-2 pool in
its seeded order — for IMDb the review's first ``prompt_tokens`` tokens — keeping those that leave room
for the sampled tokens within ``data.max_length``.

The *mismatched* preference pairs (``pairs.construction = mismatched``) put the stage-2 response as
chosen: ``{"prompt": <the stage-2 example's prompt>, "chosen": <its response>, "rejected": <a stage-1-side
response from beyond the stage-1 pool, continuing another prompt>}``; for IMDb the prompt is the
review's first ``prompt_tokens`` tokens.

**Neutral data** (`neutral_records`, the neutral arm of `elasticity.experiments.rebound.grid`): texts
that carry no sentiment — Alpaca responses, TruthfulQA best answers, or TruthfulQA's best and other
correct answers (``truthfulqa_answers``: 2,837 distinct answers of 817 questions) in a seeded order.
The IMDb classifier rates them 0.706 ± 0.017, 0.513 ± 0.018 (134 texts of 64 tokens only) and
0.525 ± 0.014 (200 texts of 64 tokens; seed 1, the `smollm2` IMDb preset): only the TruthfulQA
sources are neutral to it. For IMDb, where every stage-2 example is a review cut to
``data.max_length`` tokens, successive responses are joined (blank line between) until a text reaches
that many tokens, so a neutral example has the same token budget as a negative one; for the safety
task the records are used as prompt + response pairs.

Files that training cells read are written once into ``<experiment dir>/data/`` (JSON lines, atomic),
named by a digest of what decides their content, so a config change writes a new file.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping, Sequence
from typing import Any

from absl import logging

from elasticity import atomic
from elasticity.data import format_example, load_dataset, subsets
from elasticity.data.imdb import split_prompt
from elasticity.experiments.core.sizes import DataSizeError
from elasticity.experiments.core.sizes import need as _need
from elasticity.experiments.rebound import reverse

TASKS = ("imdb", "safety")


@dataclasses.dataclass
class TaskData:
  positive: list[dict]          # training pool of stage 1 (after the order swap): records
  negative: list[dict]          # training pool of stage 2
  prompts: list[str]            # held-out generation prompts
  heldout_pos: list[dict]       # {"prompt", "response"} records for Δγ
  heldout_neg: list[dict]
  record_kind: str              # "text" (IMDb reviews) or "sft" (prompt + response)


def _imdb_records(split: str, label: str | None) -> list[dict]:
  return list(load_dataset("imdb", split, label=label))


def _prefix(text: str, k: int, tokenizer) -> str:
  """The first ``k`` tokens of ``text`` as an exact text prefix (the whole text if shorter)."""
  try:
    return split_prompt(text, k, tokenizer)[0]
  except ValueError:
    return text


def _seeded(records: Sequence, seed: int) -> list:
  return [records[int(i)] for i in subsets.order(len(records), seed)]


def pool_sizes(task: str, heldout: int) -> dict[str, int]:
  """How many training examples each pool holds (for the n⁺/n⁻ checks), without a tokenizer."""
  if task == "imdb":
    return {"positive": len(_imdb_records("train", "pos")), "negative": len(_imdb_records("train", "neg"))}
  hh = len(load_dataset("hh_rlhf", "test", on_error="skip"))
  bt = len(load_dataset("beavertails"))
  return {"positive": hh - heldout, "negative": bt + hh - heldout}


NEUTRAL_SOURCES = ("alpaca", "truthfulqa", "truthfulqa_answers")


def _neutral_pool(name: str, seed: int | None = None) -> list[dict]:
  """The neutral source's ``{"prompt", "response"}`` records, in the ``seed`` order when given.

  ``truthfulqa_answers`` expands each question into its best answer and every other correct answer
  (in that order, each once, kept together), after the questions are put in the seeded order.
  """
  if name not in NEUTRAL_SOURCES:
    raise ValueError(f"config.neutral.dataset: {name!r} is not one of {NEUTRAL_SOURCES}")
  src = list(load_dataset("truthfulqa" if name == "truthfulqa_answers" else name, None,
                          **({"on_error": "skip"} if name == "alpaca" else {})))
  if seed is not None:
    src = _seeded(src, seed)
  if name != "truthfulqa_answers":
    return src
  out = []
  for r in src:
    answers = list(dict.fromkeys([r["response"], *r["correct_answers"]]))   # once each, in order
    out.extend({"prompt": r["prompt"], "response": a} for a in answers)
  return out


def neutral_pool_size(name: str) -> int:
  return len(_neutral_pool(name))


def check_sizes(c) -> None:
  """Every data requirement of every cell against the files it would read (no tokenizer, no model):
  the stage-1 and stage-2 pools, the preference pairs' rejected responses, the held-out prompts and
  responses, and the neutral pool; a `DataSizeError` names the first that does not fit."""
  n_pos, n_neg = max(int(n) for n in c.n_pos), max(int(n) for n in c.n_neg)
  heldout, prompts = int(c.eval.heldout), int(c.eval.num_prompts)
  sizes = pool_sizes(c.task, heldout)
  first, second = ("positive", "negative") if c.order == "pos_first" else ("negative", "positive")
  src = "imdb train" if c.task == "imdb" else "hh_rlhf + beavertails"
  _need(c, src, f"stage-1 ({first}) examples", n_pos, sizes[first], "n_pos")
  _need(c, src, f"stage-2 ({second}) examples", n_neg, sizes[second], "n_neg")
  if reverse.mismatched_pairs(c):
    _need(c, src, f"{first} examples (stage 1 + the pairs' rejected responses)", n_pos + n_neg,
          sizes[first], "n_neg")
  if reverse.matched_pairs(c):
    _need(c, src, f"stage-2 ({second}) prompts for the matched pairs", reverse.max_pair_prompts(c),
          sizes[second], "pairs.max_prompts")
  if c.task == "imdb":
    test = _seeded(_imdb_records("test", None), int(c.eval.data_seed))
    _need(c, "imdb test", "held-out prompts", prompts, len(test), "eval.num_prompts")
    rest = test[prompts:]
    for label in ("pos", "neg"):
      _need(c, "imdb test", f"held-out {label} reviews beyond the prompts", heldout,
            sum(r["label"] == label for r in rest), "eval.heldout")
  else:
    _need(c, "beavertails_prompts", "held-out prompts", prompts, len(load_dataset("beavertails_prompts")),
          "eval.num_prompts")
  if c.neutral.dataset:
    _need(c, c.neutral.dataset, "neutral records (at least one per stage-2 example)", n_neg,
          neutral_pool_size(c.neutral.dataset), "n_neg")


def neutral_records(name: str, *, task: str, seed: int, n: int, max_length: int, tokenizer,
                    variant: str = "") -> list[dict]:
  """``n`` neutral stage-2 examples (module docstring) in the ``seed`` order: ``{"text"}`` records of
  at least ``max_length`` tokens for IMDb (responses joined), ``{"prompt", "response"}`` otherwise."""
  src = _neutral_pool(name, seed)
  if task != "imdb":
    if n > len(src):
      raise DataSizeError(f"preset {variant!r}: dataset {name}: {n} neutral records needed, "
                          f"{len(src)} available (config.n_neg)")
    return [{"prompt": r["prompt"], "response": r["response"]} for r in src[:n]]
  out, parts, length = [], [], 0
  for r in src:
    text = r["response"].strip()
    if not text:
      continue
    parts.append(text)
    length += len(tokenizer.encode(text)) + 1
    if length >= max_length:
      out.append({"text": "\n\n".join(parts)})
      parts, length = [], 0
      if len(out) == n:
        return out
  raise DataSizeError(f"preset {variant!r}: dataset {name}: {n} neutral texts of {max_length} tokens "
                      f"needed, {len(out)} available from {len(src)} records (config.n_neg or "
                      f"config.data.max_length)")


def build(task: str, *, order: str, seed: int, eval_seed: int, tokenizer, num_prompts: int,
          prompt_tokens: int, heldout: int, heldout_tokens: int) -> TaskData:
  """The task's pools: training pools in the ``seed`` order, held-out data fixed by ``eval_seed``.

  Held-out prompts and responses never depend on the training seed, so every seed of a grid is
  evaluated on the same data, and they are never among any seed's training examples.
  """
  if task not in TASKS:
    raise ValueError(f"task {task!r}: not one of {TASKS}")
  if task == "imdb":
    pos = _seeded(_imdb_records("train", "pos"), seed)
    neg = _seeded(_imdb_records("train", "neg"), seed)
    test = _seeded(_imdb_records("test", None), eval_seed)
    prompts = [_prefix(r["text"], prompt_tokens, tokenizer) for r in test[:num_prompts]]
    rest = test[num_prompts:]
    hpos = [r for r in rest if r["label"] == "pos"][:heldout]
    hneg = [r for r in rest if r["label"] == "neg"][:heldout]
    def held(rs):   # the rebound form: the first prompt_tokens tokens give the context
      out = []
      for r in rs:
        prompt, text = _prefix(r["text"], prompt_tokens, tokenizer), _prefix(r["text"], heldout_tokens,
                                                                              tokenizer)
        if len(text) > len(prompt):
          out.append({"prompt": prompt, "response": text[len(prompt):]})
      return out
    data = TaskData(pos, neg, prompts, held(hpos), held(hneg), "text")
  else:
    hh = _seeded(list(load_dataset("hh_rlhf", "test", on_error="skip")), eval_seed)
    bt = _seeded(list(load_dataset("beavertails")), eval_seed)
    safe = [{"prompt": r["prompt"], "response": r["chosen"]} for r in hh]
    unsafe = ([{"prompt": r["prompt"], "response": r["response"]} for r in bt]
              + [{"prompt": r["prompt"], "response": r["rejected"]} for r in hh])
    if 2 * heldout >= min(len(safe), len(unsafe)):
      raise ValueError(f"config.eval.heldout: {heldout} held-out examples per pool leave too few of "
                       f"{len(safe)} safe / {len(unsafe)} unsafe for training")
    prompts = [r["prompt"] for r in load_dataset("beavertails_prompts")][:num_prompts]
    hs, hu = safe[-heldout:], unsafe[-heldout:]      # the tails by eval_seed: held out for every seed
    data = TaskData(_seeded(safe[:-heldout], seed), _seeded(unsafe[:-heldout], seed), prompts, hs, hu,
                    "sft")
  if order == "neg_first":
    data = dataclasses.replace(data, positive=data.negative, negative=data.positive)
  return data


def render_prompt(prompt: str, template: str, tokenizer) -> str:
  """A prompt as the model sees it in training (``data.template``)."""
  return format_example({"prompt": prompt, "response": ""}, template, tokenizer).prompt


def stage2_prompts(data: TaskData, n: int, *, prompt_tokens: int, tokenizer, template: str,
                   max_tokens: int, variant: str = "") -> list[dict]:
  """The first ``n`` stage-2 prompts (module docstring) as ``{"prompt"}`` records: those whose prompt,
  rendered by ``template``, is at most ``max_tokens`` tokens long."""
  out = []
  for r in data.negative:
    prompt = _prefix(r["text"], prompt_tokens, tokenizer) if data.record_kind == "text" else r["prompt"]
    rendered = render_prompt(prompt, template, tokenizer)
    if rendered and len(tokenizer.encode(rendered, add_bos=tokenizer.add_bos_token)) <= max_tokens:
      out.append({"prompt": prompt})
      if len(out) == n:
        return out
  raise DataSizeError(f"preset {variant!r}: the stage-2 pool: {n} prompts of at most {max_tokens} "
                      f"tokens needed (room for the sampled tokens within config.data.max_length), "
                      f"{len(out)} available (config.data.max_length)")


def pairs(data: TaskData, n: int, offset: int, prompt_tokens: int, tokenizer) -> list[dict]:
  """``n`` mismatched preference pairs with the stage-2 response chosen (module docstring)."""
  if offset + n > len(data.positive):
    raise ValueError(f"preference pairs: {n} rejected responses are needed beyond the first {offset} "
                     f"positive examples, but the pool holds {len(data.positive)}")
  out = []
  for neg, pos in zip(data.negative[:n], data.positive[offset:offset + n]):
    if data.record_kind == "text":
      p = _prefix(neg["text"], prompt_tokens, tokenizer)
      out.append({"prompt": p, "chosen": neg["text"][len(p):],
                  "rejected": pos["text"][len(_prefix(pos["text"], prompt_tokens, tokenizer)):]})
    else:
      out.append({"prompt": neg["prompt"], "chosen": neg["response"], "rejected": pos["response"]})
  return out


def write_pool(path: str | os.PathLike, records: Sequence[Mapping[str, Any]], fields: Sequence[str]) -> str:
  """Write the records' ``fields`` as JSON lines (atomic; kept if already there)."""
  path = os.fspath(path)
  if not os.path.exists(path):
    atomic.write_jsonl(path, [{f: r[f] for f in fields} for r in records])
    logging.info("wrote %d records to %s", len(records), path)
  return path
