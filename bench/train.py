"""Benchmark of the train stage: is the input ever what limits a training step?

Measures, on this machine, with 1 and with 2 Horovod ranks (``horovodrun --gloo``):

* input pipeline alone: images/s that this rank's ``tf.data`` pipeline (in-memory share,
  per-epoch order, batching, prefetch) delivers with no model attached;
* model step alone: images/s of ``model.fit`` on the rank's items held as tensors inside
  TensorFlow (``from_tensor_slices(...).batch().cache().repeat()``: no Python, no reads),
  Horovod optimizer included;
* model step on the input pipeline: the same, in the same process, on lenshpc's pipeline,
  the two inputs taking turns window by window (the direct measure of what input costs);
* full training loop: the real ``lenshpc train`` — its training phase (input pipeline,
  model step, per-step stop check, callbacks) and its whole epochs (plus validation and
  the checkpoint), from run.json.

Each is printed as a ratio to the model step alone measured in the same run; the goal is a
training phase within 10% of the model step (ratio >= 0.9). Writes its section of
docs/performance.md. Run: ``.venv/bin/python bench/train.py`` (a few minutes).

Internally the script also runs as ``bench/train.py --worker pipeline|step ...`` under the
launcher; workers print one JSON line from rank 0.
"""

from __future__ import annotations

import argparse
import json
import os
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

#: Measured windows (model step alone) and epochs (full loop, after the first); the best
#: one counts: other work on a shared machine only ever slows a window down.
WINDOWS = 6
REPEATS = 2
#: The debug network (fast step: the hardest case for the input pipeline) on more images.
OVERRIDES = {"dataset": {"n_images": 2400, "n_folds": 4, "shard_size": 400},
             "train": {"epochs": 1 + WINDOWS, "tensorboard": False}}
JOB = 8                 # model3 (no dropout), fold 0
WARM_STEPS, STEPS = 10, 150


# --------------------------------------------------------------------------- workers


def _setup(config: str, data: str):
    from lenshpc.config import load
    from lenshpc.config.train import jobs
    from lenshpc.train.run import _init_horovod, plan_job
    cfg = load(config)
    job = jobs(cfg.train, cfg.dataset.n_folds)[JOB]
    plan = plan_job(cfg, job, data, tempfile.mkdtemp())
    tf, hvd = _init_horovod(cfg.train.threads_per_rank)
    return cfg, plan, tf, hvd


def _report(hvd, rates: dict[str, float], cpu: dict[str, float] | None = None) -> None:
    """Print {kind: images/s summed over ranks} and {kind: CPU ms per image, mean over
    ranks} from rank 0."""
    import horovod.tensorflow as hvd_tf
    mine = (rates, cpu or {})
    every = hvd_tf.allgather_object(mine) if hvd.size() > 1 else [mine]
    if hvd.rank() == 0:
        total = {k: sum(r[0][k] for r in every) for k in rates}
        cpu_ms = {k: statistics.mean(r[1][k] for r in every) for k in mine[1]}
        print(json.dumps({"ranks": hvd.size(), "images_per_s": total, "cpu_ms": cpu_ms}),
              flush=True)


def worker_pipeline(config: str, data: str) -> None:
    from lenshpc.train import data as D
    cfg, plan, tf, hvd = _setup(config, data)
    rank, size, t = hvd.rank(), hvd.size(), cfg.train
    ids = D.rank_share(plan.train_items, rank, size)
    x, y = D.read_items(plan.dataset.path, ids, t.read_block_mb << 20)
    batches = D.TrainBatches(x, y, ids, n_use=len(plan.train_items) // size,
                             batch_size=t.batch_size, seed=cfg.seed, fold=plan.job.fold,
                             n_items=plan.dataset.n_items)
    it = iter(D.tf_dataset(batches, plan.dataset.image_shape, t.prefetch_batches))
    for _ in range(WARM_STEPS):
        next(it)
    t0, n = time.perf_counter(), 0
    for _ in range(STEPS * 4):
        xb, _ = next(it)
        n += int(xb.shape[0])
    _report(hvd, {"pipeline": n / (time.perf_counter() - t0)})


