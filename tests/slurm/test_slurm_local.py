"""`lenshpc run`: the whole pipeline on this machine under real mpirun, then again (skips)."""

from __future__ import annotations

import csv
import json

import pytest

from lenshpc.launch import launcher_env, local_argv
from tests.conftest import lenshpc, require, write_config

pytestmark = [pytest.mark.mpi, pytest.mark.slow]


def test_run_whole_pipeline_then_skip_what_is_done(tmp_path):
    require("mpirun")
    config = write_config(tmp_path / "tiny.yaml", dataset={"n_images": 120, "shard_size": 30},
                          train={"models": [{"name": "model3"}], "epochs": 1})
    w = tmp_path / "w"
    proc = lenshpc("run", "--config", config, "--workdir", w, "--np", "2", timeout=1200)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    out = proc.stdout
    for stage in ("simulate", "train job 0 of 2 (model3/fold-0)",
                  "train job 1 of 2 (model3/fold-1)", "evaluate"):
        assert f"lenshpc run: {stage}: mpirun -n 2 " in out
    for k in (0, 1):
        run = w / "runs" / "model3" / f"fold-{k}" / "run.json"
        assert json.loads(run.read_text())["finished"]
    with (w / "report" / "table1.csv").open() as f:
        assert [row["model"] for row in csv.DictReader(f)] == ["model3"]
    assert (w / "report" / "table1.md").is_file() and (w / "config.yaml").is_file()

    again = lenshpc("run", "--config", config, "--workdir", w, "--np", "2", check=True)
    assert "mpirun" not in again.stdout
    assert "lenshpc run: simulate: done" in again.stdout
    assert "lenshpc run: evaluate: done" in again.stdout


def test_run_bad_input_is_one_line(tmp_path):
    proc = lenshpc("run", "--config", tmp_path / "missing.yaml", "--workdir", tmp_path / "w")
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        f"lenshpc run: error: --config {tmp_path / 'missing.yaml'}: not found"]
    assert not (tmp_path / "w").exists()
    proc = lenshpc("run", "--config", tmp_path / "missing.yaml", "--workdir", tmp_path / "w",
                   "--np", "0")
    assert proc.returncode == 2 and "--np: 0 is not at least 1" in proc.stderr


def test_stage_commands():
    one = local_argv("simulate", ["--out", "d"], 1, None, cores=2)
    assert one[1:] == ["-m", "lenshpc", "simulate", "--out", "d"]
    two = local_argv("evaluate", [], 2, "mpirun", cores=2)
    assert two[:5] == ["mpirun", "-n", "2", "--bind-to", "none"] and "--oversubscribe" not in two
    assert two[-5:] == ["-m", "mpi4py", "-m", "lenshpc", "evaluate"]
    assert "--oversubscribe" in local_argv("train", [], 4, "mpirun", cores=2)
    hvd = local_argv("train", ["--job", "3"], 2, "horovodrun", cores=2)
    assert hvd[1:5] == ["-np", "2", "-H", "localhost:2"] and hvd[-3:] == ["train", "--job", "3"]
    assert hvd[5] == "--binding-args=--bind-to none --map-by slot"
    root = launcher_env({"PATH": "/bin"}, uid=0)
    assert root["OMPI_ALLOW_RUN_AS_ROOT"] == "1" and root["OMPI_ALLOW_RUN_AS_ROOT_CONFIRM"] == "1"
    assert "OMPI_ALLOW_RUN_AS_ROOT" not in launcher_env({"PATH": "/bin"}, uid=1000)

