"""Render one lens system into one image: lenstronomy SIE + Sersic lens light + Sersic source.

The physics is lenstronomy's (``ImageModel`` on the grid of
``data_configure_simple(image.size, image.pixel_scale)``); this module only fixes the
model lists, builds the model objects once per process, adds optional noise from the
item's own random generator and normalises each image to a maximum of 1.

A system is described by its ``truth`` row: one float per ``<component>.<kwarg>``
name (:data:`TRUTH_NAMES`), the lenstronomy keyword arguments of the components
``lens_mass`` (SIE), ``lens_light`` and ``source_light`` (SERSIC_ELLIPSE), with
absolute centres in arcsec.

Two engines compute the same image. ``lenstronomy`` calls ``ImageModel.image``.
``fused`` (the default, about 2-3x faster) evaluates lenstronomy's SIE deflection and
both SERSIC_ELLIPSE profiles in one compiled loop over the (supersampled) grid that
lenstronomy built, then lets lenstronomy's own numerics bin the subpixels and apply the
PSF; ``tests/simulate/test_sim_render.py`` holds it equal to ``ImageModel`` to 1e-12.
"""

from __future__ import annotations

import math
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
    for name, value in zip(names, row, strict=True):
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


# --------------------------------------------------------------------------- fused engine

#: SIE core lenstronomy uses for its singular isothermal ellipsoid (SIE -> NIE with s_scale).
SIE_S_SCALE = 1e-10
#: Sersic radius floor and cut-off of lenstronomy's SersicUtil (smoothing, max_R_frac).
SERSIC_SMOOTHING, SERSIC_MAX_R_FRAC = 1e-4, 1000.0


def _jit(func):
    try:
        import numba
    except ImportError:  # pragma: no cover - numba comes with lenstronomy
        return func
    return numba.njit(cache=True, nogil=True)(func)


def _sersic_constants(p):
    """(amp, R_sersic floor, 1/n, b_n, a, b, c, centre x, y) of lenstronomy's SersicElliptic:
    R^2 = (a dx - b dy)^2 + (-b dx + c dy)^2 is its product-average elliptical radius."""
    amp, r_sersic, n, e1, e2, cx, cy = p[0], p[1], p[2], p[3], p[4], p[5], p[6]
    norm = math.sqrt(max(abs(1.0 - e1 * e1 - e2 * e2), 0.000001))
    rs = max(SERSIC_SMOOTHING, max(0.0, r_sersic))
    bn = max(1.9992 * n - 0.3271, 0.00001)
    return amp, rs, 1.0 / n, bn, (1.0 - e1) / norm, e2 / norm, (1.0 + e1) / norm, cx, cy


def _sersic(x, y, amp, rs, inv_n, bn, a, b, c, cx, cy):
    """lenstronomy SERSIC_ELLIPSE surface brightness at one point (x, y arcsec)."""
    dx = x - cx
    dy = y - cy
    xe = a * dx - b * dy
    ye = -b * dx + c * dy
    frac = max(SERSIC_SMOOTHING, math.sqrt(xe * xe + ye * ye)) / rs
    if frac > SERSIC_MAX_R_FRAC:
        return 0.0
    return amp * math.exp(-bn * (math.exp(inv_n * math.log(frac)) - 1.0))


def _sie_constants(p):
    """(b/sqrt(1-q'^2), sqrt(1-q'^2), q', s, cos phi, sin phi, centre x, y) of lenstronomy's
    SIE (an NIE with core SIE_S_SCALE, Keeton & Kochanek 1998), q' = min(q, 0.99999999)."""
    theta_E, e1, e2, cx, cy = p[0], p[1], p[2], p[3], p[4]
    phi = math.atan2(e2, e1) / 2
    c = min(math.sqrt(e1 * e1 + e2 * e2), 0.9999)
    q = (1 - c) / (1 + c)
    b = theta_E / math.sqrt((1.0 + q * q) / (2.0 * q)) * math.sqrt((1 + q * q) / 2)
    s = SIE_S_SCALE / math.sqrt(q)
    qd = q if q < 1 else 0.99999999
    root = math.sqrt(1.0 - qd * qd)
    return b / root, root, qd, s, math.cos(phi), math.sin(phi), cx, cy


