"""``lenshpc train`` as one process without any launcher: products, the self-contained
model, finished jobs, continuing with more epochs, and resuming after SIGUSR1."""

from __future__ import annotations

import shutil
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import PYTHON, env, lenshpc
from tests.train.train_util import (
    dataset_checksum,
    history_rows,
    predict_with_plain_keras,
    run_json,
    train_config,
)

# model3 has no dropout, so a resumed run can be compared bit for bit with an uninterrupted one.
JOB, JOB_PATH = 4, "model3/fold-0"


@pytest.fixture(scope="module")
def single_run(train_root, train_cfg, train_data) -> tuple[Path, subprocess.CompletedProcess]:
    """Job 4 (model3, fold 0), 2 epochs, one process."""
    runs = train_root / "runs-single"
    proc = lenshpc("train", "--config", train_cfg, "--data", train_data, "--out", runs,
                   "--job", JOB, check=True)
    return runs, proc


def test_products_of_a_finished_job(single_run, train_data):
    runs, proc = single_run
    job = runs / JOB_PATH
    for name in ("model.keras", "history.csv", "run.json", "checkpoint.npz"):
        assert (job / name).is_file(), name
    assert any((job / "logs").rglob("events.out.tfevents.*"))
    rows = history_rows(runs, JOB_PATH)
    assert rows[0] == "epoch,loss,val_loss,mae,val_mae,lr"
    assert [r.split(",")[0] for r in rows[1:]] == ["1", "2"]
    run = run_json(runs, JOB_PATH)
    assert run["finished"] is True
    assert (run["model"], run["fold"], run["job"], run["p1"], run["p2"]) == ("model3", 0, 4, 0.0, 0.0)
    assert run["epochs_done"] == 2 and run["n_ranks"] == 1
    assert run["dataset_checksum"] == dataset_checksum(train_data)
    assert len(run["target_mean"]) == len(run["target_std"]) == 4
    assert run["loss_weights"] == [1.0, 1.0, 3.0, 3.0]
    assert "train:" in run["config"] and run["versions"]["tensorflow"].startswith("2.")
    assert run["wall_time_s"] > 0 and run["images_per_s"] > 0
    assert "finished after 2 epoch(s)" in proc.stdout


def test_training_statistics_come_from_the_training_fold_only(single_run, train_data):
    import h5py
    with h5py.File(train_data / "dataset.h5", "r") as f:
        labels, split = f["labels"][...], f["split"][...]
    train = labels[split == 1].astype(np.float64)  # fold 0 validates, fold 1 trains
    run = run_json(single_run[0], JOB_PATH)
    np.testing.assert_allclose(run["target_mean"], train.mean(axis=0), rtol=1e-6)
    np.testing.assert_allclose(run["target_std"], train.std(axis=0), rtol=1e-6)


def test_model_reloads_with_plain_keras_and_predicts_the_same(single_run, train_data):
    runs, _ = single_run
    sample = run_json(runs, JOB_PATH)["sample_predictions"]
    predicted = predict_with_plain_keras(runs / JOB_PATH / "model.keras", train_data, sample["index"])
    assert predicted.shape == (len(sample["index"]), 4)
    np.testing.assert_allclose(predicted, sample["values"], rtol=1e-4, atol=1e-5)


def test_finished_job_does_nothing_but_say_so(single_run, train_cfg, train_data):
    runs, _ = single_run
    model = runs / JOB_PATH / "model.keras"
    before = model.stat().st_mtime_ns, history_rows(runs, JOB_PATH)
    proc = lenshpc("train", "--config", train_cfg, "--data", train_data, "--out", runs,
                   "--model", "model3", "--fold", "0", check=True)
    assert "is finished (2 epochs); nothing to do" in proc.stdout
    assert (model.stat().st_mtime_ns, history_rows(runs, JOB_PATH)) == before


