"""Reading results files: every bad line or field is named (file, line, field), duplicates across
shard files, rows without metrics, the seed statistics, experiment.json, and the tables' atomic
writes."""

from __future__ import annotations

import json
import statistics

import pytest

from elasticity.report import ResultsError, load_rows, mean_sd
from elasticity.report import results, tables

GOOD = {"experiment": "rebound", "cell": "0123456789ab", "parent": None, "config_hash": "ff",
        "seed": 42, "point": "neg=25", "coords": {"model": "m", "n_pos": 100, "n_neg": 25,
                                                  "stage": "neg"},
        "metrics": {"score": 0.71, "kl_to_base": None, "curve": [1, 0.5]}}


def lines(path, *objs):
  path.write_text("\n".join(o if isinstance(o, str) else json.dumps(o) for o in objs) + "\n")
  return path


def test_good_row_is_parsed(tmp_path):
  (r,) = load_rows(lines(tmp_path / "results.jsonl", GOOD))
  assert r.metric("score") == 0.71 and r.metric("kl_to_base") is None and r.metric("absent") is None
  assert r.metrics["curve"] == [1.0, 0.5] and r.seed == 42 and r.parent is None
  assert r.source.endswith("results.jsonl: line 1")
  flat = r.flat()
  assert flat["n_neg"] == 25 and flat["score"] == 0.71 and "curve" not in flat
  with pytest.raises(ResultsError, match="line 1: field 'metrics.curve': expected a number"):
    r.metric("curve")


def test_malformed_line_names_file_and_line(tmp_path):
  path = lines(tmp_path / "results.jsonl", GOOD, "", '{"experiment": "rebound", "cell": ')
  with pytest.raises(ResultsError, match=rf"{path}: line 3: not valid JSON"):
    load_rows(path)
  with pytest.raises(ResultsError, match=r"line 2: expected a JSON object"):
    load_rows(lines(tmp_path / "r.jsonl", GOOD, "[1, 2]"))


@pytest.mark.parametrize("field,value,message", [
    ("cell", None, "field 'cell': expected a non-empty string, got null"),
    ("seed", "42", "field 'seed': expected an integer or null"),
    ("seed", True, "field 'seed': expected an integer or null"),
    ("coords", [1], "field 'coords': expected an object"),
    ("metrics", "0.7", "field 'metrics': expected an object"),
    ("parent", 3, "field 'parent': expected a string or null"),
])
def test_bad_field_names_line_and_field(tmp_path, field, value, message):
  bad = {**GOOD, field: value}
  with pytest.raises(ResultsError, match=rf"results.jsonl: line 2: {message}"):
    load_rows(lines(tmp_path / "results.jsonl", GOOD, bad))


def test_bad_nested_fields(tmp_path):
  bad = {**GOOD, "metrics": {"score": "high"}}
  with pytest.raises(ResultsError, match=r"line 1: field 'metrics.score': expected a number"):
    load_rows(lines(tmp_path / "a.jsonl", bad))
  bad = {**GOOD, "coords": {"model": {"name": "m"}}}
  with pytest.raises(ResultsError, match=r"line 1: field 'coords.model'"):
    load_rows(lines(tmp_path / "b.jsonl", bad))
  bad = {k: v for k, v in GOOD.items() if k != "point"}
  with pytest.raises(ResultsError, match=r"line 1: missing field 'point'"):
    load_rows(lines(tmp_path / "c.jsonl", bad))
  with pytest.raises(ResultsError, match=r"no such results file"):
    load_rows(tmp_path / "missing.jsonl")


def test_shards_merge_and_conflicts(tmp_path):
  other = {**GOOD, "cell": "ba9876543210"}
  a = lines(tmp_path / "results.jsonl", GOOD)
  b = lines(tmp_path / "results.shard1.jsonl", GOOD, other)
  rows = load_rows([a, b])
  assert [r.cell for r in rows] == [GOOD["cell"], other["cell"]]
  c = lines(tmp_path / "results.shard2.jsonl", {**GOOD, "metrics": {"score": 0.5}})
  with pytest.raises(ResultsError, match=r"results.shard2.jsonl: line 1: .*already read from "
                                         r".*results.jsonl: line 1"):
    load_rows([a, c])


def test_rows_without_metrics_are_skipped(tmp_path):
  empty = {**GOOD, "cell": "000000000001", "metrics": {}}
  nulls = {**GOOD, "cell": "000000000002", "metrics": {"score": None, "kl": float("nan")}}
  missing = {k: v for k, v in GOOD.items() if k != "metrics"} | {"cell": "000000000003"}
  rows = load_rows(lines(tmp_path / "results.jsonl", GOOD, empty, nulls, missing))
  assert len(rows) == 4
  assert [r.cell for r in results.with_metrics(rows)] == [GOOD["cell"]]
  assert results.metric_names(rows) == ["score"]


def test_mean_sd_against_statistics():
  values = [0.61, 0.7, 0.83, 0.52]
  s = mean_sd(values)
  assert s.n == 4
  assert s.mean == pytest.approx(statistics.fmean(values), abs=1e-15)
  assert s.sd == pytest.approx(statistics.stdev(values), abs=1e-15)
  assert mean_sd([0.3]).sd is None and mean_sd([]) is None
  assert results.fmt(mean_sd([0.6, 0.8])) == "0.7000 ± 0.1414"
  assert results.fmt(mean_sd([0.6])) == "0.6000" and results.fmt(None) == "–"


def test_aggregate_groups_by_coordinates(tmp_path):
  objs = [{**GOOD, "cell": f"{i:012x}", "seed": i, "metrics": {"score": v}}
          for i, v in enumerate([0.1, 0.2, 0.6])]
  objs.append({**GOOD, "cell": "00000000000f", "coords": {**GOOD["coords"], "n_neg": 50},
               "metrics": {"score": 0.9}})
  objs.append({**GOOD, "cell": "00000000000e", "metrics": {"kl_to_base": 0.1}})
  agg = results.aggregate(load_rows(lines(tmp_path / "r.jsonl", *objs)), ("n_pos", "n_neg"), "score")
  assert set(agg) == {(100, 25), (100, 50)}
  assert agg[(100, 25)].n == 3 and agg[(100, 25)].mean == pytest.approx(0.3)
  assert agg[(100, 25)].sd == pytest.approx(statistics.stdev([0.1, 0.2, 0.6]))


def test_experiment_json(tmp_path):
  assert results.read_experiment(tmp_path / "experiment.json") == {}
  (tmp_path / "experiment.json").write_text('{"name": "rebound",\n "variant": 3}')
  with pytest.raises(ResultsError, match=r"experiment.json: field 'variant': expected a string"):
    results.read_experiment(tmp_path / "experiment.json")
  (tmp_path / "experiment.json").write_text('{"name": "rebound",\n oops}')
  with pytest.raises(ResultsError, match=r"experiment.json: line 2: not valid JSON"):
    results.read_experiment(tmp_path / "experiment.json")


def test_tables_write_atomically(tmp_path, monkeypatch):
  path = tmp_path / "t.csv"
  tables.write_csv(path, [{"a": 1, "b": 0.5}, {"a": 2, "c": "x"}])
  assert path.read_text() == "a,b,c\n1,0.5,\n2,,x\n"

  def boom(*args):
    raise OSError("disk full")
  monkeypatch.setattr("os.replace", boom)
  with pytest.raises(OSError, match="disk full"):
    tables.write_csv(path, [{"a": 3}])
  assert path.read_text() == "a,b,c\n1,0.5,\n2,,x\n"
  assert [p.name for p in tmp_path.iterdir()] == ["t.csv"]
