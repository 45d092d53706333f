"""HDF5 files of a dataset: atomic shard files, the dataset index, checksums.

Layout of a dataset directory DIR::

    DIR/config.yaml              resolved config of the run (written first)
    DIR/shards/shard-NNNNN.h5    items [k*shard_size, (k+1)*shard_size): images, labels, truth
    DIR/dataset.h5               written last: virtual datasets over the shards + split

A shard is written to a temporary name in ``DIR/shards/`` and renamed when whole, so a
file with the final name is always complete after any process dies. (No fsync: after a
node crash, a resumed run recomputes the checksums of the shards it finds and redoes any
that do not match, which costs nothing in a normal run.) ``dataset.h5`` maps the
shards with HDF5 virtual datasets whose source paths are relative to ``dataset.h5``'s
own directory, so the directory can be moved; plain h5py reads ``images``, ``labels``
and ``truth`` as single (N, ...) datasets.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

import numpy as np

SHARDS = "shards"
INDEX = "dataset.h5"
CONFIG = "config.yaml"


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
#: Datasets of a shard and their dtypes (also the datasets of the index).
ARRAYS = {"images": np.float32, "labels": np.float32, "truth": np.float64}


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
    for arr, dtype in zip((images, labels, truth), ARRAYS.values()):
        a = np.ascontiguousarray(arr, dtype=np.dtype(dtype).newbyteorder("<"))
        h.update(str(a.shape).encode())
        h.update(memoryview(a).cast("B"))  # the array's own buffer: no copy
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
    import h5py
    digest = checksum(images, labels, truth)
    comp = {} if compression == "none" else {"compression": compression}
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
    import h5py
    with h5py.File(path, "r") as f:
        return f["images"][...], f["labels"][...], f["truth"][...]


def shard_intact(path: Path) -> bool:
    """True if a shard's data still hash to the checksum it was written with."""
    try:
        return checksum(*read_shard(path)) == str(read_attrs(path).get("checksum", ""))
    except (OSError, KeyError, ValueError):
        return False


def write_index(root: Path, *, n_items: int, image_shape: tuple[int, int],
                shard_ranges_: Sequence[range], shard_checksums: Sequence[str],
                split: np.ndarray, label_names: Sequence[str], truth_names: Sequence[str],
                attrs: dict[str, Any]) -> str:
    """Write ``root/dataset.h5`` atomically: virtual ``images``, ``labels``, ``truth`` over
    the shards, ``split``, the per-shard table and root ``attrs``; return the dataset checksum."""
    import h5py
    shapes = {"images": (n_items, *image_shape), "labels": (n_items, len(label_names)),
              "truth": (n_items, len(truth_names))}
    digest = dataset_checksum(shard_checksums, split)
    with atomic_path(root / INDEX) as tmp, h5py.File(tmp, "w") as f:
        for name, dtype in ARRAYS.items():
            layout = h5py.VirtualLayout(shape=shapes[name], dtype=dtype)
            for k, r in enumerate(shard_ranges_):
                # relative to dataset.h5's directory: HDF5 resolves it there first
                source = h5py.VirtualSource(f"{SHARDS}/{shard_name(k)}", name,
                                            shape=(len(r), *shapes[name][1:]))
                layout[r.start:r.stop] = source
            f.create_virtual_dataset(name, layout, fillvalue=np.nan)
        f["labels"].attrs["names"] = list(label_names)
        f["truth"].attrs["names"] = list(truth_names)
        f.create_dataset("split", data=np.asarray(split, np.int8))
        g = f.create_group("shards")
        g.create_dataset("name", data=[shard_name(k) for k in range(len(shard_ranges_))],
                         dtype=h5py.string_dtype())
        g.create_dataset("start", data=np.array([r.start for r in shard_ranges_], np.int64))
        g.create_dataset("n", data=np.array([len(r) for r in shard_ranges_], np.int64))
        g.create_dataset("checksum", data=list(shard_checksums), dtype=h5py.string_dtype())
        for key, value in attrs.items():
            f.attrs[key] = value
        f.attrs["checksum"] = digest
    return digest


def read_attrs(path: Path) -> dict[str, Any]:
    """Root attributes of an HDF5 file, strings decoded."""
    import h5py
    with h5py.File(path, "r") as f:
        return {k: (v.decode() if isinstance(v, bytes) else v) for k, v in f.attrs.items()}


def decode_names(values: Iterable[Any]) -> list[str]:
    """An h5py string-array attribute as a list of str."""
    return [v.decode() if isinstance(v, bytes) else str(v) for v in values]
