"""Scaling (paper §5.3, Figs. 5–6): the rebound grid over several models and each model's rebound speed.

    grid     one rebound grid per model (`plan`), `Dispatch`ing points to each model's evaluator
    speed    the undone fraction, rebound speed and half point (`rebound_speed`)
    report   rebound speed against parameters or pre-training tokens
"""

from elasticity.experiments.scaling.grid import (EXPERIMENT, Dispatch, Scaling, model_config,
                                                 model_name, plan, prepare, validate)
from elasticity.experiments.scaling.report import build_scaling
from elasticity.experiments.scaling.speed import half_point, rebound_speed, undone_fraction

__all__ = ["EXPERIMENT", "Dispatch", "Scaling", "build_scaling", "half_point", "model_config",
           "model_name", "plan", "prepare", "rebound_speed", "undone_fraction", "validate"]
