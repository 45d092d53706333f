"""Train on a full disk, and into an --out that cannot be a directory: one line, exit 2;
after space is freed the same command resumes from the last whole epoch."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import lenshpc
from tests.faults.disk import resize, small_disk
from tests.train.train_util import history_rows, run_json, train_config


@pytest.fixture
def disk(tmp_path):
    with small_disk(tmp_path / "disk", "160k") as mnt:
        yield mnt


def test_full_disk_is_one_line_and_a_rerun_resumes(train_data, disk, tmp_path):
    cfg = train_config(tmp_path / "c.yaml", epochs=2, tensorboard=False)
    runs = disk / "runs"
    proc = lenshpc("train", "--config", cfg, "--data", train_data, "--out", runs, "--job", 4)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "disk full writing" in lines[0], proc.stderr
    assert "run the same command to resume" in lines[0]
    assert not list(Path(runs).rglob(".*tmp*")), "temporary files left on the full disk"
    resize(disk, "8m")
    again = lenshpc("train", "--config", cfg, "--data", train_data, "--out", runs, "--job", 4)
    assert again.returncode == 0, again.stderr
    assert run_json(runs, "model3/fold-0")["finished"] is True
    assert len(history_rows(runs, "model3/fold-0")) == 3


def test_out_below_a_file_is_one_line(train_cfg, train_data, tmp_path):
    (tmp_path / "FILE").write_text("x")
    proc = lenshpc("train", "--config", train_cfg, "--data", train_data,
                   "--out", tmp_path / "FILE" / "sub", "--job", 0)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "is a file, not a folder" in lines[0], proc.stderr
