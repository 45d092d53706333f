"""Render one lens system into one image: lenstronomy SIE + Sersic lens light + Sersic source.

The physics is lenstronomy's (``ImageModel`` on the grid of
``data_configure_simple(image.size, image.pixel_scale)``); this module only fixes the
model lists, builds the model objects once per process, adds optional noise from the
item's own random generator and normalises each image to a maximum of 1.

A system is described by its ``truth`` row: one float per ``<component>.<kwarg>``
name (:data:`TRUTH_NAMES`), the lenstronomy keyword arguments of the components
``lens_mass`` (SIE), ``lens_light`` and ``source_light`` (SERSIC_ELLIPSE), with
absolute centres in arcsec.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from lenshpc.config import UserError
from lenshpc.config.simulate import Image

#: lenstronomy model of each component
MODELS = {"lens_mass": "SIE", "lens_light": "SERSIC_ELLIPSE", "source_light": "SERSIC_ELLIPSE"}

#: lenstronomy keyword arguments of each component, in the order of the truth columns
KWARGS = {
    "lens_mass": ("theta_E", "e1", "e2", "center_x", "center_y"),
    "lens_light": ("amp", "R_sersic", "n_sersic", "e1", "e2", "center_x", "center_y"),
    "source_light": ("amp", "R_sersic", "n_sersic", "e1", "e2", "center_x", "center_y"),
}

#: Column names of a ``truth`` row: ``<component>.<lenstronomy kwarg>``.
TRUTH_NAMES: tuple[str, ...] = tuple(f"{c}.{k}" for c, ks in KWARGS.items() for k in ks)


def truth_to_kwargs(names: Sequence[str], row: Sequence[float]) -> tuple[list[dict], list[dict], list[dict]]:
    """Split one truth row into lenstronomy keyword lists.

    ``names`` are ``<component>.<kwarg>`` strings (bytes are accepted, as h5py may return
    them), ``row`` the matching floats (arcsec for radii and centres). Returns
    ``(kwargs_lens, kwargs_source, kwargs_lens_light)``, each a list of one dict."""
    parts: dict[str, dict[str, float]] = {c: {} for c in KWARGS}
    for name, value in zip(names, row):
        name = name.decode() if isinstance(name, bytes) else str(name)
        component, _, kwarg = name.partition(".")
        if component not in parts or kwarg not in KWARGS[component]:
            raise ValueError(f"unknown truth column {name!r}; expected one of {', '.join(TRUTH_NAMES)}")
        parts[component][kwarg] = float(value)
    for component, kwargs in KWARGS.items():
        missing = [k for k in kwargs if k not in parts[component]]
        if missing:
            raise ValueError(f"truth row lacks {', '.join(f'{component}.{k}' for k in missing)}")
    return [parts["lens_mass"]], [parts["source_light"]], [parts["lens_light"]]


def data_kwargs(image: Image) -> dict:
    """lenstronomy ``ImageData`` keywords of the image grid (centred on 0, arcsec)."""
    from lenstronomy.Util.simulation_util import data_configure_simple
    return data_configure_simple(image.size, image.pixel_scale)


def psf_kwargs(image: Image) -> dict:
    """lenstronomy ``PSF`` keywords for ``image.psf`` (none, gaussian, pixel)."""
    if image.psf == "none":
        return {"psf_type": "NONE"}
    if image.psf == "gaussian":
        return {"psf_type": "GAUSSIAN", "fwhm": image.psf_fwhm, "pixel_size": image.pixel_scale}
    return {"psf_type": "PIXEL", "kernel_point_source": load_psf_kernel(image.psf_kernel)}


def load_psf_kernel(path: str | None) -> np.ndarray:
    """A pixel PSF kernel from a ``.npy`` file: 2-d, odd side, finite, positive sum."""
    try:
        kernel = np.load(str(path), allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise UserError(f"image.psf_kernel: cannot read {path}: {exc}") from None
    if (kernel.ndim != 2 or kernel.shape[0] != kernel.shape[1] or kernel.shape[0] % 2 == 0
            or not np.all(np.isfinite(kernel)) or not kernel.sum() > 0):
        raise UserError(f"image.psf_kernel: {path} must hold a square 2-d array of odd side "
                        f"with finite values and a positive sum (got shape {kernel.shape})")
    return kernel.astype(np.float64)


def numerics_kwargs(image: Image) -> dict:
    """lenstronomy ``kwargs_numerics``: regular supersampling by ``image.supersampling``."""
    return {"supersampling_factor": image.supersampling, "supersampling_convolution": False}


def build_image_model(image: Image):
    """A lenstronomy ``ImageModel`` for the lenshpc model lists on the configured grid."""
    from lenstronomy.Data.imaging_data import ImageData
    from lenstronomy.Data.psf import PSF
    from lenstronomy.ImSim.image_model import ImageModel
    from lenstronomy.LensModel.lens_model import LensModel
    from lenstronomy.LightModel.light_model import LightModel
    return ImageModel(ImageData(**data_kwargs(image)), PSF(**psf_kwargs(image)),
                      lens_model_class=LensModel([MODELS["lens_mass"]]),
                      source_model_class=LightModel([MODELS["source_light"]]),
                      lens_light_model_class=LightModel([MODELS["lens_light"]]),
                      kwargs_numerics=numerics_kwargs(image))


def add_noise(model: np.ndarray, image: Image, rng: np.random.Generator) -> np.ndarray:
    """``model`` (flux per pixel, read as counts/s) plus noise drawn from ``rng``.

    Poisson noise in lenstronomy's Gaussian approximation, sigma = sqrt(|model| / t)
    for ``image.exposure_time`` t (s); Gaussian background with sigma =
    ``image.background_rms`` x the noise-free maximum. Draw order is fixed (Poisson,
    then background) so an item's noise depends only on its generator."""
    noisy = np.array(model, dtype=np.float64)
    if image.exposure_time is not None:
        noisy += rng.standard_normal(model.shape) * np.sqrt(np.abs(model) / image.exposure_time)
    if image.background_rms > 0:
        noisy += rng.standard_normal(model.shape) * (image.background_rms * float(np.max(model)))
    return noisy


