"""The `lenshpc` entry point and the launcher table it reads ranks from (no launcher
needed: the table is read from given environments)."""

from __future__ import annotations

import pytest

from lenshpc.cli import main, world_rank
from lenshpc.env import LaunchEnv, launch_env


@pytest.mark.parametrize("environ, expected", [
    ({}, LaunchEnv()),
    ({"OMPI_COMM_WORLD_RANK": "3", "OMPI_COMM_WORLD_SIZE": "4",
      "OMPI_COMM_WORLD_LOCAL_RANK": "1", "OMPI_COMM_WORLD_LOCAL_SIZE": "2"},
     LaunchEnv("mpirun", 3, 4, 1, 2, mpi=True)),
    # srun --mpi=pmix (Open MPI): PMIx gives the rank, Slurm the size and local rank.
    ({"PMIX_RANK": "1", "SLURM_PROCID": "1", "SLURM_NTASKS": "2", "SLURM_LOCALID": "1"},
     LaunchEnv("pmix", 1, 2, 1, None, mpi=True)),
    ({"PMI_RANK": "5", "PMI_SIZE": "8", "MPI_LOCALRANKID": "1", "MPI_LOCALNRANKS": "4"},
     LaunchEnv("pmi", 5, 8, 1, 4, mpi=True)),
    ({"HOROVOD_RANK": "1", "HOROVOD_SIZE": "2", "HOROVOD_LOCAL_RANK": "1",
      "HOROVOD_LOCAL_SIZE": "2"}, LaunchEnv("horovodrun", 1, 2, 1, 2, mpi=False)),
    # horovodrun in MPI mode starts its ranks with mpirun: the MPI row wins.
    ({"HOROVOD_RANK": "1", "OMPI_COMM_WORLD_RANK": "1", "OMPI_COMM_WORLD_SIZE": "2"},
     LaunchEnv("mpirun", 1, 2, 0, None, mpi=True)),
    # plain srun (--mpi=none): task numbers, no MPI world.
    ({"SLURM_PROCID": "2", "SLURM_NTASKS": "3", "SLURM_LOCALID": "0", "SLURM_JOB_ID": "9"},
     LaunchEnv("srun", 2, 3, 0, None, mpi=False)),
])
def test_launcher_table(environ, expected):
    assert launch_env(environ) == expected


def test_under_launcher_is_false_in_a_batch_script_and_true_under_mpi():
    assert not launch_env({"SLURM_PROCID": "0", "SLURM_JOB_ID": "9"}).under_launcher
    assert launch_env({"PMI_RANK": "0", "PMI_SIZE": "2"}).under_launcher
    assert launch_env({"HOROVOD_RANK": "0"}).under_launcher


def test_world_rank_stays_importable_and_reads_the_table(monkeypatch):
    for var in ("OMPI_COMM_WORLD_RANK", "PMIX_RANK", "PMI_RANK", "HOROVOD_RANK"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("SLURM_PROCID", "4")
    assert world_rank() == 4


def test_user_error_is_one_line_and_status_2(tmp_path, capsys):
    assert main(["config", "check", str(tmp_path / "missing.yaml")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"lenshpc config: error: CONFIG {tmp_path / 'missing.yaml'}: not found"]
