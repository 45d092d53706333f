"""What the environment variables say about this process, read in one place into typed fields.

Three tables, none of which imports MPI: the launcher that started the process and its
place among the processes started with it (:func:`launch_env`: mpirun, PMIx, PMI,
horovodrun, srun), the Slurm job it runs in (:func:`from_environ`: every ``SLURM_*``
variable lenshpc uses) and the GPUs a scheduler or the user handed it (:func:`gpus_given`).
Nothing else in lenshpc reads these variables.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from typing import Any, Mapping

# --------------------------------------------------------------------------- Slurm


def _int(environ: Mapping[str, str], name: str) -> int | None:
    value = environ.get(name, "").strip()
    try:
        return int(value)
    except ValueError:  # unset, empty, or "(null)"
        return None


def _str(environ: Mapping[str, str], name: str) -> str | None:
    value = environ.get(name, "").strip()
    return value if value and value != "(null)" else None


def _memory_mb(environ: Mapping[str, str], name: str) -> int | None:
    """Slurm gives memory in MB (sometimes with a unit suffix)."""
    value = _str(environ, name)
    if value is None:
        return None
    scale = {"K": 1 / 1024, "M": 1, "G": 1024, "T": 1024 ** 2}
    try:
        if value[-1].upper() in scale:
            return int(float(value[:-1]) * scale[value[-1].upper()])
        return int(value)
    except ValueError:
        return None


@dataclass(frozen=True)
class SlurmEnv:
    """What Slurm tells a job (and each of its tasks) about itself; None when not set."""

    job_id: int | None
    job_name: str | None
    array_job_id: int | None
    array_task_id: int | None
    array_task_count: int | None
    restart_count: int
    cluster: str | None
    partition: str | None
    account: str | None
    nodelist: str | None
    num_nodes: int | None
    node_name: str | None
    ntasks: int | None
    cpus_per_task: int | None
    cpus_on_node: int | None
    mem_per_cpu_mb: int | None
    mem_per_node_mb: int | None
    gpus_on_node: int | None
    submit_dir: str | None
    procid: int | None
    localid: int | None

    @property
    def in_job(self) -> bool:
        """True inside a Slurm job (batch script or step)."""
        return self.job_id is not None

    @property
    def job_ref(self) -> str | None:
        """How ``scontrol``/``scancel`` name this job: ``ARRAYID_TASK`` for an array task."""
        if self.array_job_id is not None and self.array_task_id is not None:
            return f"{self.array_job_id}_{self.array_task_id}"
        return None if self.job_id is None else str(self.job_id)

    def describe(self) -> str:
        """One line for a job's log."""
        if not self.in_job:
            return "not inside a Slurm job"
        parts = [f"slurm job {self.job_ref}"]
        if self.job_name:
            parts[0] += f" ({self.job_name})"
        if self.restart_count:
            parts.append(f"restart {self.restart_count}")
        parts.append(f"on {self.nodelist or self.node_name or '?'}")
        if self.ntasks is not None:
            parts.append(f"{self.ntasks} task(s) x {self.cpus_per_task or 1} cpu(s)")
        if self.gpus_on_node:
            parts.append(f"{self.gpus_on_node} gpu(s) per node")
        if self.partition:
            parts.append(f"partition {self.partition}")
        return ", ".join(parts)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def from_environ(environ: Mapping[str, str] | None = None) -> SlurmEnv:
    """Read every ``SLURM_*`` variable lenshpc uses (default: ``os.environ``)."""
    e = os.environ if environ is None else environ
    return SlurmEnv(
        job_id=_int(e, "SLURM_JOB_ID") if "SLURM_JOB_ID" in e else _int(e, "SLURM_JOBID"),
        job_name=_str(e, "SLURM_JOB_NAME"),
        array_job_id=_int(e, "SLURM_ARRAY_JOB_ID"),
        array_task_id=_int(e, "SLURM_ARRAY_TASK_ID"),
        array_task_count=_int(e, "SLURM_ARRAY_TASK_COUNT"),
        restart_count=_int(e, "SLURM_RESTART_COUNT") or 0,
        cluster=_str(e, "SLURM_CLUSTER_NAME"),
        partition=_str(e, "SLURM_JOB_PARTITION"),
        account=_str(e, "SLURM_JOB_ACCOUNT"),
        nodelist=_str(e, "SLURM_JOB_NODELIST") or _str(e, "SLURM_NODELIST"),
        num_nodes=_int(e, "SLURM_JOB_NUM_NODES") or _int(e, "SLURM_NNODES"),
        node_name=_str(e, "SLURMD_NODENAME"),
        ntasks=_int(e, "SLURM_NTASKS") or _int(e, "SLURM_NPROCS"),
        cpus_per_task=_int(e, "SLURM_CPUS_PER_TASK"),
        cpus_on_node=_int(e, "SLURM_CPUS_ON_NODE"),
        mem_per_cpu_mb=_memory_mb(e, "SLURM_MEM_PER_CPU"),
        mem_per_node_mb=_memory_mb(e, "SLURM_MEM_PER_NODE"),
        gpus_on_node=_int(e, "SLURM_GPUS_ON_NODE"),
        submit_dir=_str(e, "SLURM_SUBMIT_DIR"),
        procid=_int(e, "SLURM_PROCID"),
        localid=_int(e, "SLURM_LOCALID"),
    )


