"""MPI at the edge: the world of ranks, how they agree, and how they exit together.

Kernels take ``rank`` and ``size`` as plain arguments; only drivers call :func:`world`
(the MPI communicator, when a launcher's variables say there is one:
:func:`lenshpc.env.launch_env`). Without mpi4py, or outside any launcher, everything runs
as one process. "Rank 0 decides, every rank raises the same error" is
:meth:`World.on_root` and :meth:`World.agree`; :func:`agreed_exit` then lets every rank
exit with that status without an ``MPI_Abort``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Callable, Iterable, TypeVar

from lenshpc.config import UserError
from lenshpc.env import launch_env

T = TypeVar("T")

#: Exit status of a stage stopped by a signal after saving its last whole unit of work
#: (a training epoch): run the same command again to continue. Every rank returns it;
#: ``lenshpc run`` and the rendered train script act on it (75 is BSD's EX_TEMPFAIL).
EXIT_STOPPED = 75
#: Exit status of a user error (bad config, missing file, wrong fold): one line, no traceback.
EXIT_USER_ERROR = 2


@dataclass(frozen=True)
class World:
    """The processes of this run: ``comm`` is an mpi4py communicator or None (serial).

    A training process passes an object with the same ``allgather`` and ``bcast`` over
    Horovod's collectives (:class:`lenshpc.train.process.HorovodComm`)."""

    rank: int = 0
    size: int = 1
    comm: Any = None

    @property
    def is_root(self) -> bool:
        return self.rank == 0

    def bcast(self, obj: Any, root: int = 0) -> Any:
        return obj if self.comm is None else self.comm.bcast(obj, root=root)

    def gather(self, obj: Any, root: int = 0) -> list[Any] | None:
        return [obj] if self.comm is None else self.comm.gather(obj, root=root)

    def allgather(self, obj: Any) -> list[Any]:
        return [obj] if self.comm is None else self.comm.allgather(obj)

    def idle_barrier(self, poll_s: float = 0.01) -> None:
        """A barrier that sleeps while it waits. MPI implementations busy-poll in blocking
        collectives; a rank that waits there for minutes (rank 0 drawing figures, a rank
        done early) would take a core from the ranks still working on a shared node.
        Without a non-blocking barrier (Horovod's collectives) the next collective waits."""
        ibarrier = getattr(self.comm, "Ibarrier", None)
        if ibarrier is None:
            return
        request = ibarrier()
        while not request.Test():
            time.sleep(poll_s)

    def on_root(self, step: Callable[[], T]) -> T:
        """``step()`` on rank 0; its value on every rank, or its UserError raised on every
        rank (the others wait without spinning)."""
        outcome: tuple[bool, Any] | None = None
        if self.is_root:
            try:
                outcome = (True, step())
            except UserError as exc:
                outcome = (False, str(exc))
        self.idle_barrier()
        ok, value = self.bcast(outcome)
        if not ok:
            raise UserError(value)
        return value

    def agree(self, problems: Iterable[str] = (), *, tally: bool = True) -> None:
        """Called by every rank with its own ``problems``: the first of all ranks' (in rank
        order) is raised as one UserError on every rank, with ``tally`` followed by how many
        other distinct problems were found; none on any rank: returns on every rank."""
        self.idle_barrier()   # ranks done early must not steal CPU from those still working
        found = list(dict.fromkeys(p for part in self.allgather(list(problems)) for p in part))
        if found:
            more = len(found) - 1
            raise UserError(found[0] + (f" (and {more} more)" if tally and more else ""))


def world() -> World:
    """The MPI world if an MPI launcher started us, else a serial world (no mpi4py import)."""
    if not launch_env().mpi:
        return World()
    try:
        from mpi4py import MPI
    except ImportError:  # pragma: no cover - mpi4py is part of the stack
        return World()
    comm = MPI.COMM_WORLD
    return World(rank=comm.Get_rank(), size=comm.Get_size(), comm=comm if comm.Get_size() > 1 else None)


#: Tag of the messages by which ranks agree on an exit (never used by the stages).
_EXIT_TAG = 7575


def agreed_exit(status: int, timeout: float = 10.0) -> bool:
    """Called by every rank that is about to exit with ``status`` for a reason all ranks
    share (a user error raised identically everywhere, a stop agreed during training).

    When every rank of the MPI world says so within ``timeout`` seconds, MPI is
    finalized here, so that ``python -m mpi4py`` does not call ``MPI_Abort`` on the
    non-zero exit (whose banner would bury the user's one line). Otherwise (a rank
    failed alone, the others are busy) nothing is done: the abort then ends the job, as
    it must. True when MPI was finalized. A no-op without MPI."""
    import sys
    MPI = sys.modules.get("mpi4py.MPI")
    if MPI is None or not MPI.Is_initialized() or MPI.Is_finalized():
        return False
    hvd = sys.modules.get("horovod.tensorflow")
    if hvd is not None:
        # First stop Horovod's background thread, the process' other user of MPI: Open
        # MPI crashed now and then (SIGSEGV in a request's test) with both at work. A
        # rank that failed alone thereby ends Horovod on the others too, whose next
        # collective then fails: the job ends, as it must.
        try:
            if hvd.is_initialized():
                hvd.shutdown()
        except Exception:  # noqa: BLE001 - the exit goes on; the abort is the fallback
            return False
        if MPI.Is_finalized():
            # Horovod finalizes an MPI it initialised itself (horovodrun in MPI mode,
            # where mpi4py was imported later only to name the library).
            return True
    comm = MPI.COMM_WORLD
    rank, size = comm.Get_rank(), comm.Get_size()
    deadline = time.monotonic() + timeout

    def wait(requests: list) -> list | None:
        while time.monotonic() < deadline:
            done = [r.test() for r in requests]
            if all(flag for flag, _ in done):
                return [value for _, value in done]
            time.sleep(0.01)
        return None

    if size > 1:
        # Point-to-point with a tag of its own: it cannot match a collective the other
        # ranks are in, so a rank that failed alone never lets them run on without it.
        if rank == 0:
            said = wait([comm.irecv(source=r, tag=_EXIT_TAG) for r in range(1, size)])
            agreed = said is not None and all(s == status for s in said)
            for r in range(1, size):
                comm.isend(agreed, dest=r, tag=_EXIT_TAG).wait()
        else:
            comm.isend(status, dest=0, tag=_EXIT_TAG).wait()
            answer = wait([comm.irecv(source=0, tag=_EXIT_TAG)])
            agreed = bool(answer and answer[0])
        if not agreed:
            return False
    MPI.Finalize()
    return True


def split_evenly(n: int, rank: int, size: int) -> range:
    """The contiguous share of ``range(n)`` owned by ``rank`` of ``size`` (sizes differ by <= 1)."""
    base, extra = divmod(n, size)
    start = rank * base + min(rank, extra)
    return range(start, start + base + (1 if rank < extra else 0))