def normalise(img: np.ndarray) -> np.ndarray:
    """``img`` divided by its maximum, as float32 (an all-zero image stays zero)."""
    peak = float(np.max(img))
    out = img / peak if peak > 0 else np.zeros_like(img)
    return out.astype(np.float32)


class Renderer:
    """Renders lens systems on one image grid; build once per process, call per system.

    ``Renderer(image_cfg)`` builds the lenstronomy model objects (grid, PSF, lens and
    light models, numerics) once."""

    def __init__(self, image: Image):
        self.image = image
        self.model = build_image_model(image)
        self.shape = (image.size, image.size)

    def model_image(self, kwargs_lens, kwargs_source, kwargs_lens_light) -> np.ndarray:
        """Noise-free (H, W) float64 image in lenstronomy flux units, PSF applied."""
        img = self.model.image(kwargs_lens=kwargs_lens, kwargs_source=kwargs_source,
                               kwargs_lens_light=kwargs_lens_light)
        # q = 1 and pixels on the lens centre are finite in lenstronomy's SIE; guard anyway
        # so one bad system cannot poison a dataset silently.
        if not np.all(np.isfinite(img)):
            raise FloatingPointError(f"non-finite pixels for lens {kwargs_lens}, "
                                     f"source {kwargs_source}, lens light {kwargs_lens_light}")
        return img

    def render(self, kwargs_lens, kwargs_source, kwargs_lens_light,
               rng: np.random.Generator | None = None) -> np.ndarray:
        """(H, W) float32 image with maximum 1; noise (if configured) only when ``rng`` is given."""
        img = self.model_image(kwargs_lens, kwargs_source, kwargs_lens_light)
        if rng is not None and self.image.noise:
            img = add_noise(img, self.image, rng)
        return normalise(img)

    def render_truth(self, names: Sequence[str], row: Sequence[float],
                     rng: np.random.Generator | None = None) -> np.ndarray:
        """(H, W) float32 image of one ``truth`` row (column ``names``), maximum 1.

        Noise-free unless ``rng`` is given (and noise is configured)."""
        return self.render(*truth_to_kwargs(names, row), rng=rng)
