"""Built-in datasets (Alpaca, TruthfulQA, BeaverTails, HH-RLHF) and generic file sources.

Each built-in reads its source's own format from ``data_dir`` (default ``shared_path("data",
<name>)``), or, with ``source="hf"``, the Hugging Face dataset of the same content. Local and online
rows go through the same field checks. IMDb lives in ``imdb.py``.

Options common to the built-ins: ``path=`` (a file instead of the default one in ``data_dir``),
``allow_empty=`` (keep records whose response is empty; the shared Alpaca slice has 4 and the
HH-RLHF harmless-base test split has 4 empty chosen turns, so the strict default refuses them).
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from elasticity.data.errors import DataError
from elasticity.data.records import BOOL_WORDS, KINDS, Records, Row, collect, kind_of, text_field
from elasticity.data.registry import register
from elasticity.data.sources import (UNITS, file_format, iter_file, iter_hf, map_fields)
from elasticity.paths import shared_path


def _folder(data_dir, name: str) -> Path:
  return Path(data_dir) if data_dir is not None else shared_path("data", name)


def _find(folder: Path, names: tuple[str, ...]) -> Path:
  for n in names:
    if (folder / n).is_file():
      return folder / n
  raise FileNotFoundError(f"none of {list(names)} in {folder} (put the file there, set "
                          "ELASTICITY_SHARED to the folder that holds data/, or give the loader "
                          "data_dir= or path= — in a config file, data.load_kwargs)")


def _check_split(name: str, split: str | None, allowed: tuple[str, ...]) -> str:
  if split is None:
    return allowed[0]
  if split not in allowed:
    raise ValueError(f"{name}: split {split!r} not available; one of {allowed}")
  return split


def _local(path: str | os.PathLike | None, data_dir, name: str,
           names: tuple[str, ...]) -> tuple[Path, str]:
  p = Path(path) if path is not None else _find(_folder(data_dir, name), names)
  return p, UNITS[file_format(p)]


# --------------------------------------------------------------------------------------------------
# Alpaca
# --------------------------------------------------------------------------------------------------


@register("alpaca")
def alpaca(*, split=None, data_dir=None, source=None, on_error="raise", path=None,
           allow_empty: bool = False, hf_name: str = "tatsu-lab/alpaca") -> Records:
  """Stanford Alpaca: ``prompt`` = instruction (+ "\\n\\n" + input), ``response`` = output.

  ``instruction`` and ``input`` are kept so that the Alpaca template can be applied.
  """
  _check_split("alpaca", split, ("train",))
  if source == "hf":
    rows, file, unit = iter_hf(hf_name, split="train"), f"hf:{hf_name}[train]", "row"
  else:
    p, unit = _local(path, data_dir, "alpaca", ("alpaca_data_first1805.json", "alpaca_data.json"))
    rows, file = iter_file(p), str(p)

  def build(row: Row) -> dict:
    r = map_fields(row, {"instruction": "instruction", "input": "input", "response": "output"},
                   file=file, unit=unit, text_fields={"instruction", "input", "response"},
                   allow_empty={"input"} | ({"response"} if allow_empty else set()))
    prompt = r["instruction"] + ("\n\n" + r["input"] if r["input"].strip() else "")
    return {"prompt": prompt, "response": r["response"], "instruction": r["instruction"],
            "input": r["input"]}

  return collect(rows, build, kind="sft", source=file, on_error=on_error)


# --------------------------------------------------------------------------------------------------
# TruthfulQA
# --------------------------------------------------------------------------------------------------


def split_answers(value: str) -> list[str]:
  """TruthfulQA's ``"a; b; c"`` answer lists (a trailing ";" is tolerated)."""
  return [a.strip() for a in value.strip().rstrip(";").split("; ") if a.strip()]


