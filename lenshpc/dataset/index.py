"""The index of a dataset, ``dataset.h5``: written after every shard, and the one reader.

The small arrays (labels, truth, split) are real copies inside ``dataset.h5``: reading
them never opens a shard. Images are read by :func:`read_items`, which opens only the
shards holding the wanted items, one at a time. The ``images`` virtual dataset remains
for users who want one (N, H, W) array with plain h5py; its source paths are relative to
``dataset.h5``'s own directory, so the directory can be moved. A read through it keeps
every touched shard open, and past the open-file limit HDF5 silently returns the fill
value (NaN): lenshpc itself never reads images through it.
"""

from __future__ import annotations

import functools
import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Sequence

import numpy as np

from lenshpc.config import UserError
from lenshpc.dataset import INDEX, SHARDS
from lenshpc.dataset.shards import (
    checksum,
    h5py_module,
    read_attrs,
    read_shard,
    shard_name,
    shard_path,
)
from lenshpc.io import atomic_path, is_disk_full

if TYPE_CHECKING:
    from lenshpc.config import Config

#: Version of the index layout; an index of another version is refused (rebuild it).
FORMAT = 2


def dataset_checksum(shard_checksums: Sequence[str], split: np.ndarray) -> str:
    """sha256 (hex) over the shard checksums in order and the split: the dataset's identity."""
    h = hashlib.sha256()
    for c in shard_checksums:
        h.update(c.encode() + b"\n")
    h.update(np.ascontiguousarray(split, dtype=np.int8).tobytes())
    return h.hexdigest()


def write_index(root: Path, *, n_items: int, image_shape: tuple[int, int],
                shard_ranges_: Sequence[range], split: np.ndarray, label_names: Sequence[str],
                truth_names: Sequence[str], attrs: dict[str, Any],
                shard_attrs: dict[str, Any] | None = None) -> str:
    """Write ``root/dataset.h5`` atomically (format :data:`FORMAT`); return the dataset checksum.

    Copies every shard's labels and truth into ordinary ``labels`` and ``truth`` datasets
    (one shard open at a time, streamed: memory does not grow with the dataset), writes
    ``split``, the shard table (name, start, n, checksum, bytes), the virtual ``images``
    and root ``attrs``. Every shard must exist with the expected start and size and, if
    ``shard_attrs`` is given, carry those attributes (e.g. the config fingerprint):
    otherwise UserError naming the shard, and no index is written."""
    import h5py
    root = Path(root)
    n_shards = len(shard_ranges_)
    checksums: list[str] = []
    sizes = np.zeros(n_shards, np.int64)
    with atomic_path(root / INDEX) as tmp, h5py.File(tmp, "w") as f:
        labels = f.create_dataset("labels", (n_items, len(label_names)), np.float32)
        truth = f.create_dataset("truth", (n_items, len(truth_names)), np.float64)
        labels.attrs["names"] = list(label_names)
        truth.attrs["names"] = list(truth_names)
        for k, r in enumerate(shard_ranges_):
            path = shard_path(root, k)
            try:
                with h5py.File(path, "r") as s:
                    own = {key: (v.decode() if isinstance(v, bytes) else v)
                           for key, v in s.attrs.items()}
                    ok = (int(own.get("start", -1)) == r.start and int(own.get("n", -1)) == len(r)
                          and s["images"].shape == (len(r), *image_shape)
                          and all(own.get(key) == value for key, value in (shard_attrs or {}).items()))
                    if ok:
                        labels[r.start:r.stop] = s["labels"][...]
                        truth[r.start:r.stop] = s["truth"][...]
                        checksums.append(str(own["checksum"]))
            except (OSError, KeyError, ValueError) as exc:
                if is_disk_full(exc):
                    raise
                ok = False
            if not ok:
                raise UserError(f"shard {path} is missing, unreadable or from another run "
                                  f"while the index is built; run the same simulate command "
                                  f"again to redo it")
            sizes[k] = path.stat().st_size
        f.create_dataset("split", data=np.asarray(split, np.int8))
        g = f.create_group("shards")
        g.create_dataset("name", data=[shard_name(k) for k in range(n_shards)],
                         dtype=h5py.string_dtype())
        g.create_dataset("start", data=np.array([r.start for r in shard_ranges_], np.int64))
        g.create_dataset("n", data=np.array([len(r) for r in shard_ranges_], np.int64))
        g.create_dataset("checksum", data=checksums, dtype=h5py.string_dtype())
        g.create_dataset("bytes", data=sizes)
        layout = h5py.VirtualLayout(shape=(n_items, *image_shape), dtype=np.float32)
        for k, r in enumerate(shard_ranges_):
            # relative to dataset.h5's directory: HDF5 resolves it there first
            layout[r.start:r.stop] = h5py.VirtualSource(f"{SHARDS}/{shard_name(k)}", "images",
                                                        shape=(len(r), *image_shape))
        f.create_virtual_dataset("images", layout, fillvalue=np.nan)
        for key, value in attrs.items():
            f.attrs[key] = value
        digest = dataset_checksum(checksums, split)
        f.attrs["format"] = FORMAT
        f.attrs["checksum"] = digest
    return digest


