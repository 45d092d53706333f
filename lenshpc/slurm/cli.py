"""Sub-commands ``slurm`` (render, submit, env) and ``run`` (``config`` is :mod:`lenshpc.config.cli`)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from lenshpc.config import UserError, load
from lenshpc.config.train import jobs


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} is not at least 1")
    return value


def _render(args: argparse.Namespace) -> int:
    from lenshpc.slurm import script, submit
    cfg = load(args.config)
    out, workdir = args.out.resolve(), args.workdir.resolve()
    paths = script.Paths.under(workdir, out / "config.yaml", out / "logs")
    try:
        out.mkdir(parents=True, exist_ok=True)
        (out / "config.yaml").write_text(cfg.to_yaml_text())
    except OSError as exc:
        raise UserError(f"cannot write into --out {out}: {exc.strerror or exc}") from None
    written = submit.render_scripts(cfg, out, paths)
    print(f"wrote {out / 'config.yaml'} (the resolved config the scripts read)")
    for _stage, path in written.items():
        print(f"wrote {path}")
    n = len(jobs(cfg.train, cfg.dataset.n_folds))
    print(f"submit by hand: a=$(sbatch --parsable {written['simulate']}); "
          f"b=$(sbatch --parsable --dependency=afterok:$a {written['train']}); "
          f"sbatch --dependency=afterok:$b {written['evaluate']}   ({n} array tasks)")
    return 0


def _submit(args: argparse.Namespace) -> int:
    import shutil

    from lenshpc.slurm.check import require
    from lenshpc.slurm.submit import submit
    from lenshpc.slurm.workdir import Workdir
    cfg = load(args.config)
    # Without sbatch there is nothing to ask; submit then says so in one line.
    if not (args.dry_run or args.no_check) and shutil.which("sbatch"):
        require(cfg, args.workdir.resolve())
    submit(cfg, Workdir(args.workdir.resolve()), dry_run=args.dry_run)
    return 0


def _slurm_check(args: argparse.Namespace) -> int:
    from lenshpc.slurm.check import check
    cfg = load(args.config)
    return 0 if check(cfg, args.workdir.resolve() if args.workdir else None) else 1


def _env(args: argparse.Namespace) -> int:
    from lenshpc.env import from_environ
    env = from_environ()
    print(json.dumps(env.as_dict(), indent=1) if args.json else env.describe(), flush=True)
    return 0


def _run(args: argparse.Namespace) -> int:
    from lenshpc.env import launch_env
    from lenshpc.slurm.local import run
    from lenshpc.slurm.workdir import Workdir
    if launch_env().under_launcher:
        raise UserError("lenshpc run starts its own mpirun for each stage; "
                        "start it without mpirun/srun/horovodrun")
    cfg = load(args.config)
    say = lambda line: print(line, flush=True)  # noqa: E731 - interleaves with the stages' output
    return run(cfg, Workdir(args.workdir.resolve()), args.np, args.train_launcher, say=say)


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``slurm`` and ``run`` (those not registered yet)."""
    if "slurm" not in subparsers.choices:
        p = subparsers.add_parser("slurm", help="render or submit the sbatch chain",
                                  description="The pipeline as Slurm jobs: simulate -> train "
                                  "array -> evaluate.")
        sub = p.add_subparsers(dest="slurm_command", metavar="SUBCOMMAND", required=True)
        r = sub.add_parser("render", help="write the three sbatch scripts",
                           description="Write DIR/{simulate,train,evaluate}.sbatch and "
                           "DIR/config.yaml (the resolved config they read).")
        r.add_argument("--config", required=True, type=Path, help="YAML config")
        r.add_argument("--out", required=True, type=Path, help="folder for the scripts")
        r.add_argument("--workdir", type=Path, default=Path("."),
                       help="where the jobs put dataset/, runs/ and report/ "
                       "(default: the current directory)")
        r.set_defaults(func=_render)
        s = sub.add_parser("submit", help="render and submit what is missing of the chain",
                           description="Render the scripts into W/slurm and submit simulate, "
                           "the train array (after simulate) and evaluate (after the array), "
                           "leaving out what W already holds.")
        s.add_argument("--config", required=True, type=Path, help="YAML config")
        s.add_argument("--workdir", required=True, type=Path,
                       help="study folder: W/dataset, W/runs, W/report, W/slurm")
        s.add_argument("--dry-run", action="store_true",
                       help="render and print the sbatch commands, submit nothing")
        s.add_argument("--no-check", action="store_true",
                       help="do not run `lenshpc slurm check` first")
        s.set_defaults(func=_submit)
        c = sub.add_parser("check", help="pre-flight: does this Slurm accept the config?",
                           description="Ask this cluster whether it accepts the config's "
                           "slurm: section (partitions, GPUs, time limits, MPI plugin, "
                           "account, QOS, file systems). A table of pass/warn/fail; exit 1 "
                           "on any fail.")
        c.add_argument("--config", required=True, type=Path, help="YAML config")
        c.add_argument("--workdir", type=Path, help="the study folder to check as well")
        c.set_defaults(func=_slurm_check)
        e = sub.add_parser("env", help="describe the Slurm job this runs in",
                           description="What the SLURM_* variables say about this job.")
        e.add_argument("--json", action="store_true", help="all fields as JSON")
        e.set_defaults(func=_env)
    if "run" not in subparsers.choices:
        from lenshpc.launch import usable_cores
        p = subparsers.add_parser("run", help="run the whole pipeline on this machine",
                                  description="simulate, train every job, evaluate: each under "
                                  "mpirun with N processes, skipping what WORKDIR already holds.")
        p.add_argument("--config", required=True, type=Path, help="YAML config")
        p.add_argument("--workdir", required=True, type=Path,
                       help="study folder: W/dataset, W/runs, W/report")
        p.add_argument("--np", type=_positive, default=usable_cores(),
                       help="processes per stage (default: the usable cores)")
        p.add_argument("--train-launcher", choices=("mpirun", "horovodrun"), default="mpirun",
                       help="how training starts its Horovod ranks (default: mpirun)")
        p.set_defaults(func=_run)
