"""``lenshpc dataset info|verify``: inspect or verify a dataset folder.

``verify`` runs serially or under ``mpirun -n N python -m mpi4py -m lenshpc dataset
verify DIR`` (shards dealt round-robin to the ranks). No TensorFlow is imported here.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def register(sub) -> None:
    """Add ``dataset`` (unless the dispatcher already added it)."""
    if "dataset" in sub.choices:
        return
    d = sub.add_parser("dataset", help="inspect or verify a dataset")
    dsub = d.add_subparsers(dest="dataset_command", metavar="ACTION", required=True)
    i = dsub.add_parser("info", help="size, shapes, parameter ranges, folds, completeness")
    i.add_argument("dir", metavar="DIR")
    i.add_argument("--json", action="store_true", help="print JSON")
    i.set_defaults(func=info_command)
    v = dsub.add_parser("verify", help="check every shard's checksum and the index against the "
                                       "shards (exit 1 if any is bad; runs under mpirun)")
    v.add_argument("dir", metavar="DIR")
    v.set_defaults(func=verify_command)


def info_command(args: argparse.Namespace) -> int:
    from lenshpc.dataset.summary import info, info_text
    from lenshpc.env import launch_env
    from lenshpc.io import raise_open_file_limit
    raise_open_file_limit()
    data = info(Path(args.dir))
    if launch_env().rank == 0:
        print(json.dumps(data, indent=1) if args.json else info_text(data))
    return 0


def verify_command(args: argparse.Namespace) -> int:
    from lenshpc.dataset.summary import verify
    from lenshpc.io import raise_open_file_limit
    from lenshpc.parallel import world
    raise_open_file_limit()
    w = world()
    problems, summary = verify(Path(args.dir), w)
    if w.is_root:
        for line in problems:
            print(line, file=sys.stderr)
        print(summary)
    return 1 if problems else 0
