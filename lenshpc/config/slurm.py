"""Config section of the sbatch scripts: the site settings.

Defaults run on a plain one-node Slurm (2 CPUs, no GPU, no modules); a cluster user
changes account, partition, time limits, GPUs, modules and environment activation
here and nowhere else (the scripts are rendered from this section).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

from lenshpc.config.schema import Section, UserError, param

#: Slurm's time formats: MM, MM:SS, HH:MM:SS, D-HH, D-HH:MM, D-HH:MM:SS.
#: At most 3 digits of days and 6 of minutes or hours: a time Slurm can hold.
_TIME = re.compile(r"^(\d{1,3}-\d{1,2}(:\d{1,2}(:\d{1,2})?)?|\d{1,6}(:\d{1,2}(:\d{1,2})?)?)$")
_MEMORY = re.compile(r"^\d{1,12}[KMGT]?$")
_ENV = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*=")


def _time(value: str) -> str | None:
    return None if _TIME.fullmatch(value) else "is not a Slurm time (MM, HH:MM:SS or D-HH:MM:SS)"


def _memory(value: str) -> str | None:
    return None if _MEMORY.fullmatch(value) else "is not a Slurm memory size (e.g. 4000, 4000M, 4G)"


def _sbatch_options(values: tuple[str, ...]) -> str | None:
    for v in values:
        if not v.startswith("--") or "\n" in v:
            return f"has {v!r}, which is not a long sbatch option such as '--constraint=a100'"
    return None


def _assignments(values: tuple[str, ...]) -> str | None:
    for v in values:
        if not _ENV.match(v) or "\n" in v:
            return f"has {v!r}, which is not NAME=VALUE"
    return None


@dataclass(frozen=True)
class MpiJob:
    """Resources of an MPI job (the simulate and evaluate stages)."""

    nodes: int = param(1, ge=1, le=100_000, doc="--nodes.")
    ntasks: int = param(2, ge=1, le=10_000_000, doc="--ntasks: MPI ranks of the job.")
    cpus_per_task: int = param(1, ge=1, le=4096, doc="--cpus-per-task.")
    mem_per_cpu: str | None = param(None, check=_memory,
                                    doc="--mem-per-cpu, e.g. 4G (null: the site default).")
    time: str = param("01:00:00", check=_time, doc="--time: the job's time limit.")
    partition: str | None = param(None, doc="--partition for this job (null: `slurm.partition`).")
    extra: tuple[str, ...] = param((), check=_sbatch_options,
                                   doc="Extra sbatch options of this job, e.g. '--exclusive'.")


@dataclass(frozen=True)
class TrainJob(Section):
    """Resources of each train array task (one job of the model x fold grid)."""

    nodes: int = param(1, ge=1, le=100_000, doc="--nodes per task.")
    ranks: int = param(1, ge=1, le=10_000_000, doc="Horovod ranks per task (--ntasks; a multiple of `nodes`).")
    gpus: int = param(0, ge=0, le=64, doc="GPUs per node of each task (0: CPU only); usually "
                      "ranks / nodes, one GPU per rank.")
    gpu_option: Literal["gres", "gpus-per-node"] = param(
        "gres", doc="How GPUs are asked for: --gres=gpu:G or --gpus-per-node=G.")
    launcher: Literal["srun", "mpirun", "horovodrun"] = param(
        "srun", doc="How a task starts its Horovod ranks.")
    cpus_per_task: int = param(1, ge=1, le=4096, doc="--cpus-per-task (CPU threads of each rank).")
    mem_per_cpu: str | None = param(None, check=_memory,
                                    doc="--mem-per-cpu, e.g. 4G (null: the site default).")
    time: str = param("04:00:00", check=_time, doc="--time: time limit of each task.")
    signal_seconds: int = param(300, ge=10, le=86_400, unit="s",
                                doc="USR1 arrives this long before the time limit; training then "
                                "stops after a checkpoint and the task requeues itself.")
    max_requeues: int = param(3, ge=0, le=1000, doc="A task requeues itself at most this often "
                              "(counting every restart Slurm made of it).")
    max_parallel: int = param(0, ge=0, le=1_000_000, doc="At most this many tasks run at once (--array=...%N; "
                              "0: no limit).")
    partition: str | None = param(None, doc="--partition of the tasks (null: `slurm.partition`).")
    extra: tuple[str, ...] = param((), check=_sbatch_options,
                                   doc="Extra sbatch options of the tasks, "
                                   "e.g. '--constraint=a100'.")

    def validate(self, path: str) -> None:
        if self.ranks % self.nodes:
            raise UserError(f"config {path}.ranks: {self.ranks} ranks cannot be spread evenly "
                            f"over {path}.nodes={self.nodes} nodes")
        per_node = self.ranks // self.nodes
        if self.gpus and (self.gpus > per_node or per_node % self.gpus):
            raise UserError(f"config {path}.gpus: {self.gpus} GPU(s) per node for {per_node} "
                            f"rank(s) per node; give one GPU per rank (gpus x nodes = ranks) "
                            f"or a number of ranks per node that the GPUs divide")

    def gpu_sharing(self) -> str | None:
        """How ranks share GPUs when there are more ranks than GPUs on a node, or None."""
        per_node = self.ranks // self.nodes
        if self.gpus and per_node > self.gpus:
            return f"{per_node // self.gpus} ranks share each GPU (by local rank)"
        return None


@dataclass(frozen=True)
class Slurm:
    """Site settings for the sbatch scripts; defaults run on a plain one-node Slurm."""

    account: str | None = param(None, doc="--account of every job (null: not given).")
    partition: str | None = param(None, doc="--partition of every job "
                                  "(null: the default partition).")
    qos: str | None = param(None, doc="--qos of every job (null: not given).")
    extra: tuple[str, ...] = param((), check=_sbatch_options,
                                   doc="Extra sbatch options of every job, "
                                   "e.g. '--mail-type=FAIL'.")
    modules: tuple[str, ...] = param((), doc="Modules to `module load`, in order, before anything "
                                     "else (e.g. openmpi/4.1, cuda/12.2).")
    setup: tuple[str, ...] = param(
        (), doc="Shell lines that make `python` the one with lenshpc installed (e.g. `source "
        "/path/.venv/bin/activate`); empty: activate the environment lenshpc was rendered from.")
    environment: tuple[str, ...] = param(
        ("HDF5_USE_FILE_LOCKING=FALSE",), check=_assignments,
        doc="NAME=VALUE pairs exported in every job. HDF5_USE_FILE_LOCKING=FALSE (Lustre and "
        "NFS often do not support HDF5's file locks; see docs/cluster.md) is merged into a "
        "list you give, unless your list sets HDF5_USE_FILE_LOCKING itself.")
    mpi_launcher: Literal["srun", "mpirun"] = param(
        "srun", doc="How the simulate and evaluate jobs start their MPI ranks.")
    srun_mpi: str | None = param("pmix", doc="`srun --mpi=` value (pmix, pmi2, ...); null: the "
                                 "site's MpiDefault.")
    simulate: MpiJob = param(default_factory=MpiJob, doc="The simulate job.")
    train: TrainJob = param(default_factory=TrainJob, doc="Each train array task.")
    evaluate: MpiJob = param(default_factory=MpiJob, doc="The evaluate job.")
