"""The evaluate driver: every finished job's test predictions and re-renders, over MPI.

Work is cut into units ``(job, chunk)``: a chunk is ``evaluate.chunk_size`` consecutive
test items, counted from the first test item, so the units do not depend on the number
of ranks. Units are numbered job-major and each rank takes a contiguous block of them
(:func:`lenshpc.parallel.split_evenly`), so it loads each model it needs once. Per unit
a rank predicts ``(theta_E, q, e1, e2)``, re-renders each system with the predicted
``theta_E, e1, e2`` (everything else from the truth, the dataset's own image config,
the renderer of ``simulate``) and scores it against the true image: MSE and PSNR with
MAX = 1. Rank 0 gathers, writes ``predictions.h5`` and the report.

The true image: with noise off, the stored image (a noise-free render of the truth, so
a perfect prediction re-renders it exactly: infinite PSNR). With noise on, the
noise-free render of the truth (with the same PSF) - the re-render from predicted
parameters is noise-free too, so the PSNR measures the parameters, not the noise.
"""

from __future__ import annotations

import json
import math
import sys
import time
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from lenshpc import __version__
from lenshpc.config import Config, UserError, from_yaml_text
from lenshpc.config.train import TARGETS
from lenshpc.evaluate import metrics, store
from lenshpc.io import file_sha256
from lenshpc.parallel import World, split_evenly, world as get_world

#: Truth columns replaced by the predictions before re-rendering (q enters through e1, e2).
RENDERED = {"theta_E": "lens_mass.theta_E", "e1": "lens_mass.e1", "e2": "lens_mass.e2"}


def idle_barrier(world: World, poll_s: float = 0.01) -> None:
    """A barrier that sleeps while it waits. MPI implementations busy-poll in blocking
    collectives; a rank that waits there for minutes (rank 0 drawing figures, a rank
    done early) would take a core from the ranks still working on a shared node."""
    if world.comm is None:
        return
    request = world.comm.Ibarrier()
    while not request.Test():
        time.sleep(poll_s)


def log(world: World, text: str) -> None:
    if world.is_root:
        print(f"lenshpc evaluate: {text}", flush=True)


# --------------------------------------------------------------------------- pure kernels


def plan_units(n_jobs: int, n_test: int, chunk_size: int) -> list[tuple[int, int, int]]:
    """Units ``(job position, start, stop)`` over test positions, job-major."""
    return [(j, s, min(s + chunk_size, n_test)) for j in range(n_jobs)
            for s in range(0, n_test, chunk_size)]


def renderable(theta_E: float, e1: float, e2: float, theta_E_min: float,
               max_ellipticity: float) -> tuple[float, float, float, bool]:
    """Predicted ``theta_E`` (arcsec), ``e1``, ``e2`` moved into the domain an SIE can be
    rendered in: ``theta_E >= theta_E_min``, ``|e| <= max_ellipticity`` (direction kept;
    a non-finite ellipticity becomes 0). Returns the values and whether any changed."""
    clamped = False
    if not theta_E >= theta_E_min:          # also catches nan
        theta_E, clamped = theta_E_min, True
    if not (math.isfinite(e1) and math.isfinite(e2)):
        e1, e2, clamped = 0.0, 0.0, True
    modulus = math.hypot(e1, e2)
    if modulus > max_ellipticity:
        e1, e2, clamped = e1 * max_ellipticity / modulus, e2 * max_ellipticity / modulus, True
    return theta_E, e1, e2, clamped


def rerender(renderer, truth_names: Sequence[str], truth_row: np.ndarray, pred_row: np.ndarray,
             theta_E_min: float, max_ellipticity: float) -> tuple[np.ndarray | None, bool]:
    """The (H, W) image (maximum 1) of one system with its predicted ``theta_E, e1, e2``
    (``pred_row`` = theta_E, q, e1, e2), everything else from ``truth_row``; None if the
    renderer finds non-finite pixels. Also returns whether the prediction was clamped."""
    names = list(truth_names)
    theta_E, e1, e2, clamped = renderable(float(pred_row[0]), float(pred_row[2]),
                                          float(pred_row[3]), theta_E_min, max_ellipticity)
    row = np.array(truth_row, dtype=np.float64)
    for col, value in zip(RENDERED.values(), (theta_E, e1, e2)):
        row[names.index(col)] = value
    try:
        return renderer.render_truth(names, row), clamped
    except FloatingPointError:
        return None, clamped


