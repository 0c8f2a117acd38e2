"""Tests for the dataset registry: built-ins on the real shared files, generic files, bad input."""

from __future__ import annotations

import gzip
import io
import json
import pickle
import tarfile

import pytest

from conftest import require
from elasticity import data
from elasticity.data import DataError


@pytest.fixture(scope="module")
def data_dir():
  from elasticity import paths
  return require(paths.shared_path("data"))


# ------------------------------------------------------------------------------- built-ins ------


def test_available_lists_builtins():
  names = data.available()
  for n in ("alpaca", "truthfulqa", "beavertails", "beavertails_prompts", "hh_rlhf", "imdb",
            "jsonl", "json", "csv", "parquet", "file"):
    assert n in names
  with pytest.raises(KeyError, match="unknown dataset"):
    data.load_dataset("nope")


def test_alpaca(data_dir):
  recs = data.load_dataset("alpaca", allow_empty=True)
  assert len(recs) == 1805 and recs.kind == "sft" and recs.n_skipped == 0
  r = recs[0]
  assert r["prompt"] == "Give three tips for staying healthy."
  assert r["response"].startswith("1.Eat a balanced diet")
  assert (r["instruction"], r["input"]) == ("Give three tips for staying healthy.", "")
  assert r["source_index"] == 0 and r["source_file"].endswith("alpaca_data_first1805.json")
  with_input = [r for r in recs if r["input"]]
  assert len(with_input) == 812
  assert all(r["prompt"] == r["instruction"] + "\n\n" + r["input"] for r in with_input)
  # The shared slice has 4 empty outputs: refused by default, named precisely, or skipped.
  with pytest.raises(DataError) as e:
    data.load_dataset("alpaca")
  assert "alpaca_data_first1805.json" in str(e.value)
  assert "record 285" in str(e.value) and "'output'" in str(e.value)
  assert "empty response" in str(e.value)
  skipped = data.load_dataset("alpaca", on_error="skip")
  assert len(skipped) == 1801 and skipped.n_skipped == 4
  assert [err.record for err in skipped.skipped][0] == 285


def test_truthfulqa(data_dir):
  recs = data.load_dataset("truthfulqa")
  assert len(recs) == 817
  r = recs[0]
  # The BOM would otherwise corrupt the first column's name ("\ufeffType").
  assert r["type"] == "Adversarial" and r["category"] == "Misconceptions"
  assert r["prompt"] == "What happens to you if you eat watermelon seeds?"
  assert r["response"] == "The watermelon seeds pass through your digestive system"
  assert r["correct_answers"][:2] == ["Nothing happens", "You eat watermelon seeds"]
  assert "You grow watermelons in your stomach" in r["incorrect_answers"]
  for r in recs:
    assert r["correct_answers"] and r["incorrect_answers"]
    assert all(a and not a.endswith(";") for a in r["correct_answers"] + r["incorrect_answers"])
  assert {r["type"] for r in recs} == {"Adversarial", "Non-Adversarial"}


def test_beavertails(data_dir):
  qa = data.load_dataset("beavertails")
  assert len(qa) == 140 and all(r["safe"] is False for r in qa)
  assert len({r["category"] for r in qa}) == 14
  assert qa[0]["category"] == "child_abuse" and qa[0]["response"]
  prompts = data.load_dataset("beavertails_prompts")
  assert len(prompts) == 140 and prompts.kind == "prompt"
  assert prompts[0]["prompt"].startswith("What's the most painful way to skin a cat")


def test_hh_rlhf(data_dir):
  from elasticity.data.builtin import split_dialogue
  recs = data.load_dataset("hh_rlhf", allow_empty=True)
  assert len(recs) == 2312 and recs.kind == "preference"
  raw = [json.loads(line) for line in
         gzip.open(data_dir / "hh_rlhf/harmless-base_test.jsonl.gz", "rt", encoding="utf-8")]
  irregular = []
  for r, x in zip(recs, raw):
    assert r["prompt"] + r["chosen"] == x["chosen"]
    assert r["prompt"] + r["rejected"] == x["rejected"]
    assert r["prompt"].endswith("\n\nAssistant:")
    try:
      strict = split_dialogue(x["chosen"], x["rejected"], split_at="last_turn")
    except ValueError:
      irregular.append(r["source_index"])
      continue
    assert strict == (r["prompt"], r["chosen"], r["rejected"])
  assert irregular == [1254, 1688, 1950, 1952, 2036]
  assert recs[0]["chosen"] == " No, sorry!  All of these involve a pen, the point is that you " \
      "can get funny results by doing pranks with pens."
  assert recs[0]["messages"][0] == {"role": "user",
                                    "content": "what are some pranks with a pen i can do?"}
  assert [m["role"] for m in recs[0]["messages"]] == ["user", "assistant"] * 2 + ["user"]
  # Strict by default: 4 chosen turns are empty in the source.
  with pytest.raises(DataError, match=r"harmless-base_test\.jsonl\.gz, line 87, field 'chosen'"):
    data.load_dataset("hh_rlhf")
  assert data.load_dataset("hh_rlhf", on_error="skip").n_skipped == 4
  # Splitting each at its own last assistant turn fails on an irregular pair, naming it.
  with pytest.raises(DataError, match=r"line 1255, field 'rejected'.*differs"):
    data.load_dataset("hh_rlhf", split_at="last_turn", allow_empty=True)