@register("truthfulqa")
def truthfulqa(*, split=None, data_dir=None, source=None, on_error="raise", path=None,
               hf_name: str = "truthful_qa") -> Records:
  """TruthfulQA generation: ``prompt`` = question, ``response`` = best answer.

  Also ``correct_answers``/``incorrect_answers`` (lists), ``category``, ``type``, ``source``.
  """
  _check_split("truthfulqa", split, ("validation",))
  if source == "hf":
    rows, file, unit = (iter_hf(hf_name, split="validation", config="generation"),
                        f"hf:{hf_name}/generation[validation]", "row")
    keys = {"prompt": "question", "response": "best_answer", "correct": "correct_answers",
            "incorrect": "incorrect_answers", "category": "category", "type": "type",
            "source": "source"}
  else:
    p, unit = _local(path, data_dir, "truthfulqa", ("TruthfulQA.csv",))
    rows, file = iter_file(p), str(p)
    keys = {"prompt": "Question", "response": "Best Answer", "correct": "Correct Answers",
            "incorrect": "Incorrect Answers", "category": "Category", "type": "Type",
            "source": "Source"}

  def answers(row: Row, value, key: str) -> list[str]:
    if isinstance(value, str):
      out = split_answers(value)
    elif isinstance(value, list):
      out = [text_field(a, file=file, record=row.number, field=key, unit=unit) for a in value]
    else:
      raise DataError(file, row.number, key, f"expected answers, got {type(value).__name__}",
                      unit=unit)
    if not out:
      raise DataError(file, row.number, key, "no answers", unit=unit)
    return out

  def build(row: Row) -> dict:
    r = map_fields(row, keys, file=file, unit=unit,
                   text_fields={"prompt", "response", "category", "type"}, optional={"source"})
    rec = {"prompt": r["prompt"], "response": r["response"],
           "correct_answers": answers(row, r["correct"], keys["correct"]),
           "incorrect_answers": answers(row, r["incorrect"], keys["incorrect"]),
           "category": r["category"], "type": r["type"]}
    if "source" in r:
      rec["source"] = r["source"]
    return rec

  return collect(rows, build, kind="sft", source=file, on_error=on_error)


# --------------------------------------------------------------------------------------------------
# BeaverTails
# --------------------------------------------------------------------------------------------------


@register("beavertails")
def beavertails(*, split=None, data_dir=None, source=None, on_error="raise", path=None,
                safe: bool | None = None, hf_name: str = "PKU-Alignment/BeaverTails",
                hf_split: str = "30k_test") -> Records:
  """BeaverTails QA pairs: ``prompt``, ``response``, ``category``, ``safe`` (bool).

  ``safe`` comes from an ``is_safe`` column when the file has one; the shared
  ``beavertails_qa_sample.csv`` has none because every pair in it is labelled unsafe, so it gets
  ``safe=False``. For another file without the column, pass ``safe=`` explicitly.
  """
  _check_split("beavertails", split, ("train", hf_split) if source == "hf" else ("train",))
  if source == "hf":
    rows, file, unit = iter_hf(hf_name, split=hf_split), f"hf:{hf_name}[{hf_split}]", "row"
  else:
    p, unit = _local(path, data_dir, "beavertails", ("beavertails_qa_sample.csv",))
    rows, file = iter_file(p), str(p)
    if safe is None and p.name == "beavertails_qa_sample.csv":
      safe = False

  def label(row: Row) -> bool:
    if "is_safe" in row.value:
      v = row.value["is_safe"]
      if isinstance(v, bool):
        return v
      if isinstance(v, str) and v.strip().lower() in BOOL_WORDS:
        return BOOL_WORDS[v.strip().lower()]
      raise DataError(file, row.number, "is_safe", f"expected a boolean, got {v!r}", unit=unit)
    if safe is None:
      raise DataError(file, row.number, "is_safe",
                      "missing field (pass safe=True/False for a file without labels)", unit=unit)
    return safe

  def build(row: Row) -> dict:
    r = map_fields(row, {"prompt": "prompt", "response": "response"}, file=file, unit=unit,
                   text_fields={"prompt", "response"})
    cat = row.value.get("category") if isinstance(row.value, dict) else None
    if isinstance(cat, dict):  # Hugging Face: {category name: bool}
      cat = ";".join(sorted(k for k, v in cat.items() if v))
    elif cat is None:
      raise DataError(file, row.number, "category", "missing field", unit=unit)
    else:
      cat = text_field(cat, file=file, record=row.number, field="category", unit=unit)
    return {"prompt": r["prompt"], "response": r["response"], "category": cat, "safe": label(row)}

  return collect(rows, build, kind="sft", source=file, on_error=on_error)


