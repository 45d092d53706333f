"""Config sections of the simulate stage: the image grid and the dataset (the population
is in :mod:`lenshpc.config.population`, its distributions in
:mod:`lenshpc.config.distribution`; both are re-exported here)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

from lenshpc.config.distribution import (  # noqa: F401  (re-exported)
    DISTRIBUTIONS,
    LOGNORMAL_SIGMA_MAX,
    PARAM_MAX,
    Distribution,
    Support,
)
from lenshpc.config.observation import Observation, fill_image
from lenshpc.config.population import (  # noqa: F401  (re-exported)
    COMPONENTS,
    CatalogueColumns,
    LensLight,
    LensMass,
    Population,
    SourceLight,
    parameter_fields,
    value_allowed,
    values_refused,
)
from lenshpc.config.schema import Section, UserError, build, param

# --------------------------------------------------------------------------- sections


@dataclass(frozen=True)
class Image(Section):
    """The image grid, PSF and noise (CSST wide-field pixels by default)."""

    size: int = param(64, ge=8, le=4096, unit="pixels",
                      doc="Side of the square image (one channel). The study does not state it: "
                      "64 for quick runs, 112 (8.3 arcsec) in the paper config (assumed).")
    pixel_scale: float = param(0.074, ge=1e-4, le=10, unit="arcsec/pixel",
                               doc="Pixel scale (CSST: 0.074).")
    supersampling: int = param(1, ge=1, le=16,
                               doc="Supersampling factor of the ray-tracing grid (1 = none; the "
                               "study does not state it, the paper config uses 3) (assumed).")
    supersampling_mode: Literal["full", "adaptive"] = param(
        "full", doc="full: every pixel supersampled (the reference). adaptive: only the pixels "
        "where the image at pixel centres has |Laplacian| above adaptive_threshold, and their "
        "neighbours, are supersampled; the others take their centre value. With the default "
        "threshold, adaptive differs from full by at most 1e-4 of the normalised image "
        "(docs/performance.md).")
    adaptive_threshold: float = param(5e-4, gt=0, le=1, unit="normalised flux",
                                      doc="|Laplacian| (5-point, of the centre-sampled image "
                                      "divided by its maximum) above which a pixel is "
                                      "supersampled in adaptive mode.")
    psf: Literal["none", "gaussian", "pixel"] = param("none", doc="PSF convolution (none in the "
                                                      "study).")
    psf_fwhm: float = param(0.15, gt=0, le=10, unit="arcsec",
                            doc="FWHM of the Gaussian PSF; at most the field of view.")
    psf_kernel: str | None = param(None, doc="Path of a pixel PSF kernel (psf: pixel): a .npy "
                                   "array, or a FITS file (.fits, .fit, .fits.gz; the first 2-d "
                                   "image HDU) whose pixel scale (its WCS, or a PIXSCALE or "
                                   "PIXSCAL1 keyword, arcsec) must be the image's within 1%.")
    background_rms: float = param(0.0, ge=0, le=100, unit="normalised flux",
                                  doc="Gaussian background noise, relative to the image maximum.")
    exposure_time: float | None = param(None, gt=0, le=1e8, unit="s",
                                        doc="Total exposure time (all exposures) for the Poisson "
                                        "noise of the model, read as counts/s (e-/s), and of the "
                                        "sky and dark current (null: none).")
    observation: Observation = param(
        default_factory=Observation,
        doc="A survey and band whose numbers fill pixel_scale, psf, psf_fwhm, zero_point, "
        "sky_brightness, exposure_time, num_exposures, read_noise and dark_current where this "
        "section does not give them (lenshpc/config/observation.py, docs/predict.md).")
    zero_point: float | None = param(None, ge=0, le=50, unit="mag",
                                     doc="AB magnitude of 1 e-/s (null: none). Needed for "
                                     "population magnitudes (mag) and the sky.")
    sky_brightness: float | None = param(None, ge=0, le=50, unit="mag/arcsec^2",
                                         doc="Sky brightness: Poisson noise of the (subtracted) "
                                         "sky; needs zero_point and exposure_time (null: none).")
    num_exposures: int = param(1, ge=1, le=100_000,
                               doc="Exposures combined into exposure_time: each adds its read "
                               "noise.")
    read_noise: float = param(0.0, ge=0, le=1e4, unit="e-",
                              doc="Read noise per exposure and pixel (needs exposure_time).")
    dark_current: float = param(0.0, ge=0, le=1e4, unit="e-/s/pixel",
                                doc="Dark current: Poisson noise of its (subtracted) counts "
                                "(needs exposure_time).")

    @classmethod
    def complete_yaml(cls, data: Any, path: str) -> Any:
        """The YAML mapping with the keys ``observation`` implies where it does not give them
        (:func:`lenshpc.config.observation.fill_image`); called by ``build``."""
        return fill_image(data, path)

    def validate(self, path: str) -> None:
        if self.psf == "pixel" and not self.psf_kernel:
            raise UserError(f"config {path}.psf_kernel: required when {path}.psf is 'pixel'")
        if self.sky_brightness is not None and self.zero_point is None:
            raise UserError(f"config {path}.sky_brightness: needs {path}.zero_point (the "
                            f"magnitude of 1 e-/s)")
        needs_time = [k for k in ("sky_brightness", "read_noise", "dark_current")
                      if getattr(self, k)]
        if needs_time and self.exposure_time is None:
            raise UserError(f"config {path}.{needs_time[0]}: needs {path}.exposure_time (s)")
        if self.psf == "gaussian" and self.psf_fwhm > self.field_of_view:
            # the kernel would be larger than the image (and could exhaust memory)
            raise UserError(f"config {path}.psf_fwhm: {self.psf_fwhm:g} arcsec is wider than the "
                            f"{self.field_of_view:g} arcsec field ({path}.size x "
                            f"{path}.pixel_scale)")

    @property
    def noise(self) -> bool:
        return self.background_rms > 0 or self.exposure_time is not None

    @property
    def background_sigma(self) -> float:
        """Gaussian sigma (counts/s per pixel) of the sky, dark current and read noise:
        sqrt((sky + dark) / T + N read_noise^2 / T^2) for total exposure T over N exposures,
        sky = 10^(-0.4 (sky_brightness - zero_point)) x pixel_scale^2 (e-/s/pixel); 0 when
        none is configured."""
        if self.exposure_time is None:
            return 0.0
        t = self.exposure_time
        sky = 0.0 if self.sky_brightness is None or self.zero_point is None else \
            10 ** (-0.4 * (self.sky_brightness - self.zero_point)) * self.pixel_scale ** 2
        return math.sqrt((sky + self.dark_current) / t
                         + self.num_exposures * self.read_noise ** 2 / t ** 2)

    @property
    def field_of_view(self) -> float:
        """Side of the image in arcsec."""
        return self.size * self.pixel_scale


#: Smallest shard file that min_shards asks for (bytes): below a few MB, opening and
#: closing a file costs a noticeable share of simulate (22% at 20 images of 64x64).
MIN_SHARD_BYTES = 4e6


@dataclass(frozen=True)
class Dataset:
    """Dataset size, cross-validation folds, held-out test set and sharding."""

    n_images: int = param(1000, ge=1, le=10**9, doc="Number of lens systems (the study: "
                          "76,396).")
    test_fraction: float = param(0.0837216608, ge=0, lt=1,
                                 doc="Fraction held out as test set (paper: 6,396 of 76,396).")
    n_folds: int = param(4, ge=2, le=100, doc="Cross-validation folds over the non-test items.")
    shard_mb: float = param(256.0, ge=0.001, le=1e6, unit="MB",
                            doc="Largest size of a shard file (10^6 bytes of images, labels and "
                            "truth, before compression): 10^7 paper images (112x112) make about "
                            "2,000 files. The shard is the unit of work and of resume; ranks "
                            "take shards round-robin.")
    min_shards: int = param(64, ge=1, le=10**6,
                            doc="Fewest shards of a dataset (smaller shards than shard_mb allows, "
                            "but not below 4 MB), so the shards balance the load of that many "
                            "ranks: e.g. 76,396 paper images make 64 shards of about 60 MB rather "
                            "than 15 of 256 MB.")
    shard_size: int | None = param(None, ge=1, le=100_000,
                                   doc="Items per shard file, instead of shard_mb and min_shards "
                                   "(kept for configs written before them; null: sized in "
                                   "bytes).")
    split: Literal["random", "ordered"] = param(
        "random", doc="How items are dealt into test set and folds. random: a permutation "
        "seeded by seed (test set first, the rest round-robin into folds). ordered: the study's "
        "scheme, in item (catalogue row) order: the first n_images - n_test items are the "
        "cross-validation set, item i in fold i % n_folds; the last n_test items are the test "
        "set.")
    compression: Literal["none", "gzip", "lzf", "zstd", "blosc"] = param(
        "none", doc="HDF5 compression of the images, with the byte-shuffle filter (gzip, lzf, "
        "zstd; blosc shuffles itself). gzip and lzf are read by any h5py; zstd and blosc need "
        "the hdf5plugin package imported (lenshpc does; others: import hdf5plugin). Sizes and "
        "speeds: docs/performance.md.")

    def items_per_shard(self, item_bytes: int) -> int:
        """Items per shard file for items of ``item_bytes`` bytes each (uncompressed):
        ``shard_size`` if given; else ``ceil(n_images / min_shards)``, raised to fill at
        least MIN_SHARD_BYTES and capped to fit in ``shard_mb``; at least 1."""
        if self.shard_size is not None:
            return self.shard_size
        item_bytes = max(1, item_bytes)
        by_bytes = int(self.shard_mb * 1e6 // item_bytes)
        balanced = max(-(-self.n_images // self.min_shards), int(MIN_SHARD_BYTES // item_bytes))
        return max(1, min(by_bytes, balanced))

    @property
    def n_test(self) -> int:
        """Number of held-out test items: round(n_images * test_fraction)."""
        return int(round(self.n_images * self.test_fraction))


__all__ = ["CatalogueColumns", "Dataset", "Distribution", "Image", "LensLight", "LensMass", "Population",
           "SourceLight", "build"]
