"""``lenshpc train`` as two Horovod ranks on the CPU: real ``horovodrun --gloo`` and real
``mpirun``; identical weights on every rank, a learnable loss, stop and resume."""

from __future__ import annotations

import shutil
import signal
import subprocess

import numpy as np
import pytest

from tests.conftest import PYTHON, env, mpirun_cmd, require
from tests.train.test_train_run import wait_for
from tests.train.train_util import history_rows, predict_with_plain_keras, run_json, train_config

pytestmark = pytest.mark.horovod


def require_horovodrun() -> None:
    """Skip (never in CI) without horovodrun; it lives in the venv beside python."""
    if shutil.which("horovodrun", path=env()["PATH"]) is None:
        require("horovodrun")


def horovodrun_cmd(n: int, *args: object) -> list[str]:
    return ["horovodrun", "-np", str(n), "-H", f"localhost:{n}", "--gloo",
            PYTHON, "-m", "lenshpc", *map(str, args)]


def horovodrun(n: int, *args: object) -> subprocess.CompletedProcess:
    require_horovodrun()
    proc = subprocess.run(horovodrun_cmd(n, *args), capture_output=True, text=True, env=env(),
                          timeout=900)
    assert proc.returncode == 0, f"{proc.stdout}\n{proc.stderr}"
    return proc


def test_horovodrun_two_ranks_identical_weights_and_falling_loss(train_cfg, train_data, tmp_path):
    runs = tmp_path / "runs"
    # Job 4: model3 (no dropout), fold 0.
    horovodrun(2, "train", "--config", train_cfg, "--data", train_data, "--out", runs, "--job", 4)
    run = run_json(runs, "model3/fold-0")
    assert run["finished"] and run["n_ranks"] == 2 and run["epochs_done"] == 2
    digests = run["weights_sha256"]
    assert len(digests) == 2 and digests[0] == digests[1]
    rows = [r.split(",") for r in history_rows(runs, "model3/fold-0")[1:]]
    assert float(rows[1][1]) < float(rows[0][1]), rows  # training loss falls
    # learning rate scaled by the number of ranks (warm-up ends at 2 x 1e-3)
    assert float(rows[-1][5]) == pytest.approx(2e-3)
    sample = run["sample_predictions"]
    predicted = predict_with_plain_keras(runs / "model3/fold-0/model.keras", train_data,
                                         sample["index"])
    np.testing.assert_allclose(predicted, sample["values"], rtol=1e-4, atol=1e-5)


@pytest.mark.mpi
def test_mpirun_stopped_by_sigusr1_resumes_under_horovodrun(train_data, tmp_path):
    require("mpirun")
    require_horovodrun()
    epochs = 8
    cfg = train_config(tmp_path / "long.yaml", epochs=epochs, early_stopping_patience=0,
                       tensorboard=False)
    runs = tmp_path / "runs"
    args = ("train", "--config", cfg, "--data", train_data, "--out", runs, "--job", 1)
    # Two ranks on two busy cores: MPI's busy polling would starve the computation.
    proc = subprocess.Popen(mpirun_cmd(2, *args), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=env(OMPI_MCA_mpi_yield_when_idle="1"))
    wait_for(runs / "model1/fold-1/history.csv", proc)
    proc.send_signal(signal.SIGUSR1)  # mpirun forwards SIGUSR1 to every rank
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 75, f"{out}\n{err}"
    saved = history_rows(runs, "model1/fold-1")
    done = len(saved) - 1
    assert 1 <= done < epochs

    # The same job continues with another launcher (ranks may change between sessions).
    horovodrun(2, *args)
    rows = history_rows(runs, "model1/fold-1")
    assert rows[:done + 1] == saved
    assert [int(r.split(",")[0]) for r in rows[1:]] == list(range(1, epochs + 1))
    run = run_json(runs, "model1/fold-1")
    assert run["finished"] and run["weights_sha256"][0] == run["weights_sha256"][1]
    assert [s["n_ranks"] for s in run["sessions"]] == [2, 2]