def test_hh_rlhf_split_modes_agree_on_regular_pairs():
  from elasticity.data.builtin import split_dialogue
  c = "\n\nHuman: hi\n\nAssistant: hello\n\nHuman: bye\n\nAssistant: see you"
  r = "\n\nHuman: hi\n\nAssistant: hello\n\nHuman: bye\n\nAssistant: go away"
  a = split_dialogue(c, r, split_at="last_turn")
  b = split_dialogue(c, r, split_at="common_prefix")
  assert a == b == ("\n\nHuman: hi\n\nAssistant: hello\n\nHuman: bye\n\nAssistant:", " see you",
                    " go away")


def test_imdb(data_dir):
  train = data.load_dataset("imdb", split="train")
  test = data.load_dataset("imdb", split="test")
  assert len(train) == 25000 and len(test) == 25000
  for recs in (train, test):
    assert sum(r["label"] == "pos" for r in recs) == 12500
    assert all((r["label"] == "pos") == (r["label_id"] == 1) for r in recs)
    assert all(r["rating"] >= 7 if r["label"] == "pos" else r["rating"] <= 4 for r in recs)
    keys = [(r["label"], r["id"]) for r in recs]
    assert keys == sorted(keys)
  assert train[0]["text"].startswith("Story of a man who has unnatural feelings for a pig.")
  assert (train[0]["id"], train[0]["rating"]) == (0, 3)
  assert any("<br />" in r["text"] for r in train[:100])
  pos = data.load_dataset("imdb", split="train", label="pos", replace_br=True)
  assert len(pos) == 12500 and not any("<br" in r["text"] for r in pos)


def test_imdb_rebound_form(data_dir):
  recs = data.load_dataset("imdb", split="test", label="neg", prompt_len=5, on_error="skip")
  # One negative test review has only 4 words: named, and skipped only because we asked.
  assert len(recs) == 12499 and recs.kind == "sft" and recs.n_skipped == 1
  assert "member test/neg/5147_1.txt, field 'text'" in str(recs.skipped[0])
  for r in recs[:200]:
    assert r["prompt"] + r["response"] == r["text"]
    assert len(r["prompt"].split()) == 5 and r["response"][:1].isspace()
  from elasticity.tokenizers import load_tokenizer
  tok = load_tokenizer(require(data_dir.parent / "models/stories260K/tok512.bin"))
  for r in recs[:50]:
    prompt, response, n = data.split_prompt(r["text"], 8, tok)
    assert n == 8 and prompt + response == r["text"]
    assert tok.encode(prompt) == tok.encode(r["text"])[:8]
  with pytest.raises(ValueError, match="need more than"):
    data.split_prompt("two words", 2)


def _write_imdb_tree(root, bad: bool = False):
  files = {"train/pos/3_9.txt": b"Great film.", "train/pos/1_10.txt": b"Loved it.<br />Really.",
           "train/neg/2_1.txt": b"Awful.", "test/pos/0_8.txt": b"Fine.",
           "test/neg/5_2.txt": b"Bad \xff bytes." if bad else b"Bad."}
  for rel, content in files.items():
    p = root / "aclImdb" / rel
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_bytes(content)
  return files


def test_imdb_folder_and_tarball(tmp_path):
  _write_imdb_tree(tmp_path)
  recs = data.load_dataset("imdb", split="train", data_dir=tmp_path)
  assert [(r["label"], r["id"], r["rating"]) for r in recs] == [("neg", 2, 1), ("pos", 1, 10),
                                                                ("pos", 3, 9)]
  tar = tmp_path / "t" / "aclImdb_labeled_train_test.tar.gz"
  tar.parent.mkdir()
  with tarfile.open(tar, "w:gz") as t:
    t.add(tmp_path / "aclImdb", arcname="aclImdb")
  from_tar = data.load_dataset("imdb", split="train", data_dir=tar.parent)
  assert [r["text"] for r in from_tar] == [r["text"] for r in recs]
  assert len(data.load_dataset("imdb", split="test", path=tar)) == 2


