"""The one place that reads Slurm's ``SLURM_*`` environment variables, into typed fields."""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from typing import Any, Mapping


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
