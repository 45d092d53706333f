"""What a job leaves in ``RUNS/<model>/fold-<k>/``, and how it is written.

Every file is written to a temporary name in the same directory, synced and renamed, so
a reader (or a restarted job) sees the old version or the new one, never half of one::

    checkpoint.npz   weights, optimizer state and the bookkeeping (JSON) after the last
                     whole epoch: the unit of resume
    history.csv      epoch, loss, val_loss, mae, val_mae, lr (one row per whole epoch)
    run.json         what the job is and how far it got (``finished`` once model.keras is whole)
    model.keras      the finished model (plain Keras, physical outputs)
    logs/            TensorBoard event files

Pure Python + numpy: no TensorFlow needed to read any of it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from lenshpc.io import atomic_path, atomic_write_text, read_json  # noqa: F401 (re-exported)

#: Columns of history.csv, in order (the contract with evaluate).
HISTORY_COLUMNS = ("epoch", "loss", "val_loss", "mae", "val_mae", "lr")


@dataclass(frozen=True)
class JobFiles:
    """Paths of one job's products."""

    root: Path

    @property
    def checkpoint(self) -> Path:
        return self.root / "checkpoint.npz"

    @property
    def history(self) -> Path:
        return self.root / "history.csv"

    @property
    def run_json(self) -> Path:
        return self.root / "run.json"

    @property
    def model(self) -> Path:
        return self.root / "model.keras"

    @property
    def logs(self) -> Path:
        return self.root / "logs"


def write_text_atomic(path: Path, text: str) -> None:
    """Write ``text`` through a temporary file, fsync and rename."""
    atomic_write_text(path, text, sync=True)


def write_json(path: Path, data: dict[str, Any]) -> None:
    write_text_atomic(path, json.dumps(data, indent=2, allow_nan=True) + "\n")


def history_text(rows: Sequence[dict[str, float]]) -> str:
    """history.csv text. Floats as repr: rewriting the same rows gives the same bytes."""
    lines = [",".join(HISTORY_COLUMNS)]
    for row in rows:
        lines.append(",".join(str(int(row[c])) if c == "epoch" else repr(float(row[c]))
                              for c in HISTORY_COLUMNS))
    return "\n".join(lines) + "\n"


def read_history(path: Path) -> list[dict[str, float]]:
    """Rows of a history.csv (epoch as int, the rest as float)."""
    lines = path.read_text().splitlines()
    header = lines[0].split(",")
    return [{k: (int(v) if k == "epoch" else float(v)) for k, v in zip(header, line.split(","))}
            for line in lines[1:] if line]


# --------------------------------------------------------------------------- checkpoint


@dataclass
class Checkpoint:
    """The state after a whole epoch: model weights (all, incl. BatchNorm statistics),
    optimizer weights (incl. its step counter) and the bookkeeping dict ``state``."""

    model: list[np.ndarray]
    optimizer: list[np.ndarray]
    state: dict[str, Any]


def save_checkpoint(path: Path, ckpt: Checkpoint) -> None:
    """Write ``checkpoint.npz`` atomically (temporary file, fsync, rename)."""
    arrays = {f"model_{i:04d}": w for i, w in enumerate(ckpt.model)}
    arrays.update({f"optimizer_{i:04d}": w for i, w in enumerate(ckpt.optimizer)})
    arrays["state"] = np.array(json.dumps(ckpt.state, allow_nan=True))
    with atomic_path(path, sync=True) as tmp, open(tmp, "wb") as f:
        np.savez(f, **arrays)


def load_checkpoint(path: Path) -> Checkpoint:
    """Read a checkpoint written by :func:`save_checkpoint`."""
    with np.load(path, allow_pickle=False) as z:
        names = sorted(z.files)
        model = [z[n] for n in names if n.startswith("model_")]
        optimizer = [z[n] for n in names if n.startswith("optimizer_")]
        state = json.loads(str(z["state"]))
    return Checkpoint(model, optimizer, state)


def read_checkpoint_state(path: Path) -> dict[str, Any] | None:
    """Only the bookkeeping of a checkpoint (no weights loaded), or None if unreadable."""
    try:
        with np.load(path, allow_pickle=False) as z:
            return json.loads(str(z["state"]))
    except (OSError, ValueError, KeyError):
        return None
