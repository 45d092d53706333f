"""Streaming input (``train.input: stream``): a rank reads its shards during training.

Memory holds a shuffle buffer and a few blocks being read, not the rank's share, so a
share larger than the node's memory can be trained on. One epoch of a rank, item by item:

1. **Shard order.** The dataset's shards are permuted by a generator seeded from
   (seed, fold, epoch), never from the rank; the rank visits the shards that hold its
   items in that order.
2. **Interleave.** ``shards_at_once`` shards are read at a time, one block of
   ``block_items`` items from each in turn (each block one contiguous read of one shard,
   open-read-close); a finished shard's slot goes to the next shard in the order (the
   rule of ``tf.data.Dataset.interleave``).
3. **Shuffle buffer.** Items enter a buffer of ``buffer`` items; once it is full, each new
   item takes the place of one drawn at random, which leaves (the rule of
   ``tf.data.Dataset.shuffle``); at the end the rest leave in a random order. The draws
   come from a generator seeded from (seed, fold, epoch).
4. The first ``n_use`` items to leave form the epoch's batches (``n_use``: the smallest
   rank's share, so every rank takes the same number of steps).

The order is a pure function of (seed, fold, epoch, the rank's items, the shard table and
the three sizes): :func:`epoch_stream` gives it without reading an image. A job resumed
after a whole epoch on the same number of ranks therefore sees exactly the batches an
uninterrupted one would. On another number of ranks the shares and so the batches differ
(each rank's stream is its own), as they do in memory mode.

Numpy and h5py only (through :func:`lenshpc.dataset.index.read_items`); the generators are
handed to ``tf.data`` by :func:`lenshpc.train.data.tf_dataset`, which prefetches their
batches.
"""

from __future__ import annotations

import math
from typing import Callable, Iterator

import numpy as np

from lenshpc.dataset.index import DatasetIndex, read_items
from lenshpc.train import preprocess

#: Salts of the stream's generators (apart from the memory mode's order and simulate's).
_SHARD_SALT, _BUFFER_SALT = 0x7374_7273, 0x7374_6266  # "strs", "stbf"
#: Items per read of one shard: one contiguous slab, small enough to keep memory flat.
BLOCK_ITEMS = 64


def shard_order(seed: int, fold: int, epoch: int, n_shards: int) -> np.ndarray:
    """All the dataset's shard numbers in the order of epoch ``epoch`` (rank-free)."""
    return np.random.default_rng([seed, _SHARD_SALT, fold, epoch]).permutation(n_shards)


def interleaved_blocks(items: np.ndarray, shard_of_item: np.ndarray, order: np.ndarray,
                       shards_at_once: int, block_items: int) -> Iterator[np.ndarray]:
    """Blocks of global item indices (each from one shard, in file order) as the
    interleave reads them: shards taken in ``order``, ``shards_at_once`` at a time, one
    block from each in turn. ``items`` are this rank's items (sorted), ``shard_of_item``
    the shard of each."""
    present = set(np.unique(shard_of_item).tolist())
    queue = [int(k) for k in order if int(k) in present]
    by_shard = {k: items[shard_of_item == k] for k in queue}
    slots: list[list[np.ndarray]] = []
    pending = iter(queue)

    def blocks_of(k: int) -> list[np.ndarray]:
        own = by_shard[k]
        return [own[i:i + block_items] for i in range(0, len(own), block_items)]

    for _ in range(shards_at_once):
        k = next(pending, None)
        if k is None:
            break
        slots.append(blocks_of(k))
    while any(s for s in slots):
        for i, blocks in enumerate(slots):
            if not blocks:
                continue
            yield blocks.pop(0)
            if not blocks:
                k = next(pending, None)
                slots[i] = blocks_of(k) if k is not None else []


