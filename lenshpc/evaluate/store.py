"""Files of the evaluate stage: reading the dataset and runs, writing predictions.h5.

Every output is written to a temporary name beside its final path and renamed when
whole, so a file with the final name is always complete and an interrupted run loses
nothing already written.

``predictions.h5`` holds one group per job, ``<model>/fold-<k>``, with the datasets
``index`` (dataset item numbers), ``true`` and ``pred`` (N, 4: theta_E in arcsec, q,
e1, e2), ``psnr`` (dB) and ``mse`` (N,) of the re-render, ``clamped`` (N,: prediction
moved into the renderable domain before re-rendering) and, with MC dropout,
``pred_std`` (N, 4). Group attributes identify what was evaluated (``model_checksum``:
sha256 of model.keras, ``dataset_checksum``, ``settings``), so a later run reuses
groups whose model file, dataset and settings are unchanged.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from lenshpc.config import UserError
from lenshpc.config.train import TARGETS
from lenshpc.io import atomic_path, atomic_write_text

PREDICTIONS = "predictions.h5"
#: Datasets of a job group in predictions.h5.
ARRAYS = ("index", "true", "pred", "psnr", "mse", "clamped", "pred_std")


# --------------------------------------------------------------------------- atomic writes


def write_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` atomically."""
    atomic_write_text(path, text)


def _text(v: Any) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


# --------------------------------------------------------------------------- the dataset


