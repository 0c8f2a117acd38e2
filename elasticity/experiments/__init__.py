"""Experiments: the runner and what it shares with them (`core`), one package per experiment
(`rebound`, `resistance`, `scaling`), and the table that names them.

    from elasticity.experiments.core import runner
    runner.run("rebound", config, "runs/rebound")       # or python -m launch.experiment
    from elasticity.experiments import build_report
    build_report("runs/rebound")                        # report.md, plots/, results.csv

Every experiment and report builder is registered here, by name (`core.registry`); the theory lab's
report (`elasticity.theory.lab_report`) is registered beside them, so ``launch.report`` regenerates
any experiment folder the same way.
"""

from elasticity.experiments import rebound, resistance, scaling
from elasticity.experiments.core import registry
from elasticity.experiments.core.registry import EXPERIMENTS, REPORTS, build_report
from elasticity.theory import lab_report

registry.register("rebound", rebound.EXPERIMENT, rebound.build_rebound)
registry.register("resistance", resistance.EXPERIMENT, resistance.build_resistance)
registry.register("scaling", scaling.EXPERIMENT, scaling.build_scaling)
registry.register(lab_report.EXPERIMENT, report=lab_report.build)

__all__ = ["EXPERIMENTS", "REPORTS", "build_report"]
