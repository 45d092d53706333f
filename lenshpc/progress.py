"""Progress of a job over all ranks, shown by rank 0: items done, items/s, ETA (tqdm).

On a terminal a bar redrawn in place; otherwise (a Slurm log, a pipe) one log line
``progress: 120/6000 images (2%), 35.1 images/s, ETA 02:48`` every ``interval`` seconds
and a last one at the end. Only rank 0 makes one; ``--no-progress`` turns it off.
"""

from __future__ import annotations

import os
import sys
from typing import Any, TextIO

from tqdm import tqdm  # no type information shipped

#: The log line without a terminal (tqdm's fields; ``unit`` carries its leading space).
LOG_FORMAT = "{n_fmt}/{total_fmt}{unit} ({percentage:.0f}%), {rate_fmt}, ETA {remaining}"


class Progress:
    """``total`` items, ``done`` of them finished before this run (resume): the rate and
    the ETA count only this run's items. Call :meth:`advance` with newly finished items
    (from any rank) and :meth:`close` at the end. ``LENSHPC_PROGRESS_INTERVAL`` (seconds)
    overrides the default interval: 0.2 s on a terminal, 10 s in a log."""

    def __init__(self, total: int, done: int = 0, *, unit: str = "images", stream: Any = None,
                 interval: float | None = None, enabled: bool = True):
        stream = sys.stderr if stream is None else stream
        tty = bool(getattr(stream, "isatty", lambda: False)())
        if interval is None:
            interval = float(os.environ.get("LENSHPC_PROGRESS_INTERVAL", 0.2 if tty else 10.0))
        # smoothing=0: the rate is this run's average, not a moving one.
        self._bar = _Bar(total=total, initial=done, unit=f" {unit}", disable=not enabled,
                         file=stream if tty else _LogLines(stream), mininterval=interval,
                         miniters=1, smoothing=0, dynamic_ncols=tty,
                         bar_format=None if tty else LOG_FORMAT)

    def advance(self, n: int) -> None:
        self._bar.update(n)

    def close(self) -> None:
        self._bar.close()


class _Bar(tqdm):
    monitor_interval = 0   # no monitor thread: the rate is an average (smoothing=0) anyway


class _LogLines:
    """Where tqdm writes when there is no terminal: each redraw (``\\r`` + the line, padded
    with spaces) becomes one ``progress:`` line of its own."""

    def __init__(self, stream: TextIO):
        self.stream = stream

    def write(self, text: str) -> None:
        line = text.replace("\r", "").strip()
        if line:
            self.stream.write(f"progress: {line}\n")

    def flush(self) -> None:
        self.stream.flush()
