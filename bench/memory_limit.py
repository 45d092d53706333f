"""Training a dataset larger than the memory it may use: train.input auto picks the stream
and stays inside a memory cgroup smaller than the rank's share of the fold.

    python bench/memory_limit.py [--work DIR] [--limit-mib 1024] [--n-images 24000]

Needs root (a cgroup v1 memory controller at /sys/fs/cgroup/memory). Simulates one
dataset of 112x112 images, then trains one epoch of job 0 (the debug network) in a
cgroup whose limit is below the share, and reports the cgroup's peak memory, the input
mode chosen and the wall and CPU seconds. Writes the ``memory-limit`` section of
docs/performance.md.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from bench._report import publish  # noqa: E402

V1 = Path("/sys/fs/cgroup/memory")
ENV = {**os.environ, "OMPI_ALLOW_RUN_AS_ROOT": "1", "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1"}


def config(path: Path, n_images: int) -> Path:
    data = yaml.safe_load((ROOT / "configs" / "debug.yaml").read_text())
    data["image"].update(size=112, supersampling=1)
    data["dataset"].update(n_images=n_images, n_folds=4, shard_size=500)
    data["population"] = {"kind": "parametric"}
    data["train"].update(epochs=1, tensorboard=False, input="auto")
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--work", type=Path, default=None)
    ap.add_argument("--limit-mib", type=int, default=1024)
    ap.add_argument("--n-images", type=int, default=24000)
    args = ap.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="lenshpc-memlimit-"))
    work.mkdir(parents=True, exist_ok=True)
    cfg = config(work / "c.yaml", args.n_images)
    py = str(Path(sys.executable))
    data = work / "data"
    subprocess.run([py, "-m", "lenshpc", "simulate", "--config", str(cfg), "--out", str(data),
                    "--no-progress"], check=True, env=ENV, cwd=ROOT)
    images_bytes = sum(p.stat().st_size for p in (data / "shards").glob("*.h5"))

    group = V1 / f"lenshpc-bench-{uuid.uuid4().hex[:8]}"
    group.mkdir()
    limit = args.limit_mib << 20
    (group / "memory.limit_in_bytes").write_text(str(limit))
    try:
        runs = work / "runs"
        # The shell joins the cgroup, then becomes the training process.
        cmd = (f"echo $$ > {group}/cgroup.procs && exec {py} -m lenshpc train --config {cfg} "
               f"--data {data} --out {runs} --job 0")
        t0, c0 = time.time(), os.times()
        proc = subprocess.run(["bash", "-c", cmd], capture_output=True, text=True, env=ENV,
                              cwd=ROOT)
        wall = time.time() - t0
        c1 = os.times()
        cpu = (c1.children_user - c0.children_user) + (c1.children_system - c0.children_system)
        peak = int((group / "memory.max_usage_in_bytes").read_text())
        failcnt = int((group / "memory.failcnt").read_text())
    finally:
        time.sleep(0.5)
        group.rmdir()
    if proc.returncode != 0:
        raise SystemExit(f"train failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    run = json.loads((runs / "model1" / "fold-0" / "run.json").read_text())
    dev = (run.get("devices") or [{}])[0]
    share = run["n_train"] * 112 * 112 * 4 + run["n_val"] * 112 * 112 * 4
    rows = [["images of the dataset (shard files)", f"{images_bytes / 2**20:.0f} MiB"],
            ["the rank's share of the fold (train + validation images)",
             f"{share / 2**20:.0f} MiB"],
            ["memory limit of the cgroup", f"{limit / 2**20:.0f} MiB"],
            ["input mode chosen by train.input auto", str(dev.get("input", "?"))],
            ["peak memory of the cgroup (memory.max_usage_in_bytes)",
             f"{peak / 2**20:.0f} MiB ({peak / limit:.2f} of the limit)"],
            ["times the limit was hit (memory.failcnt)", str(failcnt)],
            ["one epoch, wall / CPU seconds", f"{wall:.1f} s / {cpu:.1f} s"]]
    text = ("## Training under a memory limit\n\n"
            "`bench/memory_limit.py`: one training epoch (job 0, debug network) of a dataset "
            f"of {args.n_images:,} images of 112x112 in a memory cgroup (v1) smaller than the "
            "rank's share of the fold. `train.input: auto` sees the cgroup's limit (the "
            "process' own nested cgroup, as Slurm sets it) and streams: memory holds the "
            "shuffle buffer, not the share.\n\n"
            "| quantity | value |\n|---|---|\n"
            + "\n".join(f"| {a} | {b} |" for a, b in rows) + "\n\n"
            "The floor is TensorFlow itself (about 0.7 GiB per process) plus the shuffle "
            "buffer (`train.shuffle_buffer`, 4,096 images: 196 MiB at 112x112) and the read "
            "blocks: with a 1 GiB limit the same epoch was killed by the kernel. Lower "
            "`train.shuffle_buffer` for tighter limits.\n")
    publish("memory-limit", text.splitlines(), write=True)


if __name__ == "__main__":
    main()
