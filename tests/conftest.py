"""Shared test helpers: real mpirun / horovodrun launches, small configs.

Everything here runs the real thing (mpirun, HDF5 files, the installed `lenshpc`).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
PYTHON = sys.executable
#: Open MPI refuses root without these; tests may launch more ranks than cores.
MPI_ENV = {"OMPI_ALLOW_RUN_AS_ROOT": "1", "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1",
           "OMPI_MCA_rmaps_base_oversubscribe": "1", "PYTHONUNBUFFERED": "1",
           "TF_CPP_MIN_LOG_LEVEL": "2"}
os.environ.update(MPI_ENV)


def env(**extra: str) -> dict[str, str]:
    """The environment for child processes (venv first on PATH)."""
    e = dict(os.environ)
    e["PATH"] = f"{Path(PYTHON).parent}{os.pathsep}{e.get('PATH', '')}"
    e.update(extra)
    return e


def lenshpc(*args: str, timeout: float = 600, check: bool = False, **kw) -> subprocess.CompletedProcess:
    """Run ``lenshpc ARGS`` as a separate process (no launcher)."""
    proc = subprocess.run([PYTHON, "-m", "lenshpc", *map(str, args)], capture_output=True,
                          text=True, timeout=timeout, env=env(), **kw)
    if check and proc.returncode != 0:
        raise AssertionError(f"lenshpc {' '.join(map(str, args))} -> {proc.returncode}\n"
                             f"{proc.stdout}\n{proc.stderr}")
    return proc


def simulate_dataset(config: Path, out: Path) -> Path:
    """A real dataset made by ``lenshpc simulate`` from ``config`` (input of later stages)."""
    lenshpc("simulate", "--config", config, "--out", out, "--no-progress", check=True)
    return out


def mpirun_cmd(n: int, *args: str) -> list[str]:
    """``mpirun -n N python -m mpi4py -m lenshpc ARGS`` as an argument list."""
    return ["mpirun", "-n", str(n), "--oversubscribe", "--bind-to", "none",
            PYTHON, "-m", "mpi4py", "-m", "lenshpc", *map(str, args)]


def mpirun(n: int, *args: str, timeout: float = 600, check: bool = True) -> subprocess.CompletedProcess:
    """Run lenshpc under a real ``mpirun -n N``."""
    proc = subprocess.run(mpirun_cmd(n, *args), capture_output=True, text=True,
                          timeout=timeout, env=env())
    if check and proc.returncode != 0:
        raise AssertionError(f"mpirun -n {n} lenshpc {' '.join(map(str, args))} -> "
                             f"{proc.returncode}\n{proc.stdout}\n{proc.stderr}")
    return proc


def write_config(path: Path, base: str | Path = ROOT / "configs" / "debug.yaml", **overrides) -> Path:
    """Write ``base`` with nested overrides (``dataset={'n_images': 40}``) to ``path``."""
    data = yaml.safe_load(Path(base).read_text()) or {}

    def merge(into: dict, new: dict) -> None:
        for k, v in new.items():
            if isinstance(v, dict) and isinstance(into.get(k), dict):
                merge(into[k], v)
            else:
                into[k] = v

    merge(data, overrides)
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def require(tool: str) -> None:
    """Skip (never in CI) when an external tool is missing."""
    if shutil.which(tool) is None:
        if os.environ.get("CI"):
            pytest.fail(f"{tool} is not installed; bin/setup must install it in CI")
        pytest.skip(f"{tool} is not installed")


@pytest.fixture(scope="session")
def debug_config() -> Path:
    return ROOT / "configs" / "debug.yaml"


@pytest.fixture(scope="session")
def slurm_cluster() -> Iterator:
    """A running one-node Slurm (tests/slurm/cluster.py); ``SLURM_CONF`` points at it for
    the whole session. Its folder is readable by every user (the no-root test's plain
    user runs srun too); its munge key stays root's.

    Where Slurm cannot run (not root, no apt to install it) the tests that use it skip
    with the reason, except in CI (``CI`` set), where they fail: CI must run them."""
    from tests.slurm.cluster import OneNodeSlurm, Unavailable, ensure_installed

    base = Path(tempfile.mkdtemp(prefix="lenshpc-slurm-"))
    base.chmod(0o755)
    try:
        ensure_installed()
        cluster = OneNodeSlurm(base)
        cluster.start()
    except Unavailable as exc:
        shutil.rmtree(base, ignore_errors=True)
        if os.environ.get("CI"):
            pytest.fail(f"Slurm tests cannot run in CI: {exc}")
        pytest.skip(f"no Slurm: {exc}")
    old = os.environ.get("SLURM_CONF")
    os.environ.update(cluster.env)  # child processes (sbatch, lenshpc) find this cluster
    try:
        yield cluster
    finally:
        cluster.stop()
        shutil.rmtree(base, ignore_errors=True)
        if old is None:
            os.environ.pop("SLURM_CONF", None)
        else:
            os.environ["SLURM_CONF"] = old
