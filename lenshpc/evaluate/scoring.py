"""The pure kernels of evaluate: plan the work, re-render, score, seed, check.

No files, no MPI: arrays, a renderer object and numbers in, arrays and numbers out.
Rank invariance starts here: units are cut from test positions and a chunk's seed
from (root seed, job, first test position), never from the rank.

Re-render: a system's predicted ``theta_E`` (arcsec), ``e1``, ``e2`` replace its truth
(``q`` enters only through ``e1, e2``) and everything else comes from the truth row and
the dataset's own image config (the renderer of ``simulate``). Score: MSE and PSNR with
MAX = 1 against the true image - the stored image when the dataset is noise-free, the
noise-free render of the truth (same PSF) when it is not, so that PSNR measures the
parameters, not the noise.
"""

from __future__ import annotations

import json
import math
import zlib
from typing import Any, Sequence

import numpy as np

from lenshpc.dataset.columns import TARGETS
from lenshpc.evaluate import image_metrics, metrics

#: Truth columns replaced by the predictions before re-rendering (q enters through e1, e2).
RENDERED = {"theta_E": "lens_mass.theta_E", "e1": "lens_mass.e1", "e2": "lens_mass.e2"}


def plan_units(n_jobs: int, n_test: int, chunk_size: int) -> list[tuple[int, int, int]]:
    """Units ``(job position, start, stop)`` over test positions, job-major."""
    return [(j, s, min(s + chunk_size, n_test)) for j in range(n_jobs)
            for s in range(0, n_test, chunk_size)]


def renderable(theta_E: float, e1: float, e2: float, theta_E_min: float,
               max_ellipticity: float) -> tuple[float, float, float, bool]:
    """Predicted ``theta_E`` (arcsec), ``e1``, ``e2`` moved into the domain an SIE can be
    rendered in: ``theta_E >= theta_E_min``, ``|e| <= max_ellipticity`` (direction kept;
    a non-finite ellipticity becomes 0). Returns the values and whether any changed."""
    clamped = False
    if not theta_E >= theta_E_min:          # also catches nan
        theta_E, clamped = theta_E_min, True
    if not (math.isfinite(e1) and math.isfinite(e2)):
        e1, e2, clamped = 0.0, 0.0, True
    modulus = math.hypot(e1, e2)
    if modulus > max_ellipticity:
        e1, e2, clamped = e1 * max_ellipticity / modulus, e2 * max_ellipticity / modulus, True
    return theta_E, e1, e2, clamped


def rerender(renderer, truth_names: Sequence[str], truth_row: np.ndarray, pred_row: np.ndarray,
             theta_E_min: float, max_ellipticity: float, lens_light_follows_mass: bool = False
             ) -> tuple[np.ndarray | None, bool]:
    """The (H, W) image (maximum 1) of one system with its predicted ``theta_E, e1, e2``
    (``pred_row`` = theta_E, q, e1, e2), everything else from ``truth_row``; None if the
    renderer finds non-finite pixels. Also returns whether the prediction was clamped.
    ``lens_light_follows_mass`` (a population with ``lens_light_shape: mass``): the lens
    light takes the predicted e1, e2 too, as the mass' shape is what it was drawn from."""
    names = list(truth_names)
    theta_E, e1, e2, clamped = renderable(float(pred_row[0]), float(pred_row[2]),
                                          float(pred_row[3]), theta_E_min, max_ellipticity)
    row = np.array(truth_row, dtype=np.float64)
    for col, value in zip(RENDERED.values(), (theta_E, e1, e2), strict=True):
        row[names.index(col)] = value
    if lens_light_follows_mass:
        row[names.index("lens_light.e1")], row[names.index("lens_light.e2")] = e1, e2
    try:
        return renderer.render_truth(names, row), clamped
    except FloatingPointError:
        return None, clamped


def reference_images(renderer, truth_names, truth_rows: np.ndarray, stored: np.ndarray,
                     noise: bool) -> np.ndarray:
    """The true images PSNR compares against: the ``stored`` images (n, H, W) when the
    dataset is noise-free, else the noise-free renders of the truth rows (same PSF)."""
    if not noise:
        return stored
    return np.stack([renderer.render_truth(truth_names, row) for row in truth_rows])


