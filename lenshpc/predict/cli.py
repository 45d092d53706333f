"""``lenshpc predict``: cutouts (FITS, HDF5, or positions in a mosaic) into a catalogue of
theta_E, q, e1, e2 with uncertainties and flags (MPI)."""

from __future__ import annotations

import argparse

from lenshpc.config import UserError, load


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "predict", help="predict lens parameters of cutouts into a catalogue (MPI)",
        description="Predict theta_E, q, e1, e2 of every cutout with every fold of the chosen "
        "models x MC-dropout passes, and write one row per cutout (mean, std, 16th, 50th, 84th "
        "percentiles, a flag bit mask) to CATALOGUE (.fits, or .csv). Inputs: FITS files (each "
        "2-d image HDU, or each plane of a 3-d cube), folders of them, HDF5 files with an "
        "'images' dataset, and --image MOSAIC.fits --positions TABLE (RA/Dec in degrees). "
        "Cutouts are normalised exactly as each job was trained. Run under MPI as `mpirun -n N "
        "python -m mpi4py -m lenshpc predict ...`: the catalogue does not depend on N; a "
        "killed run resumes from its finished chunks. docs/predict.md.")
    p.add_argument("inputs", nargs="*", metavar="INPUT", help="FITS or HDF5 files, or folders")
    p.add_argument("--config", required=True, metavar="CFG", help="the training config (YAML)")
    p.add_argument("--runs", required=True, metavar="RUNS", help="runs directory (lenshpc train)")
    p.add_argument("--out", required=True, metavar="CATALOGUE",
                   help="catalogue file: .fits (binary table) or .csv")
    p.add_argument("--models", nargs="+", default=(), metavar="NAME",
                   help="dropout models to use (default: every model of the config)")
    p.add_argument("--mc-samples", type=int, default=None, metavar="N",
                   help="MC-dropout passes per fold (default: evaluate.mc_samples; 0: each fold "
                   "once, without dropout)")
    p.add_argument("--image", metavar="MOSAIC", help="a FITS mosaic with a celestial WCS")
    p.add_argument("--positions", metavar="TABLE",
                   help="CSV, ECSV or FITS table of RA and Dec (degrees) in the mosaic")
    p.add_argument("--pixel-scale", type=float, default=None, metavar="ARCSEC",
                   help="pixel scale of every input (instead of their WCS)")
    p.add_argument("--resample", action="store_true",
                   help="resample inputs whose pixel scale differs from the config's by more "
                   "than 1%% (else refused); recorded in the catalogue")
    p.add_argument("--no-progress", action="store_true", help="no progress display")
    calib = p.add_mutually_exclusive_group()
    calib.add_argument("--calibration", metavar="FILE", default=None,
                       help="scale the spread by the calibration.json of a `lenshpc evaluate "
                       "--mc-samples N` report of these runs (recorded in the header; default: "
                       "no calibration)")
    calib.add_argument("--no-calibration", action="store_true",
                       help="leave the spread as the folds x MC passes give it (the default)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from lenshpc.predict.run import Settings, predict
    if args.pixel_scale is not None and not args.pixel_scale > 0:
        raise UserError(f"--pixel-scale {args.pixel_scale}: must be > 0 (arcsec)")
    cfg = load(args.config)
    settings = Settings(runs=args.runs, out=args.out, inputs=tuple(args.inputs),
                        image=args.image, positions=args.positions, models=tuple(args.models),
                        mc_samples=args.mc_samples, pixel_scale=args.pixel_scale,
                        resample=args.resample, progress=not args.no_progress,
                        calibration=None if args.no_calibration else args.calibration)
    return predict(cfg, cfg.to_yaml_text(), settings)
