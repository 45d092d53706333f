"""Benchmark of the train stage: what the loop around the model's step costs, and whether
the input can keep up.

Part 1, the per-step overhead (debug network, one rank on the CPU):

* model step alone: images/s of ``model.fit`` on the rank's items held as tensors inside
  TensorFlow (``from_tensor_slices(...).batch().cache().repeat()``: no Python, no reads),
  Horovod's optimizer included, 32 steps per call into TensorFlow (the least overhead
  Keras allows);
* full training loop: the real ``lenshpc train`` with ``train.steps_per_execution`` 1 and
  32 — its training phase (input pipeline, model step, stop check, callbacks), from
  run.json;
* per-step overhead: the full loop's time per step minus the model step's, in ms (wall
  and CPU time of the process).

Part 2, the input at the paper's 112x112 images (paper network, batch 64):

* input alone, in memory (the share read before training, each batch one gather inside
  TensorFlow) and streamed (the rank's shards read during training through a shuffle
  buffer, batches made in Python): images/s that the ``tf.data`` pipeline delivers with no
  model attached, and the worker's peak RSS;
* the paper network's model step alone on this machine, for the ratio (goal: the streamed
  input >= 5x the model step, so input is never the bottleneck).

Each model-step and full-loop figure is the best of several windows taking turns (the
machine is shared; other work only slows a window down). Writes its section of
docs/performance.md. Run: ``.venv/bin/python bench/train.py`` (about 10 minutes).

Internally the script also runs as ``bench/train.py --worker step|input ...``; workers
print one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout without installing
PYTHON = sys.executable
ENV = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONUNBUFFERED="1",
           PATH=f"{Path(PYTHON).parent}{os.pathsep}{os.environ.get('PATH', '')}")

#: Epochs of the full loop (the first, which traces the step, is not counted) and windows
#: of the model step alone; the best counts.
EPOCHS, WINDOWS, REPEATS = 5, 4, 2
#: The debug network (fast step: the hardest case for the loop around it) on more images.
DEBUG = {"dataset": {"n_images": 12000, "n_folds": 4, "shard_size": 2000},
         "train": {"epochs": EPOCHS, "tensorboard": False, "early_stopping_patience": 0}}
#: The paper's images and network, few of them, rendered quickly (no supersampling).
PAPER = {"image": {"supersampling": 1},
         "dataset": {"n_images": 1600, "n_folds": 4, "shard_size": 100},
         "train": {"tensorboard": False}}
JOB = 8                 # model3 (no dropout), fold 0
SPES = (1, 32)
STREAM = {"shuffle_buffer": 1024, "stream_shards": 4}


# --------------------------------------------------------------------------- workers


def _setup(config: str, data: str):
    from lenshpc.config import load
    from lenshpc.config.train import jobs
    from lenshpc.train.plan import plan_job
    from lenshpc.train.process import init_horovod
    cfg = load(config)
    job = jobs(cfg.train, cfg.dataset.n_folds)[JOB]
    plan = plan_job(cfg, job, data, tempfile.mkdtemp())
    tf, hvd, _, _ = init_horovod(cfg.train.threads_per_rank, "cpu")
    return cfg, plan, tf, hvd


def worker_step(config: str, data: str, windows: int) -> None:
    """Model step alone: best images/s and median CPU ms per image over ``windows``."""
    from lenshpc.train import data as D
    from lenshpc.train.model import build_model, weighted_mse
    cfg, plan, tf, hvd = _setup(config, data)
    t = cfg.train
    x, y = D.read_items(plan.dataset, plan.train_items)
    # An input that costs nothing (one repeated batch would be fitted to death and
    # change the arithmetic).
    ds = tf.data.Dataset.from_tensor_slices((x, y)).batch(t.batch_size, drop_remainder=True)
    ds = ds.cache().repeat()
    model = build_model(t.network, plan.job.model, cfg.image.size, plan.target_mean,
                        plan.target_std)
    opt = hvd.DistributedOptimizer(tf.keras.optimizers.legacy.Nadam(t.learning_rate))
    steps = D.steps_per_epoch(len(plan.train_items), t.batch_size, 1)
    spe = min(32, steps)
    model.compile(optimizer=opt, loss=weighted_mse(t.loss_weights, plan.target_std),
                  metrics=[tf.keras.metrics.MeanAbsoluteError(name="mae")],
                  steps_per_execution=spe)
    model.fit(ds, steps_per_epoch=spe, epochs=1, verbose=0,
              callbacks=[hvd.callbacks.BroadcastGlobalVariablesCallback(0)])
    rates, cpu = [], []
    for _ in range(windows):
        t0, c0 = time.perf_counter(), time.process_time()
        model.fit(ds, steps_per_epoch=steps, epochs=1, verbose=0)
        seconds, cpu_s = time.perf_counter() - t0, time.process_time() - c0
        rates.append(steps * t.batch_size / seconds)
        cpu.append(1e3 * cpu_s / (steps * t.batch_size))
    print(json.dumps({"images_per_s": max(rates), "cpu_ms": statistics.median(cpu)}), flush=True)


def worker_input(config: str, data: str, mode: str) -> None:
    """Input alone: images/s of this rank's tf.data pipeline (memory or stream) over three
    epochs, and the process' peak RSS."""
    from lenshpc.train import data as D
    from lenshpc.train.stream import StreamBatches
    cfg, plan, tf, hvd = _setup(config, data)
    t, items = cfg.train, plan.train_items
    common = dict(n_use=len(items), batch_size=t.batch_size, seed=cfg.seed, fold=plan.job.fold)
    if mode == "memory":
        x, y = D.read_items(plan.dataset, items, t.read_block_mb << 20)
        batches = D.TrainBatches(x, y, items, n_items=plan.dataset.n_items, **common)
        ds = D.tf_resident_dataset(batches, t.prefetch_batches)
    else:
        batches = StreamBatches(plan.dataset, items, buffer=t.shuffle_buffer,
                                shards_at_once=t.stream_shards, **common)
        ds = D.tf_dataset(batches, plan.dataset.image_shape, t.prefetch_batches)
    it = iter(ds)
    next(it)
    t0, n = time.perf_counter(), 0
    for _ in range(3 * batches.steps):
        n += int(next(it)[0].shape[0])
    rate = n / (time.perf_counter() - t0)
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"images_per_s": rate, "peak_rss_mib": rss}), flush=True)


