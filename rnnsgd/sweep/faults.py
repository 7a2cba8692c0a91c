"""Fault injection, a testing aid (tests/test_sweep_run.py): the driver forwards RNNSGD_FAULT to its trials.

    RNNSGD_FAULT="raise@<point_id prefix>:<step>,kill@<point_id prefix>:<step>"

`raise` raises at the first evaluation at or after <step>; `kill` SIGKILLs the trial's own process there
(after that evaluation's checkpoint), on a fresh start only, so that the retry from the checkpoint gets
through. A prefix of `*` matches every point. Apart from rnnsgd.sweep.trial: the driver checks the variable
before anything starts, without importing torch.
"""

from __future__ import annotations

from dataclasses import dataclass


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
        if kind not in ("raise", "kill") or not prefix or not step.isdigit():
            raise ValueError(f"RNNSGD_FAULT: expected raise|kill@<point_id prefix>:<step>, got {item!r}")
        faults.append(Fault(kind, prefix, int(step)))
    return faults