@register("beavertails_prompts")
def beavertails_prompts(*, split=None, data_dir=None, source=None, on_error="raise", path=None,
                        hf_name: str = "PKU-Alignment/BeaverTails-Evaluation") -> Records:
  """BeaverTails evaluation prompts (``{"prompt"}``; ``category`` when the source has it)."""
  _check_split("beavertails_prompts", split, ("test",))
  if source == "hf":
    rows, file, unit = iter_hf(hf_name, split="test"), f"hf:{hf_name}[test]", "row"
  else:
    p, unit = _local(path, data_dir, "beavertails", ("beavertails_eval_prompts.json",))
    rows, file = iter_file(p), str(p)

  def build(row: Row) -> dict:
    return map_fields(row, {"prompt": "prompt", "category": "category"}, file=file, unit=unit,
                      text_fields={"prompt", "category"}, optional={"category"})

  return collect(rows, build, kind="prompt", source=file, on_error=on_error)


# --------------------------------------------------------------------------------------------------
# Anthropic HH-RLHF
# --------------------------------------------------------------------------------------------------

ASSISTANT = "\n\nAssistant:"
_TURN = re.compile(r"\n\n(Human|Assistant):")


def split_dialogue(chosen: str, rejected: str, *, split_at: str = "common_prefix"
                   ) -> tuple[str, str, str]:
  """``(prompt, chosen_turn, rejected_turn)`` of an HH-RLHF pair; ``ValueError(field, msg)`` if not.

  ``"last_turn"``: cut each dialogue after its last ``"\\n\\nAssistant:"``; the two prompts must be
  identical. ``"common_prefix"``: cut after the last ``"\\n\\nAssistant:"`` inside the longest common
  prefix of the two dialogues, i.e. where they diverge. Both give the same split whenever
  ``"last_turn"`` succeeds (2,307 of the 2,312 harmless-base test pairs); the other 5 have a fake
  ``"Human:"`` turn written without the blank line inside one response, which ``"last_turn"``
  rejects and ``"common_prefix"`` keeps inside that response.
  """
  if split_at == "last_turn":
    ic, ir = chosen.rfind(ASSISTANT), rejected.rfind(ASSISTANT)
    if ic < 0:
      raise ValueError("chosen", "no '\\n\\nAssistant:' turn")
    if ir < 0:
      raise ValueError("rejected", "no '\\n\\nAssistant:' turn")
    pc, pr = chosen[:ic + len(ASSISTANT)], rejected[:ir + len(ASSISTANT)]
    if pc != pr:
      at = len(os.path.commonprefix([pc, pr]))
      raise ValueError("rejected", "the dialogue before the last assistant turn differs from "
                       f"chosen's (first difference at character {at}); try "
                       "split_at='common_prefix'")
    return pc, chosen[len(pc):], rejected[len(pr):]
  if split_at == "common_prefix":
    common = os.path.commonprefix([chosen, rejected])
    i = common.rfind(ASSISTANT)
    if i < 0:
      raise ValueError("rejected", "chosen and rejected share no '\\n\\nAssistant:' turn")
    prompt = chosen[:i + len(ASSISTANT)]
    return prompt, chosen[len(prompt):], rejected[len(prompt):]
  raise ValueError(None, f"split_at must be 'common_prefix' or 'last_turn', got {split_at!r}")


def dialogue_messages(prompt: str) -> list[dict]:
  """Chat messages of an HH prompt (``"\\n\\nHuman: …\\n\\nAssistant:"``), the open turn dropped."""
  parts = _TURN.split(prompt)
  if parts[0].strip():
    raise ValueError("prompt", "does not start with '\\n\\nHuman:'")
  msgs = [{"role": "user" if who == "Human" else "assistant", "content": text.strip()}
          for who, text in zip(parts[1::2], parts[2::2])]
  if msgs and msgs[-1]["role"] == "assistant" and not msgs[-1]["content"]:
    msgs.pop()
  return msgs


