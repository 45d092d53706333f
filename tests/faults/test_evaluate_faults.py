"""Faults of evaluate, with real processes, real files and real ``mpirun -n 2``.

- A removed shard: exit 2 with one line naming it, no table written, no hang (figures on);
  the shard restored, a rerun gives finite tables; a cached result holding NaN (as an
  older lenshpc left it) is never reused.
- A swapped model.keras (another job's): refused in one line, against train's completion
  marker (a job without one is not finished and is skipped).
- Killed after table1.csv, before report.md: the report's completion marker is absent;
  the rerun reuses the predictions and finishes the report.
- A second evaluate into a REPORT being written: refused in one line naming the holder.
- A read-only REPORT: exit 2 at once, before any prediction work.
- A full disk (a real tmpfs filled while evaluate runs): one line naming the file, exit 2;
  after space is freed the rerun resumes.

Every failure is exactly one line on stderr and no traceback. The ranks are launched with
``mpirun --quiet``: without it Open MPI adds its own banner after a non-zero exit status.
"""

from __future__ import annotations

import csv
import math
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import h5py
import numpy as np
import pytest

from lenshpc.lock import check_done
from tests.conftest import PYTHON, env, mpirun_cmd, require, simulate_dataset
from tests.evaluate.conftest import eval_config, train_runs
from tests.faults.disk import fill, small_disk

TIMEOUT = 600
EVALUATED = ("model1/fold-0", "model1/fold-1", "model2/fold-0", "model3/fold-0")


def evaluate(cfg, data, runs, out, ranks: int = 1, **popen) -> subprocess.CompletedProcess:
    """``lenshpc evaluate`` in its own process(es): ``mpirun --quiet -n ranks`` if ranks > 1."""
    args = ["evaluate", "--config", cfg, "--data", data, "--runs", runs, "--out", out]
    if ranks > 1:
        require("mpirun")
        cmd = mpirun_cmd(ranks, *args)
        cmd.insert(1, "--quiet")
    else:
        cmd = [PYTHON, "-m", "lenshpc", *map(str, args)]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=TIMEOUT, env=env(), **popen)


