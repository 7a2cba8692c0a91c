"""rnnsgd: does SGD learn RNNs with samples polynomial in the sequence length? (README.md)

The results API, importable from here:

    import rnnsgd

    runs = rnnsgd.load_runs("smoke")                    # one row per grid point: config, final metrics, tags
    hist = rnnsgd.load_history(runs, metrics=["test/rel_risk_tail"])   # long: run_id, point_id, step, ...

Both read MLflow (rnnsgd.analysis.load); they are imported on first use, so that `import rnnsgd` (and the
CLI's answer to bad input) loads neither MLflow nor torch.
"""

from __future__ import annotations

import importlib
from typing import Any

_LAZY = {
    "load_runs": "rnnsgd.analysis.load",
    "load_history": "rnnsgd.analysis.load",
    "NoSuchSweep": "rnnsgd.analysis.load",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value  # found directly from now on
        return value
    raise AttributeError(f"module 'rnnsgd' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})