def _lens(truth_names, row) -> tuple[float, tuple[float, float]]:
    """True theta_E (arcsec) and lens mass centre (x, y, arcsec; 0 if not in the truth)."""
    names = list(truth_names)

    def col(name: str) -> float:
        return float(row[names.index(name)]) if name in names else 0.0
    return col("lens_mass.theta_E"), (col("lens_mass.center_x"), col("lens_mass.center_y"))


def score_chunk(renderer, truth_names, truth_rows: np.ndarray, pred: np.ndarray,
                true_images: np.ndarray, theta_E_min: float,
                max_ellipticity: float, *, pixel_scale: float | None = None,
                ring_width: float = image_metrics.RING_WIDTH,
                lens_light_follows_mass: bool = False) -> dict[str, Any]:
    """Re-render every system of a chunk from ``pred`` (n, 4) and score it against
    ``true_images`` (n, H, W): ``mse`` (n,) and ``psnr`` (n,, dB, MAX = 1, inf when
    exact), the study's ``psnr_study`` (dB), ``ssim`` and ``ssim_ring`` (in a ring of
    half-width ``ring_width`` arcsec around the true theta_E; ``pixel_scale`` in
    arcsec/pixel, default the renderer's), all nan when the re-render failed, and
    ``clamped`` (n,) bool."""
    n = len(pred)
    scale = float(renderer.image.pixel_scale if pixel_scale is None else pixel_scale)
    mse = np.empty(n, dtype=np.float64)
    study = np.full((n, 3), np.nan)
    clamped = np.zeros(n, dtype=bool)
    for i in range(n):
        img, clamped[i] = rerender(renderer, truth_names, truth_rows[i], pred[i],
                                   theta_E_min, max_ellipticity, lens_light_follows_mass)
        mse[i] = math.nan if img is None else metrics.image_mse(true_images[i], img)
        if img is not None:
            theta_E, center = _lens(truth_names, truth_rows[i])
            study[i] = image_metrics.image_scores(true_images[i], img, theta_E, scale,
                                                  ring_width, center)
    return {"mse": mse, "psnr": metrics.psnr(mse), "psnr_study": study[:, 0],
            "ssim": study[:, 1], "ssim_ring": study[:, 2], "clamped": clamped}


def settings_text(*, mc_samples: int, theta_E_min: float, max_ellipticity: float, noise: bool,
                  seed: int, chunk_size: int, batch_size: int,
                  ssim_ring_width: float = image_metrics.RING_WIDTH) -> str:
    """What besides the model file and the dataset decides a job's results (JSON text):
    part of the key under which predictions.h5 caches them."""
    s: dict[str, Any] = {"mc_samples": mc_samples, "theta_E_min": theta_E_min,
                         "max_ellipticity": max_ellipticity,
                         "image_scores": {"psnr_study_percentiles": list(image_metrics.PERCENTILES),
                                          "ssim": "tf.image.ssim 11x11 sigma 1.5",
                                          "ssim_ring_width": ssim_ring_width},
                         "true_image": ("noise-free render of the truth" if noise
                                        else "stored image")}
    if mc_samples:   # MC masks are seeded per chunk and batch
        s.update(seed=seed, chunk_size=chunk_size, batch_size=batch_size)
    return json.dumps(s, sort_keys=True)


def mc_seed(root_seed: int, key: str, start: int) -> tuple[int, int, int]:
    """Seed of the MC-dropout masks of the chunk starting at test position ``start``."""
    return (root_seed, zlib.crc32(key.encode()), start)


def true_parameters(labels: np.ndarray, truth: np.ndarray, truth_names) -> np.ndarray:
    """(N, 4) float64 true theta_E, q, e1, e2: theta_E, e1, e2 from the float64 truth
    table (exactly what was rendered), q from the labels (it is not a render input)."""
    names = list(truth_names)
    out = np.asarray(labels, dtype=np.float64).copy()
    for j, target in enumerate(TARGETS):
        col = f"lens_mass.{target}"
        if col in names:
            out[:, j] = truth[:, names.index(col)]
    return out


def first_nonfinite(values: np.ndarray) -> int | None:
    """Position (along the first axis) of the first row of ``values`` holding a NaN or an
    infinity, or None if every value is finite."""
    bad = ~np.isfinite(np.asarray(values, dtype=np.float64))
    if bad.ndim > 1:
        bad = bad.reshape(len(bad), -1).any(axis=1)
    hits = np.flatnonzero(bad)
    return int(hits[0]) if hits.size else None
