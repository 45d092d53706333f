"""Run one stage as a child of ``lenshpc run`` and stop it cleanly when asked.

A stage starts in its own session (so a Ctrl-C typed at the terminal reaches only
``lenshpc run``, which decides what the stage gets) and with ``SIGTERM`` as its
parent-death signal (so even a ``kill -9`` of ``lenshpc run`` does not leave it running).

Signals are passed to the *stage processes* (``python ... -m lenshpc STAGE``), not to the
launcher: Open MPI's mpirun puts every rank in a process group of its own, answers
``SIGTERM`` by killing the ranks within about two seconds, and horovodrun dies of ``SIGUSR1``;
a training rank given the signal itself stops at the next agreed step, saves, and
exits 75, and then its launcher ends normally. ``SIGINT`` is passed on as ``SIGTERM``
(the signal on which a training job stops cleanly); a second ``SIGINT`` or ``SIGTERM``
kills the whole stage at once.

While the stage runs, ``lenshpc run`` is a child subreaper: a rank whose launcher died
is adopted by it and waited for, so it never returns while a process of the stage lives.
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Mapping, Sequence

#: Signals ``lenshpc run`` passes on to its stage.
FORWARDED = (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1)
#: Launchers: their processes are never signalled directly (see the module doc).
LAUNCHERS = frozenset({"mpirun", "mpiexec", "orterun", "prterun", "prte", "orted", "prted",
                       "horovodrun", "srun", "hydra_pmi_proxy"})
#: Seconds the stage's leftover processes get after TERM before they are killed.
LEFTOVER_GRACE_S = 30.0

_PR_SET_PDEATHSIG = 1
_PR_SET_CHILD_SUBREAPER = 36


def _prctl(option: int, value: int) -> bool:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(option, value, 0, 0, 0) == 0
    except (OSError, AttributeError):  # pragma: no cover - not Linux
        return False


def is_stage_process(argv: Sequence[str]) -> bool:
    """Whether a command line is a lenshpc stage itself (``python [-m mpi4py] -m lenshpc
    ...``), not a launcher carrying it in its arguments (mpirun ... python -m lenshpc). Pure."""
    for i, word in enumerate(argv):
        if Path(word).name in LAUNCHERS:
            return False
        if word == "-m" and i + 1 < len(argv) and argv[i + 1] == "lenshpc":
            return i > 0 and Path(argv[0]).name.startswith("python")
    return False


def _children() -> dict[int, list[int]]:
    """{parent pid: [child pids]} of every process this user can see (from /proc)."""
    tree: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            stat = Path(entry.path, "stat").read_text()
        except OSError:
            continue
        # Field 4 (ppid) follows the command name, which may hold spaces: split after ')'.
        ppid = int(stat[stat.rindex(")") + 2:].split()[1])
        tree.setdefault(ppid, []).append(int(entry.name))
    return tree


def descendants(pid: int) -> list[int]:
    """Every live process below ``pid``."""
    tree, found, todo = _children(), [], [pid]
    while todo:
        for child in tree.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def _argv(pid: int) -> list[str]:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")[:-1]
    except OSError:
        return []


def _kill(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def exit_status(returncode: int) -> int:
    """A child's return code as a shell would report it (128 + N when killed by signal N)."""
    return 128 - returncode if returncode < 0 else returncode


@dataclass
class Stop:
    """Signals ``lenshpc run`` received: the first (``signal``) and how many (``count``)."""

    signal: int | None = None
    count: int = 0
    names: list[str] = field(default_factory=list)

    def __bool__(self) -> bool:
        return self.signal is not None