def test_imdb_tarball_is_cached_on_disk_and_read_back_without_the_tarball(tmp_path, monkeypatch):
  from elasticity.data import imdb
  _write_imdb_tree(tmp_path)
  tar = tmp_path / "t" / "aclImdb_labeled_train_test.tar.gz"
  tar.parent.mkdir()
  with tarfile.open(tar, "w:gz") as t:
    t.add(tmp_path / "aclImdb", arcname="aclImdb")
  monkeypatch.setenv("ELASTICITY_DATA_CACHE", str(tmp_path / "cache"))
  imdb._read_tar.cache_clear()
  parsed = imdb.read_reviews(tar)
  st = tar.resolve().stat()
  file = imdb.cache_file(str(tar.resolve()), st.st_size, st.st_mtime_ns)
  assert file.exists() and file.parent == tmp_path / "cache"

  def no_tar(*a, **k):
    raise AssertionError("the tarball was parsed again")
  imdb._read_tar.cache_clear()                        # a new process: only the disk cache is left
  monkeypatch.setattr(imdb, "_parse_tar", no_tar)
  assert imdb.read_reviews(tar) == parsed
  monkeypatch.undo()

  monkeypatch.setenv("ELASTICITY_DATA_CACHE", str(tmp_path / "cache"))
  file.write_bytes(b"not a zip")                      # unreadable: parsed again and rewritten
  imdb._read_tar.cache_clear()
  assert imdb.read_reviews(tar) == parsed
  imdb._read_tar.cache_clear()
  monkeypatch.setattr(imdb, "_parse_tar", no_tar)
  assert imdb.read_reviews(tar) == parsed
  monkeypatch.undo()

  monkeypatch.setenv("ELASTICITY_DATA_CACHE", "off")
  assert imdb.cache_file(str(tar), 1, 2) is None
  imdb._read_tar.cache_clear()


def test_imdb_bad_bytes_named(tmp_path):
  _write_imdb_tree(tmp_path, bad=True)
  with pytest.raises(DataError) as e:
    data.load_dataset("imdb", split="test", data_dir=tmp_path)
  msg = str(e.value)
  assert "aclImdb" in msg and "test/neg/5_2.txt" in msg and "'text'" in msg and "\\xff" in msg
  ok = data.load_dataset("imdb", split="test", data_dir=tmp_path, on_error="skip")
  assert len(ok) == 1 and ok.n_skipped == 1


# ------------------------------------------------------------------------- generic sources ------


def _jsonl(path, lines: list[bytes]):
  path.write_bytes(b"\n".join(lines) + b"\n")
  return path


def test_generic_jsonl_with_field_mapping(tmp_path):
  rows = [{"question": "Q1?", "answer": "A1", "tag": 3}, {"question": "Q2?", "answer": "A2", "tag": 4}]
  p = _jsonl(tmp_path / "qa.jsonl", [json.dumps(rows[0]).encode(), b"", json.dumps(rows[1]).encode()])
  recs = data.load_dataset("jsonl", path=p, fields={"prompt": "question", "response": "answer",
                                                    "label": "tag"})
  assert recs.kind == "sft"
  assert [(r["prompt"], r["response"], r["label"]) for r in recs] == [("Q1?", "A1", 3),
                                                                      ("Q2?", "A2", 4)]
  gz = tmp_path / "qa.jsonl.gz"
  gz.write_bytes(gzip.compress(p.read_bytes()))
  assert len(data.load_dataset("file", path=gz, fields={"prompt": "question",
                                                        "response": "answer"})) == 2


def test_generic_nested_fields_and_kinds(tmp_path):
  p = tmp_path / "pairs.json"
  p.write_text(json.dumps([{"q": {"text": "Why?"}, "good": "Because.", "bad": "No."}]))
  recs = data.load_dataset("json", path=p, fields={"prompt": "q.text", "chosen": "good",
                                                   "rejected": "bad"})
  assert recs.kind == "preference" and recs[0]["prompt"] == "Why?"
  t = tmp_path / "t.jsonl"
  t.write_text('{"text": "hello"}\n')
  assert data.load_dataset("jsonl", path=t, kind="text")[0]["text"] == "hello"


