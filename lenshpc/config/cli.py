"""``lenshpc config check|docs``: validate and summarise a config, print the key reference."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def _check(args: argparse.Namespace) -> int:
    from lenshpc.config import load
    from lenshpc.config.train import jobs
    cfg = load(args.config)
    if args.resolved:
        sys.stdout.write(cfg.to_yaml_text())
        return 0
    d, grid = cfg.dataset, jobs(cfg.train, cfg.dataset.n_folds)
    print(f"{args.config}: valid. Study {cfg.name!r}: {d.n_images} images of "
          f"{cfg.image.size}x{cfg.image.size} pixels, {d.n_folds} folds + {d.n_test} test; "
          f"{len(cfg.train.models)} models x {d.n_folds} folds = {len(grid)} training jobs "
          f"(Slurm array 0-{len(grid) - 1})")
    return 0


def _docs(args: argparse.Namespace) -> int:
    from lenshpc.config import schema_markdown
    sys.stdout.write(schema_markdown())
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``config`` (unless the dispatcher already added it)."""
    if "config" in subparsers.choices:
        return
    p = subparsers.add_parser("config", help="check a config or print the config reference",
                              description="Check a config file, or print docs/config.md.")
    sub = p.add_subparsers(dest="config_command", metavar="SUBCOMMAND", required=True)
    c = sub.add_parser("check", help="validate a config and summarise it")
    c.add_argument("config", type=Path, help="YAML config")
    c.add_argument("--resolved", action="store_true",
                   help="print the resolved config (every key, defaults filled in)")
    c.set_defaults(func=_check)
    d = sub.add_parser("docs", help="print the reference of every key (docs/config.md)")
    d.set_defaults(func=_docs)