class Supervisor:
    """Catches :data:`FORWARDED` for its lifetime (a context manager) and runs stages."""

    def __init__(self, say: Callable[[str], None] = print):
        self.say = say
        self.stop = Stop()
        self._child: subprocess.Popen | None = None
        self._title = ""
        self._signalled: dict[int, int] = {}  # pid -> signal sent
        self._seen: set[int] = set()  # every process seen below the running stage
        self._old: dict[int, object] = {}

    def __enter__(self) -> "Supervisor":
        for sig in FORWARDED:
            self._old[sig] = signal.signal(sig, self._handle)
        _prctl(_PR_SET_CHILD_SUBREAPER, 1)
        return self

    def __exit__(self, *exc: object) -> None:
        _prctl(_PR_SET_CHILD_SUBREAPER, 0)
        for sig, old in self._old.items():
            signal.signal(sig, old)  # type: ignore[arg-type]

    # ------------------------------------------------------------------ signals

    def _handle(self, signum: int, frame: object) -> None:
        self.stop.count += 1
        self.stop.names.append(signal.Signals(signum).name)
        first = self.stop.signal is None
        if first:
            self.stop.signal = signum
        if self._child is None:
            self.say(f"lenshpc run: {signal.Signals(signum).name} received; "
                     "no stage is running, stopping")
            return
        if not first and signum in (signal.SIGINT, signal.SIGTERM):
            self.say(f"lenshpc run: {signal.Signals(signum).name} again; killing {self._title}")
            for pid in [self._child.pid, *descendants(self._child.pid)]:
                _kill(pid, signal.SIGKILL)
            return
        self.say(f"lenshpc run: {signal.Signals(signum).name} received; passing it to "
                 f"{self._title} and waiting for it to stop")
        self._forward()

    def _stage_signal(self) -> int:
        sig = self.stop.signal
        return signal.SIGTERM if sig == signal.SIGINT else int(sig)  # type: ignore[arg-type]

    def _forward(self) -> None:
        """Send the stop signal to every stage process not yet given it (ranks may start
        after the signal came); to the child itself while it has none yet."""
        assert self._child is not None
        sig = self._stage_signal()
        below = descendants(self._child.pid)
        targets = [p for p in [self._child.pid, *below] if is_stage_process(_argv(p))]
        if not targets and not below:
            targets = [self._child.pid]  # the launcher has not started any rank yet
        for pid in targets:
            if self._signalled.get(pid) != sig:
                self._signalled[pid] = sig
                _kill(pid, sig)

    # ------------------------------------------------------------------ running

    def run(self, title: str, cmd: Sequence[str], env: Mapping[str, str]) -> int:
        """Run ``cmd`` to its end and return its exit status (128 + N if killed by
        signal N). With a stop already requested, nothing starts and 75 is returned."""
        from lenshpc.parallel import EXIT_STOPPED
        if self.stop:
            return EXIT_STOPPED
        self._title, self._signalled, self._seen = title, {}, set()
        child = subprocess.Popen(list(cmd), env=dict(env), start_new_session=True,
                                 preexec_fn=lambda: _prctl(_PR_SET_PDEATHSIG, signal.SIGTERM))
        self._child = child
        try:
            while True:
                try:
                    returncode = child.wait(timeout=1.0)
                    break
                except subprocess.TimeoutExpired:
                    self._seen.update(descendants(child.pid))
                    if self.stop:
                        self._forward()
        finally:
            self._child = None
        self._reap_leftovers(title)
        return exit_status(returncode)

    def _leftovers(self) -> list[int]:
        """Processes of the stage adopted by us (their launcher died before them)."""
        return [p for p in _children().get(os.getpid(), []) if p in self._seen]

    def _reap_leftovers(self, title: str) -> None:
        """Stop and wait for the stage's processes that outlived their launcher."""
        left = self._leftovers()
        # A one-process stage under Horovod's MPI leaves Open MPI's singleton daemon
        # (orted), which exits by itself within a moment: give leftovers that moment.
        settle = time.monotonic() + 3.0
        while left and time.monotonic() < settle:
            for pid in left:
                try:
                    os.waitpid(pid, os.WNOHANG)
                except ChildProcessError:
                    pass
            time.sleep(0.1)
            left = self._leftovers()
        if not left:
            return
        self.say(f"lenshpc run: {len(left)} process(es) of {title} outlived it; stopping them")
        sig, deadline = signal.SIGTERM, time.monotonic() + LEFTOVER_GRACE_S
        while left:
            for pid in left:
                _kill(pid, sig)
                try:
                    os.waitpid(pid, os.WNOHANG)  # reaps it once it has exited
                except ChildProcessError:
                    pass
            if time.monotonic() > deadline:
                sig = signal.SIGKILL
            time.sleep(0.2)
            self._seen.update(p for q in left for p in descendants(q))
            left = self._leftovers()
