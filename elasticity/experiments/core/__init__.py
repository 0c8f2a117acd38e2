"""The experiment runner and what it shares with every experiment.

    protocol   the `Experiment` and `Evaluator` an experiment provides, the `PointContext` it gets
    cells      cells, points and their identities (the units of a grid)
    registry   experiments and report builders by name; `build_report(workdir)`
    runner     `run(name, config, workdir)`: the grid, cell after cell, resumable
    grid       one work directory's cells, their folders and models; placeholders in their configs
    shards     ``--shard=i/n``: disjoint parts of one grid, waiting across machines, merging rows
    workdir    the records a run writes (experiment.json, cell.json, results) and disk cleanup
    dry_run    the cell table a ``--dry_run`` prints
    sizes      `DataSizeError`: a preset that asks for more records than its files hold
"""