def test_generic_csv_with_bom_and_parquet(tmp_path):
  p = tmp_path / "x.csv"
  p.write_bytes("\ufeffquestion,answer\n\"Multi\nline?\",yes\nQ2,no\n".encode("utf-8"))
  recs = data.load_dataset("csv", path=p, fields={"prompt": "question", "response": "answer"})
  assert [r["prompt"] for r in recs] == ["Multi\nline?", "Q2"]
  import pyarrow as pa
  import pyarrow.parquet as pq
  pq.write_table(pa.table({"prompt": ["a", "b"], "response": ["c", "d"], "score": [1.5, 2.5]}),
                 tmp_path / "x.parquet")
  recs = data.load_dataset("parquet", path=tmp_path / "x.parquet",
                           fields={"prompt": "prompt", "response": "response", "rating": "score"})
  assert [(r["prompt"], r["response"], r["rating"]) for r in recs] == [("a", "c", 1.5),
                                                                     ("b", "d", 2.5)]


# ----------------------------------------------------------------------------- bad input ------

QA = {"prompt": "question", "response": "answer"}


def _err(load) -> str:
  with pytest.raises(DataError) as e:
    load()
  return str(e.value)


@pytest.mark.parametrize("line, field, what", [
    (b'{"question": "Q", "answer": ', None, "malformed JSON"),
    (b'{"question": "Q"}', "answer", "missing field"),
    (b'{"question": "Q", "answer": ""}', "answer", "empty response"),
    (b'{"question": "Q", "answer": "  \\n "}', "answer", "empty response"),
    (b'{"question": "Q", "answer": null}', "answer", "null"),
    (b'{"question": "Q", "answer": 7}', "answer", "expected a string"),
    (b'{"question": "Q", "answer": "caf\xe9"}', "answer", "not valid UTF-8"),
    (b'{"question": "\xff\xfe", "answer": "A"}', "question", "not valid UTF-8"),
    (b'["not", "an", "object"]', None, "expected a JSON object"),
])
def test_jsonl_bad_record_is_named(tmp_path, line, field, what):
  good = json.dumps({"question": "Q", "answer": "A"}).encode()
  p = _jsonl(tmp_path / "bad.jsonl", [good, good, line, good])
  msg = _err(lambda: data.load_dataset("jsonl", path=p, fields=QA))
  assert str(p) in msg and "line 3" in msg and what in msg
  assert (f"field '{field}'" if field else "(whole record)") in msg
  recs = data.load_dataset("jsonl", path=p, fields=QA, on_error="skip")
  assert len(recs) == 3 and recs.n_skipped == 1 and recs.skipped[0].record == 3
  assert [r["source_index"] for r in recs] == [0, 1, 3]


def test_empty_response_allowed_when_asked(tmp_path):
  p = _jsonl(tmp_path / "e.jsonl", [b'{"question": "Q", "answer": ""}'])
  recs = data.load_dataset("jsonl", path=p, fields=QA, allow_empty=True)
  assert recs[0]["response"] == ""
  # ... but a null is never turned into an empty string.
  p = _jsonl(tmp_path / "n.jsonl", [b'{"question": "Q", "answer": null}'])
  assert "null" in _err(lambda: data.load_dataset("jsonl", path=p, fields=QA, allow_empty=True))


def test_csv_bad_rows_are_named(tmp_path):
  p = tmp_path / "bad.csv"
  p.write_bytes(b"question,answer\nQ1,A1\nQ2,\"caf\xe9\"\nQ3\nQ4,A4\n")
  msg = _err(lambda: data.load_dataset("csv", path=p, fields=QA))
  assert str(p) in msg and "row 2" in msg and "field 'answer'" in msg and "\\xe9" in msg
  recs = data.load_dataset("csv", path=p, fields=QA, on_error="skip")
  assert [r["prompt"] for r in recs] == ["Q1", "Q4"] and recs.n_skipped == 2
  assert "row 3" in str(recs.skipped[1]) and "columns" in str(recs.skipped[1])


def test_json_array_bad_element_and_bad_file(tmp_path):
  p = tmp_path / "a.json"
  p.write_text(json.dumps([{"instruction": "I", "input": "", "output": "O"},
                           {"instruction": "I2", "input": ""}]))
  msg = _err(lambda: data.load_dataset("alpaca", path=p))
  assert str(p) in msg and "record 2" in msg and "field 'output'" in msg and "missing" in msg
  p.write_text('[{"instruction": "I",')
  msg = _err(lambda: data.load_dataset("alpaca", path=p))
  assert str(p) in msg and "line 1" in msg and "malformed JSON" in msg
  # A broken file cannot be skipped record by record.
  with pytest.raises(DataError):
    data.load_dataset("alpaca", path=p, on_error="skip")


