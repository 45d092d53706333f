"""The training input: checks of the dataset, fold items, target statistics, a rank's share
read into memory with few large HDF5 reads, per-epoch order and batches.

Everything here is numpy + h5py (no TensorFlow import) except :func:`tf_dataset`, so the
command can refuse bad input before TensorFlow and Horovod start. Kernels take ``rank``
and ``size`` as plain arguments.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np

from lenshpc.config import Config, UserError
from lenshpc.config.train import TARGETS
from lenshpc.parallel import split_evenly

INDEX = "dataset.h5"
#: Salt of the generator of the per-epoch order (keeps it apart from simulate's streams).
_ORDER_SALT = 0x7472_6169  # "trai"


def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


@dataclass(frozen=True)
class DatasetInfo:
    """What train needs to know about a complete dataset (read once, small arrays only).

    ``split`` (N,) int8: fold 0..K-1 or -1 (test); ``labels`` (N, 4) float32 in physical
    units (theta_E arcsec; q, e1, e2 dimensionless)."""

    path: Path
    image_shape: tuple[int, int]
    split: np.ndarray
    labels: np.ndarray
    checksum: str
    n_folds: int

    @property
    def n_items(self) -> int:
        return len(self.split)


def open_dataset(data_dir: str | Path, cfg: Config) -> DatasetInfo:
    """Check ``DATA/dataset.h5`` against the contract and the config; UserError on any problem."""
    import h5py
    root = Path(data_dir)
    if not root.is_dir():
        raise UserError(f"dataset directory not found: {root}")
    path = root / INDEX
    if not path.is_file():
        if (root / "shards").is_dir():
            raise UserError(f"dataset {root} is incomplete (no {INDEX} yet); finish it by running "
                            f"the same lenshpc simulate command again")
        raise UserError(f"no dataset in {root} ({INDEX} not found)")
    try:
        with h5py.File(path, "r") as f:
            for name in ("images", "labels", "split"):
                if name not in f:
                    raise UserError(f"dataset {path} has no '{name}' array; it was not written "
                                    f"by lenshpc simulate")
            images, labels = f["images"], f["labels"]
            if images.ndim != 3 or labels.ndim != 2 or labels.shape[0] != images.shape[0]:
                raise UserError(f"dataset {path}: 'images' {images.shape} and 'labels' "
                                f"{labels.shape} do not match (N,H,W) and (N,4)")
            names = tuple(_text(v) for v in labels.attrs.get("names", ()))
            if names != TARGETS:
                raise UserError(f"dataset {path}: labels are {', '.join(names) or 'unnamed'}; "
                                f"expected {', '.join(TARGETS)}")
            shape = tuple(int(s) for s in images.shape[1:])
            size = cfg.image.size
            if shape != (size, size):
                raise UserError(f"dataset {path} has images of {shape[0]}x{shape[1]} pixels but "
                                f"the config says image.size {size}")
            split = f["split"][...].astype(np.int8)
            if split.shape != (images.shape[0],):
                raise UserError(f"dataset {path}: 'split' has shape {split.shape}, expected "
                                f"({images.shape[0]},)")
            checksum = _text(f.attrs.get("checksum", ""))
            if not checksum:
                raise UserError(f"dataset {path} has no checksum attribute; it is incomplete")
            n_folds = int(f.attrs.get("n_folds", int(split.max()) + 1))
            missing = []
            if "shards" in f and "name" in f["shards"]:
                missing = [_text(n) for n in f["shards/name"][...]
                           if not (root / "shards" / _text(n)).is_file()]
            labels_all = labels[...].astype(np.float32)
    except OSError as exc:
        raise UserError(f"dataset {path} cannot be read: {exc}") from None
    if missing:
        raise UserError(f"dataset {root}: {len(missing)} shard file(s) are missing, "
                        f"e.g. shards/{missing[0]}")
    if n_folds != cfg.dataset.n_folds:
        raise UserError(f"dataset {path} has {n_folds} folds but the config says "
                        f"dataset.n_folds {cfg.dataset.n_folds}")
    if split.min(initial=0) < -1 or split.max(initial=0) >= n_folds:
        raise UserError(f"dataset {path}: 'split' holds values outside -1..{n_folds - 1}")
    return DatasetInfo(path, (shape[0], shape[1]), split, labels_all, checksum, n_folds)


# --------------------------------------------------------------------------- folds and targets


def fold_items(split: np.ndarray, fold: int) -> tuple[np.ndarray, np.ndarray]:
    """Sorted global indices of the fold's (training, validation) items.

    Validation is fold ``fold``; training is every other fold (test items, -1, never)."""
    train = np.flatnonzero((split >= 0) & (split != fold))
    val = np.flatnonzero(split == fold)
    return train, val


def target_stats(labels: np.ndarray, standardize: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Per-parameter (mean, std) of (n, 4) training targets, float64, physical units.

    A constant parameter gets std 1 (nothing to scale); ``standardize=False`` gives 0, 1."""
    if not standardize:
        return np.zeros(labels.shape[1]), np.ones(labels.shape[1])
    mean = labels.astype(np.float64).mean(axis=0)
    std = labels.astype(np.float64).std(axis=0)
    std[~(std > 0)] = 1.0
    return mean, std


