"""The calibration step of ``lenshpc evaluate --mc-samples N`` (N > 0), over MPI.

After the test-set work, every rank takes a contiguous block of the units
``(job, part, chunk)``, part being the job's validation fold (the items of
``split == fold``, at most :data:`VALIDATION_ITEMS` of them, evenly spaced) or the test
set, chunks being fixed runs of ``evaluate.chunk_size`` items. Each unit is predicted with
N MC-dropout passes (:meth:`lenshpc.evaluate.predict.Predictor.mc_passes`), the masks
seeded by (seed, job, chunk start) - on the test set exactly evaluate's seeds, so the
passes are those behind predictions.h5's ``pred`` and ``pred_std``; on the validation fold
under the job key with ``/validation`` appended - so the result does not depend on the
rank count. Rank 0 gathers the passes and computes (:func:`results`) what
:mod:`lenshpc.evaluate.calibration_file` writes and
:mod:`lenshpc.evaluate.calibration_report` shows.

The test set is predicted a second time here: predictions.h5 keeps each job's mean and
spread, not its passes, which the central intervals and the fold ensemble need.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from lenshpc import __version__
from lenshpc.config import Config, UserError
from lenshpc.dataset.columns import TARGETS
from lenshpc.evaluate import calibration as cal, calibration_file
from lenshpc.parallel import World, split_evenly

#: At most this many items of a job's validation fold are predicted (evenly spaced in item
#: order): the binomial error of a 68% coverage on 2000 items is 0.010.
VALIDATION_ITEMS = 2000
PARTS = ("validation", "test")

METHOD = (
    "Per job, the scale s_p of parameter p is the 0.6827 quantile (inverted CDF) of "
    "|y - mean| / std over the job's validation fold (split == fold), mean and std "
    "(ddof=1) over its own MC-dropout passes. The fold ensemble x MC dropout (every fold's "
    "passes pooled, as lenshpc predict forms it) has no held-out items but the test set "
    "(each job's validation items trained the model's other folds), so its spread is not "
    "fitted but derived: each job's passes scaled by its own s_p about its own mean give its "
    "calibrated error variance W (mean over the folds); the folds' disagreement B (variance "
    "of their means) is the part of it that averaging over the K folds removes, so the "
    "ensemble mean's error variance is V = max(W - B, B / (K - 1)), and the pooled samples "
    "are scaled about the ensemble mean, per item, to std sqrt(V). Its coverage is then "
    "measured on the test set. The model's scale shown is the median of its jobs'; null: "
    "no MC spread (no dropout), not calibrated.")


def validation_items(split: np.ndarray, fold: int) -> np.ndarray:
    """Item numbers of fold ``fold``'s validation set (split == fold), at most
    :data:`VALIDATION_ITEMS` of them, evenly spaced in item order."""
    items = np.flatnonzero(np.asarray(split) == fold).astype(np.int64)
    if len(items) > VALIDATION_ITEMS:
        items = items[np.linspace(0, len(items) - 1, VALIDATION_ITEMS).round().astype(np.int64)]
    return items


def plan_units(part_sizes: list[tuple[int, int]], chunk: int) -> list[tuple[int, str, int, int]]:
    """Units ``(job position, part, start, stop)``, job-major, from each job's
    (validation, test) sizes."""
    return [(j, part, s, min(s + chunk, n)) for j, sizes in enumerate(part_sizes)
            for part, n in zip(PARTS, sizes, strict=True) for s in range(0, n, chunk)]


def _seed(root: int, key: str, part: str, start: int) -> tuple[int, int, int]:
    from lenshpc.evaluate.scoring import mc_seed
    return mc_seed(root, key if part == "test" else f"{key}/validation", start)


def _work(units, mine: range, jobs, items: dict, ds, cfg: Config, mc: int
          ) -> tuple[dict, list[str]]:
    from lenshpc.evaluate import disk, predict
    out: dict = {}
    current, predictor = None, None
    for u in mine:
        jpos, part, start, stop = units[u]
        job = jobs[jpos]
        chunk = items[(jpos, part)][start:stop]
        try:
            if current != jpos:
                current, predictor = jpos, None
                try:
                    model = predict.load_model(job.model_file)
                except UserError as exc:
                    raise UserError(f"{job.key}: {exc}") from None
                predictor = predict.Predictor(model, mc=True, normalize=disk.job_normalize(job))
            images = ds.read_images(chunk)
        except UserError as exc:
            return out, [str(exc)]
        assert predictor is not None
        passes = predictor.mc_passes(images, cfg.evaluate.batch_size, mc,
                                     _seed(cfg.seed, job.key, part, start))
        bad = np.flatnonzero(~np.isfinite(passes).all(axis=(0, 2)))
        if bad.size:
            return out, [f"{job.key}: {job.model_file} predicts non-finite values ({part} item "
                         f"{int(chunk[bad[0]])}); the model is unusable, train it again"]
        out[(jpos, part, start)] = (passes, predictor.has_dropout)
    return out, []


def measure(plan, cfg: Config, mc: int, world: World) -> dict[str, Any] | None:
    """Predict every job's validation fold and the test set with ``mc`` passes (all ranks
    call it); rank 0 returns :func:`results`, the others None. UserError on every rank for
    a problem on any."""
    ds, jobs = plan.ds, plan.jobs
    items: dict[tuple[int, str], np.ndarray] = {}
    for j, job in enumerate(jobs):
        items[(j, "validation")] = validation_items(ds.index.split, job.fold)
        items[(j, "test")] = ds.test_index
    units = plan_units([(len(items[(j, "validation")]), len(ds.test_index))
                        for j in range(len(jobs))], cfg.evaluate.chunk_size)
    if world.is_root:
        print(f"lenshpc evaluate: calibration: {len(jobs)} job(s) x (validation fold + test "
              f"set) x {mc} MC-dropout passes: {len(units)} units over {world.size} rank(s)",
              flush=True)
    mine = split_evenly(len(units), world.rank, world.size)
    if len(mine):
        from lenshpc.evaluate import predict
        try:
            predict.configure_threads(cfg.evaluate.threads)
        except RuntimeError:   # TensorFlow already running: evaluate set the threads
            pass
    local, problems = _work(units, mine, jobs, items, ds, cfg, mc) if len(mine) else ({}, [])
    world.agree(problems)
    gathered = world.gather(local)
    if not world.is_root:
        return None
    chunks = {k: v for part in gathered or [] for k, v in part.items()}
    passes: dict[tuple[int, str], np.ndarray] = {}
    dropout: dict[int, bool] = {}
    for j in range(len(jobs)):
        for part in PARTS:
            starts = sorted(s for (jj, p, s) in chunks if jj == j and p == part)
            passes[(j, part)] = np.concatenate([chunks[(j, part, s)][0] for s in starts], axis=1)
            dropout[j] = bool(chunks[(j, part, starts[0])][1])
    truth = {(j, "validation"): _true(ds, items[(j, "validation")]) for j in range(len(jobs))}
    return results(jobs, passes, truth, ds.true_test, dropout, mc=mc, seed=cfg.seed,
                   dataset_checksum=ds.checksum)


def _true(ds, items: np.ndarray) -> np.ndarray:
    from lenshpc.evaluate.scoring import true_parameters
    index = ds.index
    return true_parameters(index.labels[items], index.truth[items], index.truth_names)


def _by_param(values: np.ndarray) -> dict[str, float | None]:
    return {p: (None if not np.isfinite(v) else float(v)) for p, v in zip(TARGETS, values, strict=True)}


def _cov(samples: np.ndarray, truth: np.ndarray) -> dict[str, dict[str, float]]:
    c = cal.coverages(samples, truth)
    return {p: {name: float(c[name][i]) for name in cal.INTERVALS} for i, p in enumerate(TARGETS)}


def _mean_cov(covs: list[dict[str, dict[str, float]]]) -> dict[str, dict[str, float]]:
    return {p: {name: float(np.mean([c[p][name] for c in covs])) for name in cal.INTERVALS}
            for p in TARGETS}


def _tarp(samples: np.ndarray, truth: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray] | None:
    if samples.shape[0] < 2:
        return None
    return cal.tarp_ecp(samples, truth, seed)


def results(jobs, passes: dict, truth_validation: dict, truth_test: np.ndarray,
            dropout: dict[int, bool], *, mc: int, seed: int, dataset_checksum: str
            ) -> dict[str, Any]:
    """``record`` (calibration.json, :mod:`lenshpc.evaluate.calibration_file`) and
    ``curves`` (the figure's arrays) from every job's passes: ``passes[(j, part)]``
    (S, n, 4) for job position j and part 'validation' / 'test', the validation truths
    ``truth_validation[(j, 'validation')]`` and the test set's ``truth_test`` (n_test, 4)."""
    expected = np.linspace(0.0, 0.99, 34)
    record: dict[str, Any] = {
        "format": calibration_file.FORMAT, "version": calibration_file.VERSION,
        "lenshpc_version": __version__,
        "dataset_checksum": dataset_checksum, "mc_samples": mc, "seed": seed,
        "parameters": list(TARGETS), "target": cal.TARGET, "validation_items": VALIDATION_ITEMS,
        "method": METHOD, "intervals": dict(cal.INTERVALS), "models": {}}
    curves: dict[str, Any] = {"expected": expected, "models": {}}
    for model in dict.fromkeys(j.model for j in jobs):
        positions = [i for i, j in enumerate(jobs) if j.model == model]
        job_entries: dict[str, Any] = {}
        job_scales, val_before, val_after_model = [], [], []
        job_curves = []
        for i in positions:
            job = jobs[i]
            v, yv = passes[(i, "validation")], truth_validation[(i, "validation")]
            t = passes[(i, "test")]
            scale = cal.fit_scale(yv, *cal.mean_std(v)) if dropout[i] else np.full(len(TARGETS), np.nan)
            job_scales.append(scale)
            t_after = cal.scale_samples(t, scale)
            tarp_b, tarp_a = _tarp(t, truth_test, seed), _tarp(t_after, truth_test, seed)
            job_entries[job.key] = {
                "fold": job.fold, "model_sha256": job.model_checksum, "has_dropout": dropout[i],
                "n_validation": int(v.shape[1]), "scale": _by_param(scale),
                "validation": {"before": _cov(v, yv), "after": _cov(cal.scale_samples(v, scale), yv)},
                "test": {"before": _cov(t, truth_test), "after": _cov(t_after, truth_test)},
                "tarp": None if tarp_b is None or tarp_a is None else
                {"before": cal.tarp_deviation(*tarp_b), "after": cal.tarp_deviation(*tarp_a)}}
            val_before.append(job_entries[job.key]["validation"]["before"])
            job_curves.append({"before": _curve(t, truth_test, expected),
                               "after": _curve(t_after, truth_test, expected),
                               "tarp": (tarp_b, tarp_a)})
        scales = np.stack(job_scales)
        model_scale = (np.full(len(TARGETS), np.nan) if np.isnan(scales).all(axis=0).all()
                       else _nanmedian(scales))
        for i in positions:
            val_after_model.append(job_entries[jobs[i].key]["validation"]["after"])
        ens = np.concatenate([passes[(i, "test")] for i in positions])
        ens_after = cal.calibrate_ensemble([passes[(i, "test")] for i in positions], job_scales)
        tarp_b, tarp_a = _tarp(ens, truth_test, seed), _tarp(ens_after, truth_test, seed)
        has_dropout = any(dropout[i] for i in positions)
        record["models"][model] = {
            "has_dropout": has_dropout, "scale": _by_param(model_scale),
            "transfer": ("each job's validation scale on its own passes, the ensemble's "
                         "spread from those and the folds' disagreement (method)" if has_dropout else
                         "none: no dropout, no MC spread; the spread is the fold ensemble's "
                         "only and is not calibrated"),
            "n_jobs": len(positions), "n_samples": int(ens.shape[0]),
            "validation": {"before": _mean_cov(val_before), "after": _mean_cov(val_after_model)},
            "test": {"before": _cov(ens, truth_test), "after": _cov(ens_after, truth_test),
                     "n": int(len(truth_test)),
                     "tarp": None if tarp_b is None or tarp_a is None else
                     {"before": cal.tarp_deviation(*tarp_b), "after": cal.tarp_deviation(*tarp_a)}},
            "jobs": job_entries}
        curves["models"][model] = {
            "has_dropout": has_dropout,
            "ensemble": {"before": _curve(ens, truth_test, expected),
                         "after": _curve(ens_after, truth_test, expected), "tarp": (tarp_b, tarp_a)},
            "jobs": job_curves}
    return {"record": record, "curves": curves}


def _nanmedian(scales: np.ndarray) -> np.ndarray:
    out = np.full(scales.shape[1], np.nan)
    for p in range(scales.shape[1]):
        col = scales[:, p][np.isfinite(scales[:, p])]
        if col.size:
            out[p] = float(np.median(col))
    return out


def _curve(samples: np.ndarray, truth: np.ndarray, expected: np.ndarray) -> dict[str, np.ndarray]:
    mean, std = cal.mean_std(samples)
    return {"sigma": cal.observed_sigma_curve(truth, mean, std, expected),
            "central68": cal.coverages(samples, truth)["central68"],
            "central95": cal.coverages(samples, truth)["central95"]}
