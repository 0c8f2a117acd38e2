"""Tables from results: rows of dicts written as JSON, CSV and markdown, each file atomically."""

from elasticity.report.tables import atomic_write, markdown_table, write_csv, write_json, write_markdown

__all__ = ["atomic_write", "markdown_table", "write_csv", "write_json", "write_markdown"]
