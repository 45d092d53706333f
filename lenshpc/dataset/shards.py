"""Shard files of a dataset: names, compression, checksum, atomic write, read, size.

A shard is written to a temporary name in ``DIR/shards/`` and renamed when whole, so a
file with the final name is always complete after any process dies. (No fsync: after a
node crash, a resumed run recomputes the checksums of the shards it finds and redoes any
that do not match, which costs nothing in a normal run.)
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from lenshpc.config import UserError
from lenshpc.dataset import SHARDS
from lenshpc.io import atomic_path

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
        raise UserError(f"dataset.compression {compression} needs the hdf5plugin package "
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


def read_attrs(path: Path) -> dict[str, Any]:
    """Root attributes of an HDF5 file, strings decoded."""
    import h5py
    with h5py.File(path, "r") as f:
        return {k: (v.decode() if isinstance(v, bytes) else v) for k, v in f.attrs.items()}
