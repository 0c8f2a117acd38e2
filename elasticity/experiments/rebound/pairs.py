"""Prompt-matched preference pairs for the DPO/SimPO/KTO reverse step, built after stage 1.

    path = build(c, context, scorer)     # <cell dir>/pairs.jsonl: the first n⁻ pairs of the cell

For the stage-2 prompts in order (`elasticity.experiments.rebound.data.stage2_prompts`, at most
``pairs.max_prompts``), in chunks of ``eval.sampling.batch_size`` prompts: the stage's start model
samples ``pairs.samples_per_prompt`` continuations of each prompt (`elasticity.eval.generations`,
``eval.sampling``'s length, temperature and top-p; chunk ``j`` seeded by ``batch_seed(cell seed, j)``),
the task's scorer rates them (``eval.score_text``), and a prompt gives the pair {chosen: the
continuation furthest toward the side the reverse step pulls to, rejected: the one furthest the other
way} when their scores differ by at least ``pairs.margin`` (continuations that are empty are left out).
Chunks are sampled until the cell's n⁻ pairs are found, so a cell that needs fewer pairs gets a
prefix of the same list. Too few → `DataSizeError` naming ``config.pairs.margin``.

The file (JSON lines: ``prompt, chosen, rejected, chosen_score, rejected_score, prompt_index``) lives in
the cell's folder and is read as it is when it is there: a rerun, or a resumed cell, samples nothing.
When too few pairs pass the margin, ``pairs.error.json`` is left instead, and a rerun raises its
message again without sampling (the cell's identity covers every setting and its start model, so the
outcome would be the same). On several processes, process 0 samples and writes the file and the others
wait for it, or for the error file, and fail with the same message.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
from absl import logging

from elasticity import atomic
from elasticity.eval import generations as gen_lib
from elasticity.experiments.core import checkpoints
from elasticity.experiments.core.sizes import DataSizeError
from elasticity.experiments.rebound import data as tasks
from elasticity.experiments.rebound import reverse
from elasticity.experiments.rebound.evaluate import score_texts
from elasticity.experiments.rebound.grid import EXPERIMENT_DIR, prompts_file

FILE = "pairs.jsonl"
ERROR_FILE = "pairs.error.json"


def needed(c, cell) -> bool:
  """Whether the cell trains on matched pairs (a stage-2 cell of a preference reverse step)."""
  return reverse.matched_pairs(c) and cell.coords.get("stage") == "neg" and cell.train is not None


def build(c, context, scorer, *, process_index: int = 0, poll_s: float = 2.0) -> Path:
  """The cell's pairs file (module docstring); ``context``: the runner's `TrainContext`."""
  path, err = Path(context.cell_dir) / FILE, Path(context.cell_dir) / ERROR_FILE
  n = int(context.cell.data["n_neg"])
  if process_index != 0:
    return _wait(path, err, float(c.runner.get("wait_timeout_s", 86400)), poll_s)
  if path.exists():
    logging.info("matched pairs: reusing %s", path)
    return path
  if err.exists():
    raise DataSizeError(atomic.read_json(err)["error"])
  prompts = [r["prompt"] for r in atomic.read_jsonl(
      prompts_file(c, context.cell.seed).replace(EXPERIMENT_DIR, os.fspath(context.workdir)))]
  try:
    pairs = sample_pairs(c, prompts, n, context.start, scorer, seed=int(context.cell.seed))
  except DataSizeError as e:
    atomic.write_json(err, {"error": str(e)})
    raise
  atomic.write_jsonl(path, pairs)
  logging.info("matched pairs: wrote %d pairs to %s", len(pairs), path)
  return path


def sample_pairs(c, prompts: list[str], n: int, start: tuple[str, str], scorer, *, seed: int
                 ) -> list[dict]:
  """The first ``n`` matched pairs from ``prompts`` (module docstring), sampled from ``start``."""
  model, tokenizer = checkpoints.load(*start)
  k, margin, s = int(c.pairs.samples_per_prompt), float(c.pairs.margin), c.eval.sampling
  chunk = int(s.batch_size)
  toward = reverse.pull(c)
  out: list[dict] = []
  for j, lo in enumerate(range(0, len(prompts), chunk)):
    part = prompts[lo:lo + chunk]
    rendered = [tasks.render_prompt(p, c.data.template, tokenizer) for p in part]
    rows = gen_lib.continue_prompts(model, tokenizer, [p for p in rendered for _ in range(k)],
                                    max_new_tokens=int(s.max_new_tokens),
                                    temperature=float(s.temperature), top_p=float(s.top_p),
                                    seed=gen_lib.batch_seed(seed, j), batch_size=int(s.batch_size))
    rows = [dict(r, completion=continuation(r, tokenizer)) for r in rows]
    scores = np.asarray(scorer.score(score_texts(rows, c.eval.score_text)), np.float64).reshape(-1, k)
    for i, prompt in enumerate(part):
      pair = _pair([r["completion"] for r in rows[i * k:(i + 1) * k]], scores[i], toward, margin)
      if pair is not None:
        out.append({"prompt": prompt, **pair, "prompt_index": lo + i})
        if len(out) == n:
          logging.info("matched pairs: %d pairs from %d prompts (margin %g)", n, lo + i + 1, margin)
          return out
  raise DataSizeError(f"preset {c.variant or c.model.name!r}: matched pairs: {n} pairs needed, "
                      f"{len(out)} of {len(prompts)} prompts had two samples whose scores differ by "
                      f"at least {margin:g} (config.pairs.margin; or config.pairs.max_prompts, "
                      f"config.pairs.samples_per_prompt)")


def continuation(row: dict, tokenizer) -> str:
  """A generation row's new text exactly as it continues its prompt's text: decoded together with the
  prompt (a SentencePiece tokenizer drops a word's leading space when its tokens are decoded alone,
  and the training tokenizer reads prompt + response as one text)."""
  new = row["completion_ids"][:-1] if row["stopped"] else row["completion_ids"]
  head = tokenizer.decode(row["prompt_ids"])
  full = tokenizer.decode(list(row["prompt_ids"]) + list(new))
  return full[len(head):] if full.startswith(head) else row["completion"]


def _pair(texts: list[str], scores: np.ndarray, toward: float, margin: float) -> dict | None:
  """{chosen, rejected, chosen_score, rejected_score} of one prompt's samples, or None."""
  keep = [i for i, t in enumerate(texts) if t.strip()]
  if len(keep) < 2:
    return None
  oriented = toward * scores[keep]
  hi, lo = keep[int(np.argmax(oriented))], keep[int(np.argmin(oriented))]
  if abs(scores[hi] - scores[lo]) < margin or texts[hi] == texts[lo]:
    return None
  return {"chosen": texts[hi], "rejected": texts[lo], "chosen_score": float(scores[hi]),
          "rejected_score": float(scores[lo])}


def _wait(path: Path, err: Path, timeout_s: float, poll_s: float) -> Path:
  deadline = time.monotonic() + timeout_s
  while not path.exists():
    if err.exists():
      raise DataSizeError(atomic.read_json(err)["error"])
    if time.monotonic() > deadline:
      raise TimeoutError(f"{path}: process 0 wrote no matched pairs in {timeout_s:.0f}s "
                         f"(config.runner.wait_timeout_s)")
    time.sleep(poll_s)
  return path