# --------------------------------------------------------------------------- driver


def run_worker(*args: str) -> dict:
    cmd = [PYTHON, __file__, "--worker", *args]
    out = subprocess.run(cmd, capture_output=True, text=True, env=ENV, check=True).stdout
    line = next(ln for ln in out.splitlines() if '"images_per_s"' in ln)
    return json.loads(line[line.index("{"):])


def run_full(config: Path, data: Path, runs: Path) -> tuple[float, float, int]:
    """Training-phase images/s of a real ``lenshpc train`` (its best epoch after the
    first, which includes tracing), the median CPU ms per image and the steps per epoch."""
    cmd = [PYTHON, "-m", "lenshpc", "train", "--config", str(config), "--data", str(data),
           "--out", str(runs), "--job", str(JOB)]
    subprocess.run(cmd, capture_output=True, text=True, env=ENV, check=True, cwd=ROOT)
    run = json.loads(next(runs.glob("*/fold-*/run.json")).read_text())
    timing = run["timing"]
    images = timing["images"][1]
    cpu_ms = statistics.median(1e3 * c / images for c in timing["train_cpu_s"][1:])
    steps = -(-images // run["batch_size_per_rank"])
    return images / min(timing["train_s"][1:]), cpu_ms, steps


def write_config(path: Path, base: str, overrides: dict, **train) -> Path:
    data = yaml.safe_load((ROOT / "configs" / base).read_text())
    for section, values in overrides.items():
        data.setdefault(section, {}).update(values)
    data["train"].update(train)
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def simulate(config: Path, out: Path) -> Path:
    subprocess.run([PYTHON, "-m", "lenshpc", "simulate", "--config", str(config), "--out",
                    str(out), "--no-progress"], check=True, capture_output=True, env=ENV,
                   cwd=ROOT)
    return out


def overhead_part(tmp: Path) -> tuple[list[str], dict]:
    base = write_config(tmp / "debug.yaml", "debug.yaml", DEBUG)
    data = simulate(base, tmp / "debug-data")
    configs = {spe: write_config(tmp / f"spe{spe}.yaml", "debug.yaml", DEBUG,
                                 steps_per_execution=spe) for spe in SPES}
    step = {"rate": 0.0, "cpu": []}
    full = {spe: {"rate": 0.0, "cpu": []} for spe in SPES}
    steps = 0
    for r in range(REPEATS):
        got = run_worker("step", "--config", str(base), "--data", str(data),
                         "--windows", str(WINDOWS))
        step["rate"] = max(step["rate"], got["images_per_s"])
        step["cpu"].append(got["cpu_ms"])
        for spe in SPES:
            rate, cpu, steps = run_full(configs[spe], data, tmp / f"runs-{spe}-{r}")
            full[spe]["rate"] = max(full[spe]["rate"], rate)
            full[spe]["cpu"].append(cpu)
    batch = yaml.safe_load(base.read_text())["train"]["batch_size"]
    s_rate, s_cpu = step["rate"], statistics.median(step["cpu"])
    rows = []
    for spe in SPES:
        f_rate, f_cpu = full[spe]["rate"], statistics.median(full[spe]["cpu"])
        over_ms = 1e3 * batch * (1 / f_rate - 1 / s_rate)
        over_cpu = batch * (f_cpu - s_cpu)
        rows.append(f"| {spe} | {f_rate:.0f} img/s ({f_rate / s_rate:.3f}) | {over_ms:+.2f} ms | "
                    f"{f_cpu:.3f} ms ({f_cpu / s_cpu:.3f}) | {over_cpu:+.2f} ms |")
        print(f"steps_per_execution {spe}: {f_rate:.0f} img/s vs step {s_rate:.0f}; overhead "
              f"{over_ms:.2f} ms/step wall, {over_cpu:.2f} ms/step CPU", flush=True)
    net = yaml.safe_load(base.read_text())["train"]["network"]
    lines = [
        "### The loop around the step: `train.steps_per_execution` 1 vs 32",
        "",
        f"Debug network ({net['conv1_filters']}-{net['conv2_filters']}-"
        f"{net['conv3_filters']}x{net['conv3_layers']} conv, {net['dense1']}-{net['dense2']} "
        f"dense) on 64x64 images, batch {batch}, one rank, job {JOB} of a "
        f"{DEBUG['dataset']['n_images']}-image dataset ({steps} steps per epoch). The model step "
        f"alone: {s_rate:.0f} img/s, {s_cpu:.3f} CPU ms per image (best of {REPEATS} x "
        f"{WINDOWS} epochs' worth of steps on cached tensors, 32 steps per call). Full loop: "
        f"`lenshpc train`'s training phase, best epoch after the first of {REPEATS} runs "
        f"of {EPOCHS} epochs. Overhead per step: the full loop's time per step minus the "
        "model step's (a small network is the hard case: its step is the shortest).",
        "",
        "| steps_per_execution | full loop, training phase (ratio to the model step) | "
        "overhead per step, wall | CPU per image (ratio) | overhead per step, CPU |",
        "|---|---|---|---|---|",
        *rows,
        "",
        "Goal: the training phase at >= 0.97 of the model step alone with 32 steps per call.",
        "",
        "Horovod's XLA operations serve an XLA-compiled step on a GPU only; lenshpc once "
        "loaded them on the CPU too (with `train.device: auto`), and this measurement then "
        "gave 0.76-0.80 of the model step with 32 steps per call and 1.5-1.7x its CPU per "
        "image. An epoch of 2,400 images (0.4 s) was also too short to show a per-step "
        "overhead: the dataset has 12,000 now.",
    ]
    return lines, {"step": s_rate}


def input_part(tmp: Path) -> tuple[list[str], float, float]:
    base = write_config(tmp / "paper.yaml", "paper.yaml", PAPER, **STREAM)
    data = simulate(base, tmp / "paper-data")
    got = {mode: run_worker("input", "--config", str(base), "--data", str(data), "--mode", mode)
           for mode in ("memory", "stream")}
    step = run_worker("step", "--config", str(base), "--data", str(data), "--windows", "2")
    s = step["images_per_s"]
    for mode, g in got.items():
        print(f"input {mode}: {g['images_per_s']:.0f} img/s, peak RSS {g['peak_rss_mib']:.0f} "
              f"MiB; paper model step {s:.1f} img/s", flush=True)
    n_train = PAPER["dataset"]["n_images"]
    share_mib = n_train * 0.75 * 112 * 112 * 4 / 2**20
    lines = [
        "### The input at 112x112: memory vs stream",
        "",
        f"Paper network and images (112x112, batch 64), {PAPER['dataset']['n_images']} images "
        f"in shards of {PAPER['dataset']['shard_size']}, one rank training fold 0 (about "
        f"{share_mib:.0f} MiB of images). Input alone: the `tf.data` pipeline with no model, "
        f"three epochs. Stream: a shuffle buffer of {STREAM['shuffle_buffer']} items, "
        f"{STREAM['stream_shards']} shards read at a time in blocks of 64 items. The paper "
        f"network's model step on this machine: {s:.1f} img/s.",
        "",
        "| input | images/s (ratio to the paper model step) | peak RSS of the process |",
        "|---|---|---|",
        *(f"| {mode} | {g['images_per_s']:.0f} img/s ({g['images_per_s'] / s:.0f}x) | "
          f"{g['peak_rss_mib']:.0f} MiB |" for mode, g in got.items()),
        "",
        "Goal: streamed input >= 5x the paper network's model step. The RSS includes "
        "TensorFlow itself (about 0.5 GiB); in memory mode it grows with the share, in "
        "stream mode with the shuffle buffer (1024 items of 49 KiB: 49 MiB) only.",
    ]
    return lines, s, got["memory"]["images_per_s"]


def training_flops(network: dict, size: int) -> tuple[float, float]:
    """(forward, training) floating-point operations per image of the network at
    ``size`` x ``size`` ('same' padding, as lenshpc/train/model.py builds it). Training is
    forward + backward: twice the forward again, less the first layer's gradient with
    respect to its input, which nothing needs."""
    import math
    n, pool = network, network.get("pool_size", 2)
    h = math.ceil(size / n["conv1_stride"])
    conv1 = h * h * n["conv1_filters"] * n["conv1_kernel"] ** 2
    h = math.ceil(math.ceil(h / pool) / n["conv2_stride"])
    conv2 = h * h * n["conv2_filters"] * n["conv2_kernel"] ** 2 * n["conv1_filters"]
    h = math.ceil(h / pool)
    conv3 = n["conv3_layers"] * h * h * n["conv3_filters"] * n["conv3_kernel"] ** 2 * \
        n["conv2_filters"]
    h = math.ceil(h / pool)
    dense = h * h * n["conv3_filters"] * n["dense1"] + n["dense1"] * n["dense2"] + n["dense2"] * 4
    macs = conv1 + conv2 + conv3 + dense
    return 2.0 * macs, 2.0 * (3 * macs - conv1)


def n_weights(network: dict, size: int) -> int:
    """Trainable weights of the network (what Horovod averages every step)."""
    import math
    n, pool = network, network.get("pool_size", 2)
    h = math.ceil(size / n["conv1_stride"])
    h = math.ceil(math.ceil(math.ceil(h / pool) / n["conv2_stride"]) / pool)
    h = math.ceil(h / pool)
    convs = (n["conv1_filters"] * n["conv1_kernel"] ** 2
             + n["conv2_filters"] * n["conv2_kernel"] ** 2 * n["conv1_filters"]
             + n["conv3_layers"] * n["conv3_filters"] ** 2 * n["conv3_kernel"] ** 2)
    bn = 2 * (n["conv1_filters"] + n["conv2_filters"] + n["conv3_layers"] * n["conv3_filters"])
    dense = (h * h * n["conv3_filters"] + 1) * n["dense1"] + (n["dense1"] + 1) * n["dense2"] \
        + (n["dense2"] + 1) * 4
    return convs + bn + dense


def estimate_part(cpu_step: float, memory_input: float) -> list[str]:
    """An estimate on paper of the paper network's training rate on one A100 and H100."""
    from lenshpc.config import load
    from lenshpc.config.schema import to_plain
    cfg = load(ROOT / "configs" / "paper.yaml")
    fwd, train = training_flops(to_plain(cfg.train.network), cfg.image.size)
    batch = cfg.train.batch_size
    act_mib = (cfg.image.size // 2) ** 2 * 128 * 4 / 2**20
    weights = n_weights(to_plain(cfg.train.network), cfg.image.size)
    feed_ms = 1e3 * batch / memory_input
    return [
        "### On paper: the paper network on one A100 or H100",
        "",
        "Not measured (no GPU here); the reasoning, so a site can check it against its own "
        "run.json (`images_per_s`):",
        "",
        f"- **Arithmetic.** At 112x112 the network takes {fwd / 1e9:.2f} GFLOP per image "
        f"forward and {train / 1e9:.2f} GFLOP to train on it (`training_flops` in "
        f"bench/train.py: block 1's 11x11 convolution and block 2's 5x5 are 2/3 of it). This "
        f"machine's CPU trains at {cpu_step:.1f} img/s, i.e. {cpu_step * train / 1e9:.0f} "
        "GFLOP/s.",
        "- **Compute bound.** An A100 offers 19.5 TFLOP/s in float32, 156 in TF32 (TensorFlow's "
        "default for float32 convolutions on Ampere and later) and 312 in float16 on tensor "
        "cores; an H100 (SXM) about 67, 495 and 990. Convolutions this narrow (1 input "
        "channel in block 1, 5x5 and 3x3 maps in block 3) reach perhaps 15-30% of the tensor "
        f"peak at batch {batch}. Float32/TF32 on an A100: {batch} x {train / 1e9:.2f} GFLOP "
        f"= {batch * train / 1e9:.0f} GFLOP per step at 25-45 TFLOP/s, 1.5-2.7 ms per step, "
        f"{batch / 2.7e-3:,.0f}-{batch / 1.5e-3:,.0f} img/s; mixed_float16 doubles the "
        "ceiling.",
        f"- **Memory bound.** Block 1's output is {act_mib:.1f} MiB per image in float32; "
        "forward and backward pass over it some 10-15 times without XLA (convolution, "
        "BatchNorm statistics and normalisation, ReLU, pooling, their gradients), about "
        f"{12 * act_mib:.0f} MiB per image, {1.5e12 / (12 * act_mib * 2**20):,.0f} img/s at "
        "an A100's 1.5 TB/s; XLA fuses the elementwise passes and float16 halves the bytes, "
        "which moves this bound 3-4x out of the way.",
        "- **Launch bound.** Without XLA one step is some 300 small kernels (forward, backward "
        "and NAdam's update of two dozen variables, several kernels each), 1-2 ms at a few "
        f"microseconds per launch: {batch / 2e-3:,.0f}-{batch / 1e-3:,.0f} img/s whatever "
        "the arithmetic. XLA fuses them into a few dozen; 32 steps per call removes the "
        "host's per-step synchronisation.",
        "- **Input.** In memory mode a batch is one gather inside TensorFlow with no Python "
        f"per step ({feed_ms:.2f} ms per batch of {batch} on this CPU, the memory input rate "
        "above). Held on the GPU (the paper's fold, 3.5 GB, fits) the gather runs there; "
        "held on the host, the 3.2 MB batch crosses PCIe 4 in about 0.1 ms, ahead of the "
        "step. The streamed input makes its batches in Python (the stream rate above, per "
        "core): enough for a CPU, not for a GPU at these rates; use memory mode on GPUs "
        "whenever the share fits the node.",
        "",
        "Estimate (the bounds partly add up: one step's kernels run one after the other): "
        "float32 with 32 steps per call but no XLA, "
        "**about 15,000-25,000 img/s on an A100**; mixed_float16 with XLA **about 25,000-"
        "40,000 img/s**; an H100 1.5-2x these. An epoch of the paper's fold (52,500 "
        "training images) then takes 2-4 s on an A100, and 100 epochs with validation a "
        "few minutes: a job is short, so 12 jobs on 12 GPUs (one rank each) use a node "
        "better than one job on many GPUs, whose allreduce of "
        f"{weights / 1e6:.1f} M float32 weights ({4 * weights / 1e6:.0f} MB) per step takes "
        "about as long as the step itself over PCIe (NVLink makes it small).",
    ]


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        lines, _ = overhead_part(Path(tmp))
        inputs, paper_step, memory_input = input_part(Path(tmp))
        lines = ["## train: the loop around the step, and the input", "", *lines, "",
                 *inputs, "", *estimate_part(paper_step, memory_input)]
    from _report import write_section  # bench/ is on sys.path (the script's own folder)
    write_section("train", "\n".join(lines))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--worker", choices=["step", "input"])
    parser.add_argument("--config")
    parser.add_argument("--data")
    parser.add_argument("--windows", type=int, default=WINDOWS)
    parser.add_argument("--mode", choices=["memory", "stream"])
    a = parser.parse_args()
    if a.worker == "step":
        worker_step(a.config, a.data, a.windows)
    elif a.worker == "input":
        worker_input(a.config, a.data, a.mode)
    else:
        main()
