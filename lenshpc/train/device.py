"""Which device a training rank uses, decided from plain inputs (no TensorFlow here).

A job that was given GPUs (by Slurm or ``CUDA_VISIBLE_DEVICES``) must train on one: if
TensorFlow sees none, the job stops with one line instead of running many times slower
on the CPU and "succeeding". ``train.device``: ``auto`` (a GPU when GPUs were given),
``gpu`` (always require one), ``cpu`` (hide GPUs).
"""

from __future__ import annotations

from typing import Mapping, Sequence

from lenshpc.config import UserError

#: Variables through which a scheduler or the user hands GPUs to a job.
GPU_VARS = ("SLURM_GPUS_ON_NODE", "SLURM_JOB_GPUS", "SLURM_STEP_GPUS", "CUDA_VISIBLE_DEVICES")


def gpus_given(env: Mapping[str, str]) -> dict[str, str]:
    """The GPU variables that hand this job GPUs (non-empty, not "0" GPUs, not "-1"/"none")."""
    out = {}
    for var in GPU_VARS:
        value = env.get(var, "").strip()
        if not value or value.lower() in ("none", "nodevfiles", "-1"):
            continue
        if var == "SLURM_GPUS_ON_NODE" and value == "0":
            continue
        out[var] = value
    return out


def choose_device(setting: str, env: Mapping[str, str], tf_gpus: Sequence[str],
                  built_with_cuda: bool) -> str:
    """``"gpu"`` or ``"cpu"`` for ``train.device`` = ``setting``; UserError when a GPU is
    required (``gpu``, or ``auto`` with GPUs given) and TensorFlow sees none."""
    if setting == "cpu":
        return "cpu"
    given = gpus_given(env)
    if tf_gpus:
        return "gpu"
    if setting == "gpu" or given:
        what = (", ".join(f"{k}={v}" for k, v in given.items()) if given
                else "train.device: gpu")
        cause = ("this TensorFlow is built without CUDA (tensorflow-cpu): rerun setup with "
                 "LENSHPC_TF='tensorflow[and-cuda]==2.15.1'" if not built_with_cuda else
                 "TensorFlow found no usable GPU: check the driver (nvidia-smi), the CUDA "
                 "libraries of the tensorflow[and-cuda] wheels, and a Python 3.9-3.11 venv")
        raise UserError(f"the job was given GPUs ({what}) but TensorFlow sees none; {cause}; "
                        f"or set train.device: cpu to train on the CPU on purpose")
    return "cpu"


def default_steps_per_execution(device: str) -> int:
    """``train.steps_per_execution: null``: 1 on the CPU, 32 on a GPU (per-batch Python
    work then runs once per 32 steps, not after every step)."""
    return 32 if device == "gpu" else 1
