"""Two guards every stage puts around its products: one writer, and "done" that is proven.

**An exclusive lock per output folder** (the dataset folder, each job's run folder, the
report folder). :func:`exclusive` takes an advisory ``fcntl`` lock on ``DIR/.lenshpc.lock``
and writes the holder's host and pid into it. A second writer is refused with one line
naming the holder. The kernel drops the lock when its process dies (``kill -9``
included), so a lock file left by a dead process is simply taken over. Only rank 0 of
a stage takes the lock: the other ranks write under its protection.

**A completion marker written last** (``DIR/<product>.done.json``). :func:`mark_done`
records the size and sha256 of every file of a finished product; :func:`check_done`
says whether the product is finished *and* intact: the marker exists, is readable, and
every file it lists still has its size and hash. That predicate is the only answer to
"is this finished?" for the stage itself, ``lenshpc run`` and ``slurm submit``.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator

from lenshpc.config import UserError
from lenshpc.io import atomic_write_text, file_sha256

LOCK_NAME = ".lenshpc.lock"
#: Version of the marker format; a marker of another version is not trusted.
MARKER_VERSION = 1


def _holder(path: Path) -> str:
    try:
        info = json.loads(path.read_text() or "{}")
        return f"pid {info.get('pid', '?')} on host {info.get('host', '?')}"
    except (OSError, ValueError):
        return "another process"


@contextlib.contextmanager
def exclusive(folder: str | os.PathLike, what: str,
              shown: str | os.PathLike | None = None) -> Iterator[Path]:
    """Hold the lock of ``folder`` (created if needed) for the block; UserError if another
    live process holds it. ``what`` names the product in the message ("dataset", ...), and
    ``shown`` the path the user gave, where the lock's folder is not it."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd = os.open(folder / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as exc:
        raise UserError(f"cannot create the lock of {what} {folder}: "
                        f"{exc.strerror or exc}") from None
    path = folder / LOCK_NAME
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                raise UserError(f"cannot lock {what} {folder}: {exc.strerror}") from None
            raise UserError(f"{what} {shown or folder} is being written by {_holder(path)}; "
                            f"wait for it to finish or stop it (its lock: {path})") from None
        stamp = json.dumps({"pid": os.getpid(), "host": socket.gethostname()})
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, stamp.encode(), 0)
        except OSError:
            pass   # a full disk: the lock is held all the same, only its holder is unnamed
        yield path
    finally:
        os.close(fd)  # releases the lock


# --------------------------------------------------------------------------- completion


@dataclass(frozen=True)
class Done:
    """Verdict of :func:`check_done`: ``ok`` and, if not, why (one phrase)."""

    ok: bool
    reason: str = ""
    info: dict | None = None

    def __bool__(self) -> bool:
        return self.ok


def marker_path(folder: str | os.PathLike, product: str) -> Path:
    return Path(folder) / f"{product}.done.json"


def _entry(path: Path, hashed: bool) -> dict:
    entry: dict[str, int | str] = {"size": path.stat().st_size}
    if hashed:
        entry["sha256"] = file_sha256(path)
    return entry


def mark_done(folder: str | os.PathLike, product: str, files: Iterable[str | os.PathLike], *,
              info: dict | None = None, hashed: bool = True) -> Path:
    """Write the marker of ``product`` in ``folder`` (atomically, synced), listing ``files``
    (absolute, relative to ``folder``, or relative to the working directory, inside
    ``folder``) with size and sha256."""
    folder = Path(folder).absolute()
    listed = {}
    for f in files:
        p = Path(f)
        if not p.is_absolute():
            # relative to the folder, or (a path the caller built) to the working directory
            p = folder / p if (folder / p).exists() or not p.exists() else p.absolute()
        listed[os.path.relpath(p, folder)] = _entry(p, hashed)
    record = {"version": MARKER_VERSION, "product": product, "files": listed,
              "info": info or {}}
    path = marker_path(folder, product)
    atomic_write_text(path, json.dumps(record, indent=1, sort_keys=True) + "\n", sync=True)
    return path


def clear_done(folder: str | os.PathLike, product: str) -> None:
    """Remove the marker before a product is rewritten (it is then not done until marked)."""
    marker_path(folder, product).unlink(missing_ok=True)


def check_done(folder: str | os.PathLike, product: str, *, hashed: bool = True) -> Done:
    """Whether ``product`` in ``folder`` is finished and intact (see the module doc)."""
    path = marker_path(folder, product)
    if not path.is_file():
        return Done(False, f"not finished ({path.name} missing)")
    try:
        record = json.loads(path.read_text())
        files = record["files"]
        version = record.get("version")
    except (OSError, ValueError, KeyError, TypeError):
        return Done(False, f"{path} cannot be read")
    if version != MARKER_VERSION or record.get("product") != product:
        return Done(False, f"{path} is of another version or product")
    for rel, entry in files.items():
        p = Path(folder) / rel
        if not p.is_file():
            return Done(False, f"{p} is missing")
        if p.stat().st_size != entry.get("size"):
            return Done(False, f"{p} changed size since it was finished")
        if hashed and "sha256" in entry and file_sha256(p) != entry["sha256"]:
            return Done(False, f"{p} changed since it was finished (sha256 differs)")
    return Done(True, "", record.get("info") or {})
