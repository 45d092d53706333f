"""The study's image-space figures as pure numpy functions: its PSNR, SSIM and ring SSIM.

The authors score a re-rendered image against the true one in their ``psnr_total.py``
(github.com/jordiancona/lenstronomy_images, commit b319611e): each image, the true one
and the re-rendered one **each on its own percentiles**, is clipped to its 1st-99th
percentiles (numpy's default linear interpolation) and scaled to [0, 1]
(:func:`percentile_normalize`); then

- PSNR = 10 log10(1 / MSE) with the MSE over the (finite) pixels of the two scaled
  images (:func:`psnr_study`; MAX = 1 of the scaled images);
- SSIM = ``tf.image.ssim(a, b, max_val=1.0)`` of the two scaled images: Wang et al.
  (2004) with an 11 x 11 Gaussian window of sigma 1.5 pixels, K1 = 0.01, K2 = 0.03,
  population (co)variances, the window kept inside the image ("valid"), and the mean
  of the SSIM map (:func:`ssim`, a numpy transcription checked against TensorFlow's in
  the tests; no TensorFlow needed);
- ring SSIM: the same SSIM of the two scaled images multiplied by a ring mask (zero
  outside ``theta_E - w <= r <= theta_E + w`` around the lens, ``w`` = 0.2 arcsec, the
  half-width their ``get_einstein_ring_mask`` uses for it), so windows wholly outside
  the ring compare zero with zero and score 1 (:func:`ssim_ring`). Two choices differ
  from theirs, both documented: the ring is centred on the lens mass centre (their
  images have it at the origin) on lenstronomy's pixel grid, whose origin lies at pixel
  ``(n - 1) / 2``, where theirs takes pixel ``n // 2`` (half a pixel off for even
  ``n``).

Images are ``(H, W)`` arrays in any flux unit (every figure here is invariant to an
affine change of flux); lengths are in arcsec.
"""

from __future__ import annotations

import math

import numpy as np

#: Percentiles each image is clipped to before scaling to [0, 1] (the authors' pmin, pmax).
PERCENTILES = (1.0, 99.0)
#: The authors' guard of the division by the percentile range (``normalize_minmax``).
RANGE_EPS = 1e-9
#: tf.image.ssim's defaults, which the authors use.
SSIM_WINDOW, SSIM_SIGMA, SSIM_K1, SSIM_K2 = 11, 1.5, 0.01, 0.03
#: Default half-width of the ring around theta_E, in arcsec.
RING_WIDTH = 0.2


def percentile_normalize(image, percentiles=PERCENTILES) -> np.ndarray:
    """``(clip(x, p_lo, p_hi) - p_lo) / (p_hi - p_lo + 1e-9)`` with ``p_lo, p_hi`` the
    image's own percentiles over its finite pixels (float64, values in [0, 1]; NaN pixels
    stay NaN, a constant image becomes 0)."""
    x = np.asarray(image, dtype=np.float64)
    finite = x[np.isfinite(x)]
    if finite.size == 0:
        return np.full(x.shape, np.nan)
    lo, hi = np.percentile(finite, list(percentiles))
    return (np.clip(x, lo, hi) - lo) / (hi - lo + RANGE_EPS)


def _psnr_scaled(a: np.ndarray, b: np.ndarray) -> float:
    keep = np.isfinite(a) & np.isfinite(b)
    if not keep.any():
        return math.nan
    m = float(np.mean((a[keep] - b[keep]) ** 2))
    return math.inf if m == 0 else 10.0 * math.log10(1.0 / m)


def psnr_study(true_image, pred_image) -> float:
    """The study's PSNR in dB: ``10 log10(1 / MSE)``, the MSE of the two
    percentile-normalised images over the pixels finite in both; ``inf`` when they are
    equal, ``nan`` when no pixel is finite."""
    return _psnr_scaled(percentile_normalize(true_image), percentile_normalize(pred_image))


def _gauss(size: int, sigma: float) -> np.ndarray:
    g = np.exp(-0.5 * ((np.arange(size) - (size - 1) / 2) / sigma) ** 2)
    return g / g.sum()