def reference_images(renderer, truth_names, truth_rows: np.ndarray, stored: np.ndarray,
                     noise: bool) -> np.ndarray:
    """The true images PSNR compares against: the ``stored`` images (n, H, W) when the
    dataset is noise-free, else the noise-free renders of the truth rows (same PSF)."""
    if not noise:
        return stored
    return np.stack([renderer.render_truth(truth_names, row) for row in truth_rows])


def score_chunk(renderer, truth_names, truth_rows: np.ndarray, pred: np.ndarray,
                true_images: np.ndarray, theta_E_min: float,
                max_ellipticity: float) -> dict[str, np.ndarray]:
    """Re-render every system of a chunk from ``pred`` (n, 4) and score it against
    ``true_images`` (n, H, W): ``mse`` (n,), ``psnr`` (n,, dB, inf when exact, nan when
    the re-render failed) and ``clamped`` (n,) bool."""
    n = len(pred)
    mse = np.empty(n, dtype=np.float64)
    clamped = np.zeros(n, dtype=bool)
    for i in range(n):
        img, clamped[i] = rerender(renderer, truth_names, truth_rows[i], pred[i],
                                   theta_E_min, max_ellipticity)
        mse[i] = math.nan if img is None else metrics.image_mse(true_images[i], img)
    return {"mse": mse, "psnr": metrics.psnr(mse), "clamped": clamped}


# --------------------------------------------------------------------------- settings


def settings_text(cfg: Config, mc_samples: int, noise: bool) -> str:
    """What besides the model file and dataset decides a job's results (JSON text)."""
    s: dict[str, Any] = {"mc_samples": mc_samples, "theta_E_min": cfg.evaluate.theta_E_min,
                         "max_ellipticity": cfg.evaluate.max_ellipticity,
                         "true_image": ("noise-free render of the truth" if noise
                                        else "stored image")}
    if mc_samples:   # MC masks are seeded per chunk and batch
        s.update(seed=cfg.seed, chunk_size=cfg.evaluate.chunk_size,
                 batch_size=cfg.evaluate.batch_size)
    return json.dumps(s, sort_keys=True)


def mc_seed(root_seed: int, key: str, start: int) -> tuple[int, int, int]:
    """Seed of the MC-dropout masks of the chunk starting at test position ``start``."""
    return (root_seed, zlib.crc32(key.encode()), start)


# --------------------------------------------------------------------------- driver


@dataclass
class Outcome:
    """What the driver did, for the report's provenance."""

    evaluated: list[str]
    reused: list[str]
    n_ranks: int
    work_seconds: float
    cpu_seconds: float
    n_images: int


def _dataset_config(ds: store.DatasetInfo, cfg: Config) -> Config:
    if not ds.config_text:
        return cfg
    try:
        return from_yaml_text(ds.config_text)
    except UserError as exc:
        raise UserError(f"the config stored in {ds.path} is not valid: {exc}") from None


def _prepare(cfg: Config, ds_cfg: Config, ds: store.DatasetInfo):
    """TensorFlow (threads set) and the renderer of this rank, before the timed work."""
    import os
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")   # TensorFlow's start-up chatter
    from lenshpc.evaluate import predict as P
    from lenshpc.simulate.render import Renderer
    P.configure_threads(cfg.evaluate.threads)
    renderer = Renderer(ds_cfg.image)
    renderer.render_truth(ds.truth_names, ds.truth_test[0])   # loads the compiled renderer
    return renderer


