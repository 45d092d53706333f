"""Pure pieces of ``lenshpc predict``: a cutout made into a network input, the flags that
say what was wrong with it, and the summary of its predictions.

Flags (the catalogue's ``flag`` column, a bit mask; 0 = nothing to report):

====  ==========  ==================================================================
bit   name        meaning
====  ==========  ==================================================================
1     NAN         non-finite pixels, set to 0 (the sky-subtracted background) before
                  the network saw the cutout
2     SIZE        the cutout is smaller than the training images: not predicted
4     EDGE        a mosaic cutout reaching past the mosaic's edge (the missing pixels
                  are NaN, so NAN is set too)
8     RANGE       a predicted median outside the range of the training labels: an
                  extrapolation
16    RESAMPLED   resampled to the training pixel scale (``--resample``)
32    EMPTY       no finite pixel, or all equal: not predicted
====  ==========  ==================================================================

A cutout larger than the training images is centre-cropped (no flag).
"""

from __future__ import annotations

import numpy as np

FLAGS = {"NAN": 1, "SIZE": 2, "EDGE": 4, "RANGE": 8, "RESAMPLED": 16, "EMPTY": 32}
#: flags under which the cutout is not predicted (its row holds NaN)
NOT_PREDICTED = FLAGS["SIZE"] | FLAGS["EMPTY"]
#: the statistics of every parameter, in the catalogue's column order
STATS = ("mean", "std", "p16", "p50", "p84")
#: relative difference of pixel scales refused without --resample
SCALE_TOLERANCE = 0.01


def flag_names(flag: int) -> list[str]:
    """The names of the bits set in ``flag``."""
    return [name for name, bit in FLAGS.items() if flag & bit]


def scale_mismatch(scale: float, train_scale: float) -> bool:
    """True when ``scale`` differs from ``train_scale`` (arcsec) by more than 1%."""
    return abs(scale - train_scale) > SCALE_TOLERANCE * train_scale


def resample(pixels: np.ndarray, scale: float, train_scale: float, size: int) -> np.ndarray:
    """The central ``size`` x ``size`` pixels of ``train_scale`` arcsec of ``pixels`` (of
    ``scale`` arcsec): cubic spline (``scipy.ndimage.map_coordinates``), output pixel j
    sampling input position c_in + (j - c_out) train_scale / scale, so the cutout's centre
    stays the image's centre and the new pixels are exactly ``train_scale``. NaN pixels are
    zero-filled first, then NaN again where the nearest input pixel was."""
    from scipy import ndimage
    ratio = train_scale / scale
    axes = [(n - 1) / 2 + (np.arange(size) - (size - 1) / 2) * ratio for n in pixels.shape]
    coords = np.meshgrid(*axes, indexing="ij")
    bad = ~np.isfinite(pixels)
    out = ndimage.map_coordinates(np.where(bad, 0.0, pixels), coords, order=3, mode="nearest")
    if bad.any():
        out[ndimage.map_coordinates(bad.astype(np.float64), coords, order=0, mode="nearest") > 0.5] = np.nan
    return out


def covers(shape: tuple[int, ...], scale: float, train_size: int, train_scale: float) -> bool:
    """Whether a cutout of ``shape`` pixels of ``scale`` arcsec spans the training field
    (``train_size`` pixels of ``train_scale``), within a hundredth of a pixel."""
    return min(shape) * scale >= (train_size - 0.01) * train_scale


def grab_size(kind: str, pixel_scale: float | None, train_size: int, train_scale: float,
              resampled: bool) -> int:
    """Pixels a side to read around a mosaic position: the training size, or, when
    resampling, enough of the mosaic's own pixels to cover it (2 more for the spline)."""
    if kind != "mosaic" or pixel_scale is None or not resampled:
        return train_size
    return int(np.ceil(train_size * train_scale / pixel_scale)) + 2


def centre_crop(pixels: np.ndarray, size: int) -> np.ndarray:
    """The central ``size`` x ``size`` pixels (the cutout is at least that large)."""
    h, w = pixels.shape
    y0, x0 = (h - size) // 2, (w - size) // 2
    return pixels[y0:y0 + size, x0:x0 + size]


def prepare(pixels: np.ndarray, scale: float | None, train_size: int, train_scale: float,
            resampled: bool, edge: bool = False) -> tuple[np.ndarray | None, int]:
    """(network image (size, size) float32 before normalisation, or None; flag).

    The pixel scale has been checked already (the driver refuses a mismatch without
    ``--resample``); with ``resampled`` the cutout is zoomed to ``train_scale``."""
    flag = FLAGS["EDGE"] if edge else 0
    if resampled and scale is not None and scale_mismatch(scale, train_scale):
        flag |= FLAGS["RESAMPLED"]
        if not covers(pixels.shape, scale, train_size, train_scale):
            return None, flag | FLAGS["SIZE"]
        pixels = resample(pixels, scale, train_scale, train_size)
    if min(pixels.shape) < train_size:
        return None, flag | FLAGS["SIZE"]
    image = centre_crop(pixels, train_size)
    finite = np.isfinite(image)
    if not finite.all():
        flag |= FLAGS["NAN"]
        image = np.where(finite, image, 0.0)
    if not finite.any() or float(np.ptp(image)) == 0.0:
        return None, flag | FLAGS["EMPTY"]
    return image.astype(np.float32), flag


def summarize(samples: np.ndarray) -> np.ndarray:
    """(n, 4, 5) mean, std (ddof=1; 0 for one sample), 16th, 50th, 84th percentiles over
    ``samples`` (S, n, 4): every fold x every MC-dropout pass."""
    n_samples = samples.shape[0]
    out = np.empty(samples.shape[1:] + (len(STATS),), dtype=np.float64)
    out[..., 0] = samples.mean(axis=0)
    out[..., 1] = samples.std(axis=0, ddof=1) if n_samples > 1 else 0.0
    out[..., 2:] = np.moveaxis(np.percentile(samples, [16, 50, 84], axis=0), 0, -1)
    return out


def out_of_range(stats: np.ndarray, ranges: np.ndarray) -> np.ndarray:
    """(n,) True where a parameter's median (``stats`` (n, 4, 5)) leaves its training
    range (``ranges`` (4, 2): low, high)."""
    p50 = stats[..., STATS.index("p50")]
    return np.any((p50 < ranges[:, 0]) | (p50 > ranges[:, 1]), axis=1)


def training_ranges(population, seed: int, n: int = 20_000) -> np.ndarray:
    """(4, 2) low and high of theta_E, q, e1, e2 over ``n`` systems of the training
    population (its distributions; a catalogue population's parameters from their
    distributions too, which bound what the config allows)."""
    import dataclasses

    from lenshpc.simulate import population as pop
    no_mag = dataclasses.replace(
        population, kind="parametric", catalogue=None, catalogue_columns=None,
        lens_light=dataclasses.replace(population.lens_light, mag=None),
        source_light=dataclasses.replace(population.source_light, mag=None))
    _, labels = pop.sample(no_mag, seed, range(n))
    return np.stack([labels.min(axis=0), labels.max(axis=0)], axis=1).astype(np.float64)
