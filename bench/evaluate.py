"""Benchmark of ``lenshpc evaluate`` (issue 4): test images per second through predict +
re-render + PSNR on 1 and 2 ranks, against the re-render alone.

Measured in one run, per image size:

- reference: the re-render alone — ``Renderer.render_truth`` of every test system in one
  process (the same renderer ``evaluate`` uses), timed in this process;
- ``mpirun -n 1`` and ``mpirun -n 2 lenshpc evaluate``: the rate the command reports for
  its work phase (model load, predict, re-render, MSE/PSNR, gather), without start-up
  and report (figures off);
- ``mpirun -n 2`` with ``--mc-samples 10``.

The model is the train stage's network (``lenshpc.train.model.build_model``) with its
initial weights, saved as a finished run: speed does not depend on training.

Run: ``.venv/bin/python bench/evaluate.py [--quick]``; writes its section of
docs/performance.md.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from bench._report import publish  # noqa: E402

PYTHON = sys.executable
ENV = {**os.environ, "OMPI_ALLOW_RUN_AS_ROOT": "1", "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1",
       "TF_CPP_MIN_LOG_LEVEL": "2",
       "PATH": f"{Path(PYTHON).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
#: Each rate is the best of this many runs.
REPEAT = 2

#: Writes RUNS/model1/fold-0 and fold-1: finished runs of the config's network (initial weights).
MAKE_RUN = r'''
import json, shutil, sys, h5py, numpy as np, tensorflow as tf
from pathlib import Path
from lenshpc.config import load
from lenshpc.train.model import build_model
cfg = load(sys.argv[1]); data = Path(sys.argv[2]); d = Path(sys.argv[3]) / "model1" / "fold-0"
with h5py.File(data / "dataset.h5") as f:
    checksum = f.attrs["checksum"]; labels = f["labels"][...]
mean, std = labels.mean(0), labels.std(0)
tf.keras.utils.set_random_seed(0)
model = build_model(cfg.train.network, cfg.train.models[0], cfg.image.size, mean, std)
d.mkdir(parents=True)
model.save(d / "model.keras")
(d / "run.json").write_text(json.dumps({"finished": True, "model": "model1", "fold": 0, "job": 0,
    "p1": cfg.train.models[0].p1, "p2": cfg.train.models[0].p2, "epochs_done": 0,
    "dataset_checksum": checksum, "target_mean": mean.tolist(), "target_std": std.tolist(),
    "loss_weights": list(cfg.train.loss_weights)}))
shutil.copytree(d, d.parent / "fold-1")
run = json.loads((d / "run.json").read_text())
(d.parent / "fold-1" / "run.json").write_text(json.dumps({**run, "fold": 1, "job": 1}))
from lenshpc.lock import mark_done
for folder in (d, d.parent / "fold-1"):
    mark_done(folder, "train", ["model.keras", "run.json"])
'''


def config(tmp: Path, name: str, base: str, n_images: int, n_test: int) -> Path:
    data = yaml.safe_load((ROOT / "configs" / base).read_text())
    data["dataset"].update(n_images=n_images, test_fraction=n_test / n_images, n_folds=2,
                           shard_size=max(1, n_images // 8))
    data["train"]["models"] = [{"name": "model1", "p1": 0.2, "p2": 0.3}]
    data.setdefault("evaluate", {}).update(figures=False, chunk_size=64, batch_size=64)
    path = tmp / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def run(cmd: list[str]) -> str:
    proc = subprocess.run(cmd, capture_output=True, text=True, env=ENV, cwd=ROOT)
    if proc.returncode:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{proc.stdout}\n{proc.stderr}")
    return proc.stdout


def evaluate_rate(cfg: Path, data: Path, runs: Path, out: Path, ranks: int,
                  *extra: str, repeat: int = 0) -> tuple[float, float]:
    """(images/s, images per CPU-second summed over ranks) of the work phase as
    ``lenshpc evaluate`` reports it; best of REPEAT runs (other work on the machine only
    ever slows a run down)."""
    best = (0.0, 0.0)
    for _ in range(repeat or REPEAT):
        shutil.rmtree(out, ignore_errors=True)
        stdout = run(["mpirun", "-n", str(ranks), "--oversubscribe", "--bind-to", "none", PYTHON,
                      "-m", "mpi4py", "-m", "lenshpc", "evaluate", "--config", str(cfg), "--data",
                      str(data), "--runs", str(runs), "--out", str(out), *extra])
        m = re.search(r"scored (\d+) images in ([0-9.]+) s \(([0-9.]+) images/s on \d+ rank\(s\), "
                      r"([0-9.]+) CPU s\)", stdout)
        n, cpu = int(m.group(1)), float(m.group(4))
        best = max(best[0], float(m.group(3))), max(best[1], n / cpu)
    return best


def rerender_rate(data: Path) -> tuple[float, float, int]:
    """(images/s, images per CPU-second) of ``Renderer.render_truth`` over the test
    systems in this process, and their number."""
    from lenshpc.evaluate import disk
    from lenshpc.simulate.render import Renderer
    ds = disk.read_held_out(data)
    renderer = Renderer(ds.config.image)
    renderer.render_truth(ds.truth_names, ds.truth_test[0])          # numba warm-up
    n = len(ds.truth_test)
    wall, cpu = 0.0, 0.0
    for _ in range(REPEAT):
        t0, c0 = time.perf_counter(), time.process_time()
        for row in ds.truth_test:
            renderer.render_truth(ds.truth_names, row)
        wall = max(wall, n / (time.perf_counter() - t0))
        cpu = max(cpu, n / (time.process_time() - c0))
    return wall, cpu, n


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer images (a smoke run)")
    parser.add_argument("--no-write", action="store_true", help="do not update docs/performance.md")
    args = parser.parse_args()
    scale = 0.1 if args.quick else 1.0
    cases = [("64x64, debug network", "debug.yaml", int(1024 * scale)),
             ("112x112 ss3, paper network", "paper.yaml", int(192 * scale))]
    rows = []
    tmp = Path(tempfile.mkdtemp(prefix="lenshpc-bench-eval-"))
    try:
        for label, base, n_test in cases:
            cfg = config(tmp, base.split(".")[0], base, n_test + 20, n_test)
            data, runs = tmp / f"{base}-data", tmp / f"{base}-runs"
            run([PYTHON, "-m", "lenshpc", "simulate", "--config", str(cfg), "--out", str(data),
                 "--no-progress"])
            run([PYTHON, "-c", MAKE_RUN, str(cfg), str(data), str(runs)])
            ref, ref_cpu, n = rerender_rate(data)
            r1, c1 = evaluate_rate(cfg, data, runs, tmp / "out1", 1)
            r2, c2 = evaluate_rate(cfg, data, runs, tmp / "out2", 2)
            mc, mc_cpu = evaluate_rate(cfg, data, runs, tmp / "out3", 2, "--mc-samples", "10",
                                       repeat=1)
            rows.append((label, n, ref, ref_cpu, r1, c1, r2, c2, mc, mc_cpu))
            print(f"{label}: 2 jobs x {n} test images; re-render alone {ref:.1f}/s ({ref_cpu:.1f}/CPU s); "
                  f"evaluate 1 rank {r1:.1f}/s ({c1:.1f}/CPU s, {c1 / ref_cpu:.2f}x), 2 ranks "
                  f"{r2:.1f}/s ({c2:.1f}/CPU s, speed-up {r2 / r1:.2f}x), 2 ranks MC x10 "
                  f"{mc:.1f}/s", flush=True)
        load = os.getloadavg()[0]
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    lines = ["## Evaluate (`bench/evaluate.py`)", "",
             "Test images through predict + re-render + MSE/PSNR: the work phase `lenshpc "
             "evaluate` reports (model load, prediction, re-render, scoring, gather; start-up "
             "and report excluded), two jobs (folds 0 and 1 of one model), against the "
             "re-render alone "
             "(`Renderer.render_truth` of the same systems in one process). Rates per second "
             "of wall time and per CPU-second (summed over ranks, all threads): on a shared "
             "machine the CPU figures are the stable ones. The network is the train stage's, "
             "untrained (speed does not depend on the weights); one TensorFlow thread per "
             f"rank (`evaluate.threads: 1`); each figure is the best of {REPEAT} runs (MC: "
             "one run).", "",
             "| case | test images per job | re-render alone /CPU s | evaluate, 1 rank /CPU s "
             "| ratio to re-render | 2 ranks /CPU s | parallel efficiency "
             "| 1 rank /s | 2 ranks /s | 2 ranks, MC x10 /s |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for label, n, _ref, ref_cpu, r1, c1, r2, c2, mc, _mc_cpu in rows:
        lines.append(f"| {label} | {n} | {ref_cpu:.1f} | {c1:.1f} | **{c1 / ref_cpu:.2f}x** | "
                     f"{c2:.1f} | **{c2 / c1:.2f}** | {r1:.1f} | {r2:.1f} | {mc:.1f} |")
    lines += ["", "Ratio to re-render below 1: the cost of prediction and scoring on top of the "
              "re-render. Parallel efficiency: CPU-seconds per image with 1 rank over those with "
              "2 (1.0: the second rank adds no work); the wall-time speed-up is bounded by free "
              f"cores (load average at the end of the run: {load:.1f} on {os.cpu_count()} cores)."]
    publish("evaluate", lines, write=not args.no_write and not args.quick)


if __name__ == "__main__":
    main()