@dataclass(frozen=True)
class ShardTable:
    """The index's table of shards, in item order: shard k holds items
    ``start[k] .. start[k] + n[k] - 1`` in file ``shards/name[k]`` of ``bytes[k]`` bytes."""

    name: tuple[str, ...]
    start: np.ndarray
    n: np.ndarray
    checksum: tuple[str, ...]
    bytes: np.ndarray

    def __len__(self) -> int:
        return len(self.name)

    def of(self, items: np.ndarray) -> np.ndarray:
        """Shard number of each global item index."""
        return np.searchsorted(self.start, np.asarray(items, np.int64), side="right") - 1


@dataclass(frozen=True)
class DatasetIndex:
    """Everything ``dataset.h5`` says, except the images: the one reader of the index.

    ``labels`` (N, 4) float32 in physical units (theta_E arcsec; q, e1, e2), all finite;
    ``truth`` (N, P) float64, the rendered parameters (None when not asked for);
    ``split`` (N,) int8, fold 0..n_folds-1 or -1 (test); ``path`` is ``dataset.h5``."""

    path: Path
    n_items: int
    image_shape: tuple[int, int]
    labels: np.ndarray
    label_names: tuple[str, ...]
    truth: np.ndarray | None
    truth_names: tuple[str, ...]
    split: np.ndarray
    shards: ShardTable
    attrs: dict[str, Any] = field(repr=False)
    checksum: str = ""
    n_folds: int = 0

    @property
    def root(self) -> Path:
        """The dataset directory."""
        return self.path.parent

    @property
    def config_text(self) -> str:
        """The resolved config of the run that made the dataset (YAML text)."""
        return str(self.attrs.get("config", ""))

    @functools.cached_property
    def config(self) -> "Config":
        """The config the dataset was made from (:attr:`config_text`, loaded and validated):
        where every stage takes the image and population settings of this dataset."""
        from lenshpc.config import from_yaml_text
        if not self.config_text:
            raise UserError(f"dataset {self.path} records no config (no 'config' attribute); "
                            f"it was not written by lenshpc simulate")
        try:
            return from_yaml_text(self.config_text)
        except UserError as exc:
            raise UserError(f"the config stored in {self.path} is not valid: {exc}") from None

    def shard_path(self, k: int) -> Path:
        return self.root / SHARDS / self.shards.name[k]


