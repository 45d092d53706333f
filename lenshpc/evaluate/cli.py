"""``lenshpc evaluate``: every finished job into metrics, tables, figures and a report (MPI)."""

from __future__ import annotations

import argparse

from lenshpc.config import load


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "evaluate", help="evaluate every finished job into a report (MPI)",
        description="Predict the test set with every finished job under RUNS, re-render each "
        "test system from its predicted theta_E, e1, e2 and score it (MSE, PSNR), then write "
        "predictions.h5, metrics.csv, psnr.csv, table1.{csv,md,tex}, figures/ and report.md "
        "into REPORT. Run under MPI as `mpirun -n N python -m mpi4py -m lenshpc evaluate ...`; "
        "results do not depend on N. Jobs already evaluated for the same model file, dataset "
        "and settings are reused. Inputs are checked first: a missing or damaged shard, a "
        "model file that is not the one train finished, or a REPORT that cannot be written "
        "is one line and exit 2. REPORT/report.done.json, written last, lists every product.")
    p.add_argument("--config", required=True, metavar="CFG", help="YAML config file")
    p.add_argument("--data", required=True, metavar="DIR",
                   help="dataset directory (lenshpc simulate)")
    p.add_argument("--runs", required=True, metavar="RUNS", help="runs directory (lenshpc train)")
    p.add_argument("--out", required=True, metavar="REPORT", help="report directory")
    p.add_argument("--mc-samples", type=int, default=None, metavar="S",
                   help="MC-dropout passes per image (overrides evaluate.mc_samples; 0: off)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from lenshpc.evaluate.run import evaluate
    cfg = load(args.config)
    return evaluate(cfg, args.data, args.runs, args.out, mc_samples=args.mc_samples)