def shuffled(blocks: Iterator[tuple[np.ndarray, np.ndarray | None]], buffer: int,
             rng: np.random.Generator) -> Iterator[tuple[int, np.ndarray | None]]:
    """(item, image) pairs leaving a shuffle buffer of ``buffer`` items fed block by block
    with (items, images or None). One draw per arriving item, whether used or not, so the
    order never depends on whether images are carried."""
    ids: list[int] = []
    imgs: list[np.ndarray | None] = []
    for block_ids, block_imgs in blocks:
        draws = rng.integers(0, buffer, size=len(block_ids))
        for j, item in enumerate(block_ids):
            image = None if block_imgs is None else block_imgs[j]
            if len(ids) < buffer:
                ids.append(int(item))
                imgs.append(image)
                continue
            d = int(draws[j])
            yield ids[d], imgs[d]
            ids[d], imgs[d] = int(item), image
    for d in rng.permutation(len(ids)):
        yield ids[d], imgs[d]


class StreamBatches:
    """This rank's training batches, read from its shards during training, epoch after
    epoch from ``first_epoch`` on (endless). ``index`` is the dataset's index, ``items``
    the rank's training items (sorted global indices); ``labels`` come from the index."""

    def __init__(self, index: DatasetIndex, items: np.ndarray, *, n_use: int,
                 batch_size: int, seed: int, fold: int, buffer: int, shards_at_once: int,
                 block_items: int = BLOCK_ITEMS, first_epoch: int = 0,
                 read: Callable[[np.ndarray], np.ndarray] | None = None,
                 normalize: str = "max") -> None:
        self.index, self.items = index, np.asarray(items, dtype=np.int64)
        self.n_use, self.batch_size = n_use, batch_size
        self.seed, self.fold = seed, fold
        self.buffer, self.shards_at_once, self.block_items = buffer, shards_at_once, block_items
        self.first_epoch = first_epoch
        self.shard_of_item = index.shards.of(self.items)
        self.read = read or (lambda ids: preprocess.normalize(read_items(index, ids)[..., None],
                                                              normalize))
        self.labels = index.labels

    @property
    def steps(self) -> int:
        return max(1, math.ceil(self.n_use / self.batch_size))

    def _blocks(self, epoch: int, with_images: bool):
        order = shard_order(self.seed, self.fold, epoch, len(self.index.shards.name))
        for ids in interleaved_blocks(self.items, self.shard_of_item, order,
                                      self.shards_at_once, self.block_items):
            yield ids, (self.read(ids) if with_images else None)

    def _stream(self, epoch: int, with_images: bool):
        rng = np.random.default_rng([self.seed, _BUFFER_SALT, self.fold, epoch])
        stream = shuffled(self._blocks(epoch, with_images), self.buffer, rng)
        for _, pair in zip(range(self.n_use), stream, strict=False):
            yield pair

    def epoch_items(self, epoch: int) -> np.ndarray:
        """The global items of epoch ``epoch`` in the order trained (no image is read)."""
        return np.fromiter((i for i, _ in self._stream(epoch, False)), dtype=np.int64)

    def epoch(self, epoch: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        ids: list[int] = []
        imgs: list[np.ndarray] = []
        for item, image in self._stream(epoch, True):
            ids.append(item)
            imgs.append(image)
            if len(ids) == self.batch_size:
                yield np.stack(imgs), self.labels[ids].astype(np.float32)
                ids, imgs = [], []
        if ids:
            yield np.stack(imgs), self.labels[ids].astype(np.float32)

    def __call__(self) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        epoch = self.first_epoch
        while True:
            yield from self.epoch(epoch)
            epoch += 1


class StreamEval:
    """This rank's validation items in file order, read block by block (one pass per call)."""

    def __init__(self, index: DatasetIndex, items: np.ndarray, batch_size: int,
                 block_bytes: int = 64 << 20, normalize: str = "max") -> None:
        self.index, self.items, self.batch_size = index, np.asarray(items, np.int64), batch_size
        self.normalize = normalize
        h, w = index.image_shape
        per_read = max(1, block_bytes // (h * w * 4))
        self.per_read = max(batch_size, per_read - per_read % batch_size)

    def __call__(self) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        for lo in range(0, len(self.items), self.per_read):
            ids = self.items[lo:lo + self.per_read]
            images = preprocess.normalize(read_items(self.index, ids)[..., None], self.normalize)
            labels = self.index.labels[ids].astype(np.float32)
            for b in range(0, len(ids), self.batch_size):
                yield images[b:b + self.batch_size], labels[b:b + self.batch_size]
