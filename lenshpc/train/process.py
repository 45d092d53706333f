"""The training process itself: its signals, Horovod's start, the device and memory.

:class:`StopRequest` turns SIGTERM/SIGUSR1 into a flag the training loop checks between
steps. :func:`init_horovod` starts Horovod, checks and pins the device by local rank (a
job given GPUs never falls back to the CPU silently; see :mod:`lenshpc.train.device`)
and shares the node's CPU threads among its ranks; :class:`HorovodComm` carries the
ranks' agreement (:class:`lenshpc.parallel.World`) over Horovod.
:func:`memory_limit_bytes` is what ``train.input: auto`` weighs a rank's share against.
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path
from typing import Any

from lenshpc.config import UserError
from lenshpc.env import launch_env

# --------------------------------------------------------------------------- signals


class StopRequest:
    """Remembers SIGTERM/SIGUSR1 (Slurm's warnings before a time limit or preemption).

    The handler only sets a flag; the training loop decides when to stop (between steps,
    agreed by all ranks), so a checkpoint is never left half-written."""

    SIGNALS = (signal.SIGTERM, signal.SIGUSR1)

    def __init__(self) -> None:
        self.signal: str | None = None

    def install(self) -> "StopRequest":
        for sig in self.SIGNALS:
            signal.signal(sig, self._handle)
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        self.signal = signal.Signals(signum).name

    @property
    def requested(self) -> bool:
        return self.signal is not None


# --------------------------------------------------------------------------- Horovod edge


def init_horovod(threads_per_rank: int | None, device: str = "auto",
                  jit_compile: bool | None = None):
    """hvd.init(); the device checked and pinned by local rank; CPU threads shared by the
    node's ranks. Returns (tf, hvd, this rank's device record, a problem or None)."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf

    from lenshpc.train.device import choose_device
    # The device first (the list of GPUs needs no Horovod): it decides how Horovod loads.
    gpus = tf.config.list_physical_devices("GPU")
    built_cuda = bool(tf.test.is_built_with_cuda())
    try:
        kind = choose_device(device, os.environ, [g.name for g in gpus], built_cuda)
        problem = None
    except UserError as exc:
        kind, problem = "cpu", str(exc)
    if kind == "gpu" and jit_compile is not False:
        # Horovod's allreduce inside an XLA-compiled step needs its XLA operations (GPU
        # only), switched on before Horovod loads them. Never on the CPU: there they
        # slowed every step of the debug network by a fifth (docs/performance.md).
        os.environ.setdefault("HOROVOD_ENABLE_XLA_OPS", "1")
    import horovod.tensorflow.keras as hvd

    # Keras times the first steps' callbacks, which include Horovod's one-off broadcast,
    # and then warns about "slow" callbacks; that warning would only mislead here.
    tf.get_logger().addFilter(
        lambda record: "is slow compared to the batch time" not in record.getMessage())
    hvd.init()
    memory = None
    if kind == "gpu":
        index = hvd.local_rank() % len(gpus)
        gpu = gpus[index]
        tf.config.experimental.set_memory_growth(gpu, True)
        tf.config.set_visible_devices(gpu, "GPU")
        details = tf.config.experimental.get_device_details(gpu)
        name = details.get("device_name", gpu.name)
        memory = _gpu_memory_bytes(index)
    else:
        if gpus:
            tf.config.set_visible_devices([], "GPU")
        name = "CPU"
    if threads_per_rank is None:
        avail = len(os.sched_getaffinity(0))
        # A launcher that binds each rank already gave it its own CPUs.
        bound = avail < (os.cpu_count() or avail)
        threads_per_rank = avail if bound else max(1, avail // hvd.local_size())
    tf.config.threading.set_intra_op_parallelism_threads(threads_per_rank)
    tf.config.threading.set_inter_op_parallelism_threads(max(1, min(2, threads_per_rank)))
    record = {"rank": hvd.rank(), "host": os.uname().nodename, "device": kind, "name": name,
              "tf_built_with_cuda": built_cuda, "threads": threads_per_rank,
              "memory_bytes": memory, **launch_facts(hvd)}
    return tf, hvd, record, problem


class HorovodComm:
    """The collectives of :class:`lenshpc.parallel.World` over Horovod's: in a training
    process Horovod owns MPI (with mpi4py's collectives beside its background thread, Open
    MPI crashed now and then), or there is none (horovodrun --gloo). For more than one rank."""

    def __init__(self, hvd_tf: Any):
        self._hvd, self._calls = hvd_tf, 0

    def _name(self, what: str) -> str:
        # Every rank makes the same calls in the same order, so the names match.
        self._calls += 1
        return f"lenshpc.world.{what}.{self._calls}"

    def allgather(self, obj: Any) -> list[Any]:
        return self._hvd.allgather_object(obj, name=self._name("allgather"))

    def bcast(self, obj: Any, root: int = 0) -> Any:
        return self._hvd.broadcast_object(obj, root_rank=root, name=self._name("bcast"))


def launch_facts(hvd: Any) -> dict[str, Any]:
    """How this rank was started, for run.json: the launcher whose variables it sees
    (:func:`lenshpc.env.launch_env`; ``none`` without one), Horovod's controller
    (``mpi`` or ``gloo``) and, when MPI is in use, the MPI library's first line
    (e.g. ``Open MPI v5.0.8, ...``)."""
    controller = "mpi" if hvd.mpi_enabled() else "gloo" if hvd.gloo_enabled() else "none"
    mpi = None
    if controller == "mpi" or "mpi4py.MPI" in sys.modules:
        # MPI is initialised already (by Horovod or mpi4py): this only asks its name.
        from mpi4py import MPI
        mpi = MPI.Get_library_version().replace("\x00", "").strip().splitlines()[0].strip()
    return {"launcher": launch_env().launcher or "none", "controller": controller, "mpi": mpi}


def _gpu_memory_bytes(index: int) -> int | None:
    """Total memory of the process' GPU ``index`` (as CUDA_VISIBLE_DEVICES numbers it),
    from nvidia-smi; None when it cannot be asked."""
    import subprocess
    visible = os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",")
    which = visible[index] if index < len(visible) and visible[index].strip() else str(index)
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=memory.total", "--format=csv,noheader,"
                              "nounits", "-i", which], capture_output=True, text=True,
                             timeout=30, check=True).stdout
        return int(float(out.split()[0]) * 2**20)
    except (OSError, subprocess.SubprocessError, ValueError, IndexError):
        return None


