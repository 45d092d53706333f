"""The model that is scored: model.keras holds the weights of the epoch with the lowest
validation loss (``train.keep: best``) or of the last epoch (``keep: last``); the
checkpoint keeps the last epoch's state, so resume stays exact."""

from __future__ import annotations

import math

import numpy as np
import pytest

from lenshpc.train.record import update_best
from lenshpc.train.state import load_checkpoint, weights_sha256
from tests.conftest import lenshpc
from tests.train.train_util import history_rows, run_json, train_config, train_once

EPOCHS = 4
JOB, JOB_PATH = 0, "model1/fold-0"   # p1 0.2, p2 0.3


@pytest.fixture(scope="module")
def straight(train_data, tmp_path_factory):
    """Job 0 (model1, dropout) trained for 4 epochs in one go."""
    return train_once(train_data, tmp_path_factory.mktemp("best"), JOB, EPOCHS)


def test_best_epoch_is_the_lowest_val_loss_and_is_the_saved_model(straight):
    _, runs = straight
    run = run_json(runs, JOB_PATH)
    val = [float(r.split(",")[2]) for r in history_rows(runs, JOB_PATH)[1:]]
    best = int(np.argmin(val)) + 1
    assert run["best_epoch"] == run["model_epoch"] == best
    assert run["best_val_loss"] == val[best - 1]
    ckpt = load_checkpoint(runs / JOB_PATH / "checkpoint.npz")
    # The checkpoint holds the last epoch (for resume) and the best epoch's weights (the model).
    assert weights_sha256(ckpt.best) == run["model_weights_sha256"]
    assert weights_sha256(ckpt.model) == run["weights_sha256"][0]
    assert (run["model_weights_sha256"] == run["weights_sha256"][0]) == (best == EPOCHS)
    assert (runs / JOB_PATH / "train.done.json").is_file()


def test_keep_last_saves_the_last_epoch(train_data, tmp_path):
    cfg = train_config(tmp_path / "c.yaml", epochs=2, keep="last", tensorboard=False)
    lenshpc("train", "--config", cfg, "--data", train_data, "--out", tmp_path / "runs",
            "--job", JOB, check=True)
    run = run_json(tmp_path / "runs", JOB_PATH)
    assert run["keep"] == "last" and run["model_epoch"] == 2
    assert run["model_weights_sha256"] == run["weights_sha256"][0]


def test_best_epoch_follows_a_curve_that_rises_after_its_minimum():
    best = None
    for epoch, v in enumerate([5.0, 3.0, 2.0, 2.0, 2.5, math.nan, 4.0], 1):
        best = update_best(best, {"epoch": epoch, "val_loss": v, "val_mae": v / 10})
    assert best == {"epoch": 3, "val_loss": 2.0, "val_mae": 0.2}
    assert update_best(None, {"epoch": 1, "val_loss": math.inf, "val_mae": 1.0}) is None
