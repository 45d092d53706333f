"""``lenshpc simulate`` (``lenshpc dataset info|verify`` is :mod:`lenshpc.dataset.cli`).

Launch under MPI as ``mpirun -n N python -m mpi4py -m lenshpc simulate ...``; without a
launcher everything runs in one process. No TensorFlow is imported here.
"""

from __future__ import annotations

import argparse
from pathlib import Path


def register(sub) -> None:
    """Add ``simulate`` (unless the dispatcher already added it)."""
    if "simulate" not in sub.choices:
        _register_simulate(sub)


def _register_simulate(sub) -> None:
    p = sub.add_parser("simulate", help="simulate lens images into a sharded HDF5 dataset (MPI)",
                       description="Simulate the dataset of CFG into DIR (resumable; run the "
                                   "same command again after an interruption).")
    p.add_argument("--config", required=True, metavar="CFG", help="YAML config file")
    p.add_argument("--out", required=True, metavar="DIR", help="dataset directory")
    p.add_argument("--n-images", type=int, metavar="N",
                   help="override dataset.n_images (split fractions are kept)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace a dataset in DIR made from a different config")
    p.add_argument("--no-progress", action="store_true", help="no progress display")
    p.set_defaults(func=simulate_command)


def simulate_command(args: argparse.Namespace) -> int:
    from lenshpc.config import UserError, load
    from lenshpc.io import raise_open_file_limit
    from lenshpc.parallel import world
    from lenshpc.simulate.plan import with_n_images
    from lenshpc.simulate.run import simulate

    raise_open_file_limit()
    # Validation first, identically on every rank, before any collective call.
    cfg = load(args.config)
    if args.n_images is not None and args.n_images < 1:
        raise UserError(f"--n-images: {args.n_images} must be at least 1")
    cfg = with_n_images(cfg, args.n_images)
    catalogue = catalogue_sha = None
    if cfg.population.kind == "catalogue" and cfg.population.catalogue:  # validated: given
        from lenshpc.io import file_sha256
        from lenshpc.simulate.catalogue import read_catalogue
        catalogue = read_catalogue(cfg.population.catalogue, cfg.population, cfg.dataset.n_images)
        catalogue_sha = file_sha256(cfg.population.catalogue)
    if cfg.image.psf == "pixel":
        from lenshpc.simulate.render import load_psf_kernel
        load_psf_kernel(cfg.image.psf_kernel, cfg.image.pixel_scale)
    w = world()
    out = Path(args.out)
    summary = simulate(cfg, out, w, overwrite=args.overwrite, catalogue=catalogue,
                       catalogue_sha256=catalogue_sha, progress=not args.no_progress)
    if w.is_root:
        n = summary["n_images"]
        if summary["complete_before"]:
            print(f"{out}: dataset of {n} images is already complete; nothing to do")
        else:
            wall = summary["wall_time_s"]
            print(f"{out}: dataset of {n} images complete ({wall:.1f} s on {w.size} rank(s), "
                  f"writing {100 * summary['write_share']:.1f}% of rank time)")
    return 0