def _work(units, mine: range, todo: list[store.JobRun], ds: store.DatasetInfo, ds_cfg: Config,
          cfg: Config, mc_samples: int, renderer) -> tuple[dict, list[str]]:
    """This rank's units: {(job position, start): arrays}, and model-load errors."""
    import h5py

    from lenshpc.evaluate import predict as P

    noise = ds_cfg.image.noise
    ev = cfg.evaluate
    out, errors = {}, []
    current, predictor = None, None
    failed: set[int] = set()
    with h5py.File(ds.path, "r") as f:
        images_ds = f["images"]
        for u in mine:
            jpos, start, stop = units[u]
            job = todo[jpos]
            if jpos in failed:
                continue
            if current != jpos:   # units are job-major: each model is loaded once per rank
                current, predictor = jpos, None   # free the previous model first
                try:
                    predictor = P.Predictor(P.load_model(job.model_file), mc=bool(mc_samples))
                except UserError as exc:
                    errors.append(f"{job.key}: {exc}")
                    failed.add(jpos)
                    continue
            images = images_ds[ds.test_index[start:stop]]
            if mc_samples:
                pred, pred_std = predictor.predict_mc(images, ev.batch_size, mc_samples,
                                                      mc_seed(cfg.seed, job.key, start))
            else:
                pred, pred_std = predictor.predict(images, ev.batch_size), None
            truth_rows = ds.truth_test[start:stop]
            true_images = reference_images(renderer, ds.truth_names, truth_rows, images, noise)
            res = score_chunk(renderer, ds.truth_names, truth_rows, pred, true_images,
                              ev.theta_E_min, ev.max_ellipticity)
            res.update(pred=pred, pred_std=pred_std, has_dropout=predictor.has_dropout)
            out[(jpos, start)] = res
    return out, errors


def _assemble(job: store.JobRun, jpos: int, chunks: dict, ds: store.DatasetInfo, ident: dict,
              mc_samples: int) -> dict[str, Any]:
    """One job's predictions.h5 entry from its gathered chunks (in test-item order)."""
    starts = sorted(s for (j, s) in chunks if j == jpos)
    cat = {name: np.concatenate([chunks[(jpos, s)][name] for s in starts])
           for name in ("pred", "psnr", "mse", "clamped")}
    if mc_samples:
        cat["pred_std"] = np.concatenate([chunks[(jpos, s)]["pred_std"] for s in starts])
    cat["index"] = ds.test_index.copy()
    cat["true"] = ds.true_test.copy()
    attrs = {"model": job.model, "fold": job.fold, "job": job.job,
             "run_json": json.dumps(job.run, sort_keys=True), "parameters": list(TARGETS),
             **ident}
    if mc_samples:   # a model without dropout has zero spread; the report says so
        attrs["mc_has_dropout"] = bool(chunks[(jpos, starts[0])]["has_dropout"])
    cat["attrs"] = attrs
    return cat


