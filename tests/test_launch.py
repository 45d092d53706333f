"""The launch lines' one owner: the argv of a stage under each launcher, the same line in
a script, and the bin/ scripts printing the line that lenshpc run would run."""

from __future__ import annotations

import shlex
import subprocess

import pytest

from lenshpc.launch import HOROVODRUN_BINDING, local_argv, shell_line, stage_argv
from tests.conftest import PYTHON, ROOT


def test_launch_lines_of_each_launcher():
    tail = ["-m", "mpi4py", "-m", "lenshpc", "evaluate"]
    assert stage_argv("evaluate", launcher=None) == ["python", "-m", "lenshpc", "evaluate"]
    assert stage_argv("evaluate", launcher="mpirun", np=4, cores=8) == [
        "mpirun", "-n", "4", "--bind-to", "none", "python", *tail]
    assert stage_argv("evaluate", launcher="mpirun", np=4, cores=2)[5] == "--oversubscribe"
    # one CPU a rank: Open MPI may pin it; srun repeats --cpus-per-task only above one
    assert stage_argv("evaluate", launcher="mpirun", np=4, cpus_per_rank=1)[:4] == [
        "mpirun", "-n", "4", "python"]
    assert stage_argv("evaluate", launcher="srun", cpus_per_rank=2, srun_mpi="pmix") == [
        "srun", "--mpi=pmix", "--cpus-per-task=2", "python", *tail]
    assert stage_argv("train", ["--job", "1"], launcher="horovodrun", np=2) == [
        "horovodrun", "-np", "2", "-H", "localhost:2", f"--binding-args={HOROVODRUN_BINDING}",
        "python", "-m", "lenshpc", "train", "--job", "1"]
    with pytest.raises(ValueError, match="unknown launcher"):
        stage_argv("train", launcher="aprun")


def test_shell_line_quotes_values_and_expands_the_scripts_variables():
    argv = stage_argv("train", launcher="horovodrun", np=8, hosts="$hosts")
    assert shell_line(argv) == ("horovodrun -np 8 -H \"$hosts\" --binding-args='--bind-to none "
                                "--map-by slot' python -m lenshpc train")
    assert shell_line(stage_argv("simulate", launcher="mpirun", np="$SLURM_NTASKS",
                                 cpus_per_rank=2)) == (
        'mpirun -n "$SLURM_NTASKS" --bind-to none python -m mpi4py -m lenshpc simulate')


@pytest.mark.parametrize("script, launcher", [("simulate", "mpirun"), ("evaluate", "mpirun"),
                                              ("train", "mpirun"), ("train", "horovodrun")])
def test_bin_scripts_run_the_line_of_lenshpc_run(script, launcher):
    args = ["--config", "a b.yaml"]
    proc = subprocess.run([PYTHON, "-m", "lenshpc.launch", "--np", "3", "--launcher", launcher,
                           "--print", script, *args], capture_output=True, text=True, check=True)
    assert shlex.split(proc.stdout) == local_argv(script, args, 3, launcher)
    text = (ROOT / "bin" / script).read_text()
    assert '-m lenshpc.launch --np "${NP:-2}" ' in text and "mpirun -n" not in text


def test_bin_train_refuses_an_unknown_launcher():
    if not (ROOT / ".venv" / "bin" / "lenshpc").exists():
        pytest.skip("bin/train would run bin/setup first")
    proc = subprocess.run([ROOT / "bin" / "train"], capture_output=True, text=True,
                          env={"PATH": "/usr/bin:/bin", "LAUNCHER": "aprun"})
    assert proc.returncode == 2
    assert proc.stderr == "bin/train: error: LAUNCHER must be mpirun or horovodrun, not 'aprun'\n"
