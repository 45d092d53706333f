"""Signals sent to the LAUNCHER (mpirun, horovodrun, srun), not to a rank, while a stage
runs: each ends with the code docs/cluster.md gives for that launcher and signal, the
stage's stop line, and a state from which the same command resumes.

What the launchers do (measured here, Open MPI 4.1.4, Horovod 0.28.1, Slurm 22.05):
mpirun forwards USR1 to the ranks and waits for them; on TERM or INT it sends the ranks
CONT, then TERM one ``odls_base_sigkill_timeout`` later (1 s), then KILL one more later,
and exits 1 whatever the ranks returned. horovodrun --gloo passes TERM and INT to its
ranks as TERM, kills them 5 s later, and exits 1. srun passes TERM to every task and
returns their status.
"""

from __future__ import annotations

import signal
import subprocess
import time
from pathlib import Path

import pytest

from tests.conftest import PYTHON, env, mpirun_cmd, simulate_dataset, write_config
from tests.evaluate.conftest import eval_config, train_runs
from tests.train.train_util import history_rows, run_json, train_config

JOB, JOB_PATH = 4, "model3/fold-0"   # no dropout: the quickest job of the grid
#: Enough epochs that the signal always comes before the end, few enough for a rerun.
EPOCHS = 12
#: The code each launcher returns after each signal (docs/cluster.md, "Signals to a launcher").
MPIRUN_CODE = {"SIGTERM": 1, "SIGINT": 1, "SIGUSR1": 75}


def _train_args(cfg: Path, data: Path, runs: Path) -> list[str]:
    return ["train", "--config", str(cfg), "--data", str(data), "--out", str(runs),
            "--job", str(JOB)]


def _start(cmd: list[str], **extra: str) -> subprocess.Popen:
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env=env(OMPI_MCA_mpi_yield_when_idle="1", **extra),
                            start_new_session=True)


def _wait_for_epochs(runs: Path, proc: subprocess.Popen, n: int = 1, timeout: float = 300) -> None:
    path, end = runs / JOB_PATH / "history.csv", time.monotonic() + timeout
    while not (path.exists() and len(history_rows(runs, JOB_PATH)) > n):
        assert proc.poll() is None, proc.communicate()[0][-3000:]
        assert time.monotonic() < end, f"{path} had no epoch in time"
        time.sleep(0.05)


def _signal_launcher(proc: subprocess.Popen, sig: str, timeout: float = 120) -> tuple[int, str]:
    proc.send_signal(getattr(signal, sig))
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        import os
        os.killpg(proc.pid, signal.SIGKILL)
        raise
    return proc.returncode, out


def _assert_resumes(cmd: list[str], runs: Path, done: int, **extra: str) -> None:
    again = subprocess.run(cmd, capture_output=True, text=True, timeout=600,
                           env=env(OMPI_MCA_mpi_yield_when_idle="1", **extra))
    assert again.returncode == 0, again.stdout[-2000:] + again.stderr[-2000:]
    assert f"resuming after epoch {done} " in again.stdout, again.stdout
    info = run_json(runs, JOB_PATH)
    assert info["finished"] and info["epochs_done"] == EPOCHS
    epochs = [int(r.split(",")[0]) for r in history_rows(runs, JOB_PATH)[1:]]
    assert epochs == list(range(1, EPOCHS + 1))


def _stop_and_resume(cmd: list[str], runs: Path, sig: str, code: int,
                     stop_lines: tuple[str, ...] = ("stopped by SIGTERM",),
                     launcher_traceback: bool = False) -> None:
    """Start ``cmd``, signal its launcher with ``sig`` after an epoch, check its exit code
    and stop line, then check that the same command resumes and finishes."""
    proc = _start(cmd)
    _wait_for_epochs(runs, proc)
    got, out = _signal_launcher(proc, sig)
    assert got == code, out[-3000:]
    assert any(line in out for line in stop_lines), out[-3000:]
    # lenshpc prints none; horovodrun prints its own when a rank exits non-zero.
    assert launcher_traceback or "Traceback" not in out, out[-3000:]
    done = len(history_rows(runs, JOB_PATH)) - 1
    assert 1 <= done < EPOCHS
    _assert_resumes(cmd, runs, done)


@pytest.fixture()
def cfg(tmp_path):
    return train_config(tmp_path / "c.yaml", epochs=EPOCHS, early_stopping_patience=0,
                        tensorboard=False, stop_check_steps=1)


@pytest.mark.parametrize("sig", ["SIGTERM", "SIGINT", "SIGUSR1"])
def test_a_signal_to_mpirun_stops_training_and_the_rerun_resumes(train_data, cfg, tmp_path, sig):
    runs = tmp_path / "runs"
    cmd = mpirun_cmd(2, *_train_args(cfg, train_data, runs))
    _stop_and_resume(cmd, runs, sig, MPIRUN_CODE[sig],
                     ("stopped by SIGTERM", "stopped by SIGUSR1"))


def test_sigterm_to_horovodrun_stops_training_and_the_rerun_resumes(train_data, cfg, tmp_path):
    """horovodrun --gloo passes TERM on to the ranks and exits 1 itself (its own
    traceback: "one or more processes exited with non-zero status")."""
    runs = tmp_path / "runs"
    cmd = [str(Path(PYTHON).parent / "horovodrun"), "--gloo", "-np", "2", "-H", "localhost:2",
           PYTHON, "-m", "lenshpc", *_train_args(cfg, train_data, runs)]
    # The ranks have Horovod's 5 s to exit after their stop line; on a loaded machine
    # Horovod's shutdown can take longer, and horovodrun then kills them (143, 137).
    _stop_and_resume(cmd, runs, "SIGTERM", 1, launcher_traceback=True)


