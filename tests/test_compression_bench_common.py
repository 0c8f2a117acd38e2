"""bench/common.py: the side-by-side table, the ``ratio <what> <number>`` line, and RESULTS.md sections."""

from __future__ import annotations

import pytest

from bench.common import markdown_table, print_table, ratio, record


def test_print_table_aligns_union_of_columns_and_returns_markdown(capsys):
  rows = [{"impl": "ours", "tokens/s": 812.25, "n": 12345}, {"impl": "torch", "tokens/s": 301.5,
                                                            "note": "a|b"}]
  md = print_table(rows)
  out = capsys.readouterr().out.splitlines()
  assert out[0].split() == ["impl", "tokens/s", "n", "note"]
  assert [len(d) for d in out[1].split("  ")] == [5, 8, 6, 4]         # column widths
  assert out[3].index("301.500") + len("301.500") == out[1].index("-" * 8) + 8   # numbers right-aligned
  assert "812.250" in out[2] and "12,345" in out[2]
  assert md.splitlines() == ["| impl | tokens/s | n | note |", "|---|---|---|---|",
                             "| ours | 812.250 | 12,345 |  |", "| torch | 301.500 |  | a\\|b |"]


def test_ratio_prints_one_parseable_line(capsys):
  assert ratio("speed_vs_torch", 2.3456) == "ratio speed_vs_torch 2.346"
  assert capsys.readouterr().out == "ratio speed_vs_torch 2.346\n"
  with pytest.raises(ValueError, match="one word"):
    ratio("two words", 1.0)


def test_record_replaces_only_its_own_section(tmp_path):
  path = tmp_path / "RESULTS.md"
  record("forward (bench/forward.py)", "old forward", path)
  record("compression (bench/compression.py)", markdown_table([{"a": 1}]), path)
  record("forward (bench/forward.py)", "new forward\n\nsecond paragraph", path)
  text = path.read_text()
  assert text.startswith("# Benchmark results\n")
  assert "old forward" not in text and "new forward\n\nsecond paragraph\n" in text
  assert text.index("## forward") < text.index("## compression")      # order kept
  assert "| a |\n|---|\n| 1 |" in text
  assert text.count("## ") == 2
  assert not [p for p in tmp_path.iterdir() if p.name != "RESULTS.md"]  # no temporary left behind


def test_record_keeps_the_text_written_around_its_block(tmp_path):
  """A run rewrites only its generated block: the analysis written under a table survives, and a
  section written before the markers keeps its text below the new block."""
  from bench.common import BEGIN, END
  path = tmp_path / "RESULTS.md"
  record("eval (bench/e.py)", "table 1", path)
  record("other (bench/o.py)", "other table", path)
  text = path.read_text()
  path.write_text(text.replace(f"table 1\n{END}\n", f"table 1\n{END}\n\nWhy: analysis by hand.\n"))
  record("eval (bench/e.py)", "table 2", path)
  text = path.read_text()
  assert "table 1" not in text and "table 2" in text and "Why: analysis by hand.\n" in text
  assert text.index("table 2") < text.index("Why:") < text.index("## other") < text.index("other table")
  assert text.count(BEGIN) == text.count(END) == 2
  # A legacy section (no markers): the new block goes under the heading, the old text is kept.
  path.write_text("# Benchmark results\n\n## legacy (bench/l.py)\n\nold table\n\n### notes\nkept\n\n"
                  "## next\n\nx\n")
  record("legacy (bench/l.py)", "new table", path)
  assert path.read_text() == ("# Benchmark results\n\n## legacy (bench/l.py)\n\n" + BEGIN + "\nnew table\n"
                              + END + "\n\nold table\n\n### notes\nkept\n\n## next\n\nx\n")
  record("legacy (bench/l.py)", "newer table", path)
  assert "new table" not in path.read_text() and "old table\n\n### notes\nkept" in path.read_text()


def test_record_refuses_multiline_titles(tmp_path):
  with pytest.raises(ValueError):
    record("a\nb", "x", tmp_path / "R.md")