def read_index(where: str | os.PathLike, *, truth: bool = True,
               finite: bool = True) -> DatasetIndex:
    """Read the index of the dataset in directory ``where`` (or the ``dataset.h5`` file).

    Never opens a shard. UserError (one line) if the index is missing, unreadable, of
    another format, inconsistent (shapes, shard table, split values) or, with ``finite``,
    holds labels that are not finite. ``truth=False`` skips the truth table (large)."""
    import h5py
    where = Path(where)
    path = where / INDEX if where.is_dir() else where
    if not path.is_file():
        raise UserError(f"no dataset index {path}")
    try:
        with h5py.File(path, "r") as f:
            for name in ("images", "labels", "split", "truth", "shards"):
                if name not in f:
                    raise UserError(f"dataset {path} has no '{name}' array; it was not "
                                      f"written by lenshpc simulate")
            attrs = {k: (v.decode() if isinstance(v, bytes) else v) for k, v in f.attrs.items()}
            if "checksum" not in attrs:
                raise UserError(f"dataset {path} has no checksum attribute; it is incomplete")
            if int(attrs.get("format", 1)) != FORMAT or f["labels"].is_virtual:
                raise UserError(f"dataset {path} is an index of format {attrs.get('format', 1)} "
                                  f"(this lenshpc reads format {FORMAT}); run the same "
                                  f"lenshpc simulate command again to rebuild it")
            shape = f["images"].shape
            label_names = tuple(decode_names(f["labels"].attrs.get("names", ())))
            truth_names = tuple(decode_names(f["truth"].attrs.get("names", ())))
            labels = f["labels"][...]
            truth_table = f["truth"][...] if truth else None
            truth_shape = f["truth"].shape
            split = f["split"][...]
            g = f["shards"]
            table = ShardTable(name=tuple(decode_names(g["name"][...])),
                               start=g["start"][...].astype(np.int64),
                               n=g["n"][...].astype(np.int64),
                               checksum=tuple(decode_names(g["checksum"][...])),
                               bytes=g["bytes"][...].astype(np.int64))
    except OSError as exc:
        raise UserError(f"dataset {path} cannot be read: {exc}") from None
    except KeyError as exc:
        raise UserError(f"dataset {path} is damaged: {exc}") from None
    n = int(shape[0])
    if (len(shape) != 3 or labels.shape != (n, len(label_names)) or split.shape != (n,)
            or truth_shape != (n, len(truth_names))):
        raise UserError(f"dataset {path}: images {shape}, labels {labels.shape}, truth "
                          f"{truth_shape} and split {split.shape} do not agree")
    ends = table.start + table.n
    if (len(table) == 0 or table.start[0] != 0 or ends[-1] != n or np.any(table.start[1:] != ends[:-1])
            or not (len(table.name) == len(table.checksum) == len(table.bytes) == len(table.start))):
        raise UserError(f"dataset {path}: its shard table does not cover items 0..{n - 1} "
                          f"once each")
    n_folds = int(attrs.get("n_folds", int(split.max(initial=-1)) + 1))
    if split.min(initial=0) < -1 or split.max(initial=0) >= n_folds:
        raise UserError(f"dataset {path}: 'split' holds values outside -1..{n_folds - 1}")
    if finite:
        bad = np.flatnonzero(~np.isfinite(labels).all(axis=1))
        if bad.size:
            raise UserError(f"dataset {path}: {bad.size} of {n} items have labels that are not "
                              f"finite (first: item {bad[0]}); the index is damaged: run "
                              f"lenshpc dataset verify {path.parent}")
    return DatasetIndex(path=path, n_items=n, image_shape=(int(shape[1]), int(shape[2])),
                        labels=labels.astype(np.float32, copy=False), label_names=label_names,
                        truth=truth_table, truth_names=truth_names,
                        split=split.astype(np.int8, copy=False), shards=table, attrs=attrs,
                        checksum=str(attrs["checksum"]), n_folds=n_folds)


def missing_shards(index: DatasetIndex) -> list[str]:
    """Lines naming each shard file that is missing or whose size differs from the table
    (a cheap check: one ``stat`` per shard, no file opened)."""
    problems = []
    for k, name in enumerate(index.shards.name):
        try:
            size = index.shard_path(k).stat().st_size
        except OSError:
            problems.append(f"{SHARDS}/{name}: missing")
            continue
        if size != index.shards.bytes[k]:
            problems.append(f"{SHARDS}/{name}: {size} bytes, the index says "
                            f"{index.shards.bytes[k]} (truncated or replaced)")
    return problems


