"""Free space for a sweep's checkpoints and MLflow store, on local folders: a check before anything starts
(a sweep that clearly cannot fit is bad input), and the diagnosis of a sweep that stopped on a full disk.

A point's checkpoint is torch.save of its trainer's state (rnnsgd.train.Trainer.state_dict): W' and the
running sum of its tail average from step 0, more sums of the tail average later, each m x m float32, and
the evaluations' history. Every point that runs keeps one until the sweep's end (the driver prunes them
then), so the points to run need at least two m x m float32 matrices each at once. URIs (s3://, gs://, a
server) are not checked.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path

from rnnsgd.config import TrialConfig
from rnnsgd.sweep.spec import Point, SweepError

# a point's file in <storage>/<sweep>/points/<point_id>/ (rnnsgd.sweep.trial.PointStore):
# torch.save({"meta": {run_id, step, train_s}, "state": trainer.state_dict()})
CHECKPOINT = "checkpoint.pt"

NEW_STORE_BYTES = 1 << 20  # an empty SQLite store after MLflow's migrations (about 0.9 MiB)
# the text of a full disk in errors that arrive as text: OSError's, SQLite's, pyarrow's
FULL_DISK = (os.strerror(errno.ENOSPC), "database or disk is full", "[errno 28]")


def checkpoint_bytes(cfg: TrialConfig) -> int:
    """The least a point's checkpoint takes: W' and the tail average's running sum (m x m float32 each)."""
    return 2 * 4 * cfg.model.m**2


def existing(path: str | Path) -> Path:
    """The path, or its nearest ancestor that exists (where a folder still to be created will live)."""
    p = Path(path).resolve()
    return next(q for q in (p, *p.parents) if q.exists())


def free_bytes(path: str | Path) -> int:
    st = os.statvfs(existing(path))
    return st.f_bavail * st.f_frsize


def megabytes(n: float) -> str:
    return f"{n / 1e6:.1f} MB"


def check_free_space(
    sweep: str, points: list[Point], storage: str, storage_where: str, store: str | None, store_where: str
) -> None:
    """SweepError (bad input, before anything is written) when the storage folder cannot hold the least the
    checkpoints of `points` (those to run) take, beyond what their checkpoints from an earlier run already
    take (a checkpoint replaces its point's old one), or the folder of a new SQLite store (`store`: its
    path, None when it exists or is not SQLite) cannot hold an empty one; both together where they share a
    filesystem."""
    needs: list[tuple[str, str, int, str]] = []  # (where, path, bytes, what)
    if "://" not in storage and points:
        folder = Path(storage) / sweep / "points"
        total = sum(
            max(0, checkpoint_bytes(p.config) - _size(folder / p.point_id / CHECKPOINT)) for p in points
        )
        needs.append((storage_where, storage, total, f"the checkpoints of the {len(points)} points to run"))
    if store is not None:
        needs.append((store_where, str(Path(store).parent), NEW_STORE_BYTES, "a new MLflow store"))
    by_device: dict[int, list[tuple[str, str, int, str]]] = {}
    try:
        for need in needs:
            by_device.setdefault(os.stat(existing(need[1])).st_dev, []).append(need)
        free = {dev: free_bytes(group[0][1]) for dev, group in by_device.items()}
    except OSError:
        return  # a folder that cannot be looked at: the checks that create it say why
    for dev, group in by_device.items():
        want = sum(n[2] for n in group)
        if free[dev] < want:
            where = " and ".join(dict.fromkeys(n[0] for n in group))
            paths = list(dict.fromkeys(n[1] for n in group))
            has = f"{paths[0]} has" if len(paths) == 1 else f"{' and '.join(paths)} share a filesystem with"
            what = " and ".join(n[3] for n in group)
            raise SweepError(
                f"{where}: {has} {megabytes(free[dev])} free, less than the "
                f"{megabytes(want)} that {what} take at the least"
            )


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def full_folders(folders: list[str], need: int) -> list[str]:
    """Those of the local folders whose filesystem has less than `need` bytes free, one per filesystem."""
    out: dict[int, str] = {}
    for folder in folders:
        if "://" in folder:
            continue
        try:
            dev = os.stat(existing(folder)).st_dev
            if free_bytes(folder) < need:
                out.setdefault(dev, folder)
        except OSError:
            continue
    return list(out.values())


def says_disk_full(text: str) -> bool:
    low = text.lower()
    return any(s.lower() in low for s in FULL_DISK)
