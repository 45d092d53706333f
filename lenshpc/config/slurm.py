"""Config section of the sbatch scripts: the site settings."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from lenshpc.config.schema import param


@dataclass(frozen=True)
class Slurm:
    """Site settings for the sbatch scripts; defaults run on a plain one-node Slurm."""

    account: str | None = param(None, doc="--account (null: not given).")
    partition: str | None = param(None, doc="--partition (null: the default partition).")
    qos: str | None = param(None, doc="--qos (null: not given).")
    modules: tuple[str, ...] = param((), doc="Modules to `module load` before running.")
    setup: tuple[str, ...] = param((), doc="Shell lines run before lenshpc (e.g. `source .venv/bin/activate`); "
                                   "empty: activate the .venv of the lenshpc checkout.")
    simulate_ntasks: int = param(2, ge=1, doc="MPI ranks of the simulate job.")
    simulate_nodes: int = param(1, ge=1, doc="Nodes of the simulate job.")
    simulate_time: str = param("01:00:00", doc="Time limit of the simulate job.")
    train_ranks: int = param(1, ge=1, doc="Horovod ranks per train array task.")
    train_gpus: int = param(0, ge=0, doc="GPUs per train array task (0: CPU).")
    train_launcher: Literal["srun", "mpirun", "horovodrun"] = param(
        "mpirun", doc="How a train task starts its Horovod ranks.")
    train_time: str = param("04:00:00", doc="Time limit of each train array task.")
    evaluate_ntasks: int = param(2, ge=1, doc="MPI ranks of the evaluate job.")
    evaluate_time: str = param("01:00:00", doc="Time limit of the evaluate job.")
    cpus_per_task: int = param(1, ge=1, doc="--cpus-per-task.")
    mem_per_cpu: str | None = param(None, doc="--mem-per-cpu, e.g. 4G (null: site default).")
    signal_seconds: int = param(120, ge=10, unit="s",
                                doc="Warning signal (USR1) this long before the time limit.")
    max_requeues: int = param(3, ge=0, doc="A train task requeues itself at most this often.")
    extra: tuple[str, ...] = param((), doc="Extra #SBATCH options, e.g. '--constraint=a100'.")