@dataclass(frozen=True)
class DatasetInfo:
    """What evaluate needs to know about a dataset directory (read on every rank).

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


def true_parameters(labels: np.ndarray, truth: np.ndarray, truth_names) -> np.ndarray:
    """(N, 4) float64 true theta_E, q, e1, e2: theta_E, e1, e2 from the float64 truth
    table (exactly what was rendered), q from the labels (it is not a render input)."""
    names = list(truth_names)
    out = np.asarray(labels, dtype=np.float64).copy()
    for j, target in enumerate(TARGETS):
        col = f"lens_mass.{target}"
        if col in names:
            out[:, j] = truth[:, names.index(col)]
    return out


def read_dataset(data_dir: str | os.PathLike) -> DatasetInfo:
    """Read DIR/dataset.h5's attributes, split, labels and truth of the test set.

    Raises UserError when the directory holds no complete dataset or no test items."""
    import h5py
    path = Path(data_dir) / "dataset.h5"
    if not Path(data_dir).is_dir():
        raise UserError(f"--data {data_dir}: no such directory")
    if not path.is_file():
        raise UserError(f"--data {data_dir}: no dataset.h5 (the dataset is missing or "
                        f"incomplete; run lenshpc simulate to finish it)")
    try:
        with h5py.File(path, "r") as f:
            attrs = {k: (_text(v) if isinstance(v, bytes) else v) for k, v in f.attrs.items()}
            split = f["split"][...]
            test_index = np.flatnonzero(split == -1).astype(np.int64)
            truth_names = tuple(_text(n) for n in f["truth"].attrs["names"])
            truth = f["truth"][...]
            labels = f["labels"][...]
            n_items = int(f["images"].shape[0])
    except (OSError, KeyError, ValueError) as exc:
        raise UserError(f"--data {data_dir}: cannot read {path}: {exc}") from None
    if "checksum" not in attrs:
        raise UserError(f"--data {data_dir}: {path} has no checksum attribute")
    if test_index.size == 0:
        raise UserError(f"--data {data_dir}: the dataset has no test items (split == -1)")
    for col in ("lens_mass.theta_E", "lens_mass.e1", "lens_mass.e2"):
        if col not in truth_names:
            raise UserError(f"--data {data_dir}: truth has no column {col}")
    truth_test = truth[test_index]
    return DatasetInfo(path=path, checksum=_text(attrs["checksum"]), n_items=n_items,
                       test_index=test_index, truth_names=truth_names, truth_test=truth_test,
                       true_test=true_parameters(labels[test_index], truth_test, truth_names),
                       config_text=_text(attrs.get("config", "")), attrs=attrs)


def read_images(path: Path, index: np.ndarray) -> np.ndarray:
    """(n, H, W) float32 images of the sorted item numbers ``index``."""
    import h5py
    with h5py.File(path, "r") as f:
        return f["images"][np.asarray(index)]


# --------------------------------------------------------------------------- the runs


@dataclass(frozen=True)
class JobRun:
    """One finished training job under RUNS."""

    model: str
    fold: int
    job: int
    directory: Path
    run: dict = field(repr=False)

    @property
    def key(self) -> str:
        """Its group in predictions.h5 and its path under RUNS: ``<model>/fold-<k>``."""
        return f"{self.model}/fold-{self.fold}"

    @property
    def model_file(self) -> Path:
        return self.directory / "model.keras"


def find_jobs(runs_dir: str | os.PathLike, model_names, n_folds: int,
              dataset_checksum: str) -> tuple[list[JobRun], list[tuple[str, str]]]:
    """Finished jobs under RUNS, and the skipped ones as (``<model>/fold-<k>``, reason).

    Expected jobs are the config's grid (``model_names`` x ``n_folds``); other
    ``<model>/fold-<k>/run.json`` found under RUNS are evaluated too. Finished jobs come
    in grid order (config models first, then others by name), fold by fold. Raises
    UserError if RUNS is missing or any run was trained on another dataset."""
    runs = Path(runs_dir)
    if not runs.is_dir():
        raise UserError(f"--runs {runs_dir}: no such directory")
    order = {name: i for i, name in enumerate(model_names)}
    keys = {(m, k) for m in model_names for k in range(n_folds)}
    for p in runs.glob("*/fold-*/run.json"):
        fold = p.parent.name.removeprefix("fold-")
        if fold.isdigit():
            keys.add((p.parent.parent.name, int(fold)))
    finished, skipped = [], []
    for model, fold in sorted(keys, key=lambda mk: (order.get(mk[0], len(order)), mk[0], mk[1])):
        directory = runs / model / f"fold-{fold}"
        key = f"{model}/fold-{fold}"
        run_json = directory / "run.json"
        if not run_json.is_file():
            skipped.append((key, "missing (no run.json)"))
            continue
        try:
            run = json.loads(run_json.read_text())
            if not isinstance(run, dict):
                raise ValueError("not a JSON object")
        except (OSError, ValueError) as exc:
            skipped.append((key, f"unreadable run.json ({exc})"))
            continue
        theirs = run.get("dataset_checksum")
        if theirs is not None and str(theirs) != dataset_checksum:
            raise UserError(f"--runs {runs_dir}: {key} was trained on another dataset "
                            f"(run.json dataset_checksum {str(theirs)[:12]}..., dataset.h5 has "
                            f"{dataset_checksum[:12]}...)")
        if run.get("finished") is not True:
            done = run.get("epochs_done")
            done_text = f" ({done} epochs done)" if done is not None else ""
            skipped.append((key, "unfinished" + done_text))
            continue
        if not (directory / "model.keras").is_file():
            skipped.append((key, "finished but model.keras is missing"))
            continue
        finished.append(JobRun(model=model, fold=fold, job=int(run.get("job", -1)),
                               directory=directory, run=run))
    return finished, skipped


# --------------------------------------------------------------------------- predictions.h5


def up_to_date_groups(path: Path, wanted: dict[str, dict[str, str]]) -> set[str]:
    """Keys of ``wanted`` (key -> identifying attrs) whose group in ``path`` carries exactly
    those attrs and all its arrays; an unreadable file reuses nothing."""
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
                        all(a in g for a in ARRAYS if a != "pred_std"):
                    good.add(key)
    except (OSError, KeyError, ValueError):
        return set()
    return good


def write_predictions(path: Path, results: dict[str, dict[str, Any]], *, reuse: set[str],
                      root_attrs: dict[str, Any]) -> None:
    """Write predictions.h5 atomically: new ``results`` (key -> {arrays..., attrs: {...}})
    and the groups ``reuse`` copied from the existing file, in the order of ``results``
    keys (reused groups are given as ``results[key] = None``)."""
    import h5py
    path = Path(path)
    with atomic_path(path) as tmp:
        old = h5py.File(path, "r") if reuse else None
        try:
            with h5py.File(tmp, "w", track_order=True) as f:
                for key, value in root_attrs.items():
                    f.attrs[key] = value
                for key, res in results.items():
                    model = key.split("/")[0]
                    parent = f[model] if model in f else f.create_group(model, track_order=True)
                    if res is None:
                        old.copy(old[key], parent, name=key.split("/")[1])
                        continue
                    g = parent.create_group(key.split("/")[1])
                    for name in ARRAYS:
                        if res.get(name) is not None:
                            g.create_dataset(name, data=res[name])
                    for k, v in res["attrs"].items():
                        g.attrs[k] = v
        finally:
            if old is not None:
                old.close()


def read_predictions(path: Path) -> dict[str, dict[str, Any]]:
    """All job groups of predictions.h5: key -> {arrays..., 'attrs': {...}}, in file order."""
    import h5py
    out: dict[str, dict[str, Any]] = {}
    with h5py.File(path, "r") as f:
        for model in f:
            for fold in sorted(f[model], key=lambda name: int(name.removeprefix("fold-"))):
                g = f[model][fold]
                entry = {name: g[name][...] for name in ARRAYS if name in g}
                entry["attrs"] = {k: (_text(v) if isinstance(v, bytes) else v)
                                  for k, v in g.attrs.items()}
                out[f"{model}/{fold}"] = entry
    return out
