"""``REPORT/calibration.json``: the one owner of its layout, for its writer (``lenshpc
evaluate --mc-samples N``) and its reader (``lenshpc predict --calibration FILE``).

Layout (JSON object)::

    format: "lenshpc-calibration", version: 2, lenshpc_version, dataset_checksum,
    mc_samples (the passes per job it was fitted with), seed, parameters (theta_E, q, e1, e2),
    target (the 1-sigma coverage aimed at, 0.6827), validation_items (at most per job),
    method (one paragraph), intervals (name -> nominal coverage),
    models: {<model>: {
        has_dropout, scale: {<p>: float | null} (the median of its jobs'), transfer: "...",
        validation: {before, after}   (mean over the model's jobs, each job's MC spread,
                                       "after" with its own scale),
        test: {before, after, n, tarp: {before, after}}   (the fold ensemble x MC dropout),
        jobs: {<model>/fold-<k>: {fold, model_sha256, has_dropout, n_validation,
                                  scale: {<p>: float | null},
                                  validation: {before, after}, test: {before, after},
                                  tarp: {before, after} | null}}}}

where every ``before`` / ``after`` is ``{<p>: {sigma1, sigma2, central68, central95}}``
(fractions) and a ``tarp`` value the largest |ECP - alpha| of the TARP test. A null scale
means not calibrated (no MC spread: a model without dropout). ``lenshpc predict`` applies
the jobs' scales (version 1 files applied the model's median to the ensemble, which
over-covered; they are refused).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Sequence

from lenshpc.config import UserError
from lenshpc.dataset.columns import TARGETS
from lenshpc.io import atomic_write_text, file_sha256

CALIBRATION = "calibration.json"
FORMAT = "lenshpc-calibration"
VERSION = 2


def write(out_dir: Path, record: dict[str, Any]) -> Path:
    """Write ``record`` as ``out_dir/calibration.json`` atomically; returns the path."""
    path = Path(out_dir) / CALIBRATION
    atomic_write_text(path, json.dumps(record, indent=1, allow_nan=False) + "\n")
    return path


def _scale_ok(v: Any) -> bool:
    return v is None or (isinstance(v, (int, float)) and math.isfinite(v) and v > 0)


def _scales_ok(scale: Any) -> bool:
    return isinstance(scale, dict) and set(scale) == set(TARGETS) and \
        all(_scale_ok(v) for v in scale.values())


def read(path: str | Path) -> dict[str, Any]:
    """A calibration file's content, checked: UserError naming the file and the problem."""
    p = Path(path)
    where = f"--calibration {path}"
    try:
        data = json.loads(p.read_text())
    except FileNotFoundError:
        raise UserError(f"{where}: no such file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"{where}: cannot read it: {getattr(exc, 'strerror', None) or exc}") from None
    except ValueError:
        raise UserError(f"{where}: not JSON; give the calibration.json of a report") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise UserError(f"{where}: not a lenshpc calibration file (format {FORMAT!r})")
    if data.get("version") != VERSION:
        raise UserError(f"{where}: version {data.get('version')!r}, this lenshpc reads "
                        f"version {VERSION}; run lenshpc evaluate --mc-samples N again")
    models = data.get("models")
    if not isinstance(models, dict) or not models:
        raise UserError(f"{where}: it holds no model")
    for name, m in models.items():
        scale = m.get("scale") if isinstance(m, dict) else None
        jobs = m.get("jobs") if isinstance(m, dict) else None
        if not _scales_ok(scale) or not isinstance(jobs, dict) or not all(
                isinstance(j, dict) and isinstance(j.get("model_sha256"), str)
                and _scales_ok(j.get("scale")) for j in jobs.values()):
            raise UserError(f"{where}: model {name}: its scale or jobs are damaged (each "
                            f"scale a number > 0 or null for {', '.join(TARGETS)})")
    return data


def for_predict(path: str | Path, jobs: Sequence[Any], mc_samples: int) -> dict[str, Any]:
    """What ``lenshpc predict`` applies and records, from the calibration file ``path``,
    for ``jobs`` (lenshpc.runs.JobRun) predicted with ``mc_samples`` passes each: file,
    sha256, mc_samples (fitted with), scales (job key -> its [theta_E, q, e1, e2] scales,
    None where not calibrated; None for a job without any), uncalibrated (models left as
    they are). UserError when the file does not belong to these model files or there are no MC
    passes to scale."""
    data = read(path)
    where = f"--calibration {path}"
    if mc_samples == 0:
        raise UserError(f"{where}: the scales apply to the MC-dropout spread (fitted with "
                        f"{data.get('mc_samples')} passes) and --mc-samples is 0; give "
                        f"--mc-samples N or --no-calibration")
    models = data["models"]
    for job in jobs:
        entry = models.get(job.model, {}).get("jobs", {}).get(job.key)
        if entry is None:
            raise UserError(f"{where}: it was not fitted for {job.key}; give the calibration of "
                            f"the report that evaluated these runs, or --no-calibration")
        if entry["model_sha256"] != job.model_checksum:
            raise UserError(f"{where}: fitted for another {job.key} model file (sha256 "
                            f"{entry['model_sha256'][:12]}, {job.model_file} has "
                            f"{job.model_checksum[:12]}); evaluate these runs again or give "
                            f"--no-calibration")
    scales: dict[str, list[float | None] | None] = {}
    for job in jobs:
        values = [models[job.model]["jobs"][job.key]["scale"][p] for p in TARGETS]
        scales[job.key] = None if all(v is None for v in values) else values
    uncalibrated = [m for m in dict.fromkeys(j.model for j in jobs)
                    if all(scales[j.key] is None for j in jobs if j.model == m)]
    return {"file": str(Path(path).resolve()), "sha256": file_sha256(path),
            "mc_samples": data.get("mc_samples"), "scales": scales, "uncalibrated": uncalibrated}