def cgroup_limit_files(proc_cgroup: str, root: str = "/sys/fs/cgroup") -> list[Path]:
    """The memory-limit files of this process' cgroup and of every cgroup above it, from
    the text of ``/proc/self/cgroup``: v1 ``N:memory:/path`` gives
    ``root/memory/path/memory.limit_in_bytes``, v2 ``0::/path`` gives
    ``root/path/memory.max``. Slurm puts each job in a nested cgroup
    (``.../slurm/uid_U/job_J/...``): the limit is there, not at the root."""
    files = []
    for line in proc_cgroup.splitlines():
        parts = line.strip().split(":", 2)
        if len(parts) != 3:
            continue
        _, controllers, path = parts
        if "memory" in controllers.split(","):
            base, name = Path(root) / "memory", "memory.limit_in_bytes"
        elif controllers == "":
            base, name = Path(root), "memory.max"
        else:
            continue
        rel = Path(path.lstrip("/"))
        for up in (rel, *rel.parents):
            files.append(base / up / name)
    return files


def memory_limit_bytes() -> int:
    """The memory this process may use: the node's physical memory, or a lower limit of
    its own cgroup or any cgroup above it (v1 or v2), or of ``ulimit -v``."""
    import resource
    limits = [os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")]
    try:
        proc_cgroup = Path("/proc/self/cgroup").read_text()
    except OSError:
        proc_cgroup = ""
    for path in cgroup_limit_files(proc_cgroup):
        try:
            text = path.read_text().strip()
        except OSError:
            continue
        if text.isdigit():
            limits.append(int(text))
    soft = resource.getrlimit(resource.RLIMIT_AS)[0]
    if soft != resource.RLIM_INFINITY:
        limits.append(int(soft))
    return min(limits)
