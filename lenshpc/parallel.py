"""MPI at the edge: one place that finds out whether, and how, a launcher started us.

Kernels take ``rank`` and ``size`` as plain arguments; only drivers call :func:`world`
(the MPI communicator) or :func:`launch_env` (what the launcher's variables say, without
importing MPI). Without mpi4py, or outside any launcher, everything runs as one process.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Mapping

#: Exit status of a stage stopped by a signal after saving its last whole unit of work
#: (a training epoch): run the same command again to continue. Every rank returns it;
#: ``lenshpc run`` and the rendered train script act on it (75 is BSD's EX_TEMPFAIL).
EXIT_STOPPED = 75
#: What ``horovodrun`` (MPI mode) passes to mpirun to place its ranks, instead of its
#: default ``-bind-to none -map-by slot``: Open MPI 5's mpirun (prterun) refuses those
#: single-dash forms ("unable to find the specified executable ... none"); the long
#: options mean the same to Open MPI 4 and 5. No binding: TensorFlow's threads may use
#: every core the rank was given.
HOROVODRUN_BINDING = "--bind-to none --map-by slot"
#: Exit status of a user error (bad config, missing file, wrong fold): one line, no traceback.
EXIT_USER_ERROR = 2


@dataclass(frozen=True)
class _Launcher:
    """Where one launcher announces a process' place: its variables, and whether the
    processes it starts form one MPI world (``mpi``) or only know their numbers."""

    name: str
    rank: str
    size: str | None
    local_rank: str | None
    local_size: str | None
    mpi: bool


#: Every launcher lenshpc knows, first match (by its rank variable) wins: mpirun of Open
#: MPI (also under ``horovodrun`` in MPI mode, and Open MPI 5's prterun), PMIx (``srun
#: --mpi=pmix``), PMI (MPICH's Hydra, ``srun --mpi=pmi2``), ``horovodrun --gloo``, and
#: plain ``srun`` (task numbers only, read through :mod:`lenshpc.slurm.env`).
LAUNCHERS = (
    _Launcher("mpirun", "OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE",
              "OMPI_COMM_WORLD_LOCAL_RANK", "OMPI_COMM_WORLD_LOCAL_SIZE", mpi=True),
    _Launcher("pmix", "PMIX_RANK", None, None, None, mpi=True),
    _Launcher("pmi", "PMI_RANK", "PMI_SIZE", "MPI_LOCALRANKID", "MPI_LOCALNRANKS", mpi=True),
    _Launcher("horovodrun", "HOROVOD_RANK", "HOROVOD_SIZE", "HOROVOD_LOCAL_RANK",
              "HOROVOD_LOCAL_SIZE", mpi=False),
    _Launcher("srun", "SLURM_PROCID", "SLURM_NTASKS", "SLURM_LOCALID", None, mpi=False),
)


@dataclass(frozen=True)
class LaunchEnv:
    """This process' place among the processes its launcher started (after submitit's
    ``JobEnvironment``). ``launcher`` is None without one (then rank 0 of 1)."""

    launcher: str | None = None
    rank: int = 0
    size: int = 1
    local_rank: int = 0
    local_size: int | None = None
    mpi: bool = False

    @property
    def is_root(self) -> bool:
        return self.rank == 0

    @property
    def under_launcher(self) -> bool:
        """True under mpirun, an MPI-enabled srun, or horovodrun (not plain srun or sbatch)."""
        return self.launcher is not None and self.launcher != "srun"


def _int(environ: Mapping[str, str], name: str | None) -> int | None:
    try:
        return int(environ[name]) if name else None
    except (KeyError, ValueError):
        return None


def launch_env(environ: Mapping[str, str] | None = None) -> LaunchEnv:
    """Read :data:`LAUNCHERS` from ``environ`` (default ``os.environ``); never imports MPI.

    Values a launcher does not give (size and local rank under PMIx) come from Slurm's
    task variables when they are set."""
    from lenshpc.slurm.env import from_environ
    e = os.environ if environ is None else environ
    slurm = from_environ(e)
    from_slurm = {"SLURM_PROCID": slurm.procid, "SLURM_NTASKS": slurm.ntasks,
                  "SLURM_LOCALID": slurm.localid}
    read = lambda name: from_slurm.get(name) if name in from_slurm else _int(e, name)  # noqa: E731
    for row in LAUNCHERS:
        rank = read(row.rank)
        if rank is None:
            continue
        size = read(row.size) or slurm.ntasks or 1
        local_rank = read(row.local_rank)
        if local_rank is None:
            local_rank = slurm.localid if slurm.localid is not None else 0
        return LaunchEnv(row.name, rank, size, local_rank, read(row.local_size), row.mpi)
    return LaunchEnv()


@dataclass(frozen=True)
class World:
    """The processes of this run: ``comm`` is an mpi4py communicator or None (serial)."""

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


def under_launcher() -> bool:
    """True when an MPI launcher (mpirun, srun with an MPI plugin) or horovodrun started us."""
    return launch_env().under_launcher


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
    import time
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