@register("hh_rlhf")
def hh_rlhf(*, split=None, data_dir=None, source=None, on_error="raise", path=None,
            subset: str = "harmless-base", split_at: str = "common_prefix",
            allow_empty: bool = False, hf_name: str = "Anthropic/hh-rlhf") -> Records:
  """Anthropic HH-RLHF pairs: ``prompt`` (the shared dialogue, ending in ``"\\n\\nAssistant:"``),
  ``chosen``/``rejected`` (the final assistant turns, verbatim, usually starting with a space) and
  ``messages`` (the prompt as chat messages, for chat templates). See ``split_dialogue``.
  """
  split = _check_split("hh_rlhf", split, ("test", "train"))
  if source == "hf":
    rows, file, unit = (iter_hf(hf_name, split=split, data_dir=subset),
                        f"hf:{hf_name}/{subset}[{split}]", "row")
  else:
    p, unit = _local(path, data_dir, "hh_rlhf",
                     (f"{subset}_{split}.jsonl.gz", f"{subset}_{split}.jsonl"))
    rows, file = iter_file(p), str(p)

  def build(row: Row) -> dict:
    r = map_fields(row, {"chosen": "chosen", "rejected": "rejected"}, file=file, unit=unit,
                   text_fields={"chosen", "rejected"})
    try:
      prompt, chosen, rejected = split_dialogue(r["chosen"], r["rejected"], split_at=split_at)
      messages = dialogue_messages(prompt)
    except ValueError as e:
      field, msg = e.args
      raise DataError(file, row.number, field or "chosen", msg, unit=unit) from None
    for field, value in (("chosen", chosen), ("rejected", rejected)):
      text_field(value, file=file, record=row.number, field=field, unit=unit,
                 allow_empty=allow_empty)
    return {"prompt": prompt, "chosen": chosen, "rejected": rejected, "messages": messages}

  return collect(rows, build, kind="preference", source=file, on_error=on_error)


# --------------------------------------------------------------------------------------------------
# Generic files with a field mapping
# --------------------------------------------------------------------------------------------------


def _generic(fmt: str | None):
  def load(*, split=None, data_dir=None, source=None, on_error="raise", path=None,
           fields: dict[str, str] | None = None, kind: str | None = None,
           allow_empty: bool = False, optional: tuple[str, ...] = ()) -> Records:
    """Records of one local file; ``fields`` maps record keys to the file's keys.

    E.g. ``load_dataset("jsonl", path=p, fields={"prompt": "question", "response": "answer"})``.
    The kind is inferred from the record keys unless given; every key the kind requires must be a
    valid, non-empty string (``allow_empty`` lets response fields be empty); other keys are copied
    as they are; keys named in ``optional`` may be missing from a record.
    """
    if source not in (None, "local"):
      raise ValueError(f"{fmt or 'file'}: only local files (got source={source!r})")
    if split is not None:
      raise ValueError(f"{fmt or 'file'}: a single file has no splits (got split={split!r})")
    if path is None:
      raise ValueError(f"{fmt or 'file'}: pass path= (the file to read)")
    p = Path(data_dir) / path if data_dir is not None else Path(path)
    if fields is None:
      if kind is None:
        raise ValueError(f"{p}: pass fields= (record key -> file key) or kind=")
      fields = {k: k for k in KINDS[kind]}
    k = kind or kind_of(fields)
    missing = [f for f in KINDS[k] if f not in fields]
    if missing:
      raise ValueError(f"{p}: kind {k!r} needs fields {missing}")
    unit = UNITS[fmt or file_format(p)]
    required = set(KINDS[k])
    empty_ok = {f for f in required if f != "prompt"} if allow_empty else set()

    def build(row: Row) -> dict:
      return map_fields(row, fields, file=str(p), unit=unit, text_fields=required,
                        allow_empty=empty_ok, optional=set(optional) - required)

    return collect(iter_file(p, fmt), build, kind=k, source=str(p), on_error=on_error)

  return load


for _fmt in ("json", "jsonl", "csv", "parquet"):
  register(_fmt)(_generic(_fmt))
register("file")(_generic(None))
