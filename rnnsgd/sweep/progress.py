"""The live progress display of a running sweep: a Ray Tune callback on the driver.

One status line, points done/total (done in earlier runs included), running, failed and an ETA from this
run's rate of completion; it is redrawn in place on a terminal and printed every `interval` seconds (and at
each finished trial) otherwise. A trial trains a pack of points and reports how many of them have ended
(`points_done`, `points_failed`, cumulative over its attempts) with every result.
"""

from __future__ import annotations

import sys
import time
from typing import Any, TextIO

from ray.tune import Callback

from rnnsgd.console import duration, plural


class Progress(Callback):
    def __init__(
        self,
        name: str,
        total: int,
        done_before: int,
        labels: list[str],
        sizes: list[int],
        stream: TextIO | None = None,
        interval: float | None = None,
    ) -> None:
        self.name, self.total, self.done_before = name, total, done_before
        self.labels, self.sizes = labels, sizes  # per pack (trial config "i")
        self.ended: dict[int, tuple[int, int]] = {}  # pack -> (points done, points failed)
        self.retries = 0
        self.running: set[str] = set()
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty()
        self.interval = interval if interval is not None else (0.5 if self.tty else 30.0)
        self.t0 = time.monotonic()
        self.last_shown = -float("inf")
        self.last_state: tuple = ()

    @property
    def done_here(self) -> int:
        return sum(d for d, _ in self.ended.values())

    @property
    def failed(self) -> int:
        return sum(f for _, f in self.ended.values())

    def _state(self) -> tuple:
        return self.done_here, self.failed, len(self.running), self.retries

    def line(self) -> str:
        done = self.done_before + self.done_here
        remaining = self.total - done - self.failed
        if self.done_here and remaining > 0:
            eta = duration(remaining * (time.monotonic() - self.t0) / self.done_here)
        else:
            eta = "-" if remaining == 0 else "?"
        extra = f", {self.retries} retried" if self.retries else ""
        elapsed = duration(time.monotonic() - self.t0)
        running = plural(len(self.running), "trial")
        counts = f"{done}/{self.total} done, {running} running, {self.failed} failed{extra}"
        return f"[{self.name}] {counts}, elapsed {elapsed}, ETA {eta}"

    def show(self, force: bool = False, note: str | None = None) -> None:
        now = time.monotonic()
        if not force and now - self.last_shown < self.interval:
            return
        self.last_shown = now
        self.last_state = self._state()
        if self.tty:
            if note:
                self.stream.write("\r\033[K" + note + "\n")
            self.stream.write("\r\033[K" + self.line())
        else:
            self.stream.write((f"{note}\n" if note else "") + self.line() + "\n")
        self.stream.flush()

    def close(self) -> None:
        if self._state() != self.last_state:
            self.show(force=True)
        if self.tty:
            self.stream.write("\n")
            self.stream.flush()

    # -------------------------------------------------------------------------------- Tune's hooks

    def _label(self, trial: Any) -> str:
        return self.labels[trial.config["i"]]

    def _count(self, trial: Any, result: dict[str, Any] | None) -> None:
        if result and "points_done" in result:
            self.ended[trial.config["i"]] = (int(result["points_done"]), int(result["points_failed"]))

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self.running.add(trial.trial_id)
        self.show()

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
        self._count(trial, result)
        self.show()

    def on_trial_recover(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self.retries += 1
        self.show(
            force=True, note=f"  {self._label(trial)}: trial process died, retrying from its checkpoints"
        )

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self.running.discard(trial.trial_id)
        result = trial.last_result or {}
        self._count(trial, result)
        if result.get("outcome") != "done":  # stopped (Ctrl+C) before its points ended
            self.show(force=True, note=f"  {self._label(trial)}: stopped")
            return
        done, failed = self.ended.get(trial.config["i"], (0, 0))
        what = result_line(done, failed, self.sizes[trial.config["i"]])
        self.show(force=True, note=f"  {self._label(trial)}: {what} in {duration(result['train_s'])}")

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self.running.discard(trial.trial_id)
        i = trial.config["i"]
        done = self.ended.get(i, (0, 0))[0]
        self.ended[i] = (done, self.sizes[i] - done)  # the driver fails the points it had not ended
        self.show(force=True, note=f"  {self._label(trial)}: trial failed after its retries")

    def on_step_end(self, iteration: int, trials: list, **info: Any) -> None:
        self.show()


def result_line(done: int, failed: int, size: int) -> str:
    if size == 1:
        return "failed" if failed else "done"
    return f"{done} done" + (f", {failed} failed" if failed else "")


class Outcomes(Callback):
    """What the trials end with, into `ran` (runner.TuneRun): their training time, and the error of each pack
    whose trial failed after its retries (None where Tune could not record it)."""

    def __init__(self, ran: Any) -> None:
        self.ran = ran

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self.ran.train_s += float((trial.last_result or {}).get("train_s", 0.0))

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        try:  # Tune has just written it to the trial's folder, if it could
            error = trial.get_pickled_error() or trial.get_error()
        except Exception:
            error = None
        self.ran.errors[trial.config["i"]] = str(error) if error else None