def read_items(index: DatasetIndex, items: Sequence[int] | np.ndarray, *,
               block_bytes: int = 256 << 20, out: np.ndarray | None = None) -> np.ndarray:
    """Images (n, H, W) float32 of the global item indices ``items`` (any order), in that order.

    Opens only the shards holding the items, one at a time (open, read, close), so open
    files and memory do not grow with the number of shards. Within a shard, reads
    contiguous slabs of at most ``block_bytes``. ``out`` (n, H, W), if given, receives
    the images. UserError naming the shard if one is missing, truncated, unreadable,
    not the one the index lists, or holds non-finite pixels."""
    h5py = h5py_module()
    items = np.asarray(items, dtype=np.int64).reshape(-1)
    h, w = index.image_shape
    images = np.empty((len(items), h, w), np.float32) if out is None else out
    if len(items) == 0:
        return images
    if items.min() < 0 or items.max() >= index.n_items:
        raise ValueError(f"item indices outside 0..{index.n_items - 1}")
    order = np.argsort(items, kind="stable")
    wanted = items[order]
    shard = index.shards.of(wanted)
    per_block = max(1, block_bytes // (h * w * 4))
    bounds = np.flatnonzero(np.diff(shard)) + 1
    for lo_pos, hi_pos in zip(np.r_[0, bounds], np.r_[bounds, len(wanted)], strict=True):
        k = int(shard[lo_pos])
        path = index.shard_path(k)
        start, n = int(index.shards.start[k]), int(index.shards.n[k])
        where = f"shard {path} of dataset {index.root}"
        try:
            size = path.stat().st_size
        except OSError:
            raise UserError(f"{where} is missing; run lenshpc dataset verify {index.root}") from None
        if size != index.shards.bytes[k]:
            raise UserError(f"{where} has {size} bytes, the index says {index.shards.bytes[k]} "
                              f"(truncated or replaced); run lenshpc dataset verify {index.root}")
        try:
            with h5py.File(path, "r") as f:
                dset = f["images"]
                if (int(f.attrs["start"]) != start or dset.shape != (n, h, w)
                        or str(_text(f.attrs["checksum"])) != index.shards.checksum[k]):
                    raise UserError(f"{where} is not the shard the index lists (start, size or "
                                      f"checksum differ); run lenshpc dataset verify {index.root}")
                local = wanted[lo_pos:hi_pos] - start
                pos = 0
                while pos < len(local):
                    first = int(local[pos])
                    end = pos + int(np.searchsorted(local[pos:], first + per_block, side="left"))
                    slab = dset[first:int(local[end - 1]) + 1]
                    images[order[lo_pos + pos:lo_pos + end]] = slab[local[pos:end] - first]
                    pos = end
        except (OSError, KeyError, ValueError) as exc:
            raise UserError(f"{where} cannot be read (truncated or damaged): "
                              f"{_first_line(exc)}; run lenshpc dataset verify {index.root}") from None
        got = images[order[lo_pos:hi_pos]]
        if not np.isfinite(got).all():
            raise UserError(f"{where} holds pixels that are not finite; run lenshpc "
                              f"dataset verify {index.root}")
    return images


def check_shard(index: DatasetIndex, k: int) -> str | None:
    """Everything that can be wrong with shard ``k`` against the index, as one line, or
    None: missing, size, unreadable (truncated), item range, checksum of the data against
    the table and the shard's own attribute, and the index's labels and truth for those
    items against the shard's (``index`` must hold truth). Reads the whole shard."""
    name = index.shards.name[k]
    path = index.shard_path(k)
    start, n = int(index.shards.start[k]), int(index.shards.n[k])
    if not path.is_file():
        return f"{name}: missing"
    try:
        images, labels, truth = read_shard(path)
        own = read_attrs(path)
    except (OSError, KeyError, ValueError) as exc:
        return f"{name}: unreadable (truncated or damaged): {_first_line(exc)}"
    if len(images) != n or len(labels) != n or len(truth) != n:
        return f"{name}: holds {len(images)} items, expected {n}"
    if int(own.get("start", -1)) != start:
        return f"{name}: starts at item {own.get('start')}, the index says {start}"
    if checksum(images, labels, truth) != index.shards.checksum[k]:
        return f"{name}: checksum mismatch (altered data)"
    if str(own.get("checksum", "")) != index.shards.checksum[k]:
        return f"{name}: checksum attribute differs from the dataset's table"
    if not np.isfinite(images).all():
        return f"{name}: holds pixels that are not finite"
    if not np.array_equal(index.labels[start:start + n], labels):
        return f"{INDEX}: labels of items {start}..{start + n - 1} differ from {name}'s"
    if index.truth is not None and not np.array_equal(index.truth[start:start + n], truth):
        return f"{INDEX}: truth of items {start}..{start + n - 1} differs from {name}'s"
    size = path.stat().st_size
    if size != index.shards.bytes[k]:
        return f"{name}: {size} bytes, the index says {index.shards.bytes[k]}"
    return None


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__


def decode_names(values: Iterable[Any]) -> list[str]:
    """An h5py string-array attribute as a list of str."""
    return [v.decode() if isinstance(v, bytes) else str(v) for v in values]
