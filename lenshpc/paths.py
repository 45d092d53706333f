"""Paths given on the command line, checked once, before any work.

Every command's ``--config``, ``--data``, ``--runs``, ``--out``, ``--workdir`` (and
``dataset info|verify DIR``) passes the same checks, whatever the stage:
:func:`check_arguments` runs them from the dispatcher (:mod:`lenshpc.cli`) by the table
:data:`COMMAND_PATHS`, before the stage is even imported; other commands (predict) call
:func:`check_input_file`, :func:`check_input_dir`, :func:`check_output_dir` or
:func:`check_output_file` themselves.

Checked: the length in bytes of every component of the path (the file system's
``PC_NAME_MAX``, usually 255) and of the whole absolute path (``PC_PATH_MAX``, usually
4096); that a file is a file and a folder a folder (nor below a file); that an input can
be read and an output written (in the folder itself or, when it does not exist yet, in
its nearest existing parent); and, when the caller knows its size, that there is room.
Nothing is created. Each failure is one :class:`~lenshpc.config.UserError` line (exit 2).
"""

from __future__ import annotations

import argparse
import os
from enum import Enum
from pathlib import Path
from typing import Mapping

from lenshpc.config import UserError

#: Limits used where the file system does not say (POSIX's usual values on Linux).
DEFAULT_NAME_MAX, DEFAULT_PATH_MAX = 255, 4096


class Kind(Enum):
    """What a command expects at a path."""

    INPUT_FILE = "input file"        # exists, a file, readable
    INPUT_DIR = "input folder"       # exists, a folder, readable
    INPUT = "input"                  # exists (a file or a folder), readable
    OUTPUT_DIR = "output folder"     # a folder (or none yet) that can be written
    OUTPUT_FILE = "output file"      # a file name in a folder that can be written
    FOLDER = "folder"                # a folder (or none yet) for later jobs: names only


#: (command, sub-command or None) -> {argparse dest: (option as the user wrote it, kind)}.
COMMAND_PATHS: Mapping[tuple[str, str | None], Mapping[str, tuple[str, Kind]]] = {
    ("simulate", None): {"config": ("--config", Kind.INPUT_FILE),
                         "out": ("--out", Kind.OUTPUT_DIR)},
    ("dataset", "info"): {"dir": ("DIR", Kind.INPUT_DIR)},
    ("dataset", "verify"): {"dir": ("DIR", Kind.INPUT_DIR)},
    ("train", None): {"config": ("--config", Kind.INPUT_FILE), "data": ("--data", Kind.INPUT_DIR),
                      "out": ("--out", Kind.OUTPUT_DIR)},
    ("evaluate", None): {"config": ("--config", Kind.INPUT_FILE),
                         "data": ("--data", Kind.INPUT_DIR), "runs": ("--runs", Kind.INPUT_DIR),
                         "out": ("--out", Kind.OUTPUT_DIR)},
    ("run", None): {"config": ("--config", Kind.INPUT_FILE),
                    "workdir": ("--workdir", Kind.OUTPUT_DIR)},
    ("slurm", "render"): {"config": ("--config", Kind.INPUT_FILE),
                          "out": ("--out", Kind.OUTPUT_DIR),
                          "workdir": ("--workdir", Kind.FOLDER)},
    ("slurm", "submit"): {"config": ("--config", Kind.INPUT_FILE),
                          "workdir": ("--workdir", Kind.OUTPUT_DIR)},
    ("slurm", "check"): {"config": ("--config", Kind.INPUT_FILE),
                         "workdir": ("--workdir", Kind.FOLDER)},
    ("config", "check"): {"config": ("CONFIG", Kind.INPUT_FILE)},
    ("predict", None): {"config": ("--config", Kind.INPUT_FILE), "runs": ("--runs", Kind.INPUT_DIR),
                        "inputs": ("INPUT", Kind.INPUT), "image": ("--image", Kind.INPUT_FILE),
                        "positions": ("--positions", Kind.INPUT_FILE),
                        "out": ("--out", Kind.OUTPUT_FILE)},
}


def check_arguments(args: argparse.Namespace) -> None:
    """Check the paths of the parsed command line ``args`` by :data:`COMMAND_PATHS`
    (``args.command``, and its sub-command in ``args.<command>_command``); options not
    given (None) are skipped, lists (``nargs``) checked item by item. UserError on the
    first problem."""
    command = str(getattr(args, "command", None))
    sub: str | None = getattr(args, f"{command}_command", None)
    spec = COMMAND_PATHS.get((command, sub)) or COMMAND_PATHS.get((command, None)) or {}
    for dest, (option, kind) in spec.items():
        value = getattr(args, dest, None)
        for item in value if isinstance(value, (list, tuple)) else [value]:
            if item is not None:
                CHECKS[kind](item, option)


# --------------------------------------------------------------------------- the checks


def _shown(text: str, limit: int = 48) -> str:
    return text if len(text) <= limit else f"{text[:limit - 3]}..."


def _nearest_existing(path: Path) -> Path:
    p = path
    while not os.path.lexists(p) and p != p.parent:
        p = p.parent
    return p