def worker_step(config: str, data: str) -> None:
    from lenshpc.train import data as D
    from lenshpc.train.model import build_model, weighted_mse
    cfg, plan, tf, hvd = _setup(config, data)
    t = cfg.train
    ids = D.rank_share(plan.train_items, hvd.rank(), hvd.size())
    x, y = D.read_items(plan.dataset.path, ids)
    # The rank's items as tensors batched and cached inside TensorFlow: an input that costs
    # nothing (one repeated batch would be fitted to death and change the arithmetic).
    in_memory = tf.data.Dataset.from_tensor_slices((x, y)).batch(t.batch_size, drop_remainder=True)
    in_memory = in_memory.cache().repeat()
    # The real input: this rank's share through lenshpc's pipeline.
    pipeline = D.tf_dataset(D.TrainBatches(x, y, ids, n_use=len(plan.train_items) // hvd.size(),
                                           batch_size=t.batch_size, seed=cfg.seed,
                                           fold=plan.job.fold, n_items=plan.dataset.n_items),
                            plan.dataset.image_shape, t.prefetch_batches)
    model = build_model(t.network, plan.job.model, cfg.image.size, plan.target_mean, plan.target_std)
    opt = hvd.DistributedOptimizer(tf.keras.optimizers.legacy.Nadam(t.learning_rate * hvd.size()))
    model.compile(optimizer=opt, loss=weighted_mse(t.loss_weights, plan.target_std),
                  metrics=[tf.keras.metrics.MeanAbsoluteError(name="mae")])
    model.fit(in_memory, steps_per_epoch=WARM_STEPS, epochs=1, verbose=0,
              callbacks=[hvd.callbacks.BroadcastGlobalVariablesCallback(0)])
    # Windows as long as the full loop's epochs, so "best window" compares like with like.
    window = D.steps_per_epoch(len(plan.train_items), t.batch_size, hvd.size())

    class Clock(tf.keras.callbacks.Callback):
        # From the third step of a fit on: no fit start-up, no new iterator in the figure.
        def on_train_batch_begin(self, batch, logs=None):
            if batch == 2:
                self.t0, self.cpu0 = time.perf_counter(), time.process_time()

        def on_train_end(self, logs=None):
            self.seconds = time.perf_counter() - self.t0
            self.cpu = time.process_time() - self.cpu0

    best = {"step": 0.0, "step_on_pipeline": 0.0}
    cpu: dict[str, list[float]] = {"step": [], "step_on_pipeline": []}
    for _ in range(WINDOWS):
        # Taking turns, the two inputs meet the same (shared) machine.
        for kind, ds in (("step", in_memory), ("step_on_pipeline", pipeline)):
            clock = Clock()
            model.fit(ds, steps_per_epoch=window + 2, epochs=1, verbose=0, callbacks=[clock])
            best[kind] = max(best[kind], window * t.batch_size / clock.seconds)
            cpu[kind].append(1e3 * clock.cpu / (window * t.batch_size))
    _report(hvd, best, {k: statistics.median(v) for k, v in cpu.items()})


# --------------------------------------------------------------------------- driver


def launch(ranks: int, args: list[str]) -> list[str]:
    if ranks == 1:
        return [PYTHON, *args]
    return ["horovodrun", "-np", str(ranks), "-H", f"localhost:{ranks}", "--gloo", PYTHON, *args]


def run_worker(ranks: int, kind: str, config: Path, data: Path) -> dict:
    cmd = launch(ranks, [__file__, "--worker", kind, "--config", str(config), "--data", str(data)])
    out = subprocess.run(cmd, capture_output=True, text=True, env=ENV, check=True).stdout
    line = next(l for l in out.splitlines() if '"images_per_s"' in l)
    return json.loads(line[line.index("{"):])


