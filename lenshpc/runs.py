"""A training job's folder ``RUNS/<model>/fold-<k>/``: its file names, "finished", discovery.

This module owns the job folder for every stage: train writes it (through
:class:`JobFiles`), evaluate and predict find and check finished jobs in it
(:func:`find_jobs`), ``lenshpc run`` and ``slurm submit`` ask whether a job is done
(:func:`job_done`). Pure Python + numpy: no TensorFlow needed.

**Finished** has one meaning everywhere: :func:`job_done`, train's completion marker
``train.done.json`` exists and every file it lists (model.keras, run.json, history.csv)
still has its size and sha256. A job without the marker is not finished, whatever its
run.json says (``"finished": true`` is written just before the marker, so a job killed
between the two, or one left by a lenshpc that wrote no marker, is not finished): the
same ``lenshpc train`` command finishes it, and evaluate skips it, saying why.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from lenshpc import io
from lenshpc.config import UserError
from lenshpc.config.train import job_key, parse_job_key
from lenshpc.lock import Done, check_done, marker_path


@dataclass(frozen=True)
class JobFiles:
    """Paths of one job's products."""

    root: Path

    #: File names inside a job folder (the contract with evaluate and the Slurm chain).
    MODEL_NAME = "model.keras"
    RUN_JSON_NAME = "run.json"
    HISTORY_NAME = "history.csv"

    @property
    def checkpoint(self) -> Path:
        return self.root / "checkpoint.npz"

    @property
    def history(self) -> Path:
        return self.root / self.HISTORY_NAME

    @property
    def run_json(self) -> Path:
        return self.root / self.RUN_JSON_NAME

    @property
    def model(self) -> Path:
        return self.root / self.MODEL_NAME

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    #: Name of the job's completion marker (lenshpc.lock): ``train.done.json``.
    PRODUCT = "train"

    @property
    def marker(self) -> Path:
        return marker_path(self.root, self.PRODUCT)

    @property
    def finished_products(self) -> tuple[Path, ...]:
        """The files the completion marker lists."""
        return (self.model, self.run_json, self.history)


#: The job folder's completion marker and model file, by name.
TRAIN_PRODUCT = JobFiles.PRODUCT
MODEL_FILE = JobFiles.MODEL_NAME


def job_done(directory: str | os.PathLike) -> Done:
    """Whether the job in ``directory`` is finished and intact: the one predicate (module
    doc) of train, evaluate, predict, ``lenshpc run`` and ``slurm submit``."""
    return check_done(directory, TRAIN_PRODUCT)


def weights_sha256(weights: Sequence[np.ndarray]) -> str:
    """sha256 (hex) over the bytes of a model's weight arrays in order: the hash run.json
    records (``model_weights_sha256`` of model.keras, ``weights_sha256`` of each rank)."""
    h = hashlib.sha256()
    for w in weights:
        h.update(np.ascontiguousarray(w).tobytes())
    return h.hexdigest()


@dataclass(frozen=True)
class JobRun:
    """One finished training job under RUNS.

    ``model_checksum``: sha256 of its model.keras, as train's completion marker lists it
    (and just checked against the file)."""

    model: str
    fold: int
    job: int
    directory: Path
    run: dict = field(repr=False)
    model_checksum: str = ""

    @property
    def key(self) -> str:
        """Its group in predictions.h5 and its path under RUNS: ``<model>/fold-<k>``."""
        return job_key(self.model, self.fold)

    @property
    def model_file(self) -> Path:
        return self.directory / MODEL_FILE


def _not_finished(directory: Path, run: dict) -> str:
    """Why a job without a completion marker is skipped (one phrase)."""
    if run.get("finished") is not True:
        done = run.get("epochs_done")
        return "unfinished" + (f" ({done} epochs done)" if done is not None else "")
    return (f"not finished: run.json says finished but there is no "
            f"{marker_path(directory, TRAIN_PRODUCT).name} (train stopped before writing it, "
            f"or an older lenshpc); run the same lenshpc train command to finish it")


def _model_checksum(where: str, directory: Path) -> str:
    """sha256 of model.keras as the (valid) marker of ``directory`` lists it."""
    marker = marker_path(directory, TRAIN_PRODUCT)
    entry = json.loads(marker.read_text())["files"].get(MODEL_FILE)
    if not entry or "sha256" not in entry:
        raise UserError(f"{where}: {marker.name} does not list {MODEL_FILE} with its sha256; "
                        f"retrain the job")
    return str(entry["sha256"])


def find_jobs(runs_dir: str | os.PathLike, model_names, n_folds: int | Sequence[int],
              dataset_checksum: str | None) -> tuple[list[JobRun], list[tuple[str, str]]]:
    """Finished jobs under RUNS, and the skipped ones as (``<model>/fold-<k>``, reason).

    Expected jobs are the grid ``model_names`` x folds (``n_folds``: a count, or the
    trained folds, train.folds); other ``<model>/fold-<k>/run.json`` found under RUNS are
    looked at too. Finished jobs come in grid order (the given models first, then others
    by name), fold by fold. A job is finished when :func:`job_done` holds; one without a
    marker is skipped with the reason. Raises UserError if RUNS is missing, a run was
    trained on another dataset (not checked when ``dataset_checksum`` is None, as for
    lenshpc predict), or a job has a marker its files no longer match (refused: its files
    are not what train finished)."""
    runs = Path(runs_dir)
    if not runs.is_dir():
        raise UserError(f"--runs {runs_dir}: no such directory")
    order = {name: i for i, name in enumerate(model_names)}
    folds = range(n_folds) if isinstance(n_folds, int) else n_folds   # train.folds
    keys = {(m, k) for m in model_names for k in folds}
    for p in runs.glob(f"*/fold-*/{JobFiles.RUN_JSON_NAME}"):
        try:
            keys.add(parse_job_key(f"{p.parent.parent.name}/{p.parent.name}"))
        except ValueError:
            continue
    finished, skipped = [], []
    for model, fold in sorted(keys, key=lambda mk: (order.get(mk[0], len(order)), mk[0], mk[1])):
        key = job_key(model, fold)
        files = JobFiles(runs / key)
        if not files.run_json.is_file():
            skipped.append((key, "missing (no run.json)"))
            continue
        run = io.read_json(files.run_json)
        if run is None:
            skipped.append((key, "unreadable run.json (not a JSON object)"))
            continue
        theirs = run.get("dataset_checksum")
        if theirs is not None and dataset_checksum is not None and str(theirs) != dataset_checksum:
            raise UserError(f"--runs {runs_dir}: {key} was trained on another dataset "
                            f"(run.json dataset_checksum {str(theirs)[:12]}..., dataset.h5 has "
                            f"{dataset_checksum[:12]}...)")
        done = job_done(files.root)
        if not done:
            if files.marker.exists():
                raise UserError(f"--runs {runs_dir}: {key}: refused, the job is not what train "
                                f"finished: {done.reason}; restore its files or train it again")
            skipped.append((key, _not_finished(files.root, run)))
            continue
        finished.append(JobRun(model=model, fold=fold, job=int(run.get("job", -1)),
                               directory=files.root, run=run,
                               model_checksum=_model_checksum(f"--runs {runs_dir}: {key}",
                                                              files.root)))
    return finished, skipped


__all__ = ["JobFiles", "JobRun", "MODEL_FILE", "TRAIN_PRODUCT", "find_jobs", "job_done",
           "weights_sha256"]
