"""MPI at the edge: one place that finds out whether we run under a launcher.

Kernels take ``rank`` and ``size`` as plain arguments; only drivers call :func:`world`.
Without mpi4py, or outside any launcher, everything runs as one process.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

#: Environment variables that launchers set; if none is present we do not import MPI.
_LAUNCHER_VARS = ("OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_RANK", "MPI_LOCALNRANKS",
                  "HOROVOD_RANK")


@dataclass(frozen=True)
class World:
    """The processes of this run: ``comm`` is an mpi4py communicator or None (serial)."""

    rank: int = 0
    size: int = 1
    comm: Any = None

    @property
    def is_root(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.comm is not None:
            self.comm.Barrier()

    def bcast(self, obj: Any, root: int = 0) -> Any:
        return obj if self.comm is None else self.comm.bcast(obj, root=root)

    def gather(self, obj: Any, root: int = 0) -> list[Any] | None:
        return [obj] if self.comm is None else self.comm.gather(obj, root=root)

    def allgather(self, obj: Any) -> list[Any]:
        return [obj] if self.comm is None else self.comm.allgather(obj)

    def allreduce_sum(self, value: float) -> float:
        if self.comm is None:
            return value
        from mpi4py import MPI
        return self.comm.allreduce(value, op=MPI.SUM)

    def abort(self, code: int = 1) -> None:
        if self.comm is not None and self.size > 1:
            self.comm.Abort(code)


def under_launcher() -> bool:
    """True when some MPI launcher (mpirun, srun, horovodrun) started this process."""
    return any(v in os.environ for v in _LAUNCHER_VARS)


def world() -> World:
    """The MPI world if launched under MPI, else a serial world (no mpi4py import)."""
    if not under_launcher():
        return World()
    try:
        from mpi4py import MPI
    except ImportError:  # pragma: no cover - mpi4py is part of the stack
        return World()
    comm = MPI.COMM_WORLD
    return World(rank=comm.Get_rank(), size=comm.Get_size(), comm=comm if comm.Get_size() > 1 else None)


def split_evenly(n: int, rank: int, size: int) -> range:
    """The contiguous share of ``range(n)`` owned by ``rank`` of ``size`` (sizes differ by <= 1)."""
    base, extra = divmod(n, size)
    start = rank * base + min(rank, extra)
    return range(start, start + base + (1 if rank < extra else 0))


class Progress:
    """Progress of a job over all ranks, shown by rank 0: items done, items/s, ETA.

    A bar redrawn in place on a terminal; otherwise one log line every ``interval``
    seconds (and a last one at the end). ``done`` counts items finished before this run
    (resume); the rate counts only this run's items. Call :meth:`advance` with newly
    finished items (from any rank) and :meth:`close` at the end."""

    def __init__(self, total: int, done: int = 0, *, unit: str = "images", stream: Any = None,
                 interval: float | None = None, enabled: bool = True):
        import sys
        import time
        self.total, self.done, self.unit = total, done, unit
        self.stream = sys.stderr if stream is None else stream
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        if interval is None:
            interval = float(os.environ.get("LENSHPC_PROGRESS_INTERVAL", 0.2 if self.tty else 10.0))
        self.interval, self.enabled = interval, enabled
        self._clock = time.monotonic
        self.start = self._last = self._clock()
        self._new = 0

    @property
    def rate(self) -> float:
        """Items per second in this run."""
        elapsed = self._clock() - self.start
        return self._new / elapsed if elapsed > 0 else 0.0

    def line(self) -> str:
        rate = self.rate
        left = self.total - self.done
        eta = _hms(left / rate) if rate > 0 else "?"
        return (f"{self.done}/{self.total} {self.unit} ({100 * self.done / max(self.total, 1):.0f}%), "
                f"{rate:.1f} {self.unit}/s, ETA {eta}")

    def advance(self, n: int) -> None:
        self.done += n
        self._new += n
        now = self._clock()
        if self.enabled and now - self._last >= self.interval:
            self._last = now
            self._show()

    def _show(self, end: str = "") -> None:
        if self.tty:
            width = 30
            filled = int(width * self.done / max(self.total, 1))
            self.stream.write(f"\r[{'#' * filled}{'.' * (width - filled)}] {self.line()}\033[K{end}")
        else:
            self.stream.write(f"progress: {self.line()}\n")
        self.stream.flush()

    def close(self) -> None:
        if self.enabled:
            self._show(end="\n")


def _hms(seconds: float) -> str:
    seconds = int(round(seconds))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"
