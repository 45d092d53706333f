"""Faults of training: exact resume of a dropout model after SIGTERM and kill -9,
a second trainer of the same job, and damaged checkpoints.

A model with dropout draws a mask at every step; its generators' states are in the
checkpoint, so a job stopped by SIGTERM or killed with -9 and run again ends with the
same history, weights and model.keras as one trained in one go."""

from __future__ import annotations

import signal
import subprocess

import numpy as np
import pytest

from tests.conftest import PYTHON, env, lenshpc
from tests.train.test_train_run import wait_for
from tests.train.train_util import history_rows, run_json, train_config, train_once

EPOCHS = 4
JOB, JOB_PATH = 0, "model1/fold-0"   # p1 0.2, p2 0.3


@pytest.fixture(scope="module")
def straight(train_data, tmp_path_factory):
    """Job 0 (model1, dropout) trained for 4 epochs in one go."""
    return train_once(train_data, tmp_path_factory.mktemp("straight"), JOB, EPOCHS)


def _interrupted(cfg, train_data, runs, how) -> subprocess.CompletedProcess:
    cmd = [PYTHON, "-m", "lenshpc", "train", "--config", str(cfg), "--data", str(train_data),
           "--out", str(runs), "--job", str(JOB)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=env())
    wait_for(runs / JOB_PATH / "history.csv", proc)
    if how == "kill":
        proc.kill()
    else:
        proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == (-9 if how == "kill" else 75), err
    done = len(history_rows(runs, JOB_PATH)) - 1
    assert 1 <= done
    again = subprocess.run(cmd, capture_output=True, text=True, env=env(), timeout=600)
    assert again.returncode == 0, again.stderr
    if done < EPOCHS:
        assert f"resuming after epoch {done}" in again.stdout
    return again


@pytest.mark.parametrize("how", ["sigterm", "kill"])
def test_dropout_model_resumes_exactly(straight, train_data, tmp_path, how):
    cfg, ref = straight
    runs = tmp_path / "runs"
    _interrupted(cfg, train_data, runs, how)
    assert history_rows(runs, JOB_PATH) == history_rows(ref, JOB_PATH)
    a, b = run_json(runs, JOB_PATH), run_json(ref, JOB_PATH)
    assert a["weights_sha256"] == b["weights_sha256"]
    assert a["model_weights_sha256"] == b["model_weights_sha256"]
    assert a["best_epoch"] == b["best_epoch"]


def test_second_training_of_the_same_job_is_refused(train_data, tmp_path):
    cfg = train_config(tmp_path / "c.yaml", epochs=30, early_stopping_patience=0,
                       tensorboard=False)
    runs = tmp_path / "runs"
    cmd = [PYTHON, "-m", "lenshpc", "train", "--config", str(cfg), "--data", str(train_data),
           "--out", str(runs), "--job", "3"]
    first = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             env=env())
    try:
        wait_for(runs / "model2/fold-1/history.csv", first)
        second = subprocess.run(cmd, capture_output=True, text=True, env=env(), timeout=300)
        assert second.returncode == 2
        lines = second.stderr.strip().splitlines()
        assert len(lines) == 1 and "is being written by pid" in lines[0], second.stderr
    finally:
        first.send_signal(signal.SIGTERM)
        first.communicate(timeout=300)
    epochs = [int(r.split(",")[0]) for r in history_rows(runs, "model2/fold-1")[1:]]
    assert epochs == list(range(1, len(epochs) + 1))


@pytest.mark.parametrize("damage", ["truncate", "empty", "flip", "foreign"])
def test_damaged_checkpoint_is_one_line(straight, train_data, tmp_path, damage):
    import shutil
    cfg, ref = straight
    runs = tmp_path / "runs"
    shutil.copytree(ref, runs)
    ckpt = runs / JOB_PATH / "checkpoint.npz"
    data = ckpt.read_bytes()
    if damage == "truncate":
        ckpt.write_bytes(data[:len(data) // 2])
    elif damage == "empty":
        ckpt.write_bytes(b"")
    elif damage == "flip":
        pos = len(data) // 3
        ckpt.write_bytes(data[:pos] + bytes([data[pos] ^ 0x10]) + data[pos + 1:])
    else:
        np.savez(ckpt, state=np.array('{"version": 1}'))
    proc = lenshpc("train", "--config", cfg, "--data", train_data, "--out", runs, "--job", JOB,
                   "--epochs", str(EPOCHS + 1))
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "delete it to restart the job from epoch 0" in lines[0], lines
