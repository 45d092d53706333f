"""`lenshpc slurm check`, the pre-flight of a submission: its parsing and rules (no
daemon), and its verdicts against the real one-node Slurm (partitions `debug`, the
default without a time limit, and `short`, MaxTime 10 minutes; no GPUs)."""

from __future__ import annotations

from pathlib import Path

import pytest

from lenshpc.config import load
from lenshpc.slurm.check import SlurmFacts, parse_partitions, run_checks, slurm_minutes
from lenshpc.slurm.script import job_environment
from tests.conftest import lenshpc, write_config


def test_slurm_times_in_minutes():
    assert slurm_minutes("30") == 30 and slurm_minutes("01:30") == 1.5
    assert slurm_minutes("02:00:00") == 120 and slurm_minutes("1-00") == 1440
    assert slurm_minutes("1-02:03") == 1440 + 123 and slurm_minutes("1-00:00:30") == 1440.5
    assert slurm_minutes("UNLIMITED") is None and slurm_minutes("INFINITE") is None


def test_partitions_from_scontrol_and_sinfo():
    show = ("PartitionName=cpu AllowGroups=ALL Default=YES MaxTime=1-00:00:00 State=UP\n"
            "PartitionName=gpu Default=NO MaxTime=UNLIMITED State=UP\n")
    gres = "cpu* (null)\ngpu gpu:a100:4(S:0-1),tmpdisk:100\ngpu gpu:2\n"
    parts = parse_partitions(show, gres)
    assert parts["cpu"].default and parts["cpu"].max_time_min == 1440
    assert parts["cpu"].gpus_per_node == 0
    assert parts["gpu"].gpus_per_node == 4 and parts["gpu"].max_time_min is None


def test_hdf5_locking_is_merged_into_a_users_environment(tmp_path):
    mine = load(write_config(tmp_path / "a.yaml", slurm={"environment": ["NCCL_DEBUG=WARN"]}))
    assert job_environment(mine.slurm) == ("HDF5_USE_FILE_LOCKING=FALSE", "NCCL_DEBUG=WARN")
    on = load(write_config(tmp_path / "b.yaml",
                           slurm={"environment": ["HDF5_USE_FILE_LOCKING=TRUE"]}))
    assert job_environment(on.slurm) == ("HDF5_USE_FILE_LOCKING=TRUE",)
    facts = SlurmFacts(parse_partitions("PartitionName=debug Default=YES MaxTime=UNLIMITED", ""),
                       {"pmix"})
    verdicts = {c.what: c.verdict for c in run_checks(on, facts, Path("/tmp/w"), Path("/opt/v"))}
    assert verdicts["HDF5 file locking"] == "warn" and verdicts["workdir"] == "warn"
    assert verdicts["python environment"] == "pass"


def _check(tmp_path: Path, **slurm) -> tuple[int, list[str]]:
    config = write_config(tmp_path / "study.yaml", slurm={"srun_mpi": "pmix", **slurm})
    proc = lenshpc("slurm", "check", "--config", config, "--workdir", tmp_path / "w")
    return proc.returncode, proc.stdout.splitlines()


@pytest.mark.slurm
def test_check_passes_the_debug_config(slurm_cluster, tmp_path):
    status, lines = _check(tmp_path)
    assert status == 0, lines
    assert not [ln for ln in lines if ln.startswith("fail")], lines
    assert any(ln.startswith("pass") and "srun --mpi" in ln and "pmix" in ln for ln in lines)
    assert any(ln.startswith("pass") and "train partition" in ln and "debug" in ln
               for ln in lines)


@pytest.mark.slurm
@pytest.mark.parametrize("slurm, failure", [
    ({"partition": "nosuch"}, "simulate partition  nosuch does not exist (partitions: debug, short)"),
    ({"train": {"gpus": 1}}, "slurm.train.gpus 1 per node, but partition debug has 0 GPU(s)"),
    ({"train": {"partition": "short", "time": "00:30:00"}},
     "slurm.train.time 00:30:00 exceeds MaxTime of partition short (10 min)"),
    ({"srun_mpi": "nosuch"}, "slurm.srun_mpi 'nosuch' is not offered by this Slurm"),
])
def test_check_fails_what_the_cluster_refuses(slurm_cluster, tmp_path, slurm, failure):
    status, lines = _check(tmp_path, **slurm)
    assert status == 1, lines
    fails = [ln for ln in lines if ln.startswith("fail")]
    assert any(failure in ln for ln in fails), lines


@pytest.mark.slurm
def test_submit_runs_the_check_first(slurm_cluster, tmp_path):
    config = write_config(tmp_path / "study.yaml", slurm={"partition": "nosuch"})
    proc = lenshpc("slurm", "submit", "--config", config, "--workdir", tmp_path / "w")
    assert proc.returncode == 2
    assert "nosuch does not exist" in proc.stdout
    assert proc.stderr.strip().splitlines() == [
        "lenshpc slurm: error: the cluster refuses parts of the config (fail above); fix them, "
        "or submit with --no-check"]
    assert slurm_cluster.queue() == []
