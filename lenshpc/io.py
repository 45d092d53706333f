"""HDF5 files of a dataset: atomic shard files, the dataset index, checksums.

This module owns the on-disk format of a dataset; every reader and writer goes through it.
Layout of a dataset directory DIR::

    DIR/config.yaml              resolved config of the run (written first)
    DIR/shards/shard-NNNNN.h5    items [k*m, (k+1)*m): images, labels, truth (m items per
                                 shard, from dataset.shard_mb or shard_size)
    DIR/dataset.h5               the index, written after every shard (format 2):
                                   labels, truth, split   ordinary datasets (N, ...)
                                   shards/{name,start,n,checksum,bytes}   the shard table
                                   images                 a virtual dataset over the shards
    DIR/dataset.done.json        the completion marker (lenshpc.lock), written last

A shard is written to a temporary name in ``DIR/shards/`` and renamed when whole, so a
file with the final name is always complete after any process dies. (No fsync: after a
node crash, a resumed run recomputes the checksums of the shards it finds and redoes any
that do not match, which costs nothing in a normal run.)

The small arrays (labels, truth, split) are real copies inside ``dataset.h5``: reading
them never opens a shard. Images are read by :func:`read_items`, which opens only the
shards holding the wanted items, one at a time. The ``images`` virtual dataset remains
for users who want one (N, H, W) array with plain h5py; its source paths are relative to
``dataset.h5``'s own directory, so the directory can be moved. A read through it keeps
every touched shard open, and past the open-file limit HDF5 silently returns the fill
value (NaN): lenshpc itself never reads images through it.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

import numpy as np

SHARDS = "shards"
INDEX = "dataset.h5"
CONFIG = "config.yaml"
#: Version of the index layout; an index of another version is refused (rebuild it).
FORMAT = 2
@contextlib.contextmanager
def atomic_path(path: Path, *, sync: bool = False) -> Iterator[Path]:
    """Yield a temporary name beside ``path``; rename it to ``path`` when the block succeeds.

    The temporary name keeps ``path``'s suffix (writers that choose a format by suffix,
    such as Keras and matplotlib, still work). On any error, or a signal that unwinds the
    block, the temporary file is removed: a file under the final name is always whole.
    ``sync`` fsyncs before the rename, for state that must survive a node crash."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp{path.suffix}")
    try:
        yield tmp
        if sync:
            fd = os.open(tmp, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def file_sha256(path: str | Path) -> str:
    """sha256 (hex) of a file's bytes, read in 1 MiB blocks (model files, catalogues)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def read_json(path: Path) -> dict[str, Any] | None:
    """A JSON file's content, or None if it does not exist or is not a JSON object."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def atomic_write_text(path: Path, text: str, *, sync: bool = False) -> None:
    """Write ``text`` to ``path`` through :func:`atomic_path`."""
    with atomic_path(path, sync=sync) as tmp:
        tmp.write_text(text)
#: Datasets of a shard and their dtypes (the index holds copies of labels and truth).
ARRAYS = {"images": np.float32, "labels": np.float32, "truth": np.float64}


#: ``dataset.compression`` -> h5py dataset keywords of the images (see :func:`_filters`).
COMPRESSIONS = ("none", "gzip", "lzf", "zstd", "blosc")
#: Options whose HDF5 filter comes from the hdf5plugin package: a reader must import it.
PLUGIN_COMPRESSIONS = ("zstd", "blosc")


def h5py_module():
    """h5py, with hdf5plugin's filters (zstd, blosc) registered when it is installed, so
    every reader of lenshpc can read images of every ``dataset.compression``."""
    import h5py
    try:
        import hdf5plugin  # noqa: F401  (registers the filters with HDF5)
    except ImportError:
        pass
    return h5py


def _filters(compression: str) -> dict[str, Any]:
    """h5py ``create_dataset`` keywords of a compression option.

    The byte-shuffle filter goes before gzip, lzf and zstd: it groups the float32 images'
    exponent bytes, which compress, apart from their mantissa bytes, which hardly do;
    blosc shuffles inside its own filter. Levels: gzip 4 (h5py's default), zstd 3, blosc
    lz4 at 5: fast enough that writing stays a small share of simulate."""
    if compression == "none":
        return {}
    if compression in ("gzip", "lzf"):
        return {"compression": compression, "shuffle": True}
    try:
        import hdf5plugin
    except ImportError:
        raise _user_error(f"dataset.compression {compression} needs the hdf5plugin package "
                          f"(pip install hdf5plugin), or choose gzip or lzf") from None
    if compression == "zstd":
        return {**hdf5plugin.Zstd(clevel=3), "shuffle": True}
    if compression == "blosc":
        return dict(hdf5plugin.Blosc(cname="lz4", clevel=5, shuffle=hdf5plugin.Blosc.SHUFFLE))
    raise ValueError(f"unknown compression {compression!r}; expected one of "
                     f"{', '.join(COMPRESSIONS)}")


def shard_name(k: int) -> str:
    """File name of shard ``k``: ``shard-NNNNN.h5``."""
    return f"shard-{k:05d}.h5"


def shard_path(root: str | os.PathLike, k: int) -> Path:
    return Path(root) / SHARDS / shard_name(k)


def shard_ranges(n_items: int, shard_size: int) -> list[range]:
    """Item ranges of the shards: consecutive blocks of ``shard_size`` (the last may be short)."""
    return [range(s, min(s + shard_size, n_items)) for s in range(0, n_items, shard_size)]


def checksum(images: np.ndarray, labels: np.ndarray, truth: np.ndarray) -> str:
    """sha256 (hex) of the bytes of one shard's arrays, in their stored dtypes, C order."""
    h = hashlib.sha256()
    for arr, dtype in zip((images, labels, truth), ARRAYS.values(), strict=True):
        a: np.ndarray = np.ascontiguousarray(arr, dtype=np.dtype(dtype).newbyteorder("<"))
        h.update(str(a.shape).encode())
        h.update(a.data.cast("B"))  # the array's own buffer: no copy
    return h.hexdigest()


def dataset_checksum(shard_checksums: Sequence[str], split: np.ndarray) -> str:
    """sha256 (hex) over the shard checksums in order and the split: the dataset's identity."""
    h = hashlib.sha256()
    for c in shard_checksums:
        h.update(c.encode() + b"\n")
    h.update(np.ascontiguousarray(split, dtype=np.int8).tobytes())
    return h.hexdigest()


def write_shard(path: Path, start: int, images: np.ndarray, labels: np.ndarray,
                truth: np.ndarray, *, label_names: Sequence[str], truth_names: Sequence[str],
                attrs: dict[str, Any], compression: str = "none") -> str:
    """Write one shard atomically (temp name, rename); return its checksum.

    ``start`` is the global index of the shard's first item; ``attrs`` (e.g. the config
    fingerprint) are stored as root attributes beside ``start``, ``n`` and ``checksum``."""
    h5py = h5py_module()
    digest = checksum(images, labels, truth)
    comp = _filters(compression)
    with atomic_path(path) as tmp, h5py.File(tmp, "w") as f:
        n = len(images)
        f.create_dataset("images", data=np.asarray(images, np.float32),
                         chunks=(1, *images.shape[1:]) if comp else None, **comp)
        f.create_dataset("labels", data=np.asarray(labels, np.float32))
        f.create_dataset("truth", data=np.asarray(truth, np.float64))
        f["labels"].attrs["names"] = list(label_names)
        f["truth"].attrs["names"] = list(truth_names)
        for key, value in attrs.items():
            f.attrs[key] = value
        f.attrs["start"] = int(start)
        f.attrs["n"] = int(n)
        f.attrs["checksum"] = digest
    return digest


@dataclass(frozen=True)
class ShardInfo:
    """What a shard file says about itself (from its attributes, no data read)."""

    path: Path
    start: int
    n: int
    checksum: str
    attrs: dict[str, Any]


def shard_info(path: Path) -> ShardInfo | None:
    """Attributes of a complete shard file, or None if it is missing or unreadable."""
    import h5py
    try:
        with h5py.File(path, "r") as f:
            attrs = {k: (v.decode() if isinstance(v, bytes) else v) for k, v in f.attrs.items()}
            if not all(k in f for k in ARRAYS) or "checksum" not in attrs:
                return None
            n = int(attrs["n"])
            if any(f[k].shape[0] != n for k in ARRAYS):
                return None
        return ShardInfo(path, int(attrs["start"]), n, str(attrs["checksum"]), attrs)
    except (OSError, KeyError, ValueError):
        return None


def read_shard(path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(images, labels, truth) of one shard file."""
    h5py = h5py_module()
    with h5py.File(path, "r") as f:
        return f["images"][...], f["labels"][...], f["truth"][...]


def shard_intact(path: Path) -> bool:
    """True if a shard's data still hash to the checksum it was written with."""
    try:
        return checksum(*read_shard(path)) == str(read_attrs(path).get("checksum", ""))
    except (OSError, KeyError, ValueError):
        return False


# --------------------------------------------------------------------------- the index


def _user_error(text: str) -> Exception:
    from lenshpc.config import UserError
    return UserError(text)


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
                raise _user_error(f"shard {path} is missing, unreadable or from another run "
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
        raise _user_error(f"no dataset index {path}")
    try:
        with h5py.File(path, "r") as f:
            for name in ("images", "labels", "split", "truth", "shards"):
                if name not in f:
                    raise _user_error(f"dataset {path} has no '{name}' array; it was not "
                                      f"written by lenshpc simulate")
            attrs = {k: (v.decode() if isinstance(v, bytes) else v) for k, v in f.attrs.items()}
            if "checksum" not in attrs:
                raise _user_error(f"dataset {path} has no checksum attribute; it is incomplete")
            if int(attrs.get("format", 1)) != FORMAT or f["labels"].is_virtual:
                raise _user_error(f"dataset {path} is an index of format {attrs.get('format', 1)} "
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
        raise _user_error(f"dataset {path} cannot be read: {exc}") from None
    except KeyError as exc:
        raise _user_error(f"dataset {path} is damaged: {exc}") from None
    n = int(shape[0])
    if (len(shape) != 3 or labels.shape != (n, len(label_names)) or split.shape != (n,)
            or truth_shape != (n, len(truth_names))):
        raise _user_error(f"dataset {path}: images {shape}, labels {labels.shape}, truth "
                          f"{truth_shape} and split {split.shape} do not agree")
    ends = table.start + table.n
    if (len(table) == 0 or table.start[0] != 0 or ends[-1] != n or np.any(table.start[1:] != ends[:-1])
            or not (len(table.name) == len(table.checksum) == len(table.bytes) == len(table.start))):
        raise _user_error(f"dataset {path}: its shard table does not cover items 0..{n - 1} "
                          f"once each")
    n_folds = int(attrs.get("n_folds", int(split.max(initial=-1)) + 1))
    if split.min(initial=0) < -1 or split.max(initial=0) >= n_folds:
        raise _user_error(f"dataset {path}: 'split' holds values outside -1..{n_folds - 1}")
    if finite:
        bad = np.flatnonzero(~np.isfinite(labels).all(axis=1))
        if bad.size:
            raise _user_error(f"dataset {path}: {bad.size} of {n} items have labels that are not "
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
            raise _user_error(f"{where} is missing; run lenshpc dataset verify {index.root}") from None
        if size != index.shards.bytes[k]:
            raise _user_error(f"{where} has {size} bytes, the index says {index.shards.bytes[k]} "
                              f"(truncated or replaced); run lenshpc dataset verify {index.root}")
        try:
            with h5py.File(path, "r") as f:
                dset = f["images"]
                if (int(f.attrs["start"]) != start or dset.shape != (n, h, w)
                        or str(_text(f.attrs["checksum"])) != index.shards.checksum[k]):
                    raise _user_error(f"{where} is not the shard the index lists (start, size or "
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
            raise _user_error(f"{where} cannot be read (truncated or damaged): "
                              f"{_first_line(exc)}; run lenshpc dataset verify {index.root}") from None
        got = images[order[lo_pos:hi_pos]]
        if not np.isfinite(got).all():
            raise _user_error(f"{where} holds pixels that are not finite; run lenshpc "
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


# --------------------------------------------------------------------------- resources


def raise_open_file_limit() -> int:
    """Raise this process' soft limit of open files (RLIMIT_NOFILE) to its hard limit;
    return the soft limit now in force. Called at the start of every stage: lenshpc opens
    one shard at a time, but HDF5, MPI and users of the ``images`` virtual dataset may not."""
    import resource
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    for target in (hard, 1 << 20, 1 << 16):
        if target == resource.RLIM_INFINITY or (soft != resource.RLIM_INFINITY and target <= soft):
            continue
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            return int(target)
        except (ValueError, OSError):
            continue
    return int(soft)


#: Bytes of one shard file beyond its arrays (HDF5 headers, attributes), measured with
#: h5py 3.16 / HDF5 2.0 and rounded up.
SHARD_OVERHEAD = 16 << 10
#: Bytes of the index per shard (table row, virtual mapping) and fixed, rounded up.
INDEX_PER_SHARD, INDEX_OVERHEAD = 512, 64 << 10


def item_bytes(image_shape: tuple[int, int], n_labels: int, n_truth: int) -> int:
    """Bytes of one item in a shard, uncompressed: a float32 image, float32 labels and
    float64 truth."""
    h, w = image_shape
    return h * w * 4 + n_labels * 4 + n_truth * 8


def estimate_bytes(n_items: int, image_shape: tuple[int, int], n_labels: int, n_truth: int,
                   shard_size: int) -> tuple[int, int]:
    """(shard bytes, index bytes) of an uncompressed dataset: an upper bound of what the
    shards and ``dataset.h5`` occupy on disk. Pure arithmetic: instant for any ``n_items``."""
    n_shards = -(-n_items // shard_size)
    small = n_labels * 4 + n_truth * 8
    shards = n_items * item_bytes(image_shape, n_labels, n_truth) + n_shards * SHARD_OVERHEAD
    index = n_items * (small + 1) + n_shards * INDEX_PER_SHARD + INDEX_OVERHEAD
    return shards, index


def free_bytes(path: str | os.PathLike) -> int:
    """Free bytes (for this user) on the file system of ``path`` or of its nearest
    existing parent."""
    p = Path(path).absolute()
    while not p.exists() and p != p.parent:
        p = p.parent
    return shutil.disk_usage(p).free


def is_disk_full(exc: BaseException) -> bool:
    """True if ``exc`` reports a full disk or quota (ENOSPC, EDQUOT), as the OS raises it
    or as HDF5 words it inside h5py's OSError message."""
    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    text = str(exc)
    return ("No space left on device" in text or "Disk quota exceeded" in text
            or f"errno = {errno.ENOSPC}," in text)


def human_bytes(n: float) -> str:
    """``n`` bytes as ``1.2 GB`` (decimal units)."""
    for unit in ("bytes", "kB", "MB", "GB", "TB", "PB"):
        if abs(n) < 1000 or unit == "PB":
            return f"{n:.0f} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n} bytes"  # pragma: no cover


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__


def read_attrs(path: Path) -> dict[str, Any]:
    """Root attributes of an HDF5 file, strings decoded."""
    import h5py
    with h5py.File(path, "r") as f:
        return {k: (v.decode() if isinstance(v, bytes) else v) for k, v in f.attrs.items()}


def decode_names(values: Iterable[Any]) -> list[str]:
    """An h5py string-array attribute as a list of str."""
    return [v.decode() if isinstance(v, bytes) else str(v) for v in values]
