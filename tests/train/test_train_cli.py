"""``lenshpc train`` refusing bad input (one line, exit 2, nothing written) and --list-jobs.

None of these start TensorFlow: the checks run before it, identically on every rank."""

from __future__ import annotations

import shutil
from pathlib import Path

import h5py
import pytest

from tests.conftest import ROOT, lenshpc, mpirun, require, write_config
from tests.train.train_util import OVERRIDES


def test_list_jobs_is_model_major():
    proc = lenshpc("train", "--config", ROOT / "configs" / "paper.yaml", "--list-jobs", check=True)
    lines = proc.stdout.splitlines()
    assert lines[0].split() == ["job", "model", "fold", "p1", "p2"]
    assert len(lines) == 13
    assert lines[6].split() == ["5", "model2", "1", "0.2", "0.2"]
    assert lines[12].split() == ["11", "model3", "3", "0", "0"]


def _no_split_dataset(src: Path, dst: Path) -> Path:
    dst.mkdir()
    with h5py.File(src / "dataset.h5", "r") as s, h5py.File(dst / "dataset.h5", "w") as d:
        d["images"] = s["images"][...]
        d["labels"] = s["labels"][...]
        d["labels"].attrs["names"] = s["labels"].attrs["names"]
        for k, v in s.attrs.items():
            d.attrs[k] = v
    return dst


def _missing_shard(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    next((dst / "shards").glob("shard-*.h5")).unlink()
    return dst


def _incomplete(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    (dst / "dataset.h5").unlink()
    return dst


@pytest.mark.parametrize("case, args, message", [
    ("no dataset", ["--job", "0"], ": not found"),
    ("incomplete", ["--job", "0"], "is incomplete (no dataset.h5 yet)"),
    ("no split", ["--job", "0"], "has no 'split' array"),
    ("missing shard", ["--job", "0"], "shard shards/shard-"),
    ("other size", ["--job", "0"], "was made from another config (it differs at image.size: 32 -> 64"),
    ("data", ["--job", "6"], "job 6 is out of range; the config has jobs 0..5"),
    ("data", ["--job", "-1"], "job -1 is out of range"),
    ("data", ["--model", "model1", "--fold", "2"], "fold 2 is out of range; the config has folds 0..1"),
    ("data", ["--model", "model7", "--fold", "0"], "unknown model 'model7'"),
    ("data", ["--job", "1", "--fold", "0"], "give --job, or --model and --fold, not both"),
    ("data", [], "give --job J, or --model NAME and --fold K"),
    ("data", ["--job", "0", "--epochs", "0"], "--epochs must be at least 1"),
])
def test_bad_input_is_one_line_and_exit_2(train_cfg, train_data, tmp_path, case, args, message):
    cfg, data = train_cfg, train_data
    if case == "no dataset":
        data = tmp_path / "nothing"
    elif case == "incomplete":
        data = _incomplete(train_data, tmp_path / "incomplete")
    elif case == "no split":
        data = _no_split_dataset(train_data, tmp_path / "nosplit")
    elif case == "missing shard":
        data = _missing_shard(train_data, tmp_path / "holes")
    elif case == "other size":
        cfg = write_config(tmp_path / "big.yaml", **{**OVERRIDES, "image": {"size": 64}})
    out = tmp_path / "runs"
    proc = lenshpc("train", "--config", cfg, "--data", data, "--out", out, *args)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("lenshpc train: error: "), proc.stderr
    assert message in lines[0]
    assert not out.exists()


def test_missing_config_file(tmp_path):
    proc = lenshpc("train", "--config", tmp_path / "none.yaml", "--list-jobs")
    assert proc.returncode == 2
    assert proc.stderr.strip() == f"lenshpc train: error: --config {tmp_path / 'none.yaml'}: not found"


@pytest.mark.mpi
def test_bad_input_under_mpirun_is_said_once(train_cfg, train_data, tmp_path):
    require("mpirun")
    proc = mpirun(2, "train", "--config", train_cfg, "--data", train_data, "--out",
                  tmp_path / "runs", "--job", "9", check=False, timeout=300)
    assert proc.returncode == 2
    assert proc.stderr.count("lenshpc train: error: job 9 is out of range") == 1
    assert "Traceback" not in proc.stderr
