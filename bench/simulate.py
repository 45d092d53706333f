"""Benchmark of ``lenshpc simulate`` against a naive lenstronomy loop (issues 2 and 10).

Measured in one run, each as a whole process (start-up, imports, rendering, writing):

- production: ``lenshpc simulate`` with one rank, full supersampling and (at the paper
  config) adaptive supersampling;
- naive: a script that draws the same systems, builds a lenstronomy ``ImageModel`` for
  every image, renders, normalises and writes the images to one HDF5 file;

at 64x64 without supersampling (debug config) and at the paper config's size with its
supersampling (112x112, 3x3); the images are checked equal (adaptive: within its bound).
Then, in one process: the renderer's cost per evaluated point against lenstronomy's
``ImageModel.image`` on the same grid; the production path with 1 and 2 MPI ranks; and
every ``dataset.compression`` on noise-free and noisy images (size, write and read).

Run: ``.venv/bin/python bench/simulate.py [--quick]``; writes its section of
docs/performance.md. The numba cache is warmed first (its one-off compile is reported).
"""

from __future__ import annotations

import argparse
import os
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import h5py
import numpy as np
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from bench._report import publish  # noqa: E402

PYTHON = sys.executable
ENV = {**os.environ, "OMPI_ALLOW_RUN_AS_ROOT": "1", "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1",
       "PATH": f"{Path(PYTHON).parent}{os.pathsep}{os.environ.get('PATH', '')}"}

NAIVE = r'''
import sys, h5py, numpy as np
from lenstronomy.Data.imaging_data import ImageData
from lenstronomy.Data.psf import PSF
from lenstronomy.ImSim.image_model import ImageModel
from lenstronomy.LensModel.lens_model import LensModel
from lenstronomy.LightModel.light_model import LightModel
from lenstronomy.Util.simulation_util import data_configure_simple
from lenshpc.config import load
from lenshpc.simulate import population as pop
from lenshpc.simulate.render import TRUTH_NAMES, truth_to_kwargs

cfg = load(sys.argv[1]); n = cfg.dataset.n_images; im = cfg.image
truth, labels = pop.sample(cfg.population, cfg.seed, range(n))
images = np.empty((n, im.size, im.size), np.float32)
for i in range(n):
    model = ImageModel(ImageData(**data_configure_simple(im.size, im.pixel_scale)), PSF("NONE"),
                       LensModel(["SIE"]), LightModel(["SERSIC_ELLIPSE"]), LightModel(["SERSIC_ELLIPSE"]),
                       kwargs_numerics={"supersampling_factor": im.supersampling})
    kl, ks, kll = truth_to_kwargs(TRUTH_NAMES, truth[i])
    img = model.image(kl, ks, kll)
    images[i] = img / img.max()
with h5py.File(sys.argv[2], "w") as f:
    f["images"] = images; f["labels"] = labels; f["truth"] = truth
'''


