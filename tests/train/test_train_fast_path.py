"""The fast path of issue 9 part 3 on the CPU: several steps per call into TensorFlow,
mixed precision and XLA. Resume stays exact, the stop after a signal still comes at a
step boundary, and ``steps_per_execution`` changes nothing in what is computed."""

from __future__ import annotations

import signal
import subprocess

import pytest

from tests.conftest import PYTHON, env, lenshpc
from tests.train.test_train_run import wait_for
from tests.train.train_util import history_rows, run_json, train_config

EPOCHS = 4
#: model1 has dropout (p1 0.2, p2 0.3), model3 none; both on fold 0.
JOBS = {0: "model1/fold-0", 4: "model3/fold-0"}
#: 108 training items in batches of 16: 7 steps an epoch, run as calls of 4 and 3 steps.
SPE = 4


def _cmd(cfg, data, runs, job, *extra) -> list[str]:
    return [PYTHON, "-m", "lenshpc", "train", "--config", str(cfg), "--data", str(data),
            "--out", str(runs), "--job", str(job), *map(str, extra)]


@pytest.fixture(scope="module")
def straight(train_data, tmp_path_factory):
    """Both jobs trained for 4 epochs in one go, with 4 steps per execution."""
    root = tmp_path_factory.mktemp("fast")
    cfg = train_config(root / "c.yaml", epochs=EPOCHS, early_stopping_patience=0,
                       tensorboard=False, steps_per_execution=SPE)
    for job in JOBS:
        lenshpc("train", "--config", cfg, "--data", train_data, "--out", root / "runs",
                "--job", job, check=True)
    return cfg, root / "runs"


@pytest.mark.parametrize("job", sorted(JOBS))
def test_sigterm_and_resume_with_steps_per_execution_equal_a_straight_run(straight, train_data,
                                                                          tmp_path, job):
    cfg, ref = straight
    path, runs = JOBS[job], tmp_path / "runs"
    proc = subprocess.Popen(_cmd(cfg, train_data, runs, job), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env())
    wait_for(runs / path / "history.csv", proc)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=300)
    if proc.returncode == 0:  # the last epoch ended before the signal was looked at
        pytest.skip("the job finished before SIGTERM arrived")
    assert proc.returncode == 75, err
    assert "stopped by SIGTERM" in out
    done = len(history_rows(runs, path)) - 1
    assert 1 <= done < EPOCHS
    again = subprocess.run(_cmd(cfg, train_data, runs, job), capture_output=True, text=True,
                           env=env(), timeout=600)
    assert again.returncode == 0, again.stderr
    assert f"resuming after epoch {done}" in again.stdout
    assert history_rows(runs, path) == history_rows(ref, path)
    a, b = run_json(runs, path), run_json(ref, path)
    assert a["weights_sha256"] == b["weights_sha256"]
    assert a["model_weights_sha256"] == b["model_weights_sha256"]
    assert a["devices"][0]["steps_per_execution"] == SPE


def test_steps_per_execution_does_not_change_the_result(straight, train_data, tmp_path):
    # Dropout model: the generators advance once per step however steps are grouped.
    _, ref = straight
    cfg = train_config(tmp_path / "one.yaml", epochs=2, early_stopping_patience=0,
                       tensorboard=False, steps_per_execution=1)
    lenshpc("train", "--config", cfg, "--data", train_data, "--out", tmp_path / "runs",
            "--job", 0, check=True)
    assert history_rows(tmp_path / "runs", JOBS[0]) == history_rows(ref, JOBS[0])[:3]


def test_mixed_precision_trains_continues_exactly_and_saves_a_float32_model(train_data,
                                                                            tmp_path):
    cfg = train_config(tmp_path / "mixed.yaml", epochs=3, early_stopping_patience=0,
                       tensorboard=False, precision="mixed_float16", steps_per_execution=SPE)
    runs, straight = tmp_path / "runs", tmp_path / "straight"
    lenshpc("train", "--config", cfg, "--data", train_data, "--out", runs, "--job", 0,
            "--epochs", 2, check=True)
    lenshpc("train", "--config", cfg, "--data", train_data, "--out", runs, "--job", 0,
            check=True)
    lenshpc("train", "--config", cfg, "--data", train_data, "--out", straight, "--job", 0,
            check=True)
    # Weights, optimizer, loss scale and dropout generators all continue.
    assert history_rows(runs, JOBS[0]) == history_rows(straight, JOBS[0])
    assert run_json(runs, JOBS[0])["weights_sha256"] == run_json(straight, JOBS[0])["weights_sha256"]
    device = run_json(runs, JOBS[0])["devices"][0]
    assert device["precision"] == "mixed_float16"
    # Another precision cannot continue the job (the loss scale is part of its state).
    other = train_config(tmp_path / "f32.yaml", epochs=4, early_stopping_patience=0,
                         tensorboard=False)
    proc = lenshpc("train", "--config", other, "--data", train_data, "--out", runs, "--job", 0)
    assert proc.returncode == 2 and "train.precision: 'mixed_float16' -> 'float32'" in proc.stderr
    code = ("import sys, tensorflow as tf\n"
            "m = tf.keras.models.load_model(sys.argv[1], compile=False)\n"
            "print(sorted({l.dtype_policy.name for l in m.layers}))\n")
    out = subprocess.run([PYTHON, "-c", code, str(runs / JOBS[0] / "model.keras")],
                         capture_output=True, text=True, env=env(), timeout=300, check=True)
    assert out.stdout.strip().splitlines()[-1] == "['float32']"


def test_jit_compile_on_one_cpu_rank_trains(train_data, tmp_path):
    cfg = train_config(tmp_path / "jit.yaml", epochs=1, tensorboard=False, jit_compile=True)
    lenshpc("train", "--config", cfg, "--data", train_data, "--out", tmp_path / "runs",
            "--job", 4, check=True)
    device = run_json(tmp_path / "runs", JOBS[4])["devices"][0]
    assert device["jit_compile"] is True and device["steps_per_execution"] == 1


@pytest.mark.horovod
def test_two_ranks_in_mixed_precision_keep_identical_weights(train_data, tmp_path):
    # Horovod averages inside Keras' loss scaling: every rank sees the same gradients, so
    # all skip or all apply each step, and the weights stay identical.
    from tests.train.test_train_horovod import horovodrun
    cfg = train_config(tmp_path / "m.yaml", epochs=2, tensorboard=False,
                       precision="mixed_float16", steps_per_execution=SPE)
    runs = tmp_path / "runs"
    horovodrun(2, "train", "--config", cfg, "--data", train_data, "--out", runs, "--job", 0)
    run = run_json(runs, JOBS[0])
    assert run["finished"] and run["n_ranks"] == 2
    assert run["weights_sha256"][0] == run["weights_sha256"][1]
    assert {d["precision"] for d in run["devices"]} == {"mixed_float16"}