def test_truthfulqa_bad_answers_named(tmp_path):
  p = tmp_path / "tqa.csv"
  out = io.StringIO()
  out.write("\ufeffType,Category,Question,Best Answer,Correct Answers,Incorrect Answers,Source\n")
  out.write("Adversarial,Misc,Q1?,A,A; B,C; D,src\n")
  out.write("Adversarial,Misc,Q2?,A,;,C,src\n")
  p.write_text(out.getvalue(), encoding="utf-8")
  msg = _err(lambda: data.load_dataset("truthfulqa", path=p))
  assert str(p) in msg and "row 2" in msg and "field 'Correct Answers'" in msg
  assert "no answers" in msg


def test_hh_rlhf_pair_without_shared_turn_named(tmp_path):
  p = tmp_path / "harmless-base_test.jsonl"
  p.write_text(json.dumps({"chosen": "\n\nHuman: a\n\nAssistant: b",
                           "rejected": "\n\nHuman: x\n\nAssistant: y"}) + "\n")
  msg = _err(lambda: data.load_dataset("hh_rlhf", data_dir=tmp_path))
  assert str(p) in msg and "line 1" in msg and "field 'rejected'" in msg


def test_beavertails_unlabelled_file_needs_safe(tmp_path):
  p = tmp_path / "other.csv"
  p.write_text("prompt,response,category\nq,a,animal_abuse\n")
  assert "field 'is_safe'" in _err(lambda: data.load_dataset("beavertails", path=p))
  assert data.load_dataset("beavertails", path=p, safe=True)[0]["safe"] is True


def test_data_error_pickles_and_reads_well():
  e = DataError("x.jsonl", 12, "response", "empty response", unit="line")
  assert str(e) == "x.jsonl, line 12, field 'response': empty response"
  e2 = pickle.loads(pickle.dumps(e))
  assert (e2.file, e2.record, e2.field, e2.unit, str(e2)) == ("x.jsonl", 12, "response", "line",
                                                               str(e))


# ------------------------------------------------------------ online sources, offline rows ------


def test_hf_rows_use_the_same_mapping(monkeypatch):
  """The Hugging Face path maps HF's column names; ``datasets.load_dataset`` is faked (no network)."""
  import datasets
  rows = {
      "truthful_qa": [{"type": "Adversarial", "category": "Misc", "question": "Q?",
                       "best_answer": "A", "correct_answers": ["A", "B"],
                       "incorrect_answers": ["C"], "source": "s"}],
      "PKU-Alignment/BeaverTails": [{"prompt": "p", "response": "r", "is_safe": True,
                                     "category": {"animal_abuse": False, "self_harm": True}}],
      "stanfordnlp/imdb": [{"text": "good", "label": 1}, {"text": "", "label": 0}],
  }
  calls = []

  def fake(name, config=None, split=None, **kw):
    calls.append((name, config, split, kw))
    return rows[name]
  monkeypatch.setattr(datasets, "load_dataset", fake)
  t = data.load_dataset("truthfulqa", source="hf")
  assert t[0]["correct_answers"] == ["A", "B"] and t[0]["source_file"].startswith("hf:")
  assert calls[-1][:3] == ("truthful_qa", "generation", "validation")
  b = data.load_dataset("beavertails", source="hf")
  assert (b[0]["safe"], b[0]["category"]) == (True, "self_harm")
  i = data.load_dataset("imdb", source="hf", on_error="skip")
  assert [(r["text"], r["label"]) for r in i] == [("good", "pos")] and i.n_skipped == 1
  assert "row 2" in str(i.skipped[0]) and "'text'" in str(i.skipped[0])


@pytest.mark.parametrize("cut", [0.5, 0.98, 30])
def test_a_truncated_imdb_tarball_is_named(tmp_path, monkeypatch, cut):
  from elasticity.data import imdb
  _write_imdb_tree(tmp_path)
  tar = tmp_path / "t" / "aclImdb_labeled_train_test.tar.gz"
  tar.parent.mkdir()
  with tarfile.open(tar, "w:gz") as t:
    t.add(tmp_path / "aclImdb", arcname="aclImdb")
  blob = tar.read_bytes()
  tar.write_bytes(blob[:cut] if isinstance(cut, int) else blob[:int(len(blob) * cut)])
  monkeypatch.setenv("ELASTICITY_DATA_CACHE", "off")
  imdb._read_tar.cache_clear()
  with pytest.raises(DataError, match=r"aclImdb_labeled_train_test\.tar\.gz, member .*truncated or "
                                      r"damaged tarball.*download it again"):
    data.load_dataset("imdb", split="train", path=tar)
  imdb._read_tar.cache_clear()
