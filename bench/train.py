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

* input alone, in memory (the share read before training) and streamed (the rank's shards
  read during training through a shuffle buffer): images/s that the ``tf.data`` pipeline
  delivers with no model attached, and the worker's peak RSS;
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
DEBUG = {"dataset": {"n_images": 2400, "n_folds": 4, "shard_size": 400},
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
    from lenshpc.train.run import _init_horovod, plan_job
    cfg = load(config)
    job = jobs(cfg.train, cfg.dataset.n_folds)[JOB]
    plan = plan_job(cfg, job, data, tempfile.mkdtemp())
    tf, hvd, _, _ = _init_horovod(cfg.train.threads_per_rank, "cpu")
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
    else:
        batches = StreamBatches(plan.dataset, items, buffer=t.shuffle_buffer,
                                shards_at_once=t.stream_shards, **common)
    it = iter(D.tf_dataset(batches, plan.dataset.image_shape, t.prefetch_batches))
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
    ]
    return lines, {"step": s_rate}


def input_part(tmp: Path) -> list[str]:
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
    return lines


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        lines, _ = overhead_part(Path(tmp))
        lines = ["## train: the loop around the step, and the input", "", *lines, "",
                 *input_part(Path(tmp))]
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