def config(tmp: Path, name: str, base: str, n: int, **image) -> Path:
    data = yaml.safe_load((ROOT / "configs" / base).read_text())
    data["dataset"].update(n_images=n, shard_size=max(1, n // 8))  # 8 shards: 2 ranks balance
    data["image"].update(image)
    path = tmp / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


REPEAT = 2


def _children_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def timed(cmd: list[str], before=None) -> tuple[float, str, float]:
    """Best wall time of REPEAT runs of ``cmd`` (the least disturbed by other jobs), that
    run's stdout and its CPU time (s, all processes it started, MPI ranks included);
    ``before()`` runs untimed before each (e.g. remove the output)."""
    best = (float("inf"), "", 0.0)
    for _ in range(REPEAT):
        if before:
            before()
        t0, c0 = time.perf_counter(), _children_cpu()
        proc = subprocess.run(cmd, capture_output=True, text=True, env=ENV, cwd=ROOT)
        wall, cpu = time.perf_counter() - t0, _children_cpu() - c0
        if proc.returncode:
            raise SystemExit(f"{' '.join(cmd)} failed:\n{proc.stdout}\n{proc.stderr}")
        best = min(best, (wall, proc.stdout, cpu))
    return best


def production(cfg: Path, out: Path, ranks: int | None = None) -> tuple[float, float, float]:
    """(wall s, write share, CPU s) of ``lenshpc simulate`` into a fresh ``out`` (``ranks``: under
    mpirun with that many ranks; None: one process without a launcher)."""
    if ranks is None:
        cmd = [PYTHON, "-m", "lenshpc", "simulate", "--config", str(cfg), "--out", str(out),
               "--no-progress"]
    else:
        cmd = ["mpirun", "-n", str(ranks), "--oversubscribe", "--bind-to", "none", PYTHON, "-m",
               "mpi4py", "-m", "lenshpc", "simulate", "--config", str(cfg), "--out", str(out),
               "--no-progress"]
    wall, stdout, cpu = timed(cmd, before=lambda: shutil.rmtree(out, ignore_errors=True))
    share = float(re.search(r"writing ([0-9.]+)%", stdout).group(1)) / 100
    return wall, share, cpu


def naive(cfg: Path, out: Path) -> tuple[float, float]:
    """(wall s, CPU s) of the naive loop."""
    wall, _, cpu = timed([PYTHON, "-c", NAIVE, str(cfg), str(out)])
    return wall, cpu


def per_point(n_systems: int) -> dict:
    """In this process, CPU time per evaluated point at 112x112, supersampling 3: the fused
    kernel (full: every subpixel) against lenstronomy's ImageModel.image on the same grid,
    and the adaptive render per image with its share of supersampled pixels."""
    from dataclasses import replace

    from lenshpc.config import loads
    from lenshpc.config.simulate import Image
    from lenshpc.simulate import population as pop
    from lenshpc.simulate.render import TRUTH_NAMES, Renderer, truth_to_kwargs
    image = Image(size=112, supersampling=3)
    truth, _ = pop.sample(loads(None).population, 99, range(n_systems))
    systems = [truth_to_kwargs(TRUTH_NAMES, row) for row in truth]
    points = (112 * 3) ** 2
    out: dict = {}
    for name, renderer in (("lenstronomy", Renderer(image, engine="lenstronomy")),
                           ("fused", Renderer(image)),
                           ("adaptive", Renderer(replace(image, supersampling_mode="adaptive")))):
        renderer.model_image(*systems[0])
        chosen = 0
        c0 = time.process_time()
        for kl, ks, kll in systems:
            renderer.model_image(kl, ks, kll)
            chosen += getattr(renderer, "last_supersampled", 0)
        out[name] = (time.process_time() - c0) / len(systems)
        out[name + "_ns_per_point"] = out[name] / points * 1e9
        out[name + "_supersampled"] = chosen / len(systems) / 112 ** 2
        out[name + "_renderer"] = renderer
    # the bound of adaptive mode: normalised images against full supersampling
    out["adaptive_worst"] = max(
        float(np.abs(out["fused_renderer"].render(*system).astype(np.float64)
                     - out["adaptive_renderer"].render(*system)).max()) for system in systems)
    return out


def compression_table(n_images: int) -> list[tuple]:
    """Each dataset.compression on n_images of 112x112 ss3 (noise-free, and noisy: background
    1% of the maximum, Poisson with 1000 s): bytes per image and size against none, CPU
    seconds per image to write (write_shard) and to read back (read_shard)."""
    from dataclasses import replace

    from lenshpc.config import loads
    from lenshpc.config.simulate import Image
    from lenshpc.dataset.shards import COMPRESSIONS, read_shard, write_shard
    from lenshpc.simulate import population as pop
    from lenshpc.simulate.render import TRUTH_NAMES, Renderer
    rows = []
    truth, labels = pop.sample(loads(None).population, 5, range(n_images))
    clean = Image(size=112, supersampling=3, supersampling_mode="adaptive")
    for kind, image in (("noise-free", clean),
                        ("noisy", replace(clean, background_rms=0.01, exposure_time=1000.0))):
        renderer = Renderer(image)
        images = np.stack([renderer.render_truth(TRUTH_NAMES, row,
                                                 rng=np.random.default_rng([5, i]) if image.noise else None)
                           for i, row in enumerate(truth)])
        tmp = Path(tempfile.mkdtemp(prefix="lenshpc-bench-comp-"))
        try:
            base = None
            for option in COMPRESSIONS:
                path = tmp / f"{option}.h5"
                best_w = best_r = float("inf")
                for _ in range(REPEAT):
                    c0 = time.process_time()
                    write_shard(path, 0, images, labels, truth, label_names=pop.LABEL_NAMES,
                                truth_names=TRUTH_NAMES, attrs={}, compression=option)
                    c1 = time.process_time()
                    back = read_shard(path)[0]
                    c2 = time.process_time()
                    best_w, best_r = min(best_w, c1 - c0), min(best_r, c2 - c1)
                assert np.array_equal(back, images)
                size = path.stat().st_size / n_images
                base = base or size
                rows.append((kind, option, size, base / size, best_w / n_images, best_r / n_images))
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return rows


def index_build(n_items: int) -> tuple[int, float, float, float]:
    """A synthetic dataset of ``n_items`` in shards of 5,085 items (112x112 paper items at
    dataset.shard_mb 256; images of 1x1 pixel here, the index build copies labels and truth
    and maps the images): (shards, wall s, CPU s of write_index, wall s of read_index)."""
    from lenshpc.dataset import SHARDS
    from lenshpc.dataset.index import read_index, write_index
    from lenshpc.dataset.shards import shard_path, shard_ranges, write_shard
    per_shard = 5085
    root = Path(tempfile.mkdtemp(prefix="lenshpc-bench-index-"))
    try:
        (root / SHARDS).mkdir()
        ranges = shard_ranges(n_items, per_shard)
        rng = np.random.default_rng(0)
        names = [f"p{i}" for i in range(19)]
        for k, r in enumerate(ranges):
            write_shard(shard_path(root, k), r.start, np.zeros((len(r), 1, 1), np.float32),
                        rng.random((len(r), 4), dtype=np.float32), rng.random((len(r), 19)),
                        label_names="abcd", truth_names=names, attrs={})
        split = rng.integers(-1, 4, n_items).astype(np.int8)
        t0, c0 = time.perf_counter(), time.process_time()
        write_index(root, n_items=n_items, image_shape=(1, 1), shard_ranges_=ranges, split=split,
                    label_names="abcd", truth_names=names, attrs={})
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
        t0 = time.perf_counter()
        read_index(root)
        return len(ranges), wall, cpu, time.perf_counter() - t0
    finally:
        shutil.rmtree(root, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer images (a smoke run)")
    parser.add_argument("--no-write", action="store_true", help="do not update docs/performance.md")
    parser.add_argument("--repeat", type=int, default=2, help="runs per measurement (best kept)")
    args = parser.parse_args()
    global REPEAT
    REPEAT = args.repeat
    scale = 0.1 if args.quick else 1.0
    tmp = Path(tempfile.mkdtemp(prefix="lenshpc-bench-sim-"))
    try:
        # warm the numba cache of the fused renderer (a fresh clone compiles it once)
        warm = config(tmp, "warm", "debug.yaml", 8, size=16)
        cache = list((ROOT / "lenshpc" / "simulate" / "__pycache__").glob("render*.nb*"))
        compile_s = None
        if not cache:
            t_first, _, _ = production(warm, tmp / "warm")
            t_again, _, _ = production(warm, tmp / "warm2")
            compile_s = t_first - t_again
        else:
            production(warm, tmp / "warm")

        paper = {"size": 112, "supersampling": 3}
        cases = [("64x64, no supersampling", "debug.yaml", int(4000 * scale),
                  {"size": 64, "supersampling": 1}, 1e-6),
                 ("112x112, supersampling 3 (paper), full", "paper.yaml", int(1000 * scale),
                  {**paper, "supersampling_mode": "full"}, 1e-6),
                 ("112x112, supersampling 3 (paper), adaptive", "paper.yaml", int(1000 * scale),
                  {**paper, "supersampling_mode": "adaptive"}, 1e-4 + 1e-6)]
        rows = []
        naive_times: dict[tuple, tuple[float, float]] = {}
        for label, base, n, image, atol in cases:
            cfg = config(tmp, label.split(",")[0].replace(" ", "") + image.get("supersampling_mode", ""),
                         base, n, **image)
            t_prod, share, c_prod = production(cfg, tmp / "prod")
            # the naive loop always supersamples in full: one measurement per grid
            key = (base, n, image["size"], image["supersampling"])
            if key not in naive_times:
                naive_times[key] = naive(cfg, tmp / "naive.h5")
            t_naive, c_naive = naive_times[key]
            with h5py.File(tmp / "prod" / "dataset.h5") as a, h5py.File(tmp / "naive.h5") as b:
                np.testing.assert_allclose(a["images"][...], b["images"][...], rtol=0, atol=atol)
                np.testing.assert_array_equal(a["labels"][...], b["labels"][...])
            rows.append((label, n, n / t_prod, n / t_naive, t_naive / t_prod, c_naive / c_prod, share))
            print(f"{label}: {n} images, production {n / t_prod:.1f}/s, naive {n / t_naive:.1f}/s, "
                  f"ratio {t_naive / t_prod:.2f}x (CPU time {c_naive / c_prod:.2f}x), "
                  f"writing {100 * share:.1f}%", flush=True)

        points = per_point(int(100 * scale) or 10)
        print(f"per point: lenstronomy {points['lenstronomy_ns_per_point']:.0f} ns, fused "
              f"{points['fused_ns_per_point']:.1f} ns; adaptive {1e3 * points['adaptive']:.2f} ms "
              f"per image ({100 * points['adaptive_supersampled']:.1f}% of pixels supersampled)",
              flush=True)

        n_scale = int(12000 * scale)
        cfg = config(tmp, "scale", "paper.yaml", n_scale, **paper, supersampling_mode="adaptive")
        t1, share1, cpu1 = production(cfg, tmp / "r1", ranks=1)
        t2, share2, cpu2 = production(cfg, tmp / "r2", ranks=2)
        # With every rank on a free core, wall time = CPU time / ranks (shards are balanced);
        # on a shared machine the measured wall speed-up is bounded by the free cores.
        free_core = cpu1 / (cpu2 / 2)
        with h5py.File(tmp / "r1" / "dataset.h5") as a, h5py.File(tmp / "r2" / "dataset.h5") as b:
            assert a.attrs["checksum"] == b.attrs["checksum"]
        print(f"1 -> 2 ranks ({n_scale} images, 112x112 ss3 adaptive): {t1:.1f} s -> {t2:.1f} s, "
              f"speed-up {t1 / t2:.2f}x (CPU {cpu1:.1f} s -> {cpu2:.1f} s: {free_core:.2f}x with "
              f"free cores), writing {100 * share2:.1f}%", flush=True)
        comp = compression_table(int(500 * scale))
        for kind, option, size, ratio, w, r in comp:
            print(f"compression {kind} {option}: {size / 1e3:.1f} kB/image ({ratio:.2f}x), write "
                  f"{1e3 * w:.3f} ms, read {1e3 * r:.3f} ms per image", flush=True)
        n_index = 10**6 if args.quick else 10**7
        index = index_build(n_index)
        print(f"index build of {n_index} items in {index[0]} shards: {index[1]:.1f} s "
              f"(CPU {index[2]:.1f} s), read_index {index[3]:.1f} s", flush=True)
        load = os.getloadavg()[0]
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    lines = ["## Simulate (`bench/simulate.py`)", "",
             f"Whole processes, start-up and writing included, best of {REPEAT} runs; "
             "production = `lenshpc simulate`, "
             "naive = a loop that builds a lenstronomy `ImageModel` for every image (same "
             "systems, full supersampling; images checked equal, adaptive within its bound "
             "1e-4). One rank unless stated. CPU time counts every process and thread the "
             "run started; on a shared machine it is the steadier figure.", "",
             "| case | images | production images/s/core | naive images/s/core "
             "| production / naive (wall) | production / naive (CPU time) | writing share |",
             "|---|---|---|---|---|---|---|"]
    for label, n, p, q, r, rc, s in rows:
        lines.append(f"| {label} | {n} | {p:.1f} | {q:.1f} | **{r:.2f}x** | **{rc:.2f}x** | {100 * s:.1f}% |")
    lines += ["",
              "The renderer alone, one process, CPU time per image at 112x112, supersampling 3 "
              f"({int(100 * scale) or 10} systems of the population; 112,896 points per image "
              "in full supersampling):", "",
              "| renderer | ms per image | ns per evaluated point | pixels supersampled |",
              "|---|---|---|---|",
              f"| lenstronomy `ImageModel.image` (reference) | {1e3 * points['lenstronomy']:.2f} | "
              f"{points['lenstronomy_ns_per_point']:.0f} | 100% |",
              f"| fused, full (`supersampling_mode: full`) | {1e3 * points['fused']:.2f} | "
              f"{points['fused_ns_per_point']:.1f} | 100% |",
              f"| fused, adaptive | {1e3 * points['adaptive']:.2f} | — | "
              f"{100 * points['adaptive_supersampled']:.1f}% (mean) |", "",
              f"Fused full vs lenstronomy: **{points['lenstronomy'] / points['fused']:.1f}x** per "
              f"point; adaptive vs lenstronomy: **{points['lenstronomy'] / points['adaptive']:.1f}x** "
              "per image. Largest difference of an adaptive image from the full one over these "
              f"systems: {points['adaptive_worst']:.1e} of the normalised image (the stated "
              "bound, 1e-4, is held over 300 systems with and without PSF and noise by "
              "`tests/simulate/test_sim_render.py`).", "",
              "| ranks (mpirun, 112x112 ss3 adaptive) | images | wall time | speed-up "
              "| CPU time (all ranks) | speed-up on free cores (CPU 1 rank / (CPU 2 ranks / 2)) "
              "| writing share |",
              "|---|---|---|---|---|---|---|",
              f"| 1 | {n_scale} | {t1:.1f} s | 1.00x | {cpu1:.1f} s | 1.00x | {100 * share1:.1f}% |",
              f"| 2 | {n_scale} | {t2:.1f} s | **{t1 / t2:.2f}x** | {cpu2:.1f} s | **{free_core:.2f}x** | "
              f"{100 * share2:.1f}% |", "",
              f"`dataset.compression` on {int(500 * scale)} images of 112x112 (ss3, adaptive) per "
              "shard, written with `write_shard` and read back with `read_shard` (CPU time "
              "per image, best of the runs). Noisy: background 1% of the maximum and Poisson "
              "noise for 1000 s. zstd and blosc need `import hdf5plugin` in a reader; lenshpc "
              "imports it itself.", "",
              "| images | compression | kB per image | smaller than none | write ms/image | read ms/image |",
              "|---|---|---|---|---|---|"]
    for kind, option, size, ratio, w, r in comp:
        lines.append(f"| {kind} | {option} | {size / 1e3:.1f} | {ratio:.2f}x | {1e3 * w:.3f} | "
                     f"{1e3 * r:.3f} |")
    lines += ["",
              "All options are lossless: the normalised float32 pixels keep a full mantissa even "
              "where the image is noise-free, so the gain is modest and smaller with noise. zstd "
              "and blosc cost least to write and read; gzip and lzf need no extra package.",
              "",
              f"Index build at scale: a synthetic dataset of {n_index:,} items in {index[0]:,} "
              "shards of 5,085 (the paper's 112x112 items at `dataset.shard_mb` 256; 1x1 images, "
              "since the build copies labels and truth and only maps the images): "
              f"`write_index` **{index[1]:.1f} s** (CPU {index[2]:.1f} s; goal <= 30 s), "
              f"`read_index` {index[3]:.1f} s.",
              "",
              "Goals: production >= 10x naive per core at the paper config (issue 10; adaptive "
              "supersampling), >= 2x in full supersampling (issue 2); 1 -> 2 ranks >= 1.8x; "
              "writing < 5%.",
              f"Load average at the end of the run: {load:.1f} on {os.cpu_count()} cores "
              "(other jobs share the machine: the rank speed-up is bounded by free cores)."]
    if compile_s is not None:
        lines.append(f"First run after a fresh clone compiles the fused renderer once "
                     f"(~{compile_s:.1f} s, then cached by numba).")
    publish("simulate", lines, write=not args.no_write and not args.quick)


if __name__ == "__main__":
    main()
