"""``lenshpc run``: the whole pipeline on one machine, each stage under its own launcher.

simulate and evaluate run under ``mpirun -n N python -m mpi4py -m lenshpc ...``; each
unfinished training job in turn under ``mpirun`` (or ``horovodrun``) with N Horovod ranks
(the lines of :func:`lenshpc.launch.stage_argv`).
Stages already complete are skipped (by their completion markers, as ``lenshpc slurm
submit`` does), so an interrupted run continues where it stopped when started again.

``SIGTERM``, ``SIGINT`` and ``SIGUSR1`` are passed on to the running stage, which is
waited for: ``lenshpc run`` never returns while a stage still runs, and returns the
stage's status (75 for a training job stopped at a checkpoint). See
:mod:`lenshpc.slurm.supervise`.
"""

from __future__ import annotations

import shutil
from typing import Callable, Literal

from lenshpc.config import Config, UserError
from lenshpc.config.train import jobs
from lenshpc.launch import launcher_env, local_argv, usable_cores
from lenshpc.parallel import EXIT_STOPPED
from lenshpc.slurm.supervise import Supervisor
from lenshpc.slurm.workdir import Workdir, prepare, progress

TrainLauncher = Literal["mpirun", "horovodrun"]


def run(cfg: Config, wd: Workdir, np_: int, train_launcher: TrainLauncher = "mpirun",
        say: Callable[[str], None] = print) -> int:
    """Run what is missing of the pipeline in ``wd``; returns an exit status
    (0 done, 75 stopped at a checkpoint or by a signal between stages, else a stage's)."""
    needed = ["mpirun"] if np_ > 1 else []
    if np_ > 1 and train_launcher == "horovodrun":
        needed.append("horovodrun")
    for tool in needed:
        if shutil.which(tool, path=launcher_env()["PATH"]) is None:
            raise UserError(f"{tool} not found on PATH (bin/setup installs it); or use --np 1")
    prepare(cfg, wd)
    with Supervisor(say) as supervisor:
        return _pipeline(cfg, wd, np_, train_launcher, supervisor, say)


def _pipeline(cfg: Config, wd: Workdir, np_: int, train_launcher: TrainLauncher,
              supervisor: Supervisor, say: Callable[[str], None]) -> int:
    env, cores = launcher_env(), usable_cores()
    common = ["--config", str(wd.config)]

    def step(title: str, stage: str, args: list[str], launcher: TrainLauncher = "mpirun") -> int:
        if supervisor.stop:
            return EXIT_STOPPED
        # One process runs without a launcher (lenshpc.launch has the launch lines).
        cmd = local_argv(stage, common + args, np_, launcher if np_ > 1 else None, cores)
        say(f"lenshpc run: {title}: {' '.join(cmd)}")
        status = supervisor.run(title, cmd, env)
        if status == EXIT_STOPPED:
            say(f"lenshpc run: {title} stopped after a checkpoint; "
                "run the same command again to continue")
        elif status:
            say(f"lenshpc run: {title} failed (exit status {status})")
        elif supervisor.stop:
            # It finished just as the signal came: stop before the next stage all the same.
            say(f"lenshpc run: stopped after {title} "
                f"({', '.join(supervisor.stop.names)}); run the same command again to continue")
            return EXIT_STOPPED
        return status

    done = progress(cfg, wd)
    if done.dataset_complete:
        say(f"lenshpc run: simulate: done ({wd.dataset})")
    else:
        status = step("simulate", "simulate", ["--out", str(wd.dataset)])
        if status:
            return status
    grid = jobs(cfg.train, cfg.dataset.n_folds)
    done = progress(cfg, wd)
    for job in grid:
        title = f"train job {job.index} of {len(grid)} ({job.path})"
        if job.index in done.finished:
            say(f"lenshpc run: {title}: done")
            continue
        status = step(title, "train", ["--data", str(wd.dataset), "--out", str(wd.runs),
                                       "--job", str(job.index)], train_launcher)
        if status:
            return status
    if progress(cfg, wd).report_current:
        say(f"lenshpc run: evaluate: done ({wd.report})")
    else:
        status = step("evaluate", "evaluate", ["--data", str(wd.dataset), "--runs", str(wd.runs),
                                               "--out", str(wd.report)])
        if status:
            return status
    say(f"lenshpc run: report: {wd.report / 'report.md'}")
    return 0
