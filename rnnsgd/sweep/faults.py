"""Fault injection, a testing aid (tests/test_sweep_run.py): the driver forwards RNNSGD_FAULT to its trials.

    RNNSGD_FAULT="raise@<point_id prefix>:<step>,kill@<point_id prefix>:<step>"

`raise` raises in the learner's first evaluation at or after <step> (an error of that point alone); `kill`
SIGKILLs the trial's own process there (after that evaluation's checkpoint), on a fresh start only, so that
the retry from the checkpoint gets through. A prefix of `*` matches every point. Apart from
rnnsgd.sweep.trial: the driver checks the variable before anything starts, without importing torch.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

KINDS = ("raise", "kill")


@dataclass(frozen=True)
class Fault:
    kind: str  # raise | kill
    prefix: str  # point_id prefix, or * for all
    step: int

    def matches(self, point_id: str) -> bool:
        return self.prefix == "*" or point_id.startswith(self.prefix)


def parse_faults(spec: str | None) -> list[Fault]:
    """'raise@ab12:100,kill@*:300' -> [Fault('raise', 'ab12', 100), Fault('kill', '*', 300)]."""
    faults = []
    for item in (spec or "").replace(";", ",").split(","):
        if not item.strip():
            continue
        kind, _, rest = item.strip().partition("@")
        prefix, _, step = rest.rpartition(":")
        if kind not in KINDS or not prefix or not step.isdigit():
            raise ValueError(f"RNNSGD_FAULT: expected raise|kill@<point_id prefix>:<step>, got {item!r}")
        faults.append(Fault(kind, prefix, int(step)))
    return faults


def arm_raise(trainer: Any, faults: Sequence[Fault]) -> None:
    """Make the trainer's evaluations raise from the first at or after a `raise` fault's step: inside the
    learner, where a packed run drops that point alone (rnnsgd.packed, isolate_errors)."""
    raises = sorted((f for f in faults if f.kind == "raise"), key=lambda f: f.step)
    if not raises:
        return
    evaluate, fault = trainer.evaluate, raises[0]

    def evaluate_or_raise(*args: Any, **kwargs: Any) -> Any:
        if trainer.step >= fault.step:
            raise RuntimeError(f"injected fault (RNNSGD_FAULT raise@{fault.prefix}:{fault.step})")
        return evaluate(*args, **kwargs)

    trainer.evaluate = evaluate_or_raise


def kill_after_checkpoint(faults: Sequence[Fault], step: int, fresh: bool) -> None:
    """SIGKILL this process at an evaluation at or after a `kill` fault's step, on a fresh start only."""
    if fresh and any(f.kind == "kill" and step >= f.step for f in faults):
        os.kill(os.getpid(), signal.SIGKILL)