def one_line(proc: subprocess.CompletedProcess, *fragments: str) -> str:
    """The single stderr line of a failed run (exit 2), holding every fragment."""
    assert proc.returncode == 2, (proc.returncode, proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("lenshpc evaluate: error: "), lines[0]
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


def tables_finite(out: Path) -> None:
    """metrics.csv, psnr.csv and Table 1 hold a finite number wherever they hold a number."""
    for name in ("metrics.csv", "psnr.csv", "table1.csv"):
        with open(out / name, newline="") as f:
            rows = list(csv.DictReader(f))
        assert rows, name
        for row in rows:
            for column, value in row.items():
                try:
                    number = float(value)
                except ValueError:   # a name: model, parameter, the list of folds
                    continue
                assert math.isfinite(number), (name, row["model"], column, value)
    assert check_done(out, "report")


# The evaluate tests' real dataset and trained runs (tests/evaluate/conftest.py), made once
# for this module.


@pytest.fixture(scope="module")
def eval_root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("evaluate-faults")


@pytest.fixture(scope="module")
def eval_cfg(eval_root) -> Path:
    return eval_config(eval_root / "eval.yaml")


@pytest.fixture(scope="module")
def cfg_nofig(eval_root) -> Path:
    return eval_config(eval_root / "nofig.yaml", figures=False)


@pytest.fixture(scope="module")
def eval_data(eval_root, eval_cfg) -> Path:
    return simulate_dataset(eval_cfg, eval_root / "data")


@pytest.fixture(scope="module")
def eval_runs(eval_root, eval_cfg, eval_data) -> Path:
    return train_runs(eval_cfg, eval_data, eval_root / "runs")


def copy_data(eval_data, where: Path) -> Path:
    shutil.copytree(eval_data, where)
    return where


# --------------------------------------------------------------------------- a lost shard


@pytest.mark.mpi
@pytest.mark.timeout(3 * TIMEOUT)
def test_a_removed_shard_is_refused_and_a_restored_one_recomputes(tmp_path, eval_cfg, eval_data,
                                                                  eval_runs, cfg_nofig):
    data = copy_data(eval_data, tmp_path / "data")
    shard = data / "shards" / "shard-00001.h5"
    shard.rename(tmp_path / "saved.h5")
    out = tmp_path / "report"

    # figures on: the run that used to hang drawing NaN
    t0 = time.monotonic()
    proc = evaluate(eval_cfg, data, eval_runs, out, ranks=2)
    one_line(proc, "shard shards/shard-00001.h5", "missing")
    assert time.monotonic() - t0 < 120
    assert not any((out / name).exists() for name in ("table1.csv", "metrics.csv", "psnr.csv"))
    assert not check_done(out, "report")

    (tmp_path / "saved.h5").rename(shard)
    proc = evaluate(cfg_nofig, data, eval_runs, out, ranks=2)
    assert proc.returncode == 0, proc.stderr
    assert "evaluating 4 job(s)" in proc.stdout
    tables_finite(out)

    # a cached result holding NaN (as an older lenshpc wrote it) is recomputed, not reused
    with h5py.File(out / "predictions.h5", "r+") as f:
        good = f["model1/fold-1/pred"][...]
        f["model1/fold-1/pred"][3] = np.nan
    proc = evaluate(cfg_nofig, data, eval_runs, out, ranks=2)
    assert proc.returncode == 0, proc.stderr
    assert "3 job(s) already evaluated" in proc.stdout and "evaluating 1 job(s)" in proc.stdout
    with h5py.File(out / "predictions.h5", "r") as f:
        np.testing.assert_array_equal(f["model1/fold-1/pred"][...], good)
    tables_finite(out)


@pytest.mark.mpi
@pytest.mark.timeout(TIMEOUT)
def test_a_damaged_shard_is_refused_naming_it(tmp_path, eval_data, eval_runs, cfg_nofig):
    """One flipped bit in the images of a shard holding test items: its size is unchanged,
    its hash is not."""
    data = copy_data(eval_data, tmp_path / "data")
    shard = data / "shards" / "shard-00002.h5"
    with h5py.File(shard, "r") as f:
        offset = f["images"].id.get_offset()
    with open(shard, "r+b") as f:
        f.seek(offset + 4 * 100 + 3)
        byte = f.read(1)[0]
        f.seek(-1, os.SEEK_CUR)
        f.write(bytes([byte ^ 0x01]))
    proc = evaluate(cfg_nofig, data, eval_runs, tmp_path / "report", ranks=2)
    one_line(proc, "shard shards/shard-00002.h5", "checksum")
    assert not (tmp_path / "report" / "table1.csv").exists()


# --------------------------------------------------------------------------- a swapped model


@pytest.mark.mpi
@pytest.mark.timeout(TIMEOUT)
def test_a_swapped_model_is_refused(tmp_path, eval_data, eval_runs, cfg_nofig):
    """Checked against train's marker (a job without one is not finished, and skipped:
    tests/evaluate/test_eval_faults.py, tests/test_runs.py)."""
    runs = tmp_path / "runs"
    shutil.copytree(eval_runs, runs)
    job = runs / "model1" / "fold-1"
    shutil.copy(runs / "model2" / "fold-0" / "model.keras", job / "model.keras")
    proc = evaluate(cfg_nofig, eval_data, runs, tmp_path / "report", ranks=2)
    one_line(proc, "model1/fold-1", "refused")
    assert not (tmp_path / "report" / "table1.csv").exists()


# --------------------------------------------------------------------------- one writer


def wait_for_line(proc: subprocess.Popen, text: str) -> None:
    """Read ``proc``'s stdout until a line holds ``text``."""
    line = proc.stdout.readline()
    while line and text not in line:
        line = proc.stdout.readline()
    assert text in line, f"{text!r} never printed (exit {proc.poll()})"


@pytest.mark.mpi
@pytest.mark.timeout(2 * TIMEOUT)
def test_a_second_evaluate_into_the_same_report_is_refused(tmp_path, eval_cfg, eval_data,
                                                           eval_runs, cfg_nofig):
    out = tmp_path / "report"
    first = subprocess.Popen([PYTHON, "-m", "lenshpc", "evaluate", "--config", str(eval_cfg),
                              "--data", str(eval_data), "--runs", str(eval_runs), "--out",
                              str(out)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True, env=env(), start_new_session=True)
    try:
        wait_for_line(first, "evaluating")   # it holds REPORT's lock from before this line
        os.killpg(first.pid, signal.SIGSTOP)  # held there: it cannot finish before the second
        try:
            second = evaluate(cfg_nofig, eval_data, eval_runs, out, ranks=2)
        finally:
            os.killpg(first.pid, signal.SIGCONT)
        one_line(second, f"report {out} is being written by pid {first.pid}")
        assert first.poll() is None   # the refusal did not disturb the first run
        _, stderr = first.communicate(timeout=TIMEOUT)
    finally:
        if first.poll() is None:
            os.killpg(first.pid, signal.SIGKILL)
            first.wait()
    assert first.returncode == 0, stderr
    tables_finite(out)


# --------------------------------------------------------------------------- killed mid-report


@pytest.mark.timeout(2 * TIMEOUT)
def test_killed_after_table1_leaves_no_marker_and_the_rerun_finishes(tmp_path, eval_cfg, eval_data,
                                                                    eval_runs):
    out = tmp_path / "report"
    args = [PYTHON, "-m", "lenshpc", "evaluate", "--config", str(eval_cfg), "--data",
            str(eval_data), "--runs", str(eval_runs), "--out", str(out)]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env(),
                            start_new_session=True)
    try:
        deadline = time.monotonic() + TIMEOUT
        while not (out / "table1.csv").exists():   # figures come next: seconds of drawing
            assert proc.poll() is None, "evaluate ended before table1.csv appeared"
            assert time.monotonic() < deadline
            time.sleep(0.01)
        os.killpg(proc.pid, signal.SIGKILL)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    assert (out / "table1.csv").exists() and not (out / "report.md").exists()
    assert not check_done(out, "report")

    rerun = subprocess.run(args, capture_output=True, text=True, timeout=TIMEOUT, env=env())
    assert rerun.returncode == 0, rerun.stderr
    assert "4 job(s) already evaluated" in rerun.stdout
    assert (out / "report.md").exists()
    tables_finite(out)


# --------------------------------------------------------------------------- REPORT unwritable


def _immutable(path: Path) -> None:
    """Make ``path`` a folder nobody (root included) may create files in."""
    path.mkdir(parents=True, exist_ok=True)
    if os.geteuid() == 0:
        if shutil.which("chattr") is None or subprocess.run(["chattr", "+i", str(path)]).returncode:
            pytest.skip("cannot make a folder unwritable for root here (chattr +i unavailable)")
    else:
        path.chmod(0o500)


def _writable(path: Path) -> None:
    if os.geteuid() == 0:
        subprocess.run(["chattr", "-i", str(path)])
    else:
        path.chmod(0o700)


@pytest.mark.mpi
@pytest.mark.timeout(TIMEOUT)
@pytest.mark.parametrize("where", ["report", "report/sub"])
def test_a_read_only_out_fails_at_once(tmp_path, eval_data, eval_runs, cfg_nofig, where):
    _immutable(tmp_path / "report")
    try:
        t0 = time.monotonic()
        proc = evaluate(cfg_nofig, eval_data, eval_runs, tmp_path / where, ranks=2)
        elapsed = time.monotonic() - t0
    finally:
        _writable(tmp_path / "report")
    one_line(proc, f"--out {tmp_path / where}", "cannot write in")
    assert "evaluating" not in proc.stdout and "already evaluated" not in proc.stdout
    assert elapsed < 60, elapsed   # no TensorFlow start, no prediction
    assert not any((tmp_path / "report").iterdir())


# --------------------------------------------------------------------------- a full disk


@pytest.fixture
def disk(tmp_path) -> Path:
    """A real 32 MB file system (tmpfs), unmounted afterwards."""
    with small_disk(tmp_path / "disk", "32M") as mnt:
        yield mnt


@pytest.mark.timeout(3 * TIMEOUT)
@pytest.mark.parametrize("when", ["predicting", "drawing"])
def test_a_full_disk_is_one_line_and_the_rerun_resumes(disk, eval_cfg, eval_data, eval_runs, when):
    """The disk fills up while evaluate runs: during the predictions (predictions.h5 cannot
    be written) or while figures are drawn (predictions.h5 was written and is kept)."""
    out = disk / "report"
    args = [PYTHON, "-m", "lenshpc", "evaluate", "--config", str(eval_cfg), "--data",
            str(eval_data), "--runs", str(eval_runs), "--out", str(out)]
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=env(), start_new_session=True)
    try:
        if when == "predicting":   # rank 0 says so before TensorFlow starts
            wait_for_line(proc, "evaluating")
        else:
            deadline = time.monotonic() + TIMEOUT
            while not (out / "figures").exists():
                assert proc.poll() is None and time.monotonic() < deadline
                time.sleep(0.01)
        filler = fill(disk)
        stdout, stderr = proc.communicate(timeout=TIMEOUT)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    failed = subprocess.CompletedProcess(args, proc.returncode, stdout, stderr)
    line = one_line(failed, "no space left on the device", "free space")
    if when == "predicting":
        assert f"cannot write {out / 'predictions.h5'}:" in line
        assert not (out / "predictions.h5").exists()
    else:
        assert f"cannot write {out}/figures/" in line and "predictions.h5 is kept" in line
    assert not check_done(out, "report")
    assert not [p for p in out.rglob(".*.tmp*")]   # no temporary file left behind

    filler.unlink()
    rerun = subprocess.run(args, capture_output=True, text=True, timeout=TIMEOUT, env=env())
    assert rerun.returncode == 0, rerun.stderr
    if when == "drawing":
        assert "4 job(s) already evaluated" in rerun.stdout
    tables_finite(out)
    with h5py.File(out / "predictions.h5", "r") as f:
        assert sorted(f"{m}/{k}" for m in f for k in f[m]) == sorted(EVALUATED)
