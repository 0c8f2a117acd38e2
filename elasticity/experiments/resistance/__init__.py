"""The resistance experiment (paper §5.1, Tables 1–2): θ1 < … < θ_m (``config.m``, default 3) from one
epoch in order, then forward θ_k → D_l against inverse θ_l → D_k for every pair k < l.

    grid        checks, data file names and cells (`validate`, `plan`)
    data        the held-out set and each seed's training records and prompts
    evaluate    what a point records (losses, KL, compression, the memorisation control)
    experiment  `Resistance` for the runner, and `prepare` (data files and the evaluator)
    report      the headline (generated design, whole-D_k measures, intervals), Tables 1–2, Δγ, the
                memorisation control and the loss curves
"""

from elasticity.experiments.resistance.data import build_files
from elasticity.experiments.resistance.evaluate import ResistanceEvaluator, final_loss, read_curve
from elasticity.experiments.resistance.experiment import EXPERIMENT, Resistance, prepare
from elasticity.experiments.resistance.grid import (DATASETS, DESIGNS, EXPERIMENT_DIR, PAIRS,
                                                    base_name, dk_inputs, dk_source, heldout_file,
                                                    num_checkpoints, pairs, plan, prompts_file,
                                                    train_file, validate)
from elasticity.experiments.resistance.report import build_resistance

__all__ = ["DATASETS", "DESIGNS", "EXPERIMENT", "EXPERIMENT_DIR", "PAIRS", "Resistance",
           "ResistanceEvaluator", "base_name", "build_files", "build_resistance", "dk_inputs",
           "dk_source", "final_loss", "heldout_file", "num_checkpoints", "pairs", "plan", "prepare", "prompts_file", "read_curve",
           "train_file", "validate"]
