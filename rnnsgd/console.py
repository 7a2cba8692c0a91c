"""What `rnnsgd train` shows while it trains (standard library and rnnsgd.metrics only: no torch, no tqdm).

On a terminal, one line redrawn in place: step/T, elapsed, ETA, the current test risk. Anywhere else (a pipe,
a log file), plain lines: one per evaluation with its metrics, and between evaluations, which thin out
geometrically (8 a decade: minutes apart late in a long run), a line at least every `heartbeat_s` seconds.
The ETA is the time to the step budget T at the rate so far; a run that plateaus ends sooner.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from typing import Any, TextIO

from rnnsgd.metrics import REL_RISK_TAIL, STEP, TEST_RISK, TRAIN_RISK


def duration(seconds: float) -> str:
    """'4m05s', '2h03m'."""
    s = int(round(seconds))
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


def one_line(e: BaseException) -> str:
    """An exception in one line: its type and the first line of its message."""
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0][:300]}" if text else type(e).__name__


def plural(n: int, word: str, many: str | None = None) -> str:
    """'1 trial', '2 trials' (many: the plural where it is not word + 's')."""
    return f"{n} {word if n == 1 else (many or word + 's')}"


class TrainProgress:
    # what a plain evaluation line shows (those the run has), and what the terminal line shows
    KEYS = (TRAIN_RISK, TEST_RISK, "test/nrisk", "w/move_fro", "act/flip_frac")
    LIVE_KEYS = (TEST_RISK, REL_RISK_TAIL)

    def __init__(
        self,
        T: int,
        stream: TextIO,
        tty: bool | None = None,
        redraw_s: float = 0.25,
        heartbeat_s: float = 30.0,
        keys: Sequence[str] = KEYS,
    ) -> None:
        self.T, self.stream, self.keys = T, stream, keys
        self.tty = stream.isatty() if tty is None else tty
        self.redraw_s, self.heartbeat_s = redraw_s, heartbeat_s
        self.t0 = time.monotonic()  # reset by start(): the rate counts training, not the set-up before it
        self.step = 0
        self.live: dict[str, float] = {}
        self.last_shown = -float("inf")
        self.drawn = False  # a terminal line is on screen, not yet ended by a newline

    def start(self) -> None:
        self.t0 = time.monotonic()

    def _times(self) -> str:
        elapsed = time.monotonic() - self.t0
        if self.step >= self.T:
            eta = "-"
        elif self.step > 0 and elapsed >= 0.5:  # the rate of the first moments is mostly evaluations
            eta = duration(elapsed * (self.T - self.step) / self.step)
        else:
            eta = "?"
        return f"elapsed {duration(elapsed)}  ETA {eta}"

    def _width(self) -> int:
        try:
            columns = os.get_terminal_size(self.stream.fileno()).columns
        except (OSError, ValueError, AttributeError):
            columns = 0
        return columns or 80  # 0: a terminal that never said its size

    def _draw(self) -> None:
        pct = 100 * self.step / self.T if self.T else 100.0
        live = "  ".join(f"{k} {self.live[k]:.4f}" for k in self.LIVE_KEYS if k in self.live)
        line = f"step {self.step}/{self.T} {pct:.0f}%  {self._times()}  {live}".rstrip()
        # a line longer than the terminal wraps, and \r then redraws only its last part
        self.stream.write("\r\033[K" + line[: max(self._width() - 1, 20)])
        self.stream.flush()
        self.drawn = True
        self.last_shown = time.monotonic()

    def _plain(self, cells: str = "") -> None:
        width = len(str(self.T))
        text = f"step {self.step:>{max(width, 8)}}/{self.T}  {cells + '  ' if cells else ''}{self._times()}"
        self.stream.write(text + "\n")
        self.stream.flush()
        self.last_shown = time.monotonic()

    def steps(self, step: int) -> None:
        """The trainer reached `step` between evaluations (Trainer.on_steps)."""
        self.step = step
        if time.monotonic() - self.last_shown >= (self.redraw_s if self.tty else self.heartbeat_s):
            self._draw() if self.tty else self._plain()

    def evaluation(self, metrics: dict[str, Any]) -> None:
        self.step = int(metrics[STEP])
        self.live = {k: metrics[k] for k in self.LIVE_KEYS if k in metrics}
        if self.tty:
            self._draw()
        else:
            self._plain("  ".join(f"{k} {metrics[k]:8.4f}" for k in self.keys if k in metrics))

    def close(self) -> None:
        """End the terminal line (it stays on screen with the final step and elapsed time)."""
        if self.tty and self.drawn:
            self.stream.write("\n")
            self.stream.flush()
            self.drawn = False
