"""Cells: ordering by parents and needs, identities, and the folder placeholders the runner resolves."""

from __future__ import annotations

from pathlib import Path

import pytest

from elasticity.experiments.core import cells as cells_lib
from elasticity.experiments.core import grid as grid_lib
from elasticity.experiments.core.cells import Cell, Point
from elasticity.train.config import data_section, default_config


def _train(path: str = ""):
  t = default_config()
  t.model.path = "x"
  t.data = data_section(name="jsonl", split="", load_kwargs=dict(path=path))
  return t


def test_order_puts_parents_and_needs_first_and_names_bad_links():
  a = Cell("a", {}, start_path="m", points=(Point("p", "start"),))
  b = Cell("b", {}, train=_train(), parent="a", parent_model="start", needs=("c",))
  c = Cell("c", {}, train=_train(), parent="a", parent_model="start")
  assert [x.name for x in cells_lib.order([b, c, a])] == ["a", "c", "b"]
  with pytest.raises(ValueError, match="unknown dependency 'zz'"):
    cells_lib.order([a, Cell("d", {}, train=_train(), parent="a", needs=("zz",))])
  with pytest.raises(ValueError, match="two cells are named 'a'"):
    cells_lib.order([a, a])
  with pytest.raises(ValueError, match="a root cell needs start_path"):
    Cell("e", {}, train=_train())
  with pytest.raises(ValueError, match="'final' needs a training run"):
    Cell("f", {}, start_path="m", points=(Point("p", "final"),))


def test_identity_follows_needs_and_ignores_where_the_run_lives():
  a = Cell("a", {}, start_path="m", points=(Point("p", "start"),))
  c1 = Cell("c", {}, train=_train(), parent="a", parent_model="start")
  c2 = Cell("c", {}, train=_train(), parent="a", parent_model="start", start_path="other")
  b = Cell("b", {}, train=_train("{cell:c}/gen.jsonl"), parent="a", parent_model="start", needs=("c",))
  ids1, ids2 = cells_lib.identities([a, c1, b]), cells_lib.identities([a, c2, b])
  assert ids1["a"] == ids2["a"] and ids1["c"] != ids2["c"] and ids1["b"] != ids2["b"]
  t = _train()
  t.export.snapshot_dir = "/somewhere/else"
  moved = Cell("c", {}, train=t, parent="a", parent_model="start")
  assert cells_lib.identities([a, moved])["c"] == ids1["c"]


def test_identity_leaves_out_the_keys_a_resumed_run_may_change():
  a = Cell("a", {}, start_path="m", points=(Point("p", "start"),))
  def child(**values):
    t = _train()
    for key, v in values.items():
      section, name = key.split(".")
      setattr(t[section], name, v)
    return Cell("c", {}, train=t, parent="a", parent_model="start")
  base = cells_lib.identities([a, child()])["c"]
  for layout in ({"model.scan_layers": False}, {"model.attention_impl": "splash"},
                 {"model.remat": "full"}, {"mesh.fsdp": 4}, {"checkpoint.every": 7},
                 {"train.log_every": 1}):
    assert cells_lib.identities([a, child(**layout)])["c"] == base, layout
  for outcome in ({"optimizer.lr": 3e-4}, {"data.n": 5}, {"model.dtype": "bfloat16"},
                  {"train.num_epochs": 2}):
    assert cells_lib.identities([a, child(**outcome)])["c"] != base, outcome


def test_placeholders_resolve_to_folders_and_only_for_known_cells(tmp_path):
  a = Cell("a", {}, start_path="m", points=(Point("p", "start"),))
  c = Cell("c", {}, train=_train(), parent="a", parent_model="start")
  b = Cell("b", {}, train=_train("{cell:c}/gen.jsonl"), parent="a", parent_model="start", needs=("c",))
  e = Cell("e", {}, train=_train("{experiment_dir}/data/{cell:c}.jsonl"), parent="a")
  grid = grid_lib.Grid(Path(tmp_path))
  grid.add([a, c, b, e])
  cfg = grid_lib.resolve_placeholders(b.train, b, grid)
  assert cfg.data.load_kwargs.path == f"{tmp_path}/cells/{grid.ids['c']}/gen.jsonl"
  assert b.train.data.load_kwargs.path == "{cell:c}/gen.jsonl"      # the cell's own config is untouched
  with pytest.raises(ValueError, match=r"\{cell:c\} names a cell that is neither its parent"):
    grid_lib.resolve_placeholders(e.train, e, grid)
