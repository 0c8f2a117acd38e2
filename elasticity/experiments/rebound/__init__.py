"""The rebound experiment (paper §5.2, App. B.2, Table 3): stage 1 on n⁺ positive examples, stage 2
on n⁻ negative ones, evaluated at the base, after stage 1 and at every n⁻.

    grid        checks, cells and Table 3's bisection (`validate`, `plan`, `refine`)
    reverse     the reverse step's settings: SFT, DPO/SimPO/KTO pairs (matched or not), PPO's reward
    data        the tasks' training pools, held-out prompts and responses (IMDb, safety)
    pairs       prompt-matched preference pairs, sampled from a stage-2 cell's start model
    evaluate    what a point measures: generations, the scorer, Δγ, the KL to the base
    experiment  `Rebound` for the runner, and `prepare` (data files and the evaluator)
    rescore     a finished experiment's generations scored again by another scorer
    report      the report's curves, heatmaps and the Table 3 view
    provenance  the report's "Scorers and the reverse step"
"""

from elasticity.experiments.rebound.experiment import EXPERIMENT, Rebound, prepare
from elasticity.experiments.rebound.grid import (EXPERIMENT_DIR, ORDERS, REVERSES, pairs_file, plan,
                                                 pool_file, prompts_file, refine, shares_snapshots,
                                                 stage2_cells, validate)
from elasticity.experiments.rebound.report import build_rebound

__all__ = ["EXPERIMENT", "EXPERIMENT_DIR", "ORDERS", "REVERSES", "Rebound", "build_rebound",
           "pairs_file", "plan", "pool_file", "prepare", "prompts_file", "refine", "shares_snapshots",
           "stage2_cells", "validate"]
