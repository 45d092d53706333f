"""Files of the evaluate stage: the dataset and runs it reads (checked where they are
read), predictions.h5 and the report folder it writes.

Every input is checked before it is used: the dataset's shard table against the shard
files (present, complete, the checksum the index recorded), labels and truth finite, and
each job's model file against what train recorded. Every output is written to a
temporary name beside its final path and renamed when whole, so a file with the final
name is always complete and an interrupted run loses nothing already written.

``predictions.h5`` holds one group per job, ``<model>/fold-<k>``, with the datasets
``index`` (dataset item numbers), ``true`` and ``pred`` (N, 4: theta_E in arcsec, q,
e1, e2), ``psnr`` (dB, MAX = 1) and ``mse`` (N,) of the re-render, the study's
``psnr_study`` (dB), ``ssim`` and ``ssim_ring`` (N,: :mod:`lenshpc.evaluate.image_metrics`),
``clamped`` (N,: prediction moved into the renderable domain before re-rendering) and,
with MC dropout, ``pred_std`` (N, 4). Group attributes are the key of the cached result
(``model_checksum``: sha256 of model.keras, ``dataset_checksum``, ``settings``): a later
run reuses a group whose key is unchanged and whose values are all finite.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from lenshpc import io
from lenshpc.config import UserError
from lenshpc.config.train import job_key, parse_job_key
from lenshpc.dataset import INDEX, SHARDS
from lenshpc.dataset.index import (
    DatasetIndex,
    check_shard,
    dataset_checksum,
    missing_shards,
    read_index,
    read_items,
)
from lenshpc.evaluate.kernels import first_nonfinite, true_parameters
from lenshpc.io import atomic_path, file_sha256
from lenshpc.lock import check_done, marker_path
from lenshpc.train.state import JobFiles

PREDICTIONS = "predictions.h5"
#: Datasets of a job group in predictions.h5.
ARRAYS = ("index", "true", "pred", "psnr", "mse", "psnr_study", "ssim", "ssim_ring", "clamped",
          "pred_std")
#: The report folder's completion marker, and train's (written by ``lenshpc train``).
REPORT_PRODUCT = "report"
TRAIN_PRODUCT = "train"
MODEL_FILE = JobFiles.MODEL_NAME


def _text(v: Any) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


# --------------------------------------------------------------------------- the dataset


@dataclass(frozen=True)
class DatasetInfo:
    """What evaluate needs to know about a dataset (read on rank 0, broadcast), on top of
    the one reader of the index (:func:`lenshpc.dataset.index.read_index`, kept as ``index``).

    ``test_index``: sorted item numbers of the test set (split == -1); ``truth_test`` and
    ``true_test`` their truth rows and true (theta_E, q, e1, e2), row-aligned."""

    path: Path
    checksum: str
    n_items: int
    test_index: np.ndarray
    truth_names: tuple[str, ...]
    truth_test: np.ndarray
    true_test: np.ndarray
    config_text: str
    attrs: dict[str, Any] = field(repr=False)
    index: DatasetIndex | None = field(default=None, repr=False)

    def test_shards(self) -> list[int]:
        """Numbers of the shards holding at least one test item, in order."""
        assert self.index is not None
        return sorted({int(k) for k in self.index.shards.of(self.test_index)})

    def read_images(self, items: np.ndarray) -> np.ndarray:
        """(n, H, W) float32 images of the items, read shard by shard; UserError naming the
        shard if one is missing, damaged or holds non-finite pixels."""
        assert self.index is not None
        return read_items(self.index, items)


def read_dataset(data_dir: str | os.PathLike) -> DatasetInfo:
    """Read and check DIR/dataset.h5 (:func:`lenshpc.dataset.index.read_index`: consistent, finite
    labels), every shard file present with the size the index records, the dataset
    checksum against the shard table, finite truth of the test items.

    Raises UserError naming the first bad shard, or why there is no complete dataset."""
    root = Path(data_dir)
    if not root.is_dir():
        raise UserError(f"--data {data_dir}: no such directory")
    if not (root / INDEX).is_file():
        raise UserError(f"--data {data_dir}: no dataset.h5 (the dataset is missing or "
                        f"incomplete; run lenshpc simulate to finish it)")
    try:
        index = read_index(root)
    except UserError as exc:
        raise UserError(f"--data {data_dir}: {exc}") from None
    bad = missing_shards(index)   # one stat per shard
    if bad:
        more = f"; {len(bad) - 1} more shard(s) bad" if len(bad) > 1 else ""
        raise UserError(f"--data {data_dir}: shard {bad[0]}{more}; restore it (lenshpc dataset "
                        f"verify {data_dir} lists every problem)")
    if dataset_checksum(index.shards.checksum, index.split) != index.checksum:
        raise UserError(f"--data {data_dir}: {index.path}: the dataset checksum does not match "
                        f"its shard table and split (the index is damaged)")
    test_index = np.flatnonzero(index.split == -1).astype(np.int64)
    if test_index.size == 0:
        raise UserError(f"--data {data_dir}: the dataset has no test items (split == -1)")
    for col in ("lens_mass.theta_E", "lens_mass.e1", "lens_mass.e2"):
        if col not in index.truth_names:
            raise UserError(f"--data {data_dir}: truth has no column {col}")
    assert index.truth is not None
    truth_test = index.truth[test_index]
    row = first_nonfinite(truth_test)
    if row is not None:
        raise UserError(f"--data {data_dir}: {index.path} holds non-finite truth for item "
                        f"{test_index[row]}; the index is damaged (lenshpc dataset verify)")
    return DatasetInfo(path=index.path, checksum=index.checksum, n_items=index.n_items,
                       test_index=test_index, truth_names=index.truth_names,
                       truth_test=truth_test, true_test=true_parameters(
                           index.labels[test_index], truth_test, index.truth_names),
                       config_text=index.config_text, attrs=index.attrs, index=index)


def shard_data_problem(ds: DatasetInfo, k: int) -> str | None:
    """One line if shard ``k`` is not what the index records (read and hashed in full:
    :func:`lenshpc.dataset.index.check_shard`), or None."""
    assert ds.index is not None
    problem = check_shard(ds.index, k)
    if problem is None:
        return None
    what = problem if problem.startswith(INDEX) else f"shard {SHARDS}/{problem}"
    return (f"--data {ds.index.root}: {what}; restore it from a good copy (lenshpc dataset "
            f"verify {ds.index.root})")


# --------------------------------------------------------------------------- the runs


@dataclass(frozen=True)
class JobRun:
    """One finished training job under RUNS.

    ``model_checksum``: sha256 of its model.keras, checked against train's record.
    ``weights_sha256``: when train left no completion marker, the weights hash run.json
    records, checked once the model is loaded (None when the marker vouched for the file)."""

    model: str
    fold: int
    job: int
    directory: Path
    run: dict = field(repr=False)
    model_checksum: str = ""
    weights_sha256: str | None = None

    @property
    def key(self) -> str:
        """Its group in predictions.h5 and its path under RUNS: ``<model>/fold-<k>``."""
        return job_key(self.model, self.fold)

    @property
    def model_file(self) -> Path:
        return self.directory / MODEL_FILE


def _checked_job(runs_dir, key: str, directory: Path, run: dict) -> tuple[str, str | None]:
    """(sha256 of model.keras, weights hash still to check or None) of a finished job whose
    files are what train recorded; UserError when they are not."""
    where = f"--runs {runs_dir}: {key}"
    done = check_done(directory, TRAIN_PRODUCT)
    if done:   # train's marker lists model.keras with its sha256, just checked
        record = json.loads(marker_path(directory, TRAIN_PRODUCT).read_text())
        entry = record["files"].get(MODEL_FILE)
        if not entry or "sha256" not in entry:
            raise UserError(f"{where}: {marker_path(directory, TRAIN_PRODUCT).name} does not "
                            f"list {MODEL_FILE} with its sha256; retrain the job")
        return str(entry["sha256"]), None
    if marker_path(directory, TRAIN_PRODUCT).exists():
        raise UserError(f"{where}: refused, the job is not what train finished: {done.reason}; "
                        f"restore its files or train it again")
    # No marker (a run of an older lenshpc, or train stopped just before writing it): check
    # what run.json records, the file's hash now, else the weights' once the model is loaded.
    recorded = run.get("model_sha256")
    checksum = file_sha256(directory / MODEL_FILE)
    if recorded:
        if str(recorded) != checksum:
            raise UserError(f"{where}: refused, {MODEL_FILE} is not the model train saved (its "
                            f"sha256 differs from run.json model_sha256); restore the job's own "
                            f"model or train it again")
        return checksum, None
    weights = run.get("model_weights_sha256") or run.get("weights_sha256")
    weights = weights if isinstance(weights, list) else [weights] if weights else []
    if not weights or len(set(weights)) != 1:
        raise UserError(f"{where}: refused, {MODEL_FILE} cannot be checked (no "
                        f"{marker_path(directory, TRAIN_PRODUCT).name} and run.json records "
                        f"{'no' if not weights else 'disagreeing'} model or weights hash)")
    return checksum, str(weights[0])


def find_jobs(runs_dir: str | os.PathLike, model_names, n_folds: int | Sequence[int],
              dataset_checksum: str) -> tuple[list[JobRun], list[tuple[str, str]]]:
    """Finished jobs under RUNS, and the skipped ones as (``<model>/fold-<k>``, reason).

    Expected jobs are the config's grid (``model_names`` x ``n_folds``); other
    ``<model>/fold-<k>/run.json`` found under RUNS are evaluated too. Finished jobs come
    in grid order (config models first, then others by name), fold by fold. A job is
    finished when train's completion marker holds (else, for runs without a marker,
    when run.json says so and model.keras exists). Raises UserError if RUNS is missing,
    a run was trained on another dataset or its files are not what train recorded."""
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
        directory = runs / key
        run_json = JobFiles(directory).run_json
        if not run_json.is_file():
            skipped.append((key, "missing (no run.json)"))
            continue
        run = io.read_json(run_json)
        if run is None:
            skipped.append((key, "unreadable run.json (not a JSON object)"))
            continue
        theirs = run.get("dataset_checksum")
        if theirs is not None and str(theirs) != dataset_checksum:
            raise UserError(f"--runs {runs_dir}: {key} was trained on another dataset "
                            f"(run.json dataset_checksum {str(theirs)[:12]}..., dataset.h5 has "
                            f"{dataset_checksum[:12]}...)")
        marked = marker_path(directory, TRAIN_PRODUCT).exists()
        if not marked and run.get("finished") is not True:
            done = run.get("epochs_done")
            done_text = f" ({done} epochs done)" if done is not None else ""
            skipped.append((key, "unfinished" + done_text))
            continue
        if not marked and not (directory / MODEL_FILE).is_file():
            skipped.append((key, f"finished but {MODEL_FILE} is missing"))
            continue
        model_checksum, weights = _checked_job(runs_dir, key, directory, run)
        finished.append(JobRun(model=model, fold=fold, job=int(run.get("job", -1)),
                               directory=directory, run=run, model_checksum=model_checksum,
                               weights_sha256=weights))
    return finished, skipped


def job_normalize(job: JobRun) -> str:
    """The per-image normalisation the job was trained with (``train.normalize`` of the
    effective train section its run.json records; 'max' for runs that record none), which
    evaluate applies before the model. UserError for a kind lenshpc does not know."""
    from lenshpc.train.preprocess import KINDS
    train = job.run.get("train")
    kind = train.get("normalize", "max") if isinstance(train, dict) else "max"
    if kind not in KINDS:
        raise UserError(f"{job.key}: run.json train.normalize is {kind!r}, not one of "
                        f"{', '.join(KINDS)}; the run is not lenshpc's or is damaged")
    return str(kind)


# --------------------------------------------------------------------------- predictions.h5


def _finite_group(g) -> bool:
    """Nothing NaN is ever reused: true and pred all finite, no NaN elsewhere (a PSNR of
    +inf is a perfect re-render)."""
    return all(np.isfinite(g[n][...]).all() for n in ("true", "pred")) and \
        not any(np.isnan(g[n][...]).any() for n in ("pred_std", "mse", "psnr", "psnr_study", "ssim",
                                                  "ssim_ring") if n in g)


def up_to_date_groups(path: Path, wanted: dict[str, dict[str, str]]) -> set[str]:
    """Keys of ``wanted`` (key -> identifying attrs) whose group in ``path`` carries exactly
    those attrs, all its arrays and no NaN; an unreadable file reuses nothing."""
    import h5py
    if not path.is_file():
        return set()
    good = set()
    try:
        with h5py.File(path, "r") as f:
            for key, ident in wanted.items():
                if key not in f:
                    continue
                g = f[key]
                if all(_text(g.attrs.get(k, "")) == v for k, v in ident.items()) and \
                        all(a in g for a in ARRAYS if a != "pred_std") and _finite_group(g):
                    good.add(key)
    except (OSError, KeyError, ValueError):
        return set()
    return good


def write_predictions(path: Path, results: dict[str, dict[str, Any] | None], *,
                      reuse: set[str], root_attrs: dict[str, Any]) -> None:
    """Write predictions.h5 atomically: new ``results`` (key -> {arrays..., attrs: {...}})
    and the groups ``reuse`` copied from the existing file, in the order of ``results``
    keys (reused groups are given as ``results[key] = None``).

    The file is built in memory and written with one plain write: a full disk is then one
    OSError naming the file, never a half-flushed HDF5 file object."""
    import io as pyio

    import h5py
    path = Path(path)
    buffer = pyio.BytesIO()
    old: Any = h5py.File(path, "r") if reuse else None
    try:
        with h5py.File(buffer, "w", track_order=True) as f:
            for key, value in root_attrs.items():
                f.attrs[key] = value
            for key, res in results.items():
                model, fold = key.split("/")
                parent = f[model] if model in f else f.create_group(model, track_order=True)
                if res is None:
                    old.copy(old[key], parent, name=fold)
                    continue
                g = parent.create_group(fold)
                for name in ARRAYS:
                    if res.get(name) is not None:
                        g.create_dataset(name, data=res[name])
                for k, v in res["attrs"].items():
                    g.attrs[k] = v
    finally:
        if old is not None:
            old.close()
    with atomic_path(path) as tmp:
        tmp.write_bytes(buffer.getbuffer())


def read_predictions(path: Path) -> dict[str, dict[str, Any]]:
    """All job groups of predictions.h5: key -> {arrays..., 'attrs': {...}}, in file order."""
    import h5py
    out: dict[str, dict[str, Any]] = {}
    with h5py.File(path, "r") as f:
        for model in f:
            for fold in sorted(f[model], key=lambda name: parse_job_key(f"{model}/{name}")[1]):
                g = f[model][fold]
                entry = {name: g[name][...] for name in ARRAYS if name in g}
                entry["attrs"] = {k: (_text(v) if isinstance(v, bytes) else v)
                                  for k, v in g.attrs.items()}
                out[f"{model}/{fold}"] = entry
    return out


# --------------------------------------------------------------------------- the report folder


def prepare_out(out: str | os.PathLike, need_bytes: int = 0) -> Path:
    """Create REPORT if needed and prove it writable (a probe file) with about
    ``need_bytes`` free, before any work; UserError otherwise."""
    out_dir = Path(out)
    if out_dir.exists() and not out_dir.is_dir():
        raise UserError(f"--out {out}: not a directory")
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=out_dir, prefix=".lenshpc-probe-")
        os.close(fd)
        os.unlink(probe)
        free = shutil.disk_usage(out_dir).free
    except OSError as exc:
        raise UserError(f"--out {out}: cannot write there: {exc.strerror or exc}") from None
    if free < need_bytes:
        raise UserError(f"--out {out}: {free / 1e6:.1f} MB free, the report needs about "
                        f"{need_bytes / 1e6:.0f} MB; free some space")
    return out_dir


def report_products(out_dir: Path) -> list[Path]:
    """Every product file in REPORT (not the lock, markers or temporary files), sorted."""
    return sorted(p for p in Path(out_dir).rglob("*") if p.is_file()
                  and not p.name.startswith(".") and not p.name.endswith(".done.json"))
