"""PPO's rollouts: the resumable prompt stream, sampling with the KV cache, and the rollout batch.

Prompts come from the run's ``data`` section (`elasticity.train.data.select`: ``n``, ``slice``, the
seeded order), each record's prompt rendered by its template (`elasticity.data.format_example`; IMDb
records need ``load_kwargs.prompt_len`` so that they have a prompt). `PromptStream` visits them like
`elasticity.train.data.BatchStream` visits examples: epoch ``e`` in the order ``data.order(n, seed +
e)``, position ``{"epoch", "batch"}`` saved with every checkpoint. The sampling key of rollout ``k``
is `rollout_seed(seed, k)`, a function of the step, so a resumed run draws the same continuations.

A rollout batch (host numpy, [B, P + N]) is the left-padded prompt followed by the sampled tokens:
``input_ids``, ``attention_mask`` (1 on real prompt and generated tokens, a stop token included) and
``mask`` (1 on the generated tokens: PPO's actions, in the log-prob kernel's column convention).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from elasticity import data
from elasticity.eval.generations import batch_seed
from elasticity.models.generate import generate, left_pad
from elasticity.train.data import select


def load_prompts(cfg_data: Mapping[str, Any], tokenizer) -> tuple[list[str], list[list[int]]]:
  """Prompt texts and their token ids (BOS as the tokenizer adds it) of a ``data`` section."""
  records = data.load_dataset(cfg_data["name"], cfg_data.get("split") or None,
                              **dict(cfg_data.get("load_kwargs") or {}))
  records = select(records, cfg_data)
  texts, ids = [], []
  for i, r in enumerate(records):
    rec = dict(r)
    rec.setdefault("response", "")        # prompt-only records (and pairs: chosen/rejected unused)
    f = data.format_example(rec, cfg_data.get("template", "plain"), tokenizer)
    if not f.prompt:
      raise ValueError(f"config.data: record {i} of {cfg_data['name']!r} has an empty prompt; PPO "
                       "continues prompts (IMDb: set data.load_kwargs.prompt_len)")
    toks = list(tokenizer.encode(f.prompt, add_bos=tokenizer.add_bos_token))
    limit = int(cfg_data["max_length"])
    texts.append(f.prompt)
    ids.append([int(t) for t in toks[-limit:]])
  return texts, ids


def rollout_seed(seed: int, step: int) -> int:
  """The sampling seed of the rollout at optimizer step ``step`` (0-based)."""
  return batch_seed(seed, step)


class PromptStream:
  """Endless, resumable iterator of prompt-index batches (``state()``/``restore()`` as BatchStream)."""

  def __init__(self, n: int, batch_size: int, *, seed: int = 0, shuffle: bool = True):
    if n < batch_size:
      raise ValueError(f"config.train.global_batch_size: {batch_size} rollouts per step but only {n} "
                       "prompts in config.data")
    self.n, self.batch_size, self.seed, self.shuffle = int(n), int(batch_size), int(seed), shuffle
    self.epoch, self.batch = 0, 0

  @property
  def batches_per_epoch(self) -> int:
    return self.n // self.batch_size      # the last, partial batch of an epoch is dropped

  def __next__(self) -> np.ndarray:
    if self.batch >= self.batches_per_epoch:
      self.epoch, self.batch = self.epoch + 1, 0
    order = data.order(self.n, self.seed + self.epoch) if self.shuffle else np.arange(self.n)
    out = np.asarray(order[self.batch * self.batch_size:(self.batch + 1) * self.batch_size])
    self.batch += 1
    return out

  def state(self) -> dict[str, int]:
    return {"epoch": int(self.epoch), "batch": int(self.batch)}

  def restore(self, state: Mapping[str, Any]) -> None:
    for k in ("epoch", "batch"):
      if k not in state:
        raise ValueError(f"prompt stream state: missing key {k!r} (got {sorted(state)})")
    self.epoch, self.batch = int(state["epoch"]), int(state["batch"])


def sample(model, prompts: Sequence[Sequence[int]], p, *, seed: int, pad_id: int,
           stop_tokens: Sequence[int]) -> tuple[dict[str, np.ndarray], list[list[int]]]:
  """Sample one continuation per prompt (section ``p`` = config.ppo); ``(rollout batch, new tokens)``.

  The batch has a fixed width P + max_new_tokens (P: the prompts' padded length), so every rollout
  of the same prompt length reuses the compiled scoring and update steps.
  """
  gen = generate(model, prompts, max_new_tokens=int(p.max_new_tokens), temperature=float(p.temperature),
                 top_p=float(p.top_p), stop_tokens=tuple(stop_tokens), pad_id=pad_id, seed=seed)
  ids, pmask = left_pad(prompts, pad_id)
  b, plen = ids.shape
  n = int(p.max_new_tokens)
  new = np.full((b, n), pad_id, np.int32)
  act = np.zeros((b, n), np.int32)
  for r, toks in enumerate(gen.tokens):
    new[r, :len(toks)] = toks
    act[r, :len(toks)] = 1
  batch = {"input_ids": np.concatenate([ids, new], axis=1),
           "attention_mask": np.concatenate([pmask.astype(np.int32), act], axis=1),
           "mask": np.concatenate([np.zeros((b, plen), np.int32), act], axis=1)}
  return batch, gen.tokens
