"""Helpers of the train tests (the fixtures are in conftest.py)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import h5py
import numpy as np

from tests.conftest import PYTHON, env, write_config

#: 240 images of 32x32 (0.15"/pixel keeps the debug population's rings in the field),
#: 2 folds: fold 0 trains on 108 items and validates on 108.
OVERRIDES = dict(
    image={"size": 32, "pixel_scale": 0.15},
    dataset={"n_images": 240, "test_fraction": 0.1, "n_folds": 2, "shard_size": 80},
    train={"batch_size": 16, "epochs": 2},
)


def train_config(path: Path, **train) -> Path:
    """The tests' config with ``train`` keys overridden."""
    over = {k: dict(v) for k, v in OVERRIDES.items()}
    over["train"].update(train)
    return write_config(path, **over)


def run_json(runs: Path, job_path: str) -> dict:
    return json.loads((runs / job_path / "run.json").read_text())


def history_rows(runs: Path, job_path: str) -> list[str]:
    """history.csv lines (header first), as text: rows must survive a resume byte for byte."""
    return (runs / job_path / "history.csv").read_text().splitlines()


def predict_with_plain_keras(model: Path, data: Path, indices: list[int]) -> np.ndarray:
    """Predictions of ``model.keras`` in a fresh Python that never imports lenshpc."""
    code = (
        "import sys, json, numpy as np, h5py, tensorflow as tf\n"
        "idx = json.loads(sys.argv[3])\n"
        "with h5py.File(sys.argv[2], 'r') as f:\n"
        "    x = f['images'][...][idx][..., None]\n"
        "m = tf.keras.models.load_model(sys.argv[1], compile=False)\n"
        "assert 'lenshpc' not in sys.modules\n"
        "print(json.dumps(m(x, training=False).numpy().tolist()))\n")
    proc = subprocess.run([PYTHON, "-c", code, str(model), str(data / "dataset.h5"),
                           json.dumps(indices)], capture_output=True, text=True, timeout=300,
                          env=env(), cwd="/")
    assert proc.returncode == 0, proc.stderr
    return np.array(json.loads(proc.stdout.strip().splitlines()[-1]))


def dataset_checksum(data: Path) -> str:
    with h5py.File(data / "dataset.h5", "r") as f:
        return str(f.attrs["checksum"])


def train_once(data: Path, root: Path, job: int, epochs: int) -> tuple[Path, Path]:
    """Train job ``job`` for ``epochs`` epochs in one go (no early stop, no TensorBoard):
    (its config, its RUNS)."""
    from tests.conftest import lenshpc
    cfg = train_config(root / "c.yaml", epochs=epochs, early_stopping_patience=0,
                       tensorboard=False)
    lenshpc("train", "--config", cfg, "--data", data, "--out", root / "runs", "--job", job,
            check=True)
    return cfg, root / "runs"