# --------------------------------------------------------------------------- GPUs

#: Variables through which a scheduler or the user hands GPUs to a job.
GPU_VARS = ("SLURM_GPUS_ON_NODE", "SLURM_JOB_GPUS", "SLURM_STEP_GPUS", "CUDA_VISIBLE_DEVICES")


def gpus_given(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """The GPU variables that hand this job GPUs (non-empty, not "0" GPUs, not "-1"/"none")."""
    e = os.environ if environ is None else environ
    out = {}
    for var in GPU_VARS:
        value = e.get(var, "").strip()
        if not value or value.lower() in ("none", "nodevfiles", "-1"):
            continue
        if var == "SLURM_GPUS_ON_NODE" and value == "0":
            continue
        out[var] = value
    return out


# --------------------------------------------------------------------------- launchers


@dataclass(frozen=True)
class _Launcher:
    """Where one launcher announces a process' place: its variables, and whether the
    processes it starts form one MPI world (``mpi``) or only know their numbers."""

    name: str
    rank: str
    size: str | None
    local_rank: str | None
    local_size: str | None
    mpi: bool


#: Every launcher lenshpc knows, first match (by its rank variable) wins: mpirun of Open
#: MPI (also under ``horovodrun`` in MPI mode, and Open MPI 5's prterun), PMIx (``srun
#: --mpi=pmix``), PMI (MPICH's Hydra, ``srun --mpi=pmi2``), ``horovodrun --gloo``, and
#: plain ``srun`` (task numbers only, read through :func:`from_environ`).
LAUNCHERS = (
    _Launcher("mpirun", "OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE",
              "OMPI_COMM_WORLD_LOCAL_RANK", "OMPI_COMM_WORLD_LOCAL_SIZE", mpi=True),
    _Launcher("pmix", "PMIX_RANK", None, None, None, mpi=True),
    _Launcher("pmi", "PMI_RANK", "PMI_SIZE", "MPI_LOCALRANKID", "MPI_LOCALNRANKS", mpi=True),
    _Launcher("horovodrun", "HOROVOD_RANK", "HOROVOD_SIZE", "HOROVOD_LOCAL_RANK",
              "HOROVOD_LOCAL_SIZE", mpi=False),
    _Launcher("srun", "SLURM_PROCID", "SLURM_NTASKS", "SLURM_LOCALID", None, mpi=False),
)


@dataclass(frozen=True)
class LaunchEnv:
    """This process' place among the processes its launcher started (after submitit's
    ``JobEnvironment``). ``launcher`` is None without one (then rank 0 of 1)."""

    launcher: str | None = None
    rank: int = 0
    size: int = 1
    local_rank: int = 0
    local_size: int | None = None
    mpi: bool = False

    @property
    def is_root(self) -> bool:
        return self.rank == 0

    @property
    def under_launcher(self) -> bool:
        """True under mpirun, an MPI-enabled srun, or horovodrun (not plain srun or sbatch)."""
        return self.launcher is not None and self.launcher != "srun"


def launch_env(environ: Mapping[str, str] | None = None) -> LaunchEnv:
    """Read :data:`LAUNCHERS` from ``environ`` (default ``os.environ``); never imports MPI.

    Values a launcher does not give (size and local rank under PMIx) come from Slurm's
    task variables when they are set."""
    e = os.environ if environ is None else environ
    slurm = from_environ(e)
    from_slurm = {"SLURM_PROCID": slurm.procid, "SLURM_NTASKS": slurm.ntasks,
                  "SLURM_LOCALID": slurm.localid}
    read = lambda name: from_slurm[name] if name in from_slurm else _int(e, name) if name else None  # noqa: E731
    for row in LAUNCHERS:
        rank = read(row.rank)
        if rank is None:
            continue
        size = read(row.size) or slurm.ntasks or 1
        local_rank = read(row.local_rank)
        if local_rank is None:
            local_rank = slurm.localid if slurm.localid is not None else 0
        return LaunchEnv(row.name, rank, size, local_rank, read(row.local_size), row.mpi)
    return LaunchEnv()