def _limit(folder: Path, name: str, default: int) -> int:
    try:
        value = os.pathconf(folder, name)
    except (OSError, ValueError):
        return default
    return value if value and value > 0 else default


def check_names(path: str | os.PathLike, what: str) -> Path:
    """The path's components and whole length within the file system's limits (of the
    nearest existing folder on the way); ``path`` as a Path."""
    p = Path(path)
    full = p.absolute()
    base = _nearest_existing(full)
    folder = base if base.is_dir() else base.parent
    name_max = _limit(folder, "PC_NAME_MAX", DEFAULT_NAME_MAX)
    path_max = _limit(folder, "PC_PATH_MAX", DEFAULT_PATH_MAX)
    for part in p.parts:
        n = len(os.fsencode(part))
        if n > name_max:
            raise UserError(f"{what} {_shown(str(p))}: the name {_shown(part, 24)!r} has {n} "
                            f"bytes, over the file system's limit of {name_max} per name")
    n = len(os.fsencode(str(full)))
    if n >= path_max:
        raise UserError(f"{what} {_shown(str(p))}: the path has {n} bytes, over the file "
                        f"system's limit of {path_max - 1}")
    return p


def _below_a_file(p: Path) -> Path | None:
    """The existing ancestor of ``p`` that is not a folder, if any."""
    base = _nearest_existing(p.absolute())
    return base if base != p.absolute() and not base.is_dir() else None


def check_input_file(path: str | os.PathLike, what: str = "input") -> Path:
    """An existing, readable file (not a folder). For every command's ``--config`` and for
    predict's inputs; returns ``path`` as a Path."""
    p = check_names(path, what)
    if p.is_dir():
        raise UserError(f"{what} {p}: a folder, not a file")
    if not p.exists():
        below = _below_a_file(p)
        raise UserError(f"{what} {p}: not found" + (f" ({below} is a file)" if below else ""))
    if not p.is_file():
        raise UserError(f"{what} {p}: not a regular file")
    if not os.access(p, os.R_OK):
        raise UserError(f"{what} {p}: cannot be read (permission denied)")
    return p


def check_input_dir(path: str | os.PathLike, what: str = "input") -> Path:
    """An existing folder this process can list and read; returns ``path`` as a Path."""
    p = check_names(path, what)
    if p.exists() and not p.is_dir():
        raise UserError(f"{what} {p}: a file, not a folder")
    if not p.exists():
        below = _below_a_file(p)
        raise UserError(f"{what} {p}: not found" + (f" ({below} is a file)" if below else ""))
    if not os.access(p, os.R_OK | os.X_OK):
        raise UserError(f"{what} {p}: cannot be read (permission denied)")
    return p


def check_input(path: str | os.PathLike, what: str = "input") -> Path:
    """An existing file or folder that can be read; returns ``path`` as a Path."""
    p = check_names(path, what)
    return check_input_dir(p, what) if p.is_dir() else check_input_file(p, what)


def check_folder(path: str | os.PathLike, what: str = "folder") -> Path:
    """A folder or nothing yet, not a file nor below one (names checked too); its
    writability is not asked (the path may be for jobs on another machine)."""
    p = check_names(path, what)
    if p.exists() and not p.is_dir():
        raise UserError(f"{what} {p}: a file, not a folder")
    below = _below_a_file(p)
    if below is not None:
        raise UserError(f"{what} {p}: {below} is a file, not a folder")
    return p


def check_output_dir(path: str | os.PathLike, what: str = "output", need_bytes: int = 0) -> Path:
    """A folder that exists or can be created, that this process can write, with about
    ``need_bytes`` free on its file system (0: not checked here). Creates nothing."""
    from lenshpc.io import free_bytes, human_bytes
    p = check_folder(path, what)
    where = p if p.exists() else _nearest_existing(p.absolute())
    if not os.access(where, os.W_OK | os.X_OK):
        reason = "read-only file system" if _read_only(where) else "permission denied"
        raise UserError(f"{what} {p}: cannot write in {where} ({reason})")
    if need_bytes > 0:
        free = free_bytes(where)
        if free < need_bytes:
            raise UserError(f"{what} {p}: needs about {human_bytes(need_bytes)}, "
                            f"{human_bytes(free)} free there; free space or choose another "
                            f"{what}")
    return p


def check_output_file(path: str | os.PathLike, what: str = "output") -> Path:
    """A file name that can be written: not a folder, its folder existing (or creatable)
    and writable. Creates nothing."""
    p = check_names(path, what)
    if p.is_dir():
        raise UserError(f"{what} {p}: a folder; give a file name")
    check_output_dir(p.absolute().parent, what)
    if p.exists() and not os.access(p, os.W_OK):
        raise UserError(f"{what} {p}: cannot be written (permission denied)")
    return p


def _read_only(path: Path) -> bool:
    try:
        return bool(os.statvfs(path).f_flag & os.ST_RDONLY)
    except OSError:
        return False


CHECKS = {Kind.INPUT_FILE: check_input_file, Kind.INPUT_DIR: check_input_dir,
          Kind.INPUT: check_input, Kind.OUTPUT_DIR: check_output_dir,
          Kind.OUTPUT_FILE: check_output_file, Kind.FOLDER: check_folder}
