"""The training input: checks of the dataset, fold items, target statistics, a rank's share
read into memory shard by shard, per-epoch order and batches.

Everything here is numpy + h5py (no TensorFlow import) except :func:`tf_dataset`, so the
command can refuse bad input before TensorFlow and Horovod start. Kernels take ``rank``
and ``size`` as plain arguments. The dataset's files are read through
:mod:`lenshpc.dataset` only: labels and split from the index, images from the shards that
hold the rank's items, one shard open at a time (never through the virtual dataset).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Iterator

import numpy as np

from lenshpc.config import Config
from lenshpc.dataset import folder as dataset_folder, index as dataset_index
from lenshpc.dataset.columns import TARGETS
from lenshpc.dataset.index import DatasetIndex, read_index
from lenshpc.parallel import split_evenly

#: Salt of the generator of the per-epoch order (keeps it apart from simulate's streams).
_ORDER_SALT = 0x7472_6169  # "trai"

#: What train knows about a complete dataset: the dataset's one handle (small arrays
#: only, no truth), opened and checked by :func:`lenshpc.dataset.folder.open_dataset`.
#: ``path`` (dataset.h5), ``checksum``, ``n_items``, ``image_shape``, ``n_folds``,
#: ``split`` (N,) int8 (fold 0..K-1 or -1, test), ``labels`` (N, 4) float32 in physical
#: units (theta_E arcsec; q, e1, e2 dimensionless), all finite; ``config`` the dataset's own.


def open_dataset(data_dir: str | Path, cfg: Config) -> DatasetIndex:
    """The finished dataset in ``data_dir``, made from ``cfg``'s dataset-defining sections
    (seed, image, dataset, population: compared as simulate compares them); UserError
    naming the first problem (:func:`lenshpc.dataset.folder.open_dataset`)."""
    return dataset_folder.open_dataset(data_dir, cfg)


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


def read_items(path: str | Path | DatasetIndex, indices: np.ndarray, block_bytes: int = 256 << 20
               ) -> tuple[np.ndarray, np.ndarray]:
    """Images (n, H, W, 1) float32 and labels (n, 4) float32 of the global ``indices``.

    ``path`` is the dataset's ``dataset.h5`` (or directory, or its :class:`DatasetIndex`).
    Images come from the shards that hold the items, opened one at a time, in contiguous
    slabs of at most ``block_bytes``; labels from the index. UserError naming the shard if
    one is missing, truncated or damaged."""
    index = path if isinstance(path, DatasetIndex) else read_index(path, truth=False)
    indices = np.asarray(indices, dtype=np.int64)
    h, w = index.image_shape
    images = np.empty((len(indices), h, w, 1), dtype=np.float32)
    dataset_index.read_items(index, indices, block_bytes=block_bytes, out=images[..., 0])
    return images, index.labels[indices].astype(np.float32)


# --------------------------------------------------------------------------- order and batches


def file_order(split: np.ndarray, fold: int) -> np.ndarray:
    """The training items of ``fold`` as the authors' tf.data pipeline reads them: every
    other fold in turn (0, 1, ... without ``fold``), each in file order."""
    return np.concatenate([np.flatnonzero(split == k) for k in range(int(split.max()) + 1)
                           if k != fold]).astype(np.int64)


def buffer_shuffle(sequence: np.ndarray, buffer: int, rng: np.random.Generator) -> np.ndarray:
    """``sequence`` through a shuffle buffer of ``buffer`` items, as ``tf.data``'s
    ``shuffle`` does: the buffer is filled from the front; each output is a uniformly
    chosen buffer item, whose place the next input item takes; at the end the buffer is
    emptied in random order. An item moves forward by at most ``buffer - 1`` places."""
    n = len(sequence)
    out = np.empty(n, dtype=sequence.dtype)
    buf = sequence[:buffer].tolist()
    nxt = len(buf)
    u = rng.random(n)
    for i in range(n):
        j = int(u[i] * len(buf))
        out[i] = buf[j]
        if nxt < n:
            buf[j] = sequence[nxt]
            nxt += 1
        else:
            buf[j] = buf[-1]
            buf.pop()
    return out


def buffer_epoch_order(seed: int, fold: int, epoch: int, sequence: np.ndarray, buffer: int,
                       items: np.ndarray) -> np.ndarray:
    """Positions into the sorted ``items`` (this rank's share) in the order in which epoch
    ``epoch`` (0-based) of ``train.shuffle: buffer`` visits them: the training items in
    file order (:func:`file_order`) through a shuffle buffer drawn from (seed, fold,
    epoch), never from the rank. With one rank this is the authors' order."""
    rng = np.random.default_rng([seed, _ORDER_SALT, fold, epoch, 1])
    visited = buffer_shuffle(sequence, buffer, rng)
    mine = visited[np.isin(visited, items, assume_unique=True)]
    return np.searchsorted(items, mine)


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
                 first_epoch: int = 0, buffer: tuple[np.ndarray, int] | None = None) -> None:
        self.images, self.labels, self.items = images, labels, items
        self.n_use, self.batch_size = n_use, batch_size
        self.seed, self.fold, self.n_items = seed, fold, n_items
        self.first_epoch = first_epoch
        #: ``(training items in file order, buffer size)`` for train.shuffle: buffer.
        self.buffer = buffer

    def order(self, epoch: int) -> np.ndarray:
        """Positions into this rank's arrays in the order of epoch ``epoch``."""
        if self.buffer is None:
            return epoch_order(self.seed, self.fold, epoch, self.n_items, self.items)
        sequence, size = self.buffer
        return buffer_epoch_order(self.seed, self.fold, epoch, sequence, size, self.items)

    @property
    def steps(self) -> int:
        return max(1, math.ceil(self.n_use / self.batch_size))

    def epoch_positions(self, epoch: int) -> Iterator[np.ndarray]:
        """Positions into this rank's arrays of each batch of epoch ``epoch``."""
        order = self.order(epoch)[:self.n_use]
        for start in range(0, self.n_use, self.batch_size):
            yield np.sort(order[start:start + self.batch_size])

    def epoch(self, epoch: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        for take in self.epoch_positions(epoch):
            yield self.images[take], self.labels[take]

    def __call__(self) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        epoch = self.first_epoch
        while True:
            yield from self.epoch(epoch)
            epoch += 1

    def epoch_sequence(self, epoch: int) -> np.ndarray:
        """The positions of epoch ``epoch``, batch after batch, as one int64 array of
        ``n_use`` (consecutive slices of ``batch_size`` are the batches)."""
        return np.concatenate(list(self.epoch_positions(epoch))).astype(np.int64)


class EvalBatches:
    """This rank's validation items in file order, batched (one pass per call)."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, batch_size: int) -> None:
        self.images, self.labels, self.batch_size = images, labels, batch_size

    def __call__(self) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        for start in range(0, len(self.images), self.batch_size):
            yield self.images[start:start + self.batch_size], self.labels[start:start + self.batch_size]


def tf_dataset(batches, image_shape: tuple[int, int], prefetch: int, device: str | None = None,
               n_batches: int | None = None):
    """A ``tf.data.Dataset`` over a batch generator: arrays are handed over per batch
    (no graph constants), prepared ``prefetch`` batches ahead of the step; with
    ``device`` (e.g. ``/gpu:0``) the batches are also copied there ahead of the step.
    ``n_batches``: the length of one pass of a finite generator (validation), so Keras
    starts a new pass for every evaluation whatever ``steps_per_execution``."""
    import tensorflow as tf
    h, w = image_shape
    spec = (tf.TensorSpec((None, h, w, 1), tf.float32), tf.TensorSpec((None, len(TARGETS)), tf.float32))
    ds = tf.data.Dataset.from_generator(batches, output_signature=spec)
    if n_batches is not None:
        ds = ds.apply(tf.data.experimental.assert_cardinality(n_batches))
    ds = ds.with_options(_options())
    if device is None:
        return ds.prefetch(prefetch)
    return ds.apply(tf.data.experimental.prefetch_to_device(device, buffer_size=prefetch))


def tf_resident_dataset(batches: TrainBatches, prefetch: int, hold: str = "/cpu:0",
                        to: str | None = None):
    """The training batches of an in-memory share, gathered inside TensorFlow: the share
    is a tensor on device ``hold`` (the host, or ``/gpu:0`` when it fits there); the
    epoch's positions come from one Python call per epoch (:meth:`TrainBatches.
    epoch_sequence`), and each batch is one gather on ``hold``, with no Python per step.
    ``to`` (``/gpu:0``) copies host-held batches to the device ahead of the step. The
    same batches, bit for bit, as :func:`tf_dataset` over ``batches``."""
    import tensorflow as tf
    with tf.device(hold):
        # On the host this holds numpy's buffer, not a copy of it.
        images = tf.convert_to_tensor(batches.images)
        labels = tf.convert_to_tensor(batches.labels)

    def one_epoch(epoch):
        positions = tf.numpy_function(lambda e: batches.epoch_sequence(int(e)), [epoch],
                                      tf.int64, stateful=False)
        positions.set_shape([batches.n_use])
        return tf.data.Dataset.from_tensor_slices(positions).batch(batches.batch_size)

    ds = tf.data.Dataset.range(batches.first_epoch, 2**62).flat_map(one_epoch)
    ds = ds.with_options(_options())
    if hold != "/cpu:0":
        ds = ds.apply(tf.data.experimental.copy_to_device(hold))
    with tf.device(hold):
        ds = ds.map(lambda take: (tf.gather(images, take), tf.gather(labels, take)))
        if to is not None and hold == "/cpu:0":
            return ds.apply(tf.data.experimental.prefetch_to_device(to, buffer_size=prefetch))
        return ds.prefetch(prefetch)


def _options():
    import tensorflow as tf
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.OFF
    return options
