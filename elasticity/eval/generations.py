"""Continuations of held-out prompts, and the ``generations.jsonl`` file that keeps them for re-scoring.

    rows = continue_prompts(model, tokenizer, prompts, max_new_tokens=48, temperature=1.0, top_p=1.0,
                            seed=0, batch_size=16)
    save(cell_dir / "generations.jsonl", rows, {"model": "smollm2-135m", **sampling})
    rows, meta = load(cell_dir / "generations.jsonl")

Prompts are encoded with BOS as the tokenizer does (``add_bos=None`` follows
``tokenizer.add_bos_token``) and continued with the KV-cache sampler `elasticity.models.generate`
in fixed-size batches: the last batch is filled up with copies of its own last prompt (dropped from
the result), so every batch has ``batch_size`` rows and batches whose prompts pad to the same length
share one compilation. Decoding stops at the tokenizer's EOS (``stop_tokens`` overrides).

Seeding: `generate` draws each batch's tokens from one key for the whole batch, so a row's sample
depends on the batch it sits in. The seed is therefore *per batch*: batch ``j`` (prompts
``j·batch_size … (j+1)·batch_size − 1``) samples with the seed ``batch_seed(seed, j)``. The same
prompts, seed and batch size give the same continuations on every run; another batch size gives other
(equally distributed) samples. Greedy decoding (``temperature=0``) does not depend on the seed.

File format (one JSON object per line, written atomically): the first line is ``{"meta": {...}}``
(format tag, the sampling settings, the seed, the model id and anything else the caller adds, and the
number of rows), then one row per prompt: ``index, prompt, prompt_ids, completion, completion_ids,
stopped``. ``completion_ids`` are the new tokens, a final stop token included; ``completion`` is the
decoded text of the new tokens without the stop token.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import ml_collections
import numpy as np

from elasticity import atomic
from elasticity.models.generate import generate
from elasticity.models.transformer import CausalLM

log = logging.getLogger(__name__)

FORMAT = "elasticity.generations/1"
ROW_FIELDS: dict[str, type | tuple[type, ...]] = {
    "index": int, "prompt": str, "prompt_ids": list, "completion": str, "completion_ids": list,
    "stopped": bool}


def sampling_section() -> ml_collections.ConfigDict:
  """The ``sampling`` section of an experiment config: how continuations are drawn, and how many."""
  return ml_collections.ConfigDict(dict(
      max_new_tokens=48,      # new tokens per continuation (EOS may end one earlier)
      temperature=1.0,        # 0 = greedy
      top_p=1.0,              # nucleus mass kept; 1 = the full distribution
      seed=0,                 # per batch: batch j samples with batch_seed(seed, j)
      batch_size=16,          # rows per `generate` call (fixed: the last batch is filled up)
      num_prompts=100,        # held-out prompts to continue
  ))


def batch_seed(seed: int, batch_index: int) -> int:
  """The 31-bit seed of batch ``batch_index`` (a hash of both, so batches draw unrelated keys)."""
  return int(np.random.SeedSequence([int(seed), int(batch_index)]).generate_state(1)[0] >> 1)


def _check_int(name: str, value: Any, low: int) -> int:
  if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
    raise ValueError(f"continue_prompts: {name} must be an integer >= {low}, got {value!r}")
  return int(value)


def encode_prompts(tokenizer: Any, prompts: Sequence[str], add_bos: bool | None = None
                   ) -> list[list[int]]:
  """Token ids of each prompt, BOS first when ``add_bos`` (None: as the tokenizer does)."""
  if isinstance(prompts, (str, bytes)) or not isinstance(prompts, Sequence):
    raise TypeError(f"prompts must be a sequence of strings, got {type(prompts).__name__}")
  bos = tokenizer.add_bos_token if add_bos is None else bool(add_bos)
  out = []
  for i, p in enumerate(prompts):
    if not isinstance(p, str):
      raise TypeError(f"prompt {i}: expected a string, got {type(p).__name__}")
    ids = list(tokenizer.encode(p, add_bos=bos))
    if not ids:
      raise ValueError(f"prompt {i}: encodes to no tokens (empty prompt and no BOS): nothing to "
                       "continue from; give it text or pass add_bos=True")
    out.append([int(t) for t in ids])
  return out


def continue_prompts(model: CausalLM, tokenizer: Any, prompts: Sequence[str], *, max_new_tokens: int,
                     temperature: float, top_p: float, seed: int, batch_size: int,
                     add_bos: bool | None = None, stop_tokens: Sequence[int] | None = None,
                     keep_hidden: bool = False) -> list[dict[str, Any]]:
  """Sample one continuation per prompt; rows in prompt order (see the module docstring).

  Args:
    model: the policy.
    tokenizer: its `elasticity.tokenizers.Tokenizer`.
    prompts: prompt texts.
    max_new_tokens, temperature, top_p: sampling settings (`elasticity.models.generate`).
    seed: the run's seed; batch ``j`` uses ``batch_seed(seed, j)``.
    batch_size: prompts per `generate` call.
    add_bos: None follows the tokenizer.
    stop_tokens: ids that end a continuation (None: the tokenizer's EOS, if it has one).
    keep_hidden: also keep, as ``row["policy_hidden"]``, the model's final-normed activations
      [len(completion_ids), D] from which each new token was drawn (`elasticity.eval.kl` computes the
      KL to a reference from them without the policy's second forward). Not saved by `save`.
  """
  max_new_tokens = _check_int("max_new_tokens", max_new_tokens, 1)
  batch_size = _check_int("batch_size", batch_size, 1)
  seed = _check_int("seed", seed, 0)
  if not isinstance(temperature, (int, float)) or not np.isfinite(temperature) or temperature < 0:
    raise ValueError(f"continue_prompts: temperature must be a finite number >= 0, got {temperature!r}")
  if not isinstance(top_p, (int, float)) or not 0.0 < top_p <= 1.0:
    raise ValueError(f"continue_prompts: top_p must be in (0, 1], got {top_p!r}")
  vocab = int(model.config.vocab_size)
  if int(tokenizer.vocab_size) > vocab:
    raise ValueError(f"continue_prompts: the tokenizer has {tokenizer.vocab_size} tokens, the model "
                     f"only {vocab}")
  if stop_tokens is None:
    stop_tokens = () if tokenizer.eos_id is None else (int(tokenizer.eos_id),)
  stops = tuple(int(t) for t in stop_tokens)
  for t in stops:
    if not 0 <= t < vocab:
      raise ValueError(f"continue_prompts: stop token {t} outside the vocabulary [0, {vocab})")
  encoded = encode_prompts(tokenizer, prompts, add_bos)
  rows: list[dict[str, Any]] = []
  for j, start in enumerate(range(0, len(encoded), batch_size)):
    batch = encoded[start:start + batch_size]
    filled = batch + [batch[-1]] * (batch_size - len(batch))
    out = generate(model, filled, max_new_tokens=max_new_tokens, temperature=float(temperature),
                   top_p=float(top_p), stop_tokens=stops, pad_id=tokenizer.pad_id,
                   seed=batch_seed(seed, j), return_hidden=keep_hidden)
    for r, ids in enumerate(batch):
      new = [int(t) for t in out.tokens[r]]
      stopped = bool(out.stopped[r])
      text_ids = new[:-1] if stopped else new
      rows.append({"index": start + r, "prompt": prompts[start + r], "prompt_ids": ids,
                   "completion": tokenizer.decode(text_ids), "completion_ids": new,
                   "stopped": stopped})
      if keep_hidden:
        rows[-1]["policy_hidden"] = out.hidden[r]
    log.info("generated %d/%d continuations", len(rows), len(encoded))
  return rows


# --------------------------------------------------------------------------------------------------
# generations.jsonl
# --------------------------------------------------------------------------------------------------


def _check_row(row: Any, where: str) -> None:
  if not isinstance(row, Mapping):
    raise ValueError(f"{where}: expected a JSON object, got {type(row).__name__}")
  for field, kind in ROW_FIELDS.items():
    if field not in row:
      raise ValueError(f"{where}: field {field!r} is missing")
    value = row[field]
    ok = isinstance(value, kind) and not (kind is int and isinstance(value, bool))
    if not ok:
      raise ValueError(f"{where}: field {field!r} must be {kind.__name__}, got "
                       f"{type(value).__name__}")
    if kind is list and not all(isinstance(t, int) and not isinstance(t, bool) for t in value):
      raise ValueError(f"{where}: field {field!r} must be a list of token ids (integers)")
  if not row["prompt_ids"]:
    raise ValueError(f"{where}: field 'prompt_ids' is empty")


def save(path: str | os.PathLike, rows: Sequence[Mapping[str, Any]], meta: Mapping[str, Any]
         ) -> Path:
  """Write ``generations.jsonl`` atomically: a meta line (``meta`` plus format and count), then rows."""
  if not isinstance(meta, Mapping):
    raise TypeError(f"{path}: meta must be a mapping, got {type(meta).__name__}")
  for i, row in enumerate(rows):
    _check_row(row, f"{path}: row {i}")
  head = {"meta": {**dict(meta), "format": FORMAT, "count": len(rows)}}
  return atomic.write_jsonl(path, [head, *[{k: row[k] for k in ROW_FIELDS} for row in rows]])


def load(path: str | os.PathLike) -> tuple[list[dict[str, Any]], dict[str, Any]]:
  """``(rows, meta)`` of a ``generations.jsonl``; a bad line names the file, line and field."""
  path = Path(path)
  if not path.is_file():
    raise FileNotFoundError(f"{path}: no generations file")
  lines = atomic.read_jsonl(path)
  if not lines or not isinstance(lines[0], dict) or not isinstance(lines[0].get("meta"), dict):
    raise ValueError(f"{path}: line 1: expected the meta record {{\"meta\": {{...}}}}")
  meta = dict(lines[0]["meta"])
  if meta.get("format") != FORMAT:
    raise ValueError(f"{path}: line 1: field 'meta.format' is {meta.get('format')!r}, expected "
                     f"{FORMAT!r}")
  rows = lines[1:]
  for i, row in enumerate(rows):
    _check_row(row, f"{path}: line {i + 2}")
  if meta.get("count") != len(rows):
    raise ValueError(f"{path}: line 1: field 'meta.count' says {meta.get('count')!r} rows, the file "
                     f"has {len(rows)}")
  return [dict(r) for r in rows], meta


# --------------------------------------------------------------------------------------------------
# the policy's activations beside generations.jsonl
# --------------------------------------------------------------------------------------------------


def save_hidden(path: str | os.PathLike, rows: Sequence[Mapping[str, Any]], fingerprint: str) -> Path:
  """Write the rows' ``policy_hidden`` (float32, exact for bfloat16 models too) atomically as one
  ``.npz``: the activations concatenated [Σ completion lengths, D], each row's length, and
  ``fingerprint`` (the generations' own), which `load_hidden` checks."""
  lengths = np.array([len(r["completion_ids"]) for r in rows], np.int64)
  for i, (r, n) in enumerate(zip(rows, lengths)):
    h = np.asarray(r.get("policy_hidden"))
    if h.ndim != 2 or h.shape[0] != n:
      raise ValueError(f"{path}: row {i}: field 'policy_hidden' must be [{n}, D] (one row per new "
                       f"token), got {h.shape}")
  hidden = np.concatenate([np.asarray(r["policy_hidden"], np.float32) for r in rows])
  return atomic.write_with(path, lambda tmp: np.savez(tmp, hidden=hidden, lengths=lengths,
                                                      fingerprint=np.array(fingerprint)),
                           suffix=".npz")


def load_hidden(path: str | os.PathLike, rows: Sequence[Mapping[str, Any]], fingerprint: str
                ) -> list[np.ndarray] | None:
  """Per row, the activations `save_hidden` wrote for these rows; None when the file is missing, or
  was written for other generations (another fingerprint or other completion lengths)."""
  path = Path(path)
  if not path.is_file():
    return None
  with np.load(path) as f:
    if str(f["fingerprint"]) != fingerprint:
      return None
    lengths = f["lengths"]
    if lengths.tolist() != [len(r["completion_ids"]) for r in rows]:
      return None
    hidden = f["hidden"]
  return np.split(hidden, np.cumsum(lengths)[:-1])


__all__ = ["FORMAT", "batch_seed", "continue_prompts", "encode_prompts", "load", "load_hidden",
           "sampling_section", "save", "save_hidden"]