def evaluate(cfg: Config, data: str, runs: str, out: str, mc_samples: int | None = None,
             world: World | None = None, make_report: bool = True) -> int:
    """Evaluate every finished job under ``runs`` on the test set of ``data`` into ``out``.

    Every rank validates the inputs (raising the same UserError) before any collective
    call. Returns 0."""
    world = world or get_world()
    mc = cfg.evaluate.mc_samples if mc_samples is None else mc_samples
    if mc == 1 or mc < 0:
        raise UserError(f"--mc-samples {mc}: must be 0 (off) or at least 2")
    ds = store.read_dataset(data)
    ds_cfg = _dataset_config(ds, cfg)
    jobs, skipped = store.find_jobs(runs, [m.name for m in cfg.train.models],
                                    cfg.dataset.n_folds, ds.checksum)
    if not jobs:
        listed = "; ".join(f"{k}: {r}" for k, r in skipped) or "none found"
        raise UserError(f"--runs {runs}: no finished job to evaluate ({listed})")
    out_dir = Path(out)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"--out {out}: cannot create the directory: {exc.strerror}") from None
    if not out_dir.is_dir():
        raise UserError(f"--out {out}: not a directory")

    # Rank 0 hashes the model files and reads what predictions.h5 already holds.
    pred_path = out_dir / store.PREDICTIONS
    settings = settings_text(cfg, mc, ds_cfg.image.noise)
    plan = None
    if world.is_root:
        idents = {j.key: {"model_checksum": file_sha256(j.model_file),
                          "dataset_checksum": ds.checksum, "settings": settings} for j in jobs}
        plan = (idents, store.up_to_date_groups(pred_path, idents))
    idle_barrier(world)   # the others wait for rank 0's hashing without spinning
    idents, reuse = world.bcast(plan)
    todo = [j for j in jobs if j.key not in reuse]
    for key, reason in skipped:
        log(world, f"skipping {key}: {reason}")
    if reuse:
        log(world, f"{len(reuse)} job(s) already evaluated for the same model file and dataset: "
                   f"{', '.join(j.key for j in jobs if j.key in reuse)}")
    n_test = len(ds.test_index)
    units = plan_units(len(todo), n_test, cfg.evaluate.chunk_size)
    if todo:
        log(world, f"evaluating {len(todo)} job(s) x {n_test} test images: {len(units)} units "
                   f"over {world.size} rank(s)" + (f", {mc} MC-dropout passes" if mc else ""))

    mine = split_evenly(len(units), world.rank, world.size)
    renderer = _prepare(cfg, ds_cfg, ds) if len(mine) else None
    idle_barrier(world)
    t0, c0 = time.perf_counter(), time.process_time()
    local, errors = ({}, [])
    if len(mine):
        local, errors = _work(units, mine, todo, ds, ds_cfg, cfg, mc, renderer)
    # CPU time (all threads) says how much work the ranks did, whatever else runs on the node
    cpu = time.process_time() - c0
    idle_barrier(world)   # ranks done early must not steal CPU from those still working
    reports = world.allgather((errors, cpu))
    all_errors = [e for errs, _ in reports for e in errs]
    cpu_seconds = sum(cpu for _, cpu in reports)
    if all_errors:
        more = f" (and {len(all_errors) - 1} more)" if len(all_errors) > 1 else ""
        raise UserError(all_errors[0] + more)
    gathered = world.gather(local)
    work_seconds = time.perf_counter() - t0

    status = 0
    if world.is_root:
        chunks = {k: v for part in gathered for k, v in part.items()}
        results: dict[str, Any] = {}
        for job in jobs:
            if job.key in reuse:
                results[job.key] = None
                continue
            results[job.key] = _assemble(job, todo.index(job), chunks, ds, idents[job.key], mc)
        store.write_predictions(pred_path, results, reuse=reuse, root_attrs={
            "dataset_checksum": ds.checksum, "parameters": list(TARGETS),
            "lenshpc_version": __version__})
        n_images = len(todo) * n_test
        if todo:
            rate = n_images / work_seconds if work_seconds > 0 else math.inf
            log(world, f"predicted, re-rendered and scored {n_images} images in "
                       f"{work_seconds:.1f} s ({rate:.1f} images/s on {world.size} rank(s), "
                       f"{cpu_seconds:.1f} CPU s)")
        outcome = Outcome(evaluated=[j.key for j in todo], reused=sorted(reuse),
                          n_ranks=world.size, work_seconds=work_seconds, cpu_seconds=cpu_seconds,
                          n_images=n_images)
        if make_report:
            from lenshpc.evaluate import report
            report.write_all(out_dir, cfg=cfg, ds=ds, ds_cfg=ds_cfg, jobs=jobs, skipped=skipped,
                             runs_dir=Path(runs), data_dir=Path(data), mc_samples=mc,
                             outcome=outcome)
            log(world, f"wrote {out_dir / 'report.md'}")
        sys.stdout.flush()
    idle_barrier(world)
    return int(world.bcast(status))
