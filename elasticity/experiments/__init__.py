"""Experiments as functions of a config that yield cells, and the runner that runs them.

`runner.run(name, config, workdir)` runs a grid (`cells.Cell`) resumably in one process; each
experiment module (`rebound`, …) provides ``validate``, ``plan``, ``prepare`` and optionally ``refine``.
"""
