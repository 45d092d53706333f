"""lenshpc.lock with real processes: one writer per folder, a dead holder's lock taken
over, and completion markers that prove their files."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from lenshpc.config import UserError
from lenshpc.lock import check_done, clear_done, exclusive, mark_done

HOLD = ("import sys, time\n"
        "from lenshpc.lock import exclusive\n"
        "with exclusive(sys.argv[1], 'dataset'):\n"
        "    print('held', flush=True)\n"
        "    time.sleep(600)\n")


def _holder(folder):
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(folder)], stdout=subprocess.PIPE,
                            text=True)
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_a_second_writer_is_refused_naming_the_holder_then_takes_over_a_dead_one(tmp_path):
    proc = _holder(tmp_path / "out")
    try:
        with pytest.raises(UserError, match=rf"being written by pid {proc.pid} on host"):
            with exclusive(tmp_path / "out", "dataset"):
                pass
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.communicate()
    with exclusive(tmp_path / "out", "dataset") as lock:   # the dead holder's file stays
        assert str(os.getpid()) in lock.read_text()


def test_marker_with_relative_paths_from_the_working_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs" / "job").mkdir(parents=True)
    (tmp_path / "runs" / "job" / "model.keras").write_bytes(b"weights")
    (tmp_path / "runs" / "job" / "run.json").write_text("{}")
    mark_done("runs/job", "train", ["runs/job/model.keras", "run.json"])
    assert check_done("runs/job", "train")
    assert check_done(tmp_path / "runs" / "job", "train")
    time.sleep(0.01)
    (tmp_path / "runs" / "job" / "model.keras").write_bytes(b"other!!")
    done = check_done("runs/job", "train")
    assert not done and "changed since it was finished" in done.reason
    clear_done("runs/job", "train")
    assert "missing" in check_done("runs/job", "train").reason