def run_full(ranks: int, config: Path, data: Path, runs: Path) -> tuple[float, float, float]:
    """Training-phase and whole-epoch images/s of a real ``lenshpc train`` (its best epoch
    after the first, which includes tracing) and the median CPU ms per image of rank 0 in
    the training phase, from run.json."""
    cmd = launch(ranks, ["-m", "lenshpc", "train", "--config", str(config), "--data", str(data),
                         "--out", str(runs), "--job", str(JOB)])
    subprocess.run(cmd, capture_output=True, text=True, env=ENV, check=True, cwd=ROOT)
    timing = json.loads(next(runs.glob("*/fold-*/run.json")).read_text())["timing"]
    images = timing["images"][1]
    cpu_ms = statistics.median(1e3 * c * ranks / images for c in timing["train_cpu_s"][1:])
    return images / min(timing["train_s"][1:]), images / min(timing["epoch_s"][1:]), cpu_ms


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        data = yaml.safe_load((ROOT / "configs" / "debug.yaml").read_text())
        for section, values in OVERRIDES.items():
            data[section].update(values)
        config = tmp / "bench.yaml"
        config.write_text(yaml.safe_dump(data, sort_keys=False))
        dataset = tmp / "data"
        subprocess.run([PYTHON, "-m", "lenshpc", "simulate", "--config", str(config), "--out",
                        str(dataset)], check=True, capture_output=True, env=ENV, cwd=ROOT)
        t = data["train"]
        rows = []
        for ranks in (1, 2):
            pipeline = run_worker(ranks, "pipeline", config, dataset)["images_per_s"]["pipeline"]
            # Model step and full loop take turns, so both meet the same (shared) machine.
            step = on_pipeline = train_phase = epoch = 0.0
            cpu: dict[str, list[float]] = {"step": [], "step_on_pipeline": [], "full": []}
            for r in range(REPEATS):
                got = run_worker(ranks, "step", config, dataset)
                rates = got["images_per_s"]
                step = max(step, rates["step"])
                on_pipeline = max(on_pipeline, rates["step_on_pipeline"])
                for k, v in got["cpu_ms"].items():
                    cpu[k].append(v)
                full = run_full(ranks, config, dataset, tmp / f"runs-{ranks}-{r}")
                train_phase, epoch = max(train_phase, full[0]), max(epoch, full[1])
                cpu["full"].append(full[2])
            cpu_ms = {k: statistics.median(v) for k, v in cpu.items()}
            rows.append((ranks, pipeline, step, on_pipeline, train_phase, epoch, cpu_ms))
            print(f"{ranks} rank(s): pipeline {pipeline:.0f}, step {step:.0f}, step on the "
                  f"pipeline {on_pipeline:.0f}, training phase {train_phase:.0f}, whole epoch "
                  f"{epoch:.0f} images/s; CPU ms/image {cpu_ms}", flush=True)

    net = t["network"]
    lines = [
        "## train: input pipeline vs model step",
        "",
        f"`bench/train.py`: debug network ({net['conv1_filters']}-{net['conv2_filters']}-"
        f"{net['conv3_filters']}x{net['conv3_layers']} conv, {net['dense1']}-{net['dense2']} dense) "
        f"on {data['image']['size']}x{data['image']['size']} images, batch {t['batch_size']} per "
        f"rank, job {JOB} of a {OVERRIDES['dataset']['n_images']}-image dataset "
        f"({OVERRIDES['dataset']['n_folds']} folds); 2-rank runs use `horovodrun --gloo`. "
        "Images/s summed over ranks; ratios to the model step alone with the same number of "
        f"ranks. Model step and full loop: the best of {REPEATS} x {WINDOWS} windows of one "
        "epoch's steps, the two taking turns (the machine is shared; other work only slows a "
        "window down). A small network is the hard case for the input: its step is the fastest.",
        "",
        "| ranks | input pipeline alone | model step alone (in-memory tensors) | model step on "
        "the input pipeline | full loop, training phase | full loop, whole epoch (+ validation, "
        "checkpoint) |",
        "|---|---|---|---|---|---|",
    ]
    for ranks, pipeline, step, on_pipeline, train_phase, epoch, _ in rows:
        lines.append(f"| {ranks} | {pipeline:.0f} img/s ({pipeline / step:.1f}x) | {step:.0f} img/s "
                     f"(1.00) | {on_pipeline:.0f} img/s ({on_pipeline / step:.2f}) | "
                     f"{train_phase:.0f} img/s ({train_phase / step:.2f}) | {epoch:.0f} img/s "
                     f"({epoch / step:.2f}) |")
    lines += ["",
              "CPU time per image and rank in the training phase (median; less sensitive to "
              "other work on the machine than wall time), as a ratio to the model step alone:",
              "",
              "| ranks | model step alone | model step on the input pipeline | full loop, "
              "training phase |",
              "|---|---|---|---|"]
    for ranks, *_, cpu in rows:
        s = cpu["step"]
        lines.append(f"| {ranks} | {s:.2f} ms (1.00) | {cpu['step_on_pipeline']:.2f} ms "
                     f"({cpu['step_on_pipeline'] / s:.2f}) | {cpu['full']:.2f} ms "
                     f"({cpu['full'] / s:.2f}) |")
    one, two = rows
    lines += ["",
              "\"Model step on the input pipeline\" runs in the same process as the model step "
              "alone, the two inputs taking turns window by window: the most direct measure "
              "of what the input costs a step. The full loop is a separate `lenshpc train` run "
              "(all callbacks, per-step stop check, TensorBoard off).",
              "",
              f"2 ranks vs 1, model step: {two[2] / one[2]:.2f}x; full loop (training phase): "
              f"{two[4] / one[4]:.2f}x (both ranks share the same 2 cores, so no gain is "
              f"expected here; the figure shows what Horovod's allreduce costs on one node).",
              "",
              "Goal: full loop (training phase) within 10% of the model step alone, i.e. "
              "ratio >= 0.90. The whole epoch also pays for validation (a forward pass over "
              "the fold's validation items) and the checkpoint."]
    from _report import write_section  # bench/ is on sys.path (the script's own folder)
    write_section("train", "\n".join(lines))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--worker", choices=["pipeline", "step"])
    parser.add_argument("--config")
    parser.add_argument("--data")
    a = parser.parse_args()
    if a.worker == "pipeline":
        worker_pipeline(a.config, a.data)
    elif a.worker == "step":
        worker_step(a.config, a.data)
    else:
        main()
