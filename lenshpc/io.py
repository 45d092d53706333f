"""File primitives every stage uses: atomic writes, hashes, JSON, free space, open files.

A file is written to a temporary name beside its final one and renamed when whole
(:func:`atomic_path`), so a file under its final name is always complete after any
process dies. The on-disk format of a dataset is :mod:`lenshpc.dataset`'s.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Any, Iterator


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
