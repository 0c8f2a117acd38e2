"""Labelled single completions for KTO: unpairing preference data, labels, and fixed KL partners.

KTO (Ethayarajh et al. 2024) trains on ``(prompt, completion, desirable?)`` examples. Two sources:

* preference pairs, unpaired (TRL's standard conversion): ``unpair`` turns ``{prompt, chosen,
  rejected}`` into two SFT-kind records ``{prompt, response, label}``, chosen → 1 (desirable) and
  rejected → 0 (undesirable), keeping provenance (``source_file``/``source_index``) and the pair's
  position as ``pair_index``;
* records with a label field: a boolean-like value (``True``/``False``, 0/1, ``"true"``/``"false"``,
  ``"yes"``/``"no"``, ``"1"``/``"0"``) or, with ``desirable=`` a collection of values, desirable iff
  the value is one of them (IMDb: ``label_field="label", desirable=("pos",)``).

KTO's reference point z0 is a KL estimate on *mismatched* prompt/completion pairs. TRL pairs each
example with the next one of its batch; here every example gets one fixed partner instead, so the
reference model's log-prob of each example's KL sequence can be computed once before training, like
DPO's reference. The partner: in the seeded order ``order(n, seed)``, walk forward (cyclically) from
the example to the first example whose formatted prompt differs — an unpaired chosen/rejected sibling
is never its own partner; if every prompt is the same, the next example. The KL sequence is the
example's prompt tokens followed by the partner's response tokens, cut on the right to
``max_length``; only the partner's response tokens are scored (never position 0).
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass

import numpy as np
from absl import logging

from elasticity.data.errors import DataError
from elasticity.data.formats import format_example
from elasticity.data.records import BOOL_WORDS, KINDS, Records, get_field, where
from elasticity.data.subsets import order
from elasticity.data.tokenize import TokenizedDataset, TokenizedExample, tokenize
from elasticity.tokenizers import as_tokenizer


def unpair(records: Sequence[dict]) -> Records:
  """Preference records → SFT-kind records ``{..., "response", "label", "pair_index"}``, two per pair.

  Record ``2i`` is pair ``i``'s chosen completion (``label`` 1), record ``2i + 1`` its rejected one
  (``label`` 0). Every other field (``prompt``, ``messages``, provenance) is copied; a record without
  ``source_index`` gets the pair's position, so errors still name the preference record.
  """
  out = []
  for i, rec in enumerate(records):
    for key in KINDS["preference"]:
      if not isinstance(rec, dict) or key not in rec:
        file, number = where(rec, i)
        raise DataError(file, number, key, "missing field (unpair needs preference records "
                        "{prompt, chosen, rejected})")
    base = {k: v for k, v in rec.items() if k not in ("chosen", "rejected")}
    base.setdefault("source_index", i)
    base["pair_index"] = i
    out.append({**base, "response": rec["chosen"], "label": 1})
    out.append({**base, "response": rec["rejected"], "label": 0})
  return Records(out, kind="sft", source=getattr(records, "source", "<memory>"))


def read_label(record: dict, position: int, field: str = "label",
               desirable: Collection | None = None) -> int:
  """1 (desirable) or 0 (undesirable) from ``record[field]`` (dotted keys reach into dicts).

  Without ``desirable`` the value must be boolean-like (module docstring); with it, the label is 1
  iff the value is in ``desirable``. Anything else is a ``DataError`` naming file, record and field.
  """
  file, number = where(record, position)
  found, value = get_field(record, field)
  if not found:
    raise DataError(file, number, field, "missing field (the KTO label: desirable or not)")
  if value is None:
    raise DataError(file, number, field, "missing value (null) for the KTO label")
  if desirable is not None:
    return int(value in desirable)
  if isinstance(value, (bool, np.bool_)):
    return int(value)
  if isinstance(value, (int, np.integer)) and int(value) in (0, 1):
    return int(value)
  if isinstance(value, str) and value.strip().lower() in BOOL_WORDS:
    return int(BOOL_WORDS[value.strip().lower()])
  raise DataError(file, number, field,
                  f"expected a boolean-like label (true/false, 1/0, yes/no), got {value!r}; "
                  "for other values set desirable= (the values that count as desirable)")


@dataclass(frozen=True)
class LabelledExample:
  """One KTO example: the completion, its KL sequence, and its label.

  Attributes:
    example: the tokenized prompt + completion.
    kl: the example's prompt tokens + the partner's response tokens (only the latter scored).
    label: 1 desirable, 0 undesirable.
    partner: ``index`` of the example whose response ``kl`` borrows.
  """
  example: TokenizedExample
  kl: TokenizedExample
  label: int
  partner: int = -1

  @property
  def index(self) -> int:
    return self.example.index


class LabelledDataset(TokenizedDataset):
  """A list of ``LabelledExample`` with the ``TokenizeReport`` and the label counts."""

  @property
  def n_desirable(self) -> int:
    return sum(1 for ex in self if ex.label)

  @property
  def n_undesirable(self) -> int:
    return len(self) - self.n_desirable


def kl_partners(prompts: Sequence, seed: int) -> list[int]:
  """For each position, the position of its KL partner (module docstring); ``prompts`` are keys."""
  n = len(prompts)
  ids: dict = {}
  key = [ids.setdefault(p, len(ids)) for p in prompts]
  perm = order(n, seed)
  at = np.empty(n, np.int64)
  at[perm] = np.arange(n)
  out = []
  for i in range(n):
    nxt = int(perm[(at[i] + 1) % n])
    partner = nxt
    if len(ids) > 1:
      for k in range(1, n):
        j = int(perm[(at[i] + k) % n])
        if key[j] != key[i]:
          partner = j
          break
    out.append(partner)
  return out


def kl_example(ex: TokenizedExample, partner: TokenizedExample,
               max_length: int | None) -> TokenizedExample:
  """``ex``'s prompt tokens + ``partner``'s response tokens, cut on the right to ``max_length``."""
  prompt = ex.input_ids[:ex.prompt_len]
  ids = np.concatenate([prompt, partner.input_ids[partner.prompt_len:]]).astype(np.int32)
  cut = max_length is not None and ids.size > max_length
  if cut:
    ids = ids[:max_length]
  mask = np.zeros(ids.shape, np.int32)
  mask[len(prompt):] = 1
  if ids.size:
    mask[0] = 0
  return TokenizedExample(ids, mask, ex.index, min(ex.prompt_len, ids.size), partner.response,
                          partner.response_bytes, ex.prompt_truncated,
                          partner.response_truncated or cut)


def tokenize_labelled(records: Sequence[dict], tokenizer, *, label_field: str = "label",
                      desirable: Collection | str | None = None, seed: int = 0,
                      template: str = "plain", max_length: int | None = None,
                      policy: str = "truncate_prompt_left", add_bos: bool | None = None,
                      add_eos: bool = True, system: str | None = None) -> LabelledDataset:
  """Tokenize labelled ``{prompt, response, <label_field>}`` records into ``LabelledExample``s.

  Every label is read (and checked) before anything is tokenized. Tokenization options as in
  ``tokenize``; examples it drops get no KL partner and are no one's partner. ``seed`` fixes the
  KL partners.
  """
  if isinstance(desirable, str):
    desirable = (desirable,)
  if desirable is not None and not len(desirable):
    desirable = None
  tokenizer = as_tokenizer(tokenizer)
  labels = [read_label(rec, i, label_field, desirable) for i, rec in enumerate(records)]
  toks = tokenize(records, tokenizer, template=template, max_length=max_length, policy=policy,
                  add_bos=add_bos, add_eos=add_eos, system=system)
  prompts = [format_example(records[ex.index], template, tokenizer, position=ex.index,
                            system=system).prompt for ex in toks]
  partners = kl_partners(prompts, seed)
  out = LabelledDataset([LabelledExample(ex, kl_example(ex, toks[j], max_length), labels[ex.index],
                                         toks[j].index) for ex, j in zip(toks, partners)],
                        report=toks.report)
  if out and not (out.n_desirable and out.n_undesirable):
    logging.warning("KTO examples: all %d are %s (label field %r, desirable=%r)", len(out),
                "desirable" if out.n_desirable else "undesirable", label_field, desirable)
  return out
