"""Which device, precision step and input a training rank uses: the pure decisions with a
fake environment and fake device lists, and a job given GPUs on this CPU-only machine
refusing to run (one line, exit 2) through the installed command."""

from __future__ import annotations

import pytest

from lenshpc.config import UserError
from lenshpc.train.device import (
    DEVICE_FRACTION,
    choose_device,
    choose_input,
    default_steps_per_execution,
    gpus_given,
    place_share,
    use_jit,
)
from tests.conftest import PYTHON, env
from tests.train.train_util import train_config

A100 = ["/physical_device:GPU:0"]
GiB = 2**30


@pytest.mark.parametrize("environ, given", [
    ({}, {}),
    ({"CUDA_VISIBLE_DEVICES": ""}, {}),
    ({"CUDA_VISIBLE_DEVICES": "-1"}, {}),
    ({"CUDA_VISIBLE_DEVICES": "NoDevFiles"}, {}),
    ({"SLURM_GPUS_ON_NODE": "0"}, {}),
    ({"SLURM_JOB_GPUS": "none"}, {}),
    ({"CUDA_VISIBLE_DEVICES": "0,1"}, {"CUDA_VISIBLE_DEVICES": "0,1"}),
    ({"SLURM_GPUS_ON_NODE": "4", "SLURM_JOB_GPUS": "0,1,2,3", "HOME": "/root"},
     {"SLURM_GPUS_ON_NODE": "4", "SLURM_JOB_GPUS": "0,1,2,3"}),
    ({"SLURM_STEP_GPUS": " 2 "}, {"SLURM_STEP_GPUS": "2"}),
])
def test_gpus_given_reads_the_scheduler_and_cuda_variables(environ, given):
    assert gpus_given(environ) == given


@pytest.mark.parametrize("setting", ["auto", "gpu"])
def test_a_visible_gpu_is_used(setting):
    assert choose_device(setting, {"SLURM_GPUS_ON_NODE": "1"}, A100, True) == "gpu"
    assert choose_device(setting, {}, A100, True) == "gpu"


def test_auto_without_gpus_given_or_visible_is_the_cpu():
    assert choose_device("auto", {"CUDA_VISIBLE_DEVICES": ""}, [], False) == "cpu"
    assert choose_device("auto", {}, [], True) == "cpu"


@pytest.mark.parametrize("gpus", [[], A100])
def test_cpu_setting_never_uses_a_gpu(gpus):
    assert choose_device("cpu", {"SLURM_GPUS_ON_NODE": "4"}, gpus, True) == "cpu"


@pytest.mark.parametrize("built, cause", [
    (False, "this TensorFlow is the CPU build (tensorflow-cpu); rerun setup with "
            "LENSHPC_TF='tensorflow[and-cuda]==2.15.1'"),
    (True, "no usable driver (check nvidia-smi on the compute node)"),
])
def test_gpus_given_but_none_visible_is_one_line(built, cause):
    environ = {"SLURM_GPUS_ON_NODE": "2", "CUDA_VISIBLE_DEVICES": "0,1", "PATH": "/bin"}
    with pytest.raises(UserError) as err:
        choose_device("auto", environ, [], built)
    text = str(err.value)
    assert "\n" not in text
    # what was given, what TensorFlow sees, the likely cause, the way out
    assert text.startswith("the job was given GPUs (SLURM_GPUS_ON_NODE=2, "
                           "CUDA_VISIBLE_DEVICES=0,1) but TensorFlow sees no GPU "
                           f"(built with CUDA: {'yes' if built else 'no'})")
    assert f"likely cause: {cause}" in text
    assert text.endswith("or set train.device: cpu (lenshpc train --device cpu) to train on "
                         "the CPU on purpose")


def test_gpu_setting_without_a_visible_gpu_is_one_line():
    with pytest.raises(UserError) as err:
        choose_device("gpu", {}, [], True)
    assert str(err.value).startswith("train.device is gpu but TensorFlow sees no GPU (built "
                                     "with CUDA: yes); likely cause: no usable driver")


def test_fast_path_settings_follow_the_device():
    assert default_steps_per_execution("cpu") == 1
    assert default_steps_per_execution("gpu") == 32
    assert use_jit(None, "gpu") is True and use_jit(None, "cpu") is False
    assert use_jit(True, "cpu") is True and use_jit(False, "gpu") is False