def rank_share(items: np.ndarray, rank: int, size: int) -> np.ndarray:
    """The contiguous part of the sorted ``items`` that ``rank`` of ``size`` trains on."""
    r = split_evenly(len(items), rank, size)
    return items[r.start:r.stop]


def steps_per_epoch(n_items: int, batch_size: int, size: int) -> int:
    """Steps of one epoch, equal on every rank: the smallest share, last batch possibly short."""
    smallest = n_items // size
    return max(1, math.ceil(smallest / batch_size))


# --------------------------------------------------------------------------- reading


def read_items(path: Path, indices: np.ndarray, block_bytes: int = 256 << 20
               ) -> tuple[np.ndarray, np.ndarray]:
    """Images (n, H, W, 1) float32 and labels (n, 4) float32 of the sorted global ``indices``.

    Reads contiguous slabs of at most ``block_bytes`` from the first to the last wanted item
    of each slab and keeps the wanted rows: a few large reads instead of one per item."""
    import h5py
    indices = np.asarray(indices, dtype=np.int64)
    with h5py.File(path, "r") as f:
        dset = f["images"]
        height, width = dset.shape[1:]
        images = np.empty((len(indices), height, width, 1), dtype=np.float32)
        labels = f["labels"][...][indices].astype(np.float32)
        per_block = max(1, block_bytes // (height * width * 4))
        pos = 0
        while pos < len(indices):
            lo = int(indices[pos])
            end = int(np.searchsorted(indices, lo + per_block, side="left"))
            hi = int(indices[end - 1]) + 1
            slab = dset[lo:hi]
            images[pos:end, :, :, 0] = slab[indices[pos:end] - lo]
            pos = end
    return images, labels


# --------------------------------------------------------------------------- order and batches


def epoch_order(seed: int, fold: int, epoch: int, n_items: int, items: np.ndarray) -> np.ndarray:
    """Positions into ``items`` (global indices) in the order of epoch ``epoch`` (0-based).

    Each item's sort key depends only on (seed, fold, epoch, global index), never on the
    rank, so the order is the same however the items are shared among ranks. It is the same
    for every dropout model of a fold: the models then differ only in their dropout."""
    keys = np.random.default_rng([seed, _ORDER_SALT, fold, epoch]).random(n_items)
    return np.argsort(keys[items], kind="stable")


class TrainBatches:
    """This rank's training batches, epoch after epoch, from ``first_epoch`` on (endless).

    Every epoch has ``steps`` batches, the same on every rank; the items beyond the smallest
    share (at most one per rank) are left out of that epoch, different ones each epoch."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, items: np.ndarray, *,
                 n_use: int, batch_size: int, seed: int, fold: int, n_items: int,
                 first_epoch: int = 0) -> None:
        self.images, self.labels, self.items = images, labels, items
        self.n_use, self.batch_size = n_use, batch_size
        self.seed, self.fold, self.n_items = seed, fold, n_items
        self.first_epoch = first_epoch

    @property
    def steps(self) -> int:
        return max(1, math.ceil(self.n_use / self.batch_size))

    def epoch(self, epoch: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        order = epoch_order(self.seed, self.fold, epoch, self.n_items, self.items)[:self.n_use]
        for start in range(0, self.n_use, self.batch_size):
            take = np.sort(order[start:start + self.batch_size])
            yield self.images[take], self.labels[take]

    def __call__(self) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        epoch = self.first_epoch
        while True:
            yield from self.epoch(epoch)
            epoch += 1


class EvalBatches:
    """This rank's validation items in file order, batched (one pass per call)."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, batch_size: int) -> None:
        self.images, self.labels, self.batch_size = images, labels, batch_size

    def __call__(self) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        for start in range(0, len(self.images), self.batch_size):
            yield self.images[start:start + self.batch_size], self.labels[start:start + self.batch_size]


def tf_dataset(batches, image_shape: tuple[int, int], prefetch: int):
    """A ``tf.data.Dataset`` over a batch generator: arrays are handed over per batch
    (no graph constants), prepared ``prefetch`` batches ahead of the step."""
    import tensorflow as tf
    h, w = image_shape
    spec = (tf.TensorSpec((None, h, w, 1), tf.float32), tf.TensorSpec((None, len(TARGETS)), tf.float32))
    ds = tf.data.Dataset.from_generator(batches, output_signature=spec)
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.OFF
    return ds.with_options(options).prefetch(prefetch)
