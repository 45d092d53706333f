"""The evaluate driver: every finished job's test predictions and re-renders, over MPI.

In order, and every rank agreeing at each step before the next:

1. rank 0 checks REPORT and the inputs: REPORT writable with room to spare, the
   dataset's shard table against the shard files, labels and truth finite, each job's
   model file against what train recorded; it takes REPORT's lock and reads which jobs
   predictions.h5 already holds (same model file, dataset and settings, nothing NaN);
2. all ranks share the hashing of the shards that hold test items;
3. rank 0 clears the report's completion marker: REPORT is rewritten from here on;
4. the work, cut into units ``(job, chunk)`` (:func:`scoring.plan_units`): each rank takes
   a contiguous block of them, so it loads each model it needs once, predicts
   ``(theta_E, q, e1, e2)``, refuses non-finite images or predictions, re-renders and
   scores (:mod:`lenshpc.evaluate.scoring`);
5. rank 0 gathers, writes predictions.h5 and the report, and the report's completion
   marker last.

A failure at any step is one UserError raised on every rank (exit 2, one line), never a
rank left waiting. Results do not depend on the number of ranks.
"""

from __future__ import annotations

import contextlib
import errno
import json
import math
import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from lenshpc import __version__
from lenshpc.config import Config, UserError
from lenshpc.dataset.columns import TARGETS
from lenshpc.evaluate import disk, provenance
from lenshpc.evaluate.scoring import (
    first_nonfinite,
    mc_seed,
    plan_units,
    reference_images,
    score_chunk,
    settings_text,
)
from lenshpc.io import is_disk_full, raise_open_file_limit
from lenshpc.lock import clear_done, exclusive, mark_done
from lenshpc.parallel import World, split_evenly, world as get_world
from lenshpc.runs import find_jobs

__all__ = ["Outcome", "evaluate"]


def log(world: World, text: str) -> None:
    if world.is_root:
        print(f"lenshpc evaluate: {text}", flush=True)


@dataclass
class Outcome:
    """What the driver did, for the report's provenance."""

    evaluated: list[str]
    reused: list[str]
    n_ranks: int
    work_seconds: float
    cpu_seconds: float
    n_images: int


@dataclass(frozen=True)
class EvaluationPlan:
    """What rank 0 found and every rank works from. ``given_not_used``: train keys the
    given config sets to values the evaluated jobs were not trained with, which decide
    nothing evaluated (:func:`lenshpc.evaluate.provenance.check_jobs`)."""

    out_dir: Path
    ds: disk.HeldOutSet
    jobs: list[disk.JobRun]
    skipped: list[tuple[str, str]]
    idents: dict[str, dict[str, str]]
    reuse: set[str]
    settings: str
    need_bytes: int
    given_not_used: list[str]

    @property
    def todo(self) -> list[disk.JobRun]:
        return [j for j in self.jobs if j.key not in self.reuse]


def _bytes_needed(n_jobs: int, n_test: int, mc: bool, figures: bool) -> int:
    """A generous estimate of REPORT's size: predictions.h5 (index, true, pred, psnr, mse,
    psnr_study, ssim, ssim_ring, clamped, pred_std per test item) plus tables, report.md
    and figures."""
    per_item = 8 + 32 + 32 + 8 + 8 + 24 + 1 + (32 if mc else 0)
    return n_jobs * (n_test * per_item + 64 * 1024) + (16 << 20 if figures else 1 << 20)


