"""``lenshpc train``: train one job of the grid (dropout model x fold), Horovod-parallel.

    lenshpc train --config CFG --data DIR --out RUNS --job J [--epochs E] [--device D]
    lenshpc train --config CFG --data DIR --out RUNS --model NAME --fold K [--epochs E]
    lenshpc train --config CFG --list-jobs

Runs as one process, or as N ranks under ``horovodrun -np N``, ``mpirun -n N python -m
mpi4py -m lenshpc train ...`` or ``srun``. Exit status: 0 finished (or already
finished), 2 bad input, 75 stopped by SIGTERM/SIGUSR1 after saving the last whole epoch
(run the same command again to continue).
"""

from __future__ import annotations

import argparse
import dataclasses

from lenshpc.config import Config, UserError, load
from lenshpc.config.train import Job, jobs


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "train", help="train one job (fold x dropout model), Horovod-parallel",
        description=__doc__.split("\n\n")[0],
        epilog="Jobs are numbered model-major: J = model_index * n_folds + fold.")
    p.add_argument("--config", required=True, metavar="CFG", help="YAML config file")
    p.add_argument("--data", metavar="DIR", help="dataset directory (written by lenshpc simulate)")
    p.add_argument("--out", metavar="RUNS", help="runs directory; the job writes RUNS/<model>/fold-<k>/")
    p.add_argument("--job", type=int, metavar="J", help="job number (see --list-jobs)")
    p.add_argument("--model", metavar="NAME", help="dropout model name (with --fold)")
    p.add_argument("--fold", type=int, metavar="K", help="validation fold (with --model)")
    p.add_argument("--epochs", type=int, metavar="E",
                   help="train until this many epochs are done (default: train.epochs)")
    p.add_argument("--device", choices=("auto", "gpu", "cpu"),
                   help="override train.device (the Slurm script passes gpu when the config "
                        "asks for GPUs)")
    p.add_argument("--list-jobs", action="store_true", help="print the job table and exit")
    p.set_defaults(func=main)


def select_job(cfg: Config, job: int | None = None, model: str | None = None,
               fold: int | None = None) -> Job:
    """The job named by ``--job`` or by ``--model`` and ``--fold``; UserError otherwise."""
    n_folds = cfg.dataset.n_folds
    grid = jobs(cfg.train, n_folds)
    if job is not None:
        if model is not None or fold is not None:
            raise UserError("give --job, or --model and --fold, not both")
        if not 0 <= job < len(grid):
            raise UserError(f"job {job} is out of range; the config has jobs 0..{len(grid) - 1} "
                            f"(see --list-jobs)")
        return grid[job]
    if model is None or fold is None:
        raise UserError("give --job J, or --model NAME and --fold K (see --list-jobs)")
    if not 0 <= fold < n_folds:
        raise UserError(f"fold {fold} is out of range; the config has folds 0..{n_folds - 1}")
    name = cfg.train.model(model).name
    return next(j for j in grid if j.model.name == name and j.fold == fold)


def job_table(cfg: Config) -> str:
    """The grid as a text table: job, model, fold, p1, p2."""
    rows = [("job", "model", "fold", "p1", "p2")]
    rows += [(str(j.index), j.model.name, str(j.fold), f"{j.model.p1:g}", f"{j.model.p2:g}")
             for j in jobs(cfg.train, cfg.dataset.n_folds)]
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows)


def main(args: argparse.Namespace) -> int:
    cfg = load(args.config)
    if args.list_jobs:
        from lenshpc.env import launch_env
        if launch_env().rank == 0:
            print(job_table(cfg), flush=True)
        return 0
    if not args.data or not args.out:
        raise UserError("--data DIR and --out RUNS are required (or --list-jobs)")
    if args.device is not None:
        cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, device=args.device))
    job = select_job(cfg, args.job, args.model, args.fold)
    from lenshpc.train.plan import plan_job
    from lenshpc.train.process import StopRequest
    from lenshpc.train.run import run_job
    # Catch Slurm's warning signals from the start; the loop acts on them between steps.
    stop = StopRequest()
    stop.install()
    plan = plan_job(cfg, job, args.data, args.out, args.epochs)
    return run_job(plan, stop)