def _lensed_flux(x, y, lens, source, lens_light, out):
    """Surface brightness of the source (lensed by the SIE) plus the lens light at (x, y).

    ``lens`` = (theta_E, e1, e2, center_x, center_y); ``source``, ``lens_light`` =
    (amp, R_sersic, n_sersic, e1, e2, center_x, center_y); arcsec; result into ``out``."""
    k, root, qd, s, cp, sp, lx, ly = _sie_constants(lens)
    S = _sersic_constants(source)
    L = _sersic_constants(lens_light)
    for i in range(x.size):
        dx = x[i] - lx
        dy = y[i] - ly
        xr = dx * cp + dy * sp
        yr = -dx * sp + dy * cp
        psi = math.sqrt(qd * qd * (s * s + xr * xr) + yr * yr)
        fx = k * math.atan(root * xr / (psi + s))
        fy = k * math.atanh(root * yr / (psi + qd * qd * s))
        # rotate the deflection back to the sky frame (angle -phi)
        ax = fx * cp - fy * sp
        ay = fx * sp + fy * cp
        out[i] = (_sersic(x[i] - ax, y[i] - ay, S[0], S[1], S[2], S[3], S[4], S[5], S[6], S[7], S[8])
                  + _sersic(x[i], y[i], L[0], L[1], L[2], L[3], L[4], L[5], L[6], L[7], L[8]))


_sersic_constants = _jit(_sersic_constants)
_sersic = _jit(_sersic)
_sie_constants = _jit(_sie_constants)
_lensed_flux = _jit(_lensed_flux)


def _vector(kwargs: dict, component: str) -> np.ndarray:
    return np.array([float(kwargs[k]) for k in KWARGS[component]], dtype=np.float64)


# --------------------------------------------------------------------------- renderer


class Renderer:
    """Renders lens systems on one image grid; build once per process, call per system.

    ``Renderer(image_cfg)`` builds the lenstronomy model objects (grid, PSF, lens and
    light models, numerics) once. ``engine``: ``"fused"`` (default) or ``"lenstronomy"``
    (``ImageModel.image``); both give the same image (see the module docstring)."""

    def __init__(self, image: Image, engine: str = "fused"):
        if engine not in ("fused", "lenstronomy"):
            raise ValueError(f"unknown engine {engine!r}")
        self.image, self.engine = image, engine
        self.shape = (image.size, image.size)
        self._model = None
        if engine == "lenstronomy":
            self._model = build_image_model(image)
            return
        kw = data_kwargs(image)
        if image.psf == "none":
            # Without a PSF, lenstronomy's numerics reduce to its regular (supersampled)
            # grid and subpixel averaging; using that class alone spares ImageModel's imports
            # (astropy, scipy.signal: about a second of start-up per process).
            from lenstronomy.ImSim.Numerics.grid import RegularGrid
            grid = RegularGrid(image.size, image.size, kw["transform_pix2angle"], kw["ra_at_xy_0"],
                               kw["dec_at_xy_0"], supersampling_factor=image.supersampling)
            area = grid.pixel_width ** 2
            self._bin = lambda flux: grid.flux_array2image_low_high(flux)[0] * area
        else:
            from lenstronomy.Data.imaging_data import ImageData
            from lenstronomy.Data.psf import PSF
            from lenstronomy.ImSim.Numerics.numerics_subframe import NumericsSubFrame
            data, psf = ImageData(**kw), PSF(**psf_kwargs(image))
            psf.set_pixel_size(data.pixel_width)
            grid = NumericsSubFrame(pixel_grid=data, psf=psf, **numerics_kwargs(image))
            self._bin = grid.re_size_convolve
        self._x, self._y = (np.ascontiguousarray(c, dtype=np.float64)
                            for c in grid.coordinates_evaluate)
        self._flux = np.empty_like(self._x)

    @property
    def model(self):
        """The lenstronomy ``ImageModel`` of this grid (built on first use)."""
        if self._model is None:
            self._model = build_image_model(self.image)
        return self._model

    def model_image(self, kwargs_lens, kwargs_source, kwargs_lens_light) -> np.ndarray:
        """Noise-free (H, W) float64 image in lenstronomy flux units, PSF applied."""
        if self.engine == "fused":
            _lensed_flux(self._x, self._y, _vector(kwargs_lens[0], "lens_mass"),
                         _vector(kwargs_source[0], "source_light"),
                         _vector(kwargs_lens_light[0], "lens_light"), self._flux)
            # lenstronomy's own subpixel binning, PSF and pixel-area units, as ImageModel.image
            img = self._bin(self._flux)
        else:
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
