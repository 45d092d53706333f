"""The ``lenshpc`` command: a thin dispatcher over the stages' own ``cli`` modules.

Each stage module (``lenshpc.<stage>.cli``) has ``register(subparsers)``, which adds
its sub-command with ``set_defaults(func=...)``; ``func(args) -> int``. Stages are
imported only when their command runs, so ``lenshpc simulate`` never imports TensorFlow.
"""

from __future__ import annotations

import argparse
import importlib
import signal
import sys

from lenshpc import __version__
from lenshpc.config import UserError
from lenshpc.env import launch_env
from lenshpc.parallel import EXIT_STOPPED, EXIT_USER_ERROR, agreed_exit
from lenshpc.paths import check_arguments


def world_rank() -> int:
    """This process' rank as its launcher announced it (0 without a launcher).

    Kept for the stages that import it; new code reads ``lenshpc.env.launch_env().rank``."""
    return launch_env().rank


#: What ``lenshpc --help`` says the tool does.
DESCRIPTION = ("Simulate strong-lens images (MPI), train a CNN to measure their lens "
               "parameters (Horovod) and evaluate it (MPI), on a Slurm cluster, a node or a "
               "laptop.")

#: sub-command -> (module that registers it, one-line help)
COMMANDS = {
    "simulate": ("lenshpc.simulate.cli", "simulate lens images into a sharded HDF5 dataset (MPI)"),
    "dataset": ("lenshpc.dataset.cli", "inspect or verify a dataset"),
    "train": ("lenshpc.train.cli", "train one job (fold x dropout model), Horovod-parallel"),
    "evaluate": ("lenshpc.evaluate.cli", "evaluate every finished job into a report (MPI)"),
    "predict": ("lenshpc.predict.cli", "predict lens parameters of cutouts into a catalogue (MPI)"),
    "slurm": ("lenshpc.slurm.cli", "render or submit the sbatch chain"),
    "run": ("lenshpc.slurm.cli", "run the whole pipeline on this machine"),
    "config": ("lenshpc.config.cli", "check a config or print the config reference"),
}


def _parser(command: str | None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lenshpc", description=DESCRIPTION)
    parser.add_argument("--version", action="version", version=f"lenshpc {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    registered = set()
    for name, (module, help_) in COMMANDS.items():
        if name in sub.choices:  # already added by a module that registers several commands
            continue
        if command in (None, "-h", "--help") or name != command:
            sub.add_parser(name, help=help_, add_help=False)
            continue
        if module not in registered:
            importlib.import_module(module).register(sub)
            registered.add(module)
    return parser


#: Commands whose work is resumable at any moment (whole shards, whole jobs, whole chunks
#: are kept): SIGTERM or SIGUSR1 ends them at once with the stop line and exit 75. (train
#: catches the signals itself and stops after an agreed step; run passes them on.)
STOP_AT_ONCE = ("simulate", "evaluate", "predict")


class Stopped(BaseException):
    """Raised in the main thread by SIGTERM/SIGUSR1 in a :data:`STOP_AT_ONCE` command
    (a BaseException, so that no ``except Exception`` of a stage swallows it)."""


def _stop_at_once(signum: int, frame: object) -> None:
    raise Stopped(signal.Signals(signum).name)


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``lenshpc``; returns the exit status (2 for user errors)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    command = next((a for a in argv if not a.startswith("-")), None)
    parser = _parser(command if command in COMMANDS else None)
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2 if args.command is None else 0
    try:
        # Every path on the command line, checked the same way for every command, before
        # the stage is imported or does any work (lenshpc.paths).
        check_arguments(args)
        if args.command in STOP_AT_ONCE:
            for sig in (signal.SIGTERM, signal.SIGUSR1):
                signal.signal(sig, _stop_at_once)
        status = int(args.func(args) or 0)
    except UserError as exc:
        # Drivers raise user errors identically on every rank before any collective
        # call, so rank 0 speaks for all and every rank exits 2.
        if launch_env().rank == 0:
            print(f"lenshpc {args.command}: error: {exc}", file=sys.stderr, flush=True)
        status = EXIT_USER_ERROR
    except Stopped as exc:
        # Under mpirun this has about a second (odls_base_sigkill_timeout) before KILL.
        if launch_env().rank == 0:
            print(f"lenshpc {args.command}: stopped by {exc}; the work finished so far is "
                  f"kept; run the same command to continue", file=sys.stderr, flush=True)
        status = EXIT_STOPPED
    except KeyboardInterrupt:
        print(f"lenshpc {args.command}: interrupted", file=sys.stderr, flush=True)
        return 130
    if status:
        # A status every rank returns (a user error, a stop agreed during training):
        # under ``python -m mpi4py`` finalize MPI instead of aborting, so the line above
        # stays the last thing the user reads.
        agreed_exit(status)
    return status


if __name__ == "__main__":
    sys.exit(main())