def test_more_epochs_continue_exactly_where_the_job_ended(single_run, train_cfg, train_data,
                                                          tmp_path):
    runs = tmp_path / "runs"
    shutil.copytree(single_run[0], runs)
    before = history_rows(runs, JOB_PATH)
    proc = lenshpc("train", "--config", train_cfg, "--data", train_data, "--out", runs,
                   "--job", JOB, "--epochs", "3", check=True)
    assert "resuming after epoch 2" in proc.stdout
    after = history_rows(runs, JOB_PATH)
    assert after[:3] == before and after[3].startswith("3,")
    assert run_json(runs, JOB_PATH)["epochs_done"] == 3
    # Weights, optimizer state, learning rate and data order all resume: 2 + 1 epochs give
    # the same history and weights as 3 epochs in one go.
    straight = tmp_path / "straight"
    lenshpc("train", "--config", train_cfg, "--data", train_data, "--out", straight,
            "--job", JOB, "--epochs", "3", check=True)
    assert history_rows(straight, JOB_PATH) == after
    assert run_json(straight, JOB_PATH)["weights_sha256"] == run_json(runs, JOB_PATH)["weights_sha256"]


def test_other_settings_cannot_continue_a_job(single_run, train_data, tmp_path):
    cfg = train_config(tmp_path / "other.yaml", batch_size=8)
    proc = lenshpc("train", "--config", cfg, "--data", train_data, "--out", single_run[0],
                   "--job", JOB, "--epochs", "5")
    assert proc.returncode == 2
    assert proc.stderr.strip().endswith("was started with other settings (train.batch_size: "
                                        "16 -> 8); use another --out or remove that directory")


def wait_for(path: Path, proc: subprocess.Popen, timeout: float = 300) -> None:
    """Until ``path`` exists (the first whole epoch is saved) or the process ends."""
    end = time.time() + timeout
    while not path.exists():
        assert proc.poll() is None, proc.communicate()
        assert time.time() < end, "timed out"
        time.sleep(0.1)


def test_resume_after_sigusr1_continues_from_the_last_whole_epoch(train_data, tmp_path):
    # Enough epochs that the signal surely comes before the end; no early stop.
    epochs = 12
    cfg = train_config(tmp_path / "long.yaml", epochs=epochs, early_stopping_patience=0,
                       tensorboard=False)
    runs = tmp_path / "runs"
    cmd = [PYTHON, "-m", "lenshpc", "train", "--config", str(cfg), "--data", str(train_data),
           "--out", str(runs), "--job", "2"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env())
    wait_for(runs / "model2/fold-0/history.csv", proc)
    proc.send_signal(signal.SIGUSR1)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 75, err
    assert "stopped by SIGUSR1" in out
    saved = history_rows(runs, "model2/fold-0")
    done = len(saved) - 1
    assert 1 <= done < epochs
    assert run_json(runs, "model2/fold-0")["finished"] is False

    again = subprocess.run(cmd, capture_output=True, text=True, env=env(), timeout=600)
    assert again.returncode == 0, again.stderr
    assert f"resuming after epoch {done}" in again.stdout
    rows = history_rows(runs, "model2/fold-0")
    assert rows[:done + 1] == saved
    assert [int(r.split(",")[0]) for r in rows[1:]] == list(range(1, epochs + 1))
    run = run_json(runs, "model2/fold-0")
    assert run["finished"] is True and run["epochs_done"] == epochs
    assert [s["first_epoch"] for s in run["sessions"]] == [0, done]


def test_kill_9_loses_at_most_the_unfinished_epoch(train_data, tmp_path):
    epochs = 10
    cfg = train_config(tmp_path / "long.yaml", epochs=epochs, early_stopping_patience=0,
                       tensorboard=False)
    runs = tmp_path / "runs"
    cmd = [PYTHON, "-m", "lenshpc", "train", "--config", str(cfg), "--data", str(train_data),
           "--out", str(runs), "--job", "5"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env())
    wait_for(runs / "model3/fold-1/history.csv", proc)
    proc.kill()
    proc.communicate(timeout=120)
    saved = history_rows(runs, "model3/fold-1")
    done = len(saved) - 1
    again = subprocess.run(cmd, capture_output=True, text=True, env=env(), timeout=600)
    assert again.returncode == 0, again.stderr
    rows = history_rows(runs, "model3/fold-1")
    assert rows[:done + 1] == saved and len(rows) == epochs + 1
    assert run_json(runs, "model3/fold-1")["finished"] is True
