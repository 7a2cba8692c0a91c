"""rnnsgd.analysis: runs -> thresholds (N*, T*) -> fits -> verdicts (docs/claims.md)."""

from .fits import (
    ScalingLawFit,
    aggregate_seeds,
    fit_additive_power_law,
    fit_learning_curve,
    select_scaling_law,
    tost_flat_slope,
)
from .thresholds import threshold
from .validate import run_validation

__all__ = [
    "ScalingLawFit",
    "aggregate_seeds",
    "fit_additive_power_law",
    "fit_learning_curve",
    "run_validation",
    "select_scaling_law",
    "threshold",
    "tost_flat_slope",
]