def _check_inputs(cfg: Config, data: str, runs: str, out: str, mc: int,
                  stack: contextlib.ExitStack) -> EvaluationPlan:
    """Rank 0's checks (module doc, step 1); the lock stays held by ``stack``."""
    out_dir = disk.prepare_out(out, 0)   # before anything else: a read-only REPORT fails now
    # one config: image and population from the dataset (a given config that differs at a
    # dataset-defining key is refused), train settings from each job's run.json
    ds = disk.read_held_out(data, cfg)
    jobs, skipped = find_jobs(runs, [m.name for m in cfg.train.models],
                              cfg.train.folds or cfg.dataset.n_folds, ds.checksum)
    if not jobs:
        listed = "; ".join(f"{k}: {r}" for k, r in skipped) or "none found"
        raise UserError(f"--runs {runs}: no finished job to evaluate ({listed})")
    unused = provenance.check_jobs(cfg, jobs)
    need_bytes = _bytes_needed(len(jobs), len(ds.test_index), bool(mc), cfg.evaluate.figures)
    disk.prepare_out(out, need_bytes)
    stack.enter_context(exclusive(out_dir, "report"))
    ev = cfg.evaluate
    settings = settings_text(mc_samples=mc, theta_E_min=ev.theta_E_min,
                             max_ellipticity=ev.max_ellipticity, noise=ds.config.image.noise,
                             seed=ds.config.seed, chunk_size=ev.chunk_size, batch_size=ev.batch_size,
                             ssim_ring_width=ev.ssim_ring_width)
    # the cache key: the inputs' hashes ("weights_sha256" is always empty since every
    # evaluated job has train's marker; kept so that cached results stay valid)
    idents = {j.key: {"model_checksum": j.model_checksum, "dataset_checksum": ds.checksum,
                      "settings": settings, "weights_sha256": "",
                      "normalize": disk.job_normalize(j)}
              for j in jobs}
    reuse = disk.up_to_date_groups(out_dir / disk.PREDICTIONS, idents)
    return EvaluationPlan(out_dir, ds, jobs, skipped, idents, reuse, settings, need_bytes, unused)


def _damaged_shards(ds: disk.HeldOutSet, rank: int = 0, size: int = 1) -> list[str]:
    """This rank's share of the shards holding test items, hashed in full: one line per
    shard whose data no longer match its checksum."""
    shards = ds.test_shards()
    found = (disk.shard_data_problem(ds, shards[i]) for i in split_evenly(len(shards), rank, size))
    return [p for p in found if p is not None]


def _prepare(cfg: Config, ds: disk.HeldOutSet):
    """TensorFlow (threads set) and the renderer of this rank, before the timed work."""
    import os
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")   # TensorFlow's start-up chatter
    from lenshpc.evaluate import predict
    from lenshpc.simulate.render import Renderer
    predict.configure_threads(cfg.evaluate.threads)
    renderer = Renderer(ds.config.image)
    renderer.render_truth(ds.truth_names, ds.truth_test[0])   # loads the compiled renderer
    return renderer


def _load(job: disk.JobRun, mc: bool):
    """The job's predictor (its images normalised as in training)."""
    from lenshpc.evaluate import predict
    try:
        model = predict.load_model(job.model_file)
    except UserError as exc:
        raise UserError(f"{job.key}: {exc}") from None
    return predict.Predictor(model, mc=mc, normalize=disk.job_normalize(job))


def _work(units, mine: range, plan: EvaluationPlan, cfg: Config, mc: int,
          renderer) -> tuple[dict, list[str]]:
    """This rank's units: {(job position, start): arrays}, or the first problem met."""
    ds, todo, ev = plan.ds, plan.todo, cfg.evaluate
    ds_cfg = ds.config   # the image and population the test set was made with
    out: dict = {}
    current: int | None = None
    predictor: Any = None
    for u in mine:
        jpos, start, stop = units[u]
        job = todo[jpos]
        items = ds.test_index[start:stop]
        try:
            if current != jpos:   # units are job-major: each model is loaded once per rank
                current, predictor = jpos, None   # free the previous model first
                predictor = _load(job, bool(mc))
            images = ds.read_images(items)   # refuses a missing shard, non-finite pixels
        except UserError as exc:
            return out, [str(exc)]
        if mc:
            pred, pred_std = predictor.predict_mc(images, ev.batch_size, mc,
                                                  mc_seed(cfg.seed, job.key, start))
        else:
            pred, pred_std = predictor.predict(images, ev.batch_size), None
        bad = first_nonfinite(pred if pred_std is None else np.hstack([pred, pred_std]))
        if bad is not None:
            return out, [f"{job.key}: {job.model_file} predicts non-finite values (test item "
                         f"{int(items[bad])}); the model is unusable, train it again"]
        truth_rows = ds.truth_test[start:stop]
        true_images = reference_images(renderer, ds.truth_names, truth_rows, images,
                                       ds_cfg.image.noise)
        res = score_chunk(renderer, ds.truth_names, truth_rows, pred, true_images,
                          ev.theta_E_min, ev.max_ellipticity,
                          pixel_scale=ds_cfg.image.pixel_scale, ring_width=ev.ssim_ring_width,
                          lens_light_follows_mass=ds_cfg.population.lens_light_shape == "mass")
        res.update(pred=pred, pred_std=pred_std, has_dropout=predictor.has_dropout)
        out[(jpos, start)] = res
    return out, []


