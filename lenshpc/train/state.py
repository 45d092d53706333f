"""What a job leaves in ``RUNS/<model>/fold-<k>/``, and how it is written.

Every file is written to a temporary name in the same directory, synced and renamed, so
a reader (or a restarted job) sees the old version or the new one, never half of one::

    checkpoint.npz   after the last whole epoch: weights, optimizer state, the best epoch's
                     weights, the dropout generators' states and the bookkeeping (a
                     versioned JSON :class:`TrainState`): the unit of resume
    history.csv      epoch, loss, val_loss, mae, val_mae, lr (one row per whole epoch)
    run.json         what the job is and how far it got (``finished`` once model.keras is whole)
    model.keras      the finished model (plain Keras, physical outputs): the weights of the
                     epoch with the lowest val_loss (``train.keep: best``) or of the last
    train.done.json  written last (lenshpc.lock.mark_done): the job is finished and its
                     model.keras, run.json and history.csv are the ones it lists
    .lenshpc.lock    held by the one process that trains the job
    logs/            TensorBoard event files

The folder's file names, its "finished" predicate and the weights hash belong to
:mod:`lenshpc.runs` (re-exported here); this module writes and reads the files.
Pure Python + numpy: no TensorFlow needed to read any of it.
"""

from __future__ import annotations

import io
import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from lenshpc.io import atomic_path, atomic_write_text, read_json  # noqa: F401 (re-exported)
from lenshpc.runs import JobFiles, weights_sha256  # noqa: F401 (the job folder's owner)

#: Columns of history.csv, in order (the contract with evaluate).
HISTORY_COLUMNS = ("epoch", "loss", "val_loss", "mae", "val_mae", "lr")


def write_history(path: Path, rows: Sequence[dict[str, float]]) -> None:
    """Write history.csv (atomically, synced)."""
    atomic_write_text(path, history_text(rows), sync=True)


def write_json(path: Path, data: dict[str, Any]) -> None:
    """Write run.json (atomically, synced)."""
    atomic_write_text(path, json.dumps(data, indent=2, allow_nan=True) + "\n", sync=True)


def history_text(rows: Sequence[dict[str, float]]) -> str:
    """history.csv text. Floats as repr: rewriting the same rows gives the same bytes."""
    lines = [",".join(HISTORY_COLUMNS)]
    for row in rows:
        lines.append(",".join(str(int(row[c])) if c == "epoch" else repr(float(row[c]))
                              for c in HISTORY_COLUMNS))
    return "\n".join(lines) + "\n"


def read_history(path: Path) -> dict[str, np.ndarray] | None:
    """history.csv as column arrays (HISTORY_COLUMNS), or None if missing or malformed."""
    try:
        lines = [ln for ln in Path(path).read_text().splitlines() if ln]
    except OSError:
        return None
    if len(lines) < 2 or tuple(lines[0].split(",")) != HISTORY_COLUMNS:
        return None
    try:
        rows = np.array([[float(v) for v in ln.split(",")] for ln in lines[1:]])
    except ValueError:
        return None
    if rows.shape[1] != len(HISTORY_COLUMNS):
        return None
    return {c: rows[:, j] for j, c in enumerate(HISTORY_COLUMNS)}


# --------------------------------------------------------------------------- checkpoint

#: Format of checkpoint.npz. A checkpoint of another version is refused, never half-read.
CHECKPOINT_VERSION = 2


class CheckpointError(Exception):
    """checkpoint.npz cannot be used: unreadable, damaged, or of another format version."""


@dataclass
class TrainState:
    """The bookkeeping of a job after its last whole epoch (JSON inside checkpoint.npz).

    ``best`` is the epoch with the lowest finite val_loss so far (``epoch``,
    ``val_loss``, ``val_mae``), whose weights the checkpoint also holds."""

    key: dict[str, Any]
    epochs_done: int = 0
    history: list[dict[str, float]] = field(default_factory=list)
    lr_factor: float = 1.0
    early_stopped: bool = False
    callbacks: dict[str, dict[str, Any]] = field(default_factory=dict)
    best: dict[str, float] | None = None
    epoch_seconds: list[float] = field(default_factory=list)
    train_seconds: list[float] = field(default_factory=list)
    train_cpu_seconds: list[float] = field(default_factory=list)
    epoch_images: list[int] = field(default_factory=list)
    images_trained: int = 0
    wall_time_before_s: float = 0.0
    sessions: list[dict[str, int]] = field(default_factory=list)
    version: int = CHECKPOINT_VERSION

    def to_json(self) -> str:
        return json.dumps(asdict(self), allow_nan=True)

    @classmethod
    def from_json(cls, text: str) -> "TrainState":
        data = json.loads(text)
        if not isinstance(data, dict) or data.get("version") != CHECKPOINT_VERSION:
            found = data.get("version", "none") if isinstance(data, dict) else "none"
            raise CheckpointError(f"format version {found}, this lenshpc writes "
                                  f"{CHECKPOINT_VERSION}")
        names = {f.name for f in fields(cls)}
        if set(data) != names:
            odd = sorted(set(data) ^ names)
            raise CheckpointError(f"unexpected or missing entries {', '.join(odd)}")
        return cls(**data)


@dataclass
class Checkpoint:
    """The state after a whole epoch: model weights (incl. BatchNorm statistics),
    optimizer weights (incl. its step counter), the best epoch's model weights, the
    states of the random generators (dropout), and the bookkeeping ``state``."""

    model: list[np.ndarray]
    optimizer: list[np.ndarray]
    best: list[np.ndarray]
    rng: list[np.ndarray]
    state: TrainState


_GROUPS = ("model", "optimizer", "best", "rng")


def save_checkpoint(path: Path, ckpt: Checkpoint) -> None:
    """Write ``checkpoint.npz`` atomically (temporary file, fsync, rename)."""
    arrays = {f"{g}_{i:04d}": w for g in _GROUPS for i, w in enumerate(getattr(ckpt, g))}
    arrays["state"] = np.array(ckpt.state.to_json())
    # Built in memory, then written: a write error (full disk) leaves no half-closed zip.
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    with atomic_path(path, sync=True) as tmp, open(tmp, "wb") as f:
        f.write(buf.getbuffer())


def load_checkpoint(path: Path) -> Checkpoint:
    """Read and check a checkpoint written by :func:`save_checkpoint` (every array is
    read, so the zip's CRC catches a damaged file); CheckpointError if it cannot be used."""
    try:
        with np.load(path, allow_pickle=False) as z:
            state = TrainState.from_json(str(z["state"]))
            names = sorted(z.files)
            groups = {g: [z[n] for n in names if n.startswith(f"{g}_")] for g in _GROUPS}
    except CheckpointError:
        raise
    except Exception as exc:  # zipfile, zlib, numpy and json errors of a damaged file
        raise CheckpointError(f"it is damaged or truncated ({type(exc).__name__})") from None
    if not groups["model"] or (state.best is not None and
                               len(groups["best"]) != len(groups["model"])):
        raise CheckpointError("it lacks model weights")
    return Checkpoint(state=state, **groups)
