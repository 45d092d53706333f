"""Benchmark of ``lenshpc predict`` (issue 18): cutouts per second per core through the
predict path, against evaluate's own predict kernel measured in the same run.

Both on one core (one TensorFlow thread), the same model (the train stage's network,
``lenshpc.train.model.build_model``, initial weights: speed does not depend on training),
the same images (configs/csst.yaml's 64 px grid) and the same MC-dropout passes:

- reference: ``Predictor.predict_mc`` on an in-memory (N, H, W) array, what ``lenshpc
  evaluate`` runs per chunk;
- predict: ``lenshpc.predict.run.predict_chunk`` over the same images written as FITS
  files with a WCS: read each file, check and prepare it, every pass, the statistics
  and flags.

Prints the rates and the wall and CPU-time ratios. Run: ``.venv/bin/python
bench/predict.py [--n 256] [--mc 10]``.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=256)
    ap.add_argument("--mc", type=int, default=10)
    a = ap.parse_args()

    import numpy as np
    from astropy.io import fits

    from lenshpc.config import load
    from lenshpc.evaluate import predict as tfp
    from lenshpc.predict import inputs
    from lenshpc.predict.run import Plan, predict_chunk
    from lenshpc.train.model import build_model
    from tests.predict.conftest import wcs_header

    tfp.configure_threads(1)
    cfg = load(ROOT / "configs" / "csst.yaml")
    size, scale = cfg.image.size, cfg.image.pixel_scale
    model = build_model(cfg.train.network, cfg.train.models[0], size, [1, 0.8, 0, 0], [0.5, 0.1, 0.1, 0.1])
    predictor = tfp.Predictor(model, mc=True, normalize=cfg.train.normalize)
    images = np.random.default_rng(0).random((a.n, size, size)).astype(np.float32)
    batch = cfg.evaluate.batch_size

    with tempfile.TemporaryDirectory() as tmp:
        cutouts = []
        for i, img in enumerate(images):
            path = Path(tmp) / f"c{i:05d}.fits"
            fits.PrimaryHDU(img, header=wcs_header(size, scale)).writeto(path)
            cutouts.append(inputs.Cutout("fits", str(path), pixel_scale=scale))
        plan = Plan(cutouts=cutouts, jobs=[type("J", (), {"key": "model1/fold-0", "model": "model1"})()],
                    normalize={}, ranges=np.array([[0, 9], [0, 1], [-1, 1], [-1, 1]], float),
                    provenance={"calibration": None}, partial=Path(tmp), done={}, mc=a.mc)
        calibrated = dataclasses.replace(plan, provenance={"calibration": {
            "scales": {"model1/fold-0": [2.0, 2.0, 2.0, 2.0]}}})
        predictor.predict_mc(images[:batch], batch, a.mc, (0, 0, 0))   # compile both paths
        predict_chunk(plan, [predictor], cfg, 0, min(batch, a.n), False)

        t0, c0 = time.perf_counter(), time.process_time()
        for start in range(0, a.n, batch):
            predictor.predict_mc(images[start:start + batch], batch, a.mc, (0, 0, start))
        ref_wall, ref_cpu = time.perf_counter() - t0, time.process_time() - c0

        t0, c0 = time.perf_counter(), time.process_time()
        for start in range(0, a.n, batch):
            predict_chunk(plan, [predictor], cfg, start, min(start + batch, a.n), False)
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0

        t0, c0 = time.perf_counter(), time.process_time()
        for start in range(0, a.n, batch):
            predict_chunk(calibrated, [predictor], cfg, start, min(start + batch, a.n), False)
        cal_wall, cal_cpu = time.perf_counter() - t0, time.process_time() - c0
    print(f"{a.n} cutouts of {size} px, {a.mc} MC-dropout passes, 1 thread")
    print(f"evaluate's predict kernel: {a.n / ref_wall:8.1f} cutouts/s  ({ref_cpu:.2f} CPU s)")
    print(f"lenshpc predict path:      {a.n / wall:8.1f} cutouts/s  ({cpu:.2f} CPU s)")
    print(f"  with --calibration:      {a.n / cal_wall:8.1f} cutouts/s  ({cal_cpu:.2f} CPU s)")
    print(f"ratio predict / evaluate:  wall {ref_wall / wall:.2f}, CPU time {ref_cpu / cpu:.2f} "
          f"(rate ratio; 1 = no overhead)")
    print(f"  with --calibration:      wall {ref_wall / cal_wall:.2f}, CPU time "
          f"{ref_cpu / cal_cpu:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
