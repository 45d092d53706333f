"""A dataset folder as a whole: its layout by config, "done", and the one open-and-validate.

:func:`dataset_done` is the one answer to "is this dataset finished?" for simulate
itself, train, evaluate, ``lenshpc run`` and ``slurm submit``. :func:`open_dataset` is
the one way a stage opens a dataset it reads: every check, with one set of messages, and
(given the stage's config) the refusal of a config that would describe another dataset.
"""

from __future__ import annotations

import os
from pathlib import Path

from lenshpc import io, lock
from lenshpc.config import Config, UserError
from lenshpc.dataset import INDEX, SHARDS, shards as dataset_shards
from lenshpc.dataset.columns import LABEL_NAMES, TRUTH_NAMES
from lenshpc.dataset.identity import config_difference
from lenshpc.dataset.index import DatasetIndex, dataset_checksum, missing_shards, read_index

#: Name of the dataset's completion marker (``DIR/dataset.done.json``).
PRODUCT = "dataset"


def item_bytes(cfg: Config) -> int:
    """Bytes of one item of ``cfg``'s dataset, uncompressed (image, labels, truth)."""
    return dataset_shards.item_bytes((cfg.image.size, cfg.image.size), len(LABEL_NAMES),
                                     len(TRUTH_NAMES))


def shard_ranges(cfg: Config) -> list[range]:
    """Item ranges of the shards of ``cfg``'s dataset (dataset.shard_mb and min_shards, or
    the older shard_size): a function of the config alone, never of the number of ranks."""
    return dataset_shards.shard_ranges(cfg.dataset.n_images,
                                       cfg.dataset.items_per_shard(item_bytes(cfg)))


def dataset_done(root: str | Path, *, hashed: bool = True) -> lock.Done:
    """Whether the dataset in ``root`` is finished and intact, cheaply.

    The marker exists and ``dataset.h5``, ``config.yaml`` and ``simulate.json`` still have
    their size and (with ``hashed``) sha256, and every shard the marker lists exists with
    its size. Shards are not hashed (too slow at 10^6 images): ``lenshpc dataset verify``
    checks their data."""
    root = Path(root)
    done = lock.check_done(root, PRODUCT, hashed=hashed)
    if not done:
        return done
    shards = (done.info or {}).get("shards")
    if not isinstance(shards, dict) or not shards:
        return lock.Done(False, f"{lock.marker_path(root, PRODUCT)} lists no shards")
    for name, size in shards.items():
        path = root / SHARDS / name
        try:
            actual = path.stat().st_size
        except OSError:
            return lock.Done(False, f"{path} is missing")
        if actual != size:
            return lock.Done(False, f"{path} changed size since it was finished")
    return done


def open_dataset(data_dir: str | os.PathLike, cfg: Config | None = None, *,
                 truth: bool = False) -> DatasetIndex:
    """Open the finished dataset in ``data_dir`` for reading; UserError (one line) on any
    problem. Every stage that reads a dataset opens it here.

    Reads the index only (labels, split, shard table, attributes; the truth table with
    ``truth``): the label columns are lenshpc's, every shard file exists with the size the
    index records, the dataset checksum matches the shard table and split, and the dataset
    is finished (its marker, :func:`dataset_done`). With ``cfg``, the config's
    dataset-defining sections (seed, image, dataset, population) must be the ones the
    dataset was made from, compared as simulate compares them
    (:func:`lenshpc.dataset.identity.config_difference`): the first differing key is named.
    The returned index carries the dataset's own config (``.config``)."""
    io.raise_open_file_limit()
    root = Path(data_dir)
    if not root.is_dir():
        raise UserError(f"dataset directory not found: {root}")
    if not (root / INDEX).is_file():
        if (root / SHARDS).is_dir():
            raise UserError(f"dataset {root} is incomplete (no {INDEX} yet); finish it by running "
                            f"the same lenshpc simulate command again")
        raise UserError(f"no dataset in {root} ({INDEX} not found)")
    index = read_index(root, truth=truth)
    if index.label_names != LABEL_NAMES:
        raise UserError(f"dataset {index.path}: labels are "
                        f"{', '.join(index.label_names) or 'unnamed'}; expected "
                        f"{', '.join(LABEL_NAMES)}")
    bad = missing_shards(index)   # one stat per shard
    if bad:
        more = f" ({len(bad) - 1} more shard(s) bad)" if len(bad) > 1 else ""
        raise UserError(f"dataset {root}: shard {bad[0]}{more}; restore it, or run lenshpc "
                        f"dataset verify {root} to list every problem")
    if dataset_checksum(index.shards.checksum, index.split) != index.checksum:
        raise UserError(f"dataset {root}: the checksum of {INDEX} does not match its shard "
                        f"table and split (the index is damaged)")
    done = dataset_done(root, hashed=False)
    if not done:
        raise UserError(f"dataset {root} is not finished ({done.reason}); run the same "
                        f"lenshpc simulate command again")
    _ = index.config   # a stored config lenshpc cannot read is refused here, not mid-stage
    if cfg is not None:
        diff = config_difference(index.config_text, cfg)
        if diff:
            raise UserError(f"dataset {root} was made from another config (it differs at "
                            f"{diff}; the dataset's value first); give the config it was made "
                            f"from")
    return index


__all__ = ["PRODUCT", "dataset_done", "item_bytes", "open_dataset", "shard_ranges"]