def _assemble(job: disk.JobRun, jpos: int, chunks: dict, ds: disk.HeldOutSet, ident: dict,
              mc_samples: int) -> dict[str, Any]:
    """One job's predictions.h5 entry from its gathered chunks (in test-item order)."""
    starts = sorted(s for (j, s) in chunks if j == jpos)
    cat = {name: np.concatenate([chunks[(jpos, s)][name] for s in starts])
           for name in ("pred", "psnr", "mse", "psnr_study", "ssim", "ssim_ring", "clamped")}
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


_TEMPORARY = re.compile(r"^\.(?P<name>.+)\.\d+\.tmp(\.[^.]*)?$")   # io.atomic_path's names


def _written_path(exc: BaseException, out_dir: Path) -> Path | None:
    """The file under ``out_dir`` being written when ``exc`` was raised: the innermost frame
    of its traceback holding a path there. (An OSError from writing an open file, such as
    matplotlib's, carries no file name.)"""
    found, tb = None, exc.__traceback__
    root = str(out_dir.resolve())
    while tb is not None:
        for value in tb.tb_frame.f_locals.values():
            if isinstance(value, Path) and str(value.resolve()).startswith(root + "/"):
                found = value
        tb = tb.tb_next
    return found


def write_failure(exc: OSError, out_dir: Path, need_bytes: int, path: Path | None = None) -> str:
    """The one line for a failed write into REPORT: the product's path (its final name, not
    the temporary one), the reason and what to do."""
    name = Path(path or getattr(exc, "filename", None) or _written_path(exc, out_dir) or out_dir)
    if m := _TEMPORARY.match(name.name):
        name = name.with_name(m.group("name"))
    text = str(exc)
    too_large = exc.errno == errno.EFBIG
    full = is_disk_full(exc) or too_large
    reason = ("no space left on the device" if not too_large and full
              else exc.strerror or text.splitlines()[0])
    kept = ("" if name.name == disk.PREDICTIONS
            else f"; {disk.PREDICTIONS} is kept, so the rerun only writes the report")
    todo = (f"free space (REPORT needs about {need_bytes / 1e6:.0f} MB)" if full
            else "make it writable")
    return f"cannot write {name}: {reason}; {todo} and run the same command again{kept}"


def _write(plan: EvaluationPlan, chunks: dict, outcome: Outcome, *, cfg: Config,
           data: str, runs: str, mc: int, make_report: bool) -> None:
    """Rank 0: predictions.h5, the report, and the report's completion marker last.
    A failed write (disk full, ...) is a UserError naming the path."""
    out_dir, ds, todo = plan.out_dir, plan.ds, plan.todo
    pred_path = out_dir / disk.PREDICTIONS
    results: dict[str, Any] = {
        j.key: None if j.key in plan.reuse
        else _assemble(j, todo.index(j), chunks, ds, plan.idents[j.key], mc) for j in plan.jobs}
    try:
        disk.write_predictions(pred_path, results, reuse=plan.reuse, root_attrs={
            "dataset_checksum": ds.checksum, "parameters": list(TARGETS),
            "lenshpc_version": __version__})
    except OSError as exc:
        raise UserError(write_failure(exc, out_dir, plan.need_bytes, pred_path)) from None
    if not make_report:
        return
    from lenshpc.evaluate import report
    try:
        products = report.write_all(
            out_dir, cfg=cfg, ds=ds, jobs=plan.jobs, skipped=plan.skipped,
            given_not_used=plan.given_not_used,
            runs_dir=Path(runs), data_dir=Path(data), mc_samples=mc, outcome=outcome)
        products.append(pred_path)
        mark_done(out_dir, disk.REPORT_PRODUCT, products, info={
            "dataset_checksum": ds.checksum, "settings": plan.settings,
            "models": {k: v["model_checksum"] for k, v in plan.idents.items()}})
    except OSError as exc:
        raise UserError(write_failure(exc, out_dir, plan.need_bytes)) from None


