"""Repetition of generated text (`elasticity.eval.degeneration`) and the rebound report's flag for
degenerate continuations (`elasticity.experiments.rebound.degenerate`): rep-n against a brute-force
reference that counts, n-gram by n-gram, whether it was met before; hand-worked values; a report whose
collapsed point is named and one whose points are all text."""

from __future__ import annotations

import gzip
import json
import random

import pytest

from elasticity.eval import degeneration
from elasticity.experiments.rebound import degenerate
from elasticity.report import load_rows
from elasticity.report.document import Context


def rep_reference(text: str, n: int) -> float:
  """Independent: walk the words and count the n-grams already seen, no set sizes."""
  w = [t for t in "".join(c if (c.isalnum() or c == "_") else f" {c} " for c in text.lower()).split()]
  grams = [w[i:i + n] for i in range(len(w) - n + 1)]
  if len(grams) < 2:
    return 0.0
  repeats = sum(1 for i, g in enumerate(grams) if any(g == h for h in grams[:i]))
  return repeats / len(grams)


def test_hand_worked_values():
  assert degeneration.rep_n("you you you you you", 2) == pytest.approx(0.75)     # 4 bigrams, 1 distinct
  assert degeneration.rep_n("You, you, you,", 1) == pytest.approx(4 / 6)      # you , you , you , → 2 distinct
  assert degeneration.rep_n("a film that never repeats a phrase", 4) == 0.0
  assert degeneration.rep_n("too short", 4) == 0.0 and degeneration.rep_n("", 1) == 0.0
  assert degeneration.words("It's great!") == ["it", "'", "s", "great", "!"]


def test_rep_n_agrees_with_a_brute_force_count():
  rng = random.Random(0)
  vocab = ["you", "the", "film", ".", ",", "was", "good", "bad", "a", "!"]
  for _ in range(300):
    k = rng.randrange(0, 40)
    # loops of a short phrase mixed with free text: every level of repetition
    phrase = [rng.choice(vocab) for _ in range(rng.randrange(1, 4))]
    ws = [rng.choice(vocab) if rng.random() < 0.5 else phrase[i % len(phrase)] for i in range(k)]
    text = " ".join(ws)
    for n in (1, 2, 4):
      assert degeneration.rep_n(text, n) == pytest.approx(rep_reference(text, n), abs=1e-12), (text, n)


def test_summary_and_bad_input():
  s = degeneration.summary(["you " * 40, "a perfectly ordinary review of a film", "the end"])
  assert s["texts"] == 3 and s["degenerate_share"] == pytest.approx(1 / 3)
  assert s["rep_4_max"] == pytest.approx(1 - 1 / 37) and 0 < s["rep_4"] < 1
  assert degeneration.summary([])["texts"] == 0
  with pytest.raises(TypeError, match="sequence of strings"):
    degeneration.summary("one string")
  with pytest.raises(ValueError, match="n must be an integer >= 1"):
    degeneration.rep_n("text", 0)
  with pytest.raises(ValueError, match="threshold"):
    degeneration.summary(["x"], threshold=0)


def _experiment(tmp_path, collapsed: bool):
  rows, archive = [], []
  for i, (stage, n_pos, n_neg) in enumerate([("base", 0, 0), ("pos", 500, 0), ("neg", 0, 200)]):
    coords = {"model": "tiny", "task": "imdb", "reverse": "kto", "order": "pos_first",
              "n_pos": n_pos, "n_neg": n_neg, "stage": stage}
    cell, point = f"{i:012x}", f"neg={n_neg}"
    rows.append({"experiment": "rebound", "cell": cell, "parent": None, "config_hash": None,
                 "seed": 1, "point": point, "coords": coords, "metrics": {"score": 0.5 + 0.1 * i}})
    texts = [f"review {j}: the plot moves along and the actors do their work" for j in range(10)]
    if collapsed and stage == "neg":
      texts[:8] = ["you " * 48] * 8
    archive.append({"cell": cell, "point": point, "seed": 1, "coords": coords,
                    "generations": [{"prompt": "p", "completion": t} for t in texts]})
  (tmp_path / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
  with gzip.open(tmp_path / "generations.jsonl.gz", "wt", encoding="utf-8") as f:
    f.writelines(json.dumps(a) + "\n" for a in archive)
  return load_rows(tmp_path / "results.jsonl"), Context(tmp_path, tmp_path / "plots", {},
                                                        tmp_path / "experiment.json")


def test_the_report_names_a_collapsed_point(tmp_path):
  rows, ctx = _experiment(tmp_path, collapsed=True)
  flagged, points, largest = degenerate.table(rows, tmp_path)
  assert points == 3 and largest == pytest.approx(0.8) and len(flagged) == 1
  assert flagged[0]["point"] == "reverse kto, order pos_first, stage neg, n_pos 0, n_neg 200"
  assert flagged[0]["seed"] == 1 and flagged[0]["continuations"] == 10
  body = degenerate.section(rows, ctx).body
  assert "1 of 3 points are flagged" in body and "not evidence" in body


def test_a_report_of_plain_text_flags_nothing(tmp_path):
  rows, ctx = _experiment(tmp_path, collapsed=False)
  assert "None of the 3 evaluated points is flagged" in degenerate.section(rows, ctx).body
  (tmp_path / "generations.jsonl.gz").unlink()
  assert degenerate.section(rows, ctx) is None        # nothing saved: no section, no claim
