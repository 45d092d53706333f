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