def evaluate(cfg: Config, data: str, runs: str, out: str, mc_samples: int | None = None,
             world: World | None = None, make_report: bool = True) -> int:
    """Evaluate every finished job under ``runs`` on the test set of ``data`` into ``out``.

    Returns 0; raises the same UserError on every rank (see the module doc)."""
    world = world or get_world()
    raise_open_file_limit()   # HDF5 and MPI may hold many files; lenshpc opens one shard at a time
    mc = cfg.evaluate.mc_samples if mc_samples is None else mc_samples
    if mc == 1 or mc < 0:
        raise UserError(f"--mc-samples {mc}: must be 0 (off) or at least 2")
    with contextlib.ExitStack() as lock:   # held by rank 0 until the end
        plan: EvaluationPlan = world.on_root(lambda: _check_inputs(cfg, data, runs, out, mc, lock))
        ds, todo = plan.ds, plan.todo
        for key, reason in plan.skipped:
            log(world, f"skipping {key}: {reason}")

        world.agree(_damaged_shards(ds, world.rank, world.size))
        # every input checked: REPORT is rewritten from here on, not done until marked again
        world.on_root(lambda: clear_done(plan.out_dir, disk.REPORT_PRODUCT))

        if plan.reuse:
            log(world, f"{len(plan.reuse)} job(s) already evaluated for the same model file and "
                       f"dataset: {', '.join(j.key for j in plan.jobs if j.key in plan.reuse)}")
        n_test = len(ds.test_index)
        units = plan_units(len(todo), n_test, cfg.evaluate.chunk_size)
        if todo:
            log(world, f"evaluating {len(todo)} job(s) x {n_test} test images: {len(units)} "
                       f"units over {world.size} rank(s)"
                       + (f", {mc} MC-dropout passes" if mc else ""))

        mine = split_evenly(len(units), world.rank, world.size)
        renderer = _prepare(cfg, ds) if len(mine) else None
        world.idle_barrier()
        t0, c0 = time.perf_counter(), time.process_time()
        local, problems = _work(units, mine, plan, cfg, mc, renderer) if len(mine) \
            else ({}, [])
        # CPU time (all threads) says how much work the ranks did, whatever else runs on the node
        cpu = time.process_time() - c0
        world.agree(problems)
        cpu_seconds = sum(world.allgather(cpu))
        gathered = world.gather(local)
        work_seconds = time.perf_counter() - t0
        if mc and make_report:   # issue 18: coverage on the test set, scales from validation
            from lenshpc.evaluate import calibration_report, calibration_run
            measured = calibration_run.measure(plan, cfg, mc, world)
            world.on_root(lambda: calibration_report.write(plan.out_dir, measured, cfg))

        def write() -> None:
            n_images = len(todo) * n_test
            if todo:
                rate = n_images / work_seconds if work_seconds > 0 else math.inf
                log(world, f"predicted, re-rendered and scored {n_images} images in "
                           f"{work_seconds:.1f} s ({rate:.1f} images/s on {world.size} rank(s), "
                           f"{cpu_seconds:.1f} CPU s)")
            outcome = Outcome(evaluated=[j.key for j in todo], reused=sorted(plan.reuse),
                              n_ranks=world.size, work_seconds=work_seconds,
                              cpu_seconds=cpu_seconds, n_images=n_images)
            _write(plan, {k: v for part in gathered or [] for k, v in part.items()}, outcome, cfg=cfg,
                   data=data, runs=runs, mc=mc, make_report=make_report)
            if make_report:
                log(world, f"wrote {plan.out_dir / 'report.md'}")
            sys.stdout.flush()

        world.on_root(write)
    return 0
