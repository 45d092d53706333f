"""Under real mpirun: rank-count invariance, kill -9 and resume, verify after damage."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import h5py
import numpy as np
import pytest

from tests.conftest import env, lenshpc, mpirun, mpirun_cmd, require, write_config

pytestmark = pytest.mark.mpi

N, SHARD = 100, 20
ARRAYS = ("images", "labels", "truth", "split")


def read(out: Path) -> dict[str, np.ndarray]:
    with h5py.File(out / "dataset.h5", "r") as f:
        data = {k: f[k][...] for k in ARRAYS}
        data["checksum"] = f.attrs["checksum"]
    return data


def assert_same(a: dict, b: dict) -> None:
    for key in (*ARRAYS, "checksum"):
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)


@pytest.fixture(scope="module")
def config(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("mpi")
    return write_config(root / "c.yaml", image={"size": 32, "supersampling": 2},
                        dataset={"n_images": N, "shard_size": SHARD, "n_folds": 3,
                                 "test_fraction": 0.1})


@pytest.fixture(scope="module")
def serial(config) -> dict:
    out = config.parent / "serial"
    lenshpc("simulate", "--config", config, "--out", out, "--no-progress", check=True)
    return read(out)


@pytest.mark.parametrize("ranks", [2, 3])
def test_same_dataset_with_any_number_of_ranks(config, serial, ranks):
    require("mpirun")
    out = config.parent / f"ranks-{ranks}"
    proc = mpirun(ranks, "simulate", "--config", config, "--out", out)
    assert f"on {ranks} rank(s)" in proc.stdout
    assert "progress:" in proc.stderr  # rank 0 logs the whole job's progress
    assert_same(read(out), serial)
    assert lenshpc("dataset", "verify", out).returncode == 0


@pytest.mark.parametrize("victim", [1, 0])
def test_kill_minus_9_of_a_rank_then_resume_gives_the_uninterrupted_dataset(config, serial, victim,
                                                                            tmp_path):
    require("mpirun")
    out = tmp_path / "ds"
    cmd = mpirun_cmd(2, "simulate", "--config", config, "--out", out, "--no-progress")
    # Test hook (documented in lenshpc.simulate.run): each rank pauses after every shard
    # write, so the kill lands while other shards are unwritten.
    launcher = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                env=env(LENSHPC_TEST_SLOW_SHARD="1.5"), start_new_session=True)
    try:
        deadline = time.monotonic() + 240
        while not list((out / "shards").glob("shard-*.h5")):
            assert launcher.poll() is None, launcher.communicate()
            assert time.monotonic() < deadline, "no shard appeared"
            time.sleep(0.05)
        pid = _rank_pid_by_cmdline(out, victim)
        os.kill(pid, signal.SIGKILL)
        launcher.communicate(timeout=120)
    finally:
        if launcher.poll() is None:
            os.killpg(launcher.pid, signal.SIGKILL)
            launcher.wait()
    assert launcher.returncode != 0
    assert not (out / "dataset.h5").exists()
    done = {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in (out / "shards").glob("shard-*.h5")}
    assert 0 < len(done) < N // SHARD
    proc = mpirun(2, "simulate", "--config", config, "--out", out)
    assert "resuming" in proc.stderr
    # completed shards were not redone
    for name, stamp in done.items():
        p = out / "shards" / name
        assert (p.stat().st_ino, p.stat().st_mtime_ns) == stamp, name
    assert not list((out / "shards").glob(".*tmp"))
    assert_same(read(out), serial)


def _rank_pid_by_cmdline(out: Path, rank: int) -> int:
    """PID of the python process of MPI rank ``rank`` simulating into ``out``."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().split(b"\0")
            environ = (entry / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if (str(out).encode() in cmdline and b"mpi4py" in cmdline
                and f"OMPI_COMM_WORLD_RANK={rank}".encode() in environ):
            return int(entry.name)
    raise AssertionError(f"no rank {rank} process for {out}")


def test_verify_catches_a_truncated_shard_of_an_mpi_dataset(config, serial, tmp_path):
    require("mpirun")
    out = tmp_path / "ds"
    mpirun(3, "simulate", "--config", config, "--out", out, "--no-progress")
    shard = out / "shards" / "shard-00003.h5"
    os.truncate(shard, shard.stat().st_size - 4096)
    proc = lenshpc("dataset", "verify", out)
    assert proc.returncode == 1 and "shard-00003.h5" in proc.stderr
    for other in ("shard-00000.h5", "shard-00001.h5", "shard-00002.h5", "shard-00004.h5"):
        assert other not in proc.stderr


def test_bad_input_under_mpirun_is_one_line_exit_2(config, tmp_path):
    require("mpirun")
    bad = write_config(tmp_path / "bad.yaml", image={"size": -8})
    proc = mpirun(2, "simulate", "--config", bad, "--out", tmp_path / "ds", check=False, timeout=120)
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    errors = [x for x in proc.stderr.splitlines() if "error:" in x]
    assert len(errors) == 1 and "image.size" in errors[0]
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "ds").exists()
