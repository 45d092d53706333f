"""Which device a training rank uses, decided from plain inputs (no TensorFlow here).

A job that was given GPUs (by Slurm or ``CUDA_VISIBLE_DEVICES``, as
:func:`lenshpc.env.gpus_given` reads them) must train on one: if TensorFlow sees none,
the job stops with one line instead of running many times slower on the CPU and
"succeeding". ``train.device``: ``auto`` (a GPU when GPUs were given),
``gpu`` (always require one), ``cpu`` (hide GPUs).
"""

from __future__ import annotations

from typing import Mapping, Sequence

from lenshpc.config import UserError
from lenshpc.env import gpus_given


def choose_device(setting: str, env: Mapping[str, str], tf_gpus: Sequence[str],
                  built_with_cuda: bool) -> str:
    """``"gpu"`` or ``"cpu"`` for ``train.device`` = ``setting``; UserError when a GPU is
    required (``gpu``, or ``auto`` with GPUs given) and TensorFlow sees none.

    ``env`` is the process environment, ``tf_gpus`` the GPUs TensorFlow lists and
    ``built_with_cuda`` whether this TensorFlow was built with CUDA. The error is one line:
    what was given, what TensorFlow sees, the likely cause and the way out."""
    if setting == "cpu":
        return "cpu"
    given = gpus_given(env)
    if tf_gpus:
        return "gpu"
    if setting == "gpu" or given:
        what = (f"the job was given GPUs ({', '.join(f'{k}={v}' for k, v in given.items())})"
                if given else "train.device is gpu")
        sees = f"TensorFlow sees no GPU (built with CUDA: {'yes' if built_with_cuda else 'no'})"
        cause = ("likely cause: this TensorFlow is the CPU build (tensorflow-cpu); rerun setup "
                 "with LENSHPC_TF='tensorflow[and-cuda]==2.15.1'" if not built_with_cuda else
                 "likely cause: no usable driver (check nvidia-smi on the compute node), CUDA "
                 "libraries of the tensorflow[and-cuda] wheels not found, or a Python outside "
                 "3.9-3.11")
        raise UserError(f"{what} but {sees}; {cause}; or set train.device: cpu (lenshpc train "
                       f"--device cpu) to train on the CPU on purpose")
    return "cpu"


def default_steps_per_execution(device: str) -> int:
    """``train.steps_per_execution: null``: 1 on the CPU, 32 on a GPU (per-batch Python
    work then runs once per 32 steps, not after every step)."""
    return 32 if device == "gpu" else 1


def use_jit(setting: bool | None, device: str) -> bool:
    """``train.jit_compile``: the setting, or (null) on for a GPU and off for the CPU."""
    return device == "gpu" if setting is None else bool(setting)


#: Fraction of a GPU's memory a rank's share may take to be held on the device; the
#: rest is for the network's weights, activations and TensorFlow's own workspace.
DEVICE_FRACTION = 0.4


def place_share(share_bytes: int, device_bytes: int | None,
                fraction: float = DEVICE_FRACTION) -> str:
    """Where a GPU rank keeps its in-memory share: ``"device"`` (held in GPU memory,
    batches gathered there) when ``share_bytes`` is at most ``fraction`` of the device's
    memory ``device_bytes``; else (or when the size of the device is unknown)
    ``"prefetch"`` (held on the host, batches copied to the device ahead of the step)."""
    if device_bytes is None or device_bytes <= 0:
        return "prefetch"
    return "device" if share_bytes <= fraction * device_bytes else "prefetch"


def choose_input(setting: str, share_bytes: int, ranks_on_node: int, memory_bytes: int,
                 fraction: float) -> tuple[str, str]:
    """``train.input``: (``"memory"`` or ``"stream"``, the reason in words).

    ``share_bytes`` is this rank's share of the fold (training and validation images),
    ``ranks_on_node`` the ranks sharing the node, ``memory_bytes`` the memory this process
    may use (the node's, or a lower cgroup or address-space limit). In ``auto`` the
    shares of the node's ranks must fit ``fraction`` of it to be held in memory."""
    if setting in ("memory", "stream"):
        return setting, f"train.input: {setting}"
    need, room = share_bytes * max(1, ranks_on_node), fraction * memory_bytes
    words = (f"{ranks_on_node} rank share(s) of {share_bytes / 2**30:.2f} GiB against "
             f"{fraction:g} x {memory_bytes / 2**30:.1f} GiB of memory")
    return ("memory", f"{words}: fit") if need <= room else ("stream", f"{words}: too large")
