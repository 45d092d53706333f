"""The predict driver: cutouts through every fold of the chosen models, over MPI.

1. rank 0 checks everything before any work: the output writable, every input readable
   (:func:`lenshpc.predict.inputs.scan`) with a pixel scale within 1% of the training
   config's (or ``--resample``), the finished jobs under RUNS (their model files against
   train's record, :func:`lenshpc.evaluate.disk.find_jobs`); it finds the chunks a
   killed run already finished (partial files under the same provenance key);
2. the cutouts are cut into fixed chunks of ``evaluate.chunk_size`` (independent of the
   rank count); each rank takes a contiguous block of the chunks still to do, loads every
   job once, and predicts each chunk with every fold x ``--mc-samples`` dropout passes,
   masks seeded by (seed, job, chunk start) (:mod:`lenshpc.evaluate.predict`), so the
   catalogue is the same for any number of ranks; each chunk is saved atomically;
3. rank 0 gathers, writes the catalogue atomically and removes the partial files.

A problem on any rank is one UserError raised on every rank (exit 2, one line).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from lenshpc import __version__
from lenshpc.config import Config, UserError
from lenshpc.lock import exclusive
from lenshpc.parallel import World, split_evenly, world as get_world
from lenshpc.paths import check_output_file
from lenshpc.predict import catalogue, inputs, kernels


def _log(world: World, text: str) -> None:
    if world.is_root:
        print(f"lenshpc predict: {text}", flush=True)


@dataclass(frozen=True)
class Settings:
    """The command line, as the driver needs it."""

    runs: str
    out: str
    inputs: tuple[str, ...]
    image: str | None = None
    positions: str | None = None
    models: tuple[str, ...] = ()
    mc_samples: int | None = None
    pixel_scale: float | None = None
    resample: bool = False
    progress: bool = True
    calibration: str | None = None   # a calibration.json of lenshpc evaluate (None: none)


@dataclass(frozen=True)
class Plan:
    cutouts: list[inputs.Cutout]
    jobs: list[Any]
    normalize: dict[str, str]
    ranges: np.ndarray
    provenance: dict[str, Any]
    partial: Path
    done: dict[int, tuple[np.ndarray, np.ndarray]]
    mc: int


def _check_scales(cutouts: list[inputs.Cutout], train_scale: float, resample: bool) -> None:
    for c in cutouts:
        if c.pixel_scale is None:
            raise UserError(f"{c.path}: no pixel scale (no celestial WCS, PIXSCALE keyword or "
                            f"pixel_scale attribute); give --pixel-scale")
        if kernels.scale_mismatch(c.pixel_scale, train_scale) and not resample:
            raise UserError(f"{c.path}: pixel scale {c.pixel_scale:.6g} arcsec differs from the "
                            f"training config's {train_scale:.6g} arcsec by more than 1%; give "
                            f"--resample to resample it (recorded in the catalogue)")


def _jobs(cfg: Config, s: Settings):
    from lenshpc.evaluate import disk
    names = list(s.models) or [m.name for m in cfg.train.models]
    jobs, skipped = disk.find_jobs(s.runs, names, cfg.dataset.n_folds, None)
    jobs = [j for j in jobs if j.model in names]
    if cfg.train.folds is not None:
        jobs = [j for j in jobs if j.fold in cfg.train.folds]
    missing = [n for n in names if not any(j.model == n for j in jobs)]
    if missing:
        why = "; ".join(f"{k}: {r}" for k, r in skipped if k.split("/")[0] == missing[0])
        raise UserError(f"--runs {s.runs}: no finished job of model {missing[0]}"
                        + (f" ({why})" if why else ""))
    return jobs, {j.key: disk.job_normalize(j) for j in jobs}


def _calibration(s: Settings, jobs, mc: int) -> dict[str, Any] | None:
    """The calibration applied (docs/predict.md, "Calibration"): none unless given."""
    if s.calibration is None:
        return None
    from lenshpc.evaluate.calibration_file import for_predict
    return for_predict(s.calibration, jobs, mc)


def _plan(cfg: Config, config_text: str, s: Settings, stack: contextlib.ExitStack) -> Plan:
    out = check_output_file(s.out, "--out")
    cutouts, sums = inputs.scan(list(s.inputs), s.image, s.positions, s.pixel_scale)
    _check_scales(cutouts, cfg.image.pixel_scale, s.resample)
    jobs, normalize = _jobs(cfg, s)
    mc = cfg.evaluate.mc_samples if s.mc_samples is None else s.mc_samples
    if mc == 1 or mc < 0:
        raise UserError(f"--mc-samples {mc}: must be 0 (no dropout: each fold once) or at least 2")
    provenance = {
        "lenshpc_version": __version__, "config_name": cfg.name, "config_text": config_text,
        "config_sha256": hashlib.sha256(config_text.encode()).hexdigest(),
        "models": {j.key: {"file": str(j.model_file), "sha256": j.model_checksum,
                           "normalize": normalize[j.key]} for j in jobs},
        "inputs": sums, "mc_samples": mc, "resample": s.resample,
        "pixel_scale": cfg.image.pixel_scale, "image_size": cfg.image.size,
        "pixel_scale_given": s.pixel_scale, "chunk_size": cfg.evaluate.chunk_size,
        "seed": cfg.seed, "calibration": _calibration(s, jobs, mc), "flags": kernels.FLAGS,
        "statistics": "over every fold x MC-dropout pass: mean, std (ddof=1), percentiles "
                      "16, 50, 84"}
    # one run per catalogue at a time: the lock lives beside it, held by rank 0 to the end
    stack.enter_context(exclusive(catalogue.partial_root(out), "catalogue", out))
    partial = catalogue.partial_dir(out, catalogue.provenance_key(provenance))
    done = {}
    for start in range(0, len(cutouts), cfg.evaluate.chunk_size):
        n = min(cfg.evaluate.chunk_size, len(cutouts) - start)
        found = catalogue.load_chunk(partial, start, n)
        if found is not None:
            done[start] = found
    ranges = kernels.training_ranges(cfg.population, cfg.seed)
    return Plan(cutouts, jobs, normalize, ranges, provenance, partial, done, mc)


def _load(job, normalize: str, mc: bool):
    from lenshpc.evaluate import predict
    try:
        model = predict.load_model(job.model_file)
    except UserError as exc:
        raise UserError(f"{job.key}: {exc}") from None
    return predict.Predictor(model, mc=mc, normalize=normalize)


def predict_chunk(plan: Plan, predictors: list, cfg: Config, start: int, stop: int,
                  resample: bool) -> tuple[np.ndarray, np.ndarray]:
    """(stats (n, 4, 5), flags (n,)) of cutouts ``start:stop``."""
    from lenshpc.evaluate.calibration import scale_by_model
    from lenshpc.evaluate.scoring import mc_seed
    size, scale = cfg.image.size, cfg.image.pixel_scale
    n = stop - start
    stats = np.full((n, 4, len(kernels.STATS)), np.nan)
    flags = np.zeros(n, dtype=np.int32)
    images, rows = [], []
    for r, c in enumerate(plan.cutouts[start:stop]):
        pixels, edge = inputs.read_pixels(
            c, kernels.grab_size(c.kind, c.pixel_scale, size, scale, resample))
        image, flags[r] = kernels.prepare(pixels, c.pixel_scale, size, scale, resample, edge)
        if image is not None:
            images.append(image)
            rows.append(r)
    if rows:
        batch = np.stack(images)
        per_job = [
            p.mc_passes(batch, cfg.evaluate.batch_size, plan.mc, mc_seed(cfg.seed, j.key, start))
            if plan.mc else p.predict(batch, cfg.evaluate.batch_size)[None]
            for j, p in zip(plan.jobs, predictors, strict=True)]
        calibration = plan.provenance["calibration"]
        samples = np.concatenate(per_job) if calibration is None else scale_by_model(
            per_job, [j.model for j in plan.jobs], [calibration["scales"][j.key] for j in plan.jobs])
        if not np.isfinite(samples).all():
            raise UserError(f"a model predicts non-finite values for {plan.cutouts[start].source} "
                            f"or the cutouts after it; the model is unusable, train it again")
        stats[rows] = kernels.summarize(samples)
        far = kernels.out_of_range(stats[rows], plan.ranges)
        flags[np.asarray(rows)[far]] |= kernels.FLAGS["RANGE"]
    return stats, flags


def _work(plan: Plan, cfg: Config, s: Settings, world: World) -> tuple[dict, str | None]:
    chunk = cfg.evaluate.chunk_size
    starts = [k for k in range(0, len(plan.cutouts), chunk) if k not in plan.done]
    mine = [starts[i] for i in split_evenly(len(starts), world.rank, world.size)]
    out: dict[int, tuple[np.ndarray, np.ndarray]] = {}
    if not mine:
        return out, None
    from lenshpc.progress import Progress
    n_mine = sum(min(chunk, len(plan.cutouts) - k) for k in mine)
    bar = Progress(n_mine, unit="cutouts", enabled=s.progress and world.is_root)
    try:
        predictors = [_load(j, plan.normalize[j.key], bool(plan.mc)) for j in plan.jobs]
        for start in mine:
            stop = min(start + chunk, len(plan.cutouts))
            out[start] = predict_chunk(plan, predictors, cfg, start, stop, s.resample)
            catalogue.save_chunk(plan.partial, start, *out[start])
            bar.advance(stop - start)
    except UserError as exc:
        return out, str(exc)
    except OSError as exc:
        return out, f"cannot read or write {exc.filename or plan.partial}: {exc.strerror or exc}"
    finally:
        bar.close()
        inputs.close_mosaics()
    return out, None


def predict(cfg: Config, config_text: str, s: Settings, world: World | None = None) -> int:
    """Write the catalogue of ``s.inputs`` to ``s.out`` (module doc); returns 0."""
    world = world or get_world()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    with contextlib.ExitStack() as lock:   # held by rank 0 until the catalogue is written
        return _predict(cfg, config_text, s, world, lock)


def _predict(cfg: Config, config_text: str, s: Settings, world: World,
             lock: contextlib.ExitStack) -> int:
    plan: Plan = world.on_root(lambda: _plan(cfg, config_text, s, lock))
    n = len(plan.cutouts)
    todo = n - sum(len(v[1]) for v in plan.done.values())
    _log(world, f"{n} cutouts x {len(plan.jobs)} job(s)"
         + (f" x {plan.mc} MC-dropout passes" if plan.mc else "")
         + f" over {world.size} rank(s)" + (f"; {n - todo} reused from an interrupted run"
                                             if plan.done else ""))
    from lenshpc.evaluate import predict as tf_predict
    tf_predict.configure_threads(cfg.evaluate.threads)
    t0, c0 = time.perf_counter(), time.process_time()
    local, problem = _work(plan, cfg, s, world)
    cpu = time.process_time() - c0
    problems = [p for p in world.allgather(problem) if p]
    if problems:
        raise UserError(problems[0])
    gathered = world.gather(local)
    cpu_total = sum(world.allgather(cpu))
    seconds = time.perf_counter() - t0

    def write() -> None:
        chunks = dict(plan.done)
        for part in gathered or []:
            chunks.update(part)
        order = sorted(chunks)
        stats = np.concatenate([chunks[k][0] for k in order])
        flags = np.concatenate([chunks[k][1] for k in order])
        t = catalogue.table([c.source for c in plan.cutouts], stats, flags, plan.provenance)
        try:
            catalogue.write(Path(s.out), t)
        except OSError as exc:
            raise UserError(f"cannot write {s.out}: {exc.strerror or exc}") from None
        catalogue.remove_partial(Path(s.out))
        flagged = {name: int(np.count_nonzero(flags & bit)) for name, bit in kernels.FLAGS.items()}
        shown = ", ".join(f"{k} {v}" for k, v in flagged.items() if v) or "none"
        rate = todo / seconds if seconds > 0 and todo else float("nan")
        _log(world, f"predicted {todo} cutouts in {seconds:.1f} s ({rate:.1f} cutouts/s on "
                    f"{world.size} rank(s), {cpu_total:.1f} CPU s); flagged: {shown}")
        _log(world, f"wrote {s.out}")
        sys.stdout.flush()

    world.on_root(write)
    return 0
