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

import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from lenshpc.config import Config, UserError
from lenshpc.config.train import parse_job_key
from lenshpc.dataset import INDEX, SHARDS
from lenshpc.dataset.folder import open_dataset
from lenshpc.dataset.index import DatasetIndex, check_shard, read_items
from lenshpc.evaluate.scoring import first_nonfinite, true_parameters
from lenshpc.io import atomic_path
from lenshpc.runs import MODEL_FILE, TRAIN_PRODUCT, JobRun, find_jobs  # noqa: F401 (the job folder's owner)

PREDICTIONS = "predictions.h5"
#: Datasets of a job group in predictions.h5.
ARRAYS = ("index", "true", "pred", "psnr", "mse", "psnr_study", "ssim", "ssim_ring", "clamped",
          "pred_std")
#: The report folder's completion marker.
REPORT_PRODUCT = "report"


def _text(v: Any) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


# --------------------------------------------------------------------------- the dataset


@dataclass(frozen=True)
class HeldOutSet:
    """The test set of a dataset, as evaluate needs it (read on rank 0, broadcast), over
    the dataset's one handle (:func:`lenshpc.dataset.folder.open_dataset`, kept as
    ``index``; its ``config`` is the dataset's own).

    ``test_index``: sorted item numbers of the test set (split == -1); ``truth_test`` and
    ``true_test`` their truth rows and true (theta_E, q, e1, e2), row-aligned."""

    test_index: np.ndarray
    truth_test: np.ndarray
    true_test: np.ndarray
    index: DatasetIndex = field(repr=False)

    @property
    def path(self) -> Path:
        return self.index.path

    @property
    def checksum(self) -> str:
        return self.index.checksum

    @property
    def n_items(self) -> int:
        return self.index.n_items

    @property
    def truth_names(self) -> tuple[str, ...]:
        return self.index.truth_names

    @property
    def config(self) -> Config:
        """The config the dataset was made from: its image and population settings."""
        return self.index.config

    @property
    def config_text(self) -> str:
        return self.index.config_text

    @property
    def attrs(self) -> dict[str, Any]:
        """The index's root attributes (versions, seed, ...)."""
        return self.index.attrs

    def test_shards(self) -> list[int]:
        """Numbers of the shards holding at least one test item, in order."""
        return sorted({int(k) for k in self.index.shards.of(self.test_index)})

    def read_images(self, items: np.ndarray) -> np.ndarray:
        """(n, H, W) float32 images of the items, read shard by shard; UserError naming the
        shard if one is missing, damaged or holds non-finite pixels."""
        return read_items(self.index, items)


def read_held_out(data_dir: str | os.PathLike, cfg: Config | None = None) -> HeldOutSet:
    """Open the dataset (:func:`lenshpc.dataset.folder.open_dataset`: finished, every shard
    present, the checksum, finite labels and, given ``cfg``, made from its dataset-defining
    sections) and read its test items' truth, which must be finite.

    Raises UserError naming the first problem."""
    index = open_dataset(data_dir, cfg, truth=True)
    test_index = np.flatnonzero(index.split == -1).astype(np.int64)
    if test_index.size == 0:
        raise UserError(f"dataset {index.root}: it has no test items (split == -1)")
    for col in ("lens_mass.theta_E", "lens_mass.e1", "lens_mass.e2"):
        if col not in index.truth_names:
            raise UserError(f"dataset {index.root}: truth has no column {col}")
    assert index.truth is not None
    truth_test = index.truth[test_index]
    row = first_nonfinite(truth_test)
    if row is not None:
        raise UserError(f"dataset {index.root}: {index.path} holds non-finite truth for item "
                        f"{test_index[row]}; the index is damaged (lenshpc dataset verify)")
    return HeldOutSet(test_index=test_index, truth_test=truth_test, index=index,
                   true_test=true_parameters(index.labels[test_index], truth_test,
                                             index.truth_names))


def shard_data_problem(ds: HeldOutSet, k: int) -> str | None:
    """One line if shard ``k`` is not what the index records (read and hashed in full:
    :func:`lenshpc.dataset.index.check_shard`), or None."""
    problem = check_shard(ds.index, k)
    if problem is None:
        return None
    what = problem if problem.startswith(INDEX) else f"shard {SHARDS}/{problem}"
    return (f"--data {ds.index.root}: {what}; restore it from a good copy (lenshpc dataset "
            f"verify {ds.index.root})")


# --------------------------------------------------------------------------- the runs
# (found and checked by lenshpc.runs.find_jobs, re-exported here)


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