def _valid_filter(x: np.ndarray, g: np.ndarray) -> np.ndarray:
    """Separable 2-d correlation of ``x`` with ``g`` (x) ``g``, valid part only."""
    k = len(g)
    rows = sum(g[i] * x[i:x.shape[0] - k + 1 + i, :] for i in range(k))
    return sum(g[i] * rows[:, i:rows.shape[1] - k + 1 + i] for i in range(k))


def ssim(a, b, max_val: float = 1.0) -> float:
    """Mean SSIM (Wang et al. 2004) of two ``(H, W)`` images of range ``max_val``, as
    ``tf.image.ssim``: Gaussian window 11 x 11 (sigma 1.5), K1 = 0.01, K2 = 0.03,
    population variances, valid window positions only. An image smaller than 11 pixels a
    side uses the largest odd window that fits. 1 for identical images; nan if any
    pixel is not finite."""
    x, y = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if x.shape != y.shape or x.ndim != 2:
        raise ValueError(f"ssim needs two (H, W) images of one shape, got {x.shape}, {y.shape}")
    if not (np.isfinite(x).all() and np.isfinite(y).all()):
        return math.nan
    size = min(SSIM_WINDOW, *x.shape)
    size -= 1 - size % 2
    g = _gauss(size, SSIM_SIGMA)
    c1, c2 = (SSIM_K1 * max_val) ** 2, (SSIM_K2 * max_val) ** 2
    mx, my = _valid_filter(x, g), _valid_filter(y, g)
    vx = _valid_filter(x * x, g) - mx * mx
    vy = _valid_filter(y * y, g) - my * my
    cxy = _valid_filter(x * y, g) - mx * my
    luminance = (2 * mx * my + c1) / (mx * mx + my * my + c1)
    structure = (2 * cxy + c2) / (vx + vy + c2)
    return float(np.mean(luminance * structure))


def ring_mask(shape: tuple[int, ...], theta_E: float, pixel_scale: float,
              width: float = RING_WIDTH, center: tuple[float, float] = (0.0, 0.0)) -> np.ndarray:
    """Boolean ``(H, W)`` mask of the pixels whose centre lies at a distance ``r`` with
    ``theta_E - width <= r <= theta_E + width`` (arcsec) from ``center`` = (x, y) arcsec,
    on lenstronomy's grid: pixel (row i, column j) at x = (j - (W - 1) / 2) * pixel_scale,
    y = (i - (H - 1) / 2) * pixel_scale."""
    h, w = shape[-2:]
    y = (np.arange(h)[:, None] - (h - 1) / 2) * pixel_scale - center[1]
    x = (np.arange(w)[None, :] - (w - 1) / 2) * pixel_scale - center[0]
    r = np.hypot(x, y)
    return (r >= theta_E - width) & (r <= theta_E + width)


def ssim_ring(true_image, pred_image, theta_E: float, pixel_scale: float,
              width: float = RING_WIDTH, center: tuple[float, float] = (0.0, 0.0)) -> float:
    """The authors' ring SSIM: :func:`ssim` of the two percentile-normalised images, each
    multiplied by :func:`ring_mask` of the *true* ``theta_E`` (arcsec). Windows wholly
    outside the ring score 1, so it is closer to 1 than an SSIM averaged over the ring."""
    a, b = percentile_normalize(true_image), percentile_normalize(pred_image)
    mask = ring_mask(a.shape, theta_E, pixel_scale, width, center)
    return ssim(a * mask, b * mask)


def image_scores(true_image, pred_image, theta_E: float, pixel_scale: float,
                 width: float = RING_WIDTH,
                 center: tuple[float, float] = (0.0, 0.0)) -> tuple[float, float, float]:
    """(study PSNR in dB, SSIM, ring SSIM) of one re-rendered image against the true one."""
    a, b = percentile_normalize(true_image), percentile_normalize(pred_image)
    mask = ring_mask(a.shape, theta_E, pixel_scale, width, center)
    return _psnr_scaled(a, b), ssim(a, b), ssim(a * mask, b * mask)