def test_sigterm_to_srun_stops_training_and_the_rerun_resumes(slurm_cluster, train_data, cfg,
                                                              tmp_path):
    """srun passes TERM on to every task and returns their status, or kills them."""
    plugins = slurm_cluster.run("srun", "--mpi=list").stdout
    mpi = "pmix" if "pmix" in plugins else "pmi2"
    runs = tmp_path / "runs"
    cmd = ["srun", "-n", "2", f"--mpi={mpi}", PYTHON, "-m", "mpi4py", "-m", "lenshpc",
           *_train_args(cfg, train_data, runs)]
    # srun kills the tasks Slurm's KillWait after the TERM: 75 when they checkpoint and
    # exit within it, 137 on a loaded node; either way the rerun resumes.
    proc = _start(cmd)
    _wait_for_epochs(runs, proc)
    code, out = _signal_launcher(proc, "SIGTERM")
    assert code in (75, 137), out[-3000:]
    assert code == 137 or "stopped by SIGTERM" in out, out[-3000:]
    done = len(history_rows(runs, JOB_PATH)) - 1
    assert 1 <= done < EPOCHS
    _assert_resumes(cmd, runs, done)


def test_a_resume_on_another_rank_count_says_it_is_not_bit_identical(train_data, tmp_path):
    cfg = train_config(tmp_path / "c.yaml", epochs=2, early_stopping_patience=0,
                       tensorboard=False)
    runs = tmp_path / "runs"
    args = _train_args(cfg, train_data, runs)
    first = subprocess.run([PYTHON, "-m", "lenshpc", *args, "--epochs", "1"],
                           capture_output=True, text=True, timeout=600, env=env())
    assert first.returncode == 0, first.stderr
    again = subprocess.run(mpirun_cmd(2, *args), capture_output=True, text=True, timeout=600,
                           env=env(OMPI_MCA_mpi_yield_when_idle="1"))
    assert again.returncode == 0, again.stderr[-3000:]
    assert "resuming after epoch 1 on 2 rank(s)" in again.stdout, again.stdout
    assert ("the checkpoint was written on 1 rank(s), this run has 2: the continuation is "
            "valid but not bit-identical") in again.stdout, again.stdout
    assert [s["n_ranks"] for s in run_json(runs, JOB_PATH)["sessions"]] == [1, 2]


def test_sigterm_to_mpirun_stops_simulate_and_the_rerun_completes(tmp_path):
    config = write_config(tmp_path / "sim.yaml", image={"size": 32, "pixel_scale": 0.15},
                          dataset={"n_images": 20000, "n_folds": 2, "shard_size": 20})
    out = tmp_path / "dataset"
    cmd = mpirun_cmd(2, "simulate", "--config", config, "--out", out, "--no-progress")
    proc = _start(cmd)
    end = time.monotonic() + 300
    while not list((out / "shards").glob("shard-*.h5")):
        assert proc.poll() is None, proc.communicate()[0][-3000:]
        assert time.monotonic() < end
        time.sleep(0.05)
    code, text = _signal_launcher(proc, "SIGTERM")
    assert code == MPIRUN_CODE["SIGTERM"], text[-3000:]
    assert "lenshpc simulate: stopped by SIGTERM" in text, text[-3000:]
    assert "Traceback" not in text, text[-3000:]
    assert not (out / "dataset.done.json").exists()
    again = subprocess.run(cmd, capture_output=True, text=True, timeout=900, env=env())
    assert again.returncode == 0, again.stderr[-3000:]
    assert (out / "dataset.done.json").exists()


@pytest.fixture(scope="module")
def report_inputs(tmp_path_factory) -> tuple[Path, Path, Path]:
    """The evaluate tests' config, dataset and trained runs (tests/evaluate/conftest.py)."""
    root = tmp_path_factory.mktemp("signals-eval")
    cfg = eval_config(root / "eval.yaml")
    data = simulate_dataset(cfg, root / "data")
    return cfg, data, train_runs(cfg, data, root / "runs")


def test_sigterm_to_mpirun_stops_evaluate_and_the_rerun_completes(tmp_path, report_inputs):
    eval_cfg, eval_data, eval_runs = report_inputs
    out = tmp_path / "report"
    cmd = mpirun_cmd(2, "evaluate", "--config", eval_cfg, "--data", eval_data, "--runs",
                     eval_runs, "--out", out)
    proc = _start(cmd)
    line = proc.stdout.readline()
    while line and "evaluating" not in line:
        line = proc.stdout.readline()
    assert "evaluating" in line, f"evaluate ended early ({proc.poll()})"
    code, text = _signal_launcher(proc, "SIGTERM")
    assert code == MPIRUN_CODE["SIGTERM"], text[-3000:]
    assert "lenshpc evaluate: stopped by SIGTERM" in text, text[-3000:]
    assert "Traceback" not in text, text[-3000:]
    assert not (out / "report.done.json").exists()
    again = subprocess.run(cmd, capture_output=True, text=True, timeout=900, env=env())
    assert again.returncode == 0, again.stderr[-3000:]
    assert (out / "report.done.json").exists()