@pytest.mark.parametrize("share, device_bytes, where", [
    (int(3.5 * GiB), 40 * GiB, "device"),       # the paper's fold on an A100 40 GB
    (int(3.5 * GiB), 80 * GiB, "device"),
    (int(3.5 * GiB), 8 * GiB, "prefetch"),      # 3.5 > 0.4 x 8
    (int(DEVICE_FRACTION * 16 * GiB), 16 * GiB, "device"),
    (int(DEVICE_FRACTION * 16 * GiB) + 1, 16 * GiB, "prefetch"),
    (1, None, "prefetch"),                      # size of the device unknown
    (1, 0, "prefetch"),
])
def test_share_is_held_on_the_gpu_only_when_it_fits(share, device_bytes, where):
    assert place_share(share, device_bytes) == where


@pytest.mark.parametrize("setting, share, ranks, memory, mode", [
    ("memory", 100 * GiB, 4, 16 * GiB, "memory"),
    ("stream", 1, 1, 16 * GiB, "stream"),
    ("auto", 2 * GiB, 4, 16 * GiB, "memory"),    # 8 GiB of 0.5 x 16
    ("auto", 2 * GiB + 1, 4, 16 * GiB, "stream"),
    ("auto", 43 * GiB, 1, 64 * GiB, "stream"),   # 10^6 images at 112x112 on one rank
])
def test_input_mode(setting, share, ranks, memory, mode):
    got, reason = choose_input(setting, share, ranks, memory, 0.5)
    assert got == mode and reason
    if setting == "auto":
        assert reason.endswith(": fit" if mode == "memory" else ": too large")


def test_job_given_gpus_on_a_cpu_machine_refuses_in_one_line(train_data, tmp_path):
    import subprocess
    cfg = train_config(tmp_path / "c.yaml", tensorboard=False)
    base = [PYTHON, "-m", "lenshpc", "train", "--config", str(cfg), "--data", str(train_data),
            "--out", str(tmp_path / "runs"), "--job", "4"]
    given = subprocess.run(base, capture_output=True, text=True, timeout=600,
                           env=env(SLURM_GPUS_ON_NODE="1", SLURM_JOB_GPUS="0"))
    flag = subprocess.run([*base, "--device", "gpu"], capture_output=True, text=True,
                          timeout=600, env=env())
    for proc in (given, flag):
        assert proc.returncode == 2, proc.stderr
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and "but TensorFlow sees no GPU (built with CUDA: no)" in lines[0]
    assert "the job was given GPUs (SLURM_GPUS_ON_NODE=1, SLURM_JOB_GPUS=0)" in given.stderr
    assert "train.device is gpu" in flag.stderr
    assert not (tmp_path / "runs" / "model3" / "fold-0" / "checkpoint.npz").exists()


def test_devices_summary_for_the_report():
    from lenshpc.train.record import devices_summary
    gpu = {"rank": 0, "device": "gpu", "name": "NVIDIA A100-SXM4-40GB", "tf_built_with_cuda": True,
           "precision": "mixed_float16", "jit_compile": True, "steps_per_execution": 32,
           "input": "memory", "placement": "device"}
    assert devices_summary([gpu, {**gpu, "rank": 1}]) == (
        "2 x NVIDIA A100-SXM4-40GB; mixed_float16, XLA, 32 steps/call, input memory (device)")
    cpu = {"rank": 0, "device": "cpu", "name": "CPU", "tf_built_with_cuda": False,
           "precision": "float32", "jit_compile": False, "steps_per_execution": 1,
           "input": "stream", "placement": "host"}
    assert devices_summary([cpu]) == "1 x CPU (TF without CUDA); float32, 1 step/call, input stream"
    assert devices_summary([{"device": "cpu", "name": "CPU", "tf_built_with_cuda": False}]) == \
        "1 x CPU (TF without CUDA)"
    assert devices_summary([]) == "?"


@pytest.mark.parametrize("device", ["auto", "cpu"])
def test_horovod_xla_operations_stay_off_on_the_cpu(device):
    """Horovod's XLA operations serve a GPU step only; loaded on the CPU they slowed every
    step by about a fifth (docs/performance.md). Horovod reads the switch when it loads."""
    import subprocess
    code = ("import os; from lenshpc.train.process import init_horovod; "
            f"_, hvd, record, _ = init_horovod(1, {device!r}); "
            "print(record['device'], os.environ.get('HOROVOD_ENABLE_XLA_OPS'))")
    e = env()
    e.pop("HOROVOD_ENABLE_XLA_OPS", None)
    proc = subprocess.run([PYTHON, "-c", code], capture_output=True, text=True, timeout=300,
                          env=e)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["cpu", "None"]
