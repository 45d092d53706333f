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
``fused`` (the default) evaluates lenstronomy's SIE deflection and both SERSIC_ELLIPSE
profiles on the (supersampled) grid that lenstronomy built, in passes that vectorise
(:func:`lenshpc.simulate.fused.lensed_flux`: about 15-20 ns per point against
lenstronomy's 70-150), then lets lenstronomy's own numerics bin the subpixels and apply
the PSF;
``tests/simulate/test_sim_render.py`` holds it equal to ``ImageModel`` to 1e-10.

``image.supersampling_mode: adaptive`` (fused engine) evaluates every pixel centre, then
supersamples only the pixels :func:`lenshpc.simulate.fused.needs_supersampling` chooses
(where the image varies on sub-pixel scales: the ring, the lens centre); the others keep
their centre value.
Its difference from full supersampling is at most 1e-4 of the normalised image at the
default threshold (held over the population by the same tests), for about a tenth of the
points at the paper config.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from lenshpc.config import UserError
from lenshpc.config.simulate import Image
from lenshpc.dataset.columns import KWARGS, MODELS, TRUTH_NAMES  # noqa: F401 (the dataset's layout)
from lenshpc.simulate.fused import lensed_flux, needs_supersampling


def truth_to_kwargs(names: Sequence[str | bytes], row: Sequence[float]) -> tuple[list[dict], list[dict], list[dict]]:
    """Split one truth row into lenstronomy keyword lists.

    ``names`` are ``<component>.<kwarg>`` strings (bytes are accepted, as h5py may return
    them), ``row`` the matching floats (arcsec for radii and centres). Returns
    ``(kwargs_lens, kwargs_source, kwargs_lens_light)``, each a list of one dict."""
    parts: dict[str, dict[str, float]] = {c: {} for c in KWARGS}
    for raw, value in zip(names, row, strict=True):
        name = raw.decode() if isinstance(raw, bytes) else str(raw)
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
    return {"psf_type": "PIXEL",
            "kernel_point_source": load_psf_kernel(image.psf_kernel, image.pixel_scale)}


FITS_SUFFIXES = (".fits", ".fit", ".fts", ".fits.gz", ".fit.gz")


def fits_pixel_scale(header) -> float | None:
    """Pixel scale (arcsec) of a FITS header: its celestial WCS, else a PIXSCALE or
    PIXSCAL1 keyword (arcsec); None when it states none."""
    import warnings

    from astropy.wcs import WCS, FITSFixedWarning
    from astropy.wcs.utils import proj_plane_pixel_scales
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FITSFixedWarning)
        try:
            wcs = WCS(header, naxis=2)
        except Exception:  # noqa: BLE001 - astropy raises many types for a bad WCS
            wcs = None
    if wcs is not None and wcs.has_celestial:
        scales = proj_plane_pixel_scales(wcs.celestial) * 3600.0   # degrees -> arcsec
        return float(np.mean(scales))
    for key in ("PIXSCALE", "PIXSCAL1"):
        if key in header:
            return float(header[key])
    return None


def _read_fits_kernel(path: str, pixel_scale: float | None) -> np.ndarray:
    """The first 2-d image HDU of FITS file ``path``, its pixel scale checked."""
    from astropy.io import fits
    try:
        with fits.open(path, memmap=False) as hdus:
            hdu = next((h for h in hdus if h.data is not None and np.ndim(h.data) == 2), None)
            if hdu is None:
                raise UserError(f"image.psf_kernel: {path} has no 2-d image HDU")
            data, scale = np.array(hdu.data, dtype=np.float64), fits_pixel_scale(hdu.header)
    except (OSError, ValueError, TypeError) as exc:
        raise UserError(f"image.psf_kernel: cannot read {path}: {exc}") from None
    if pixel_scale is not None:
        if scale is None:
            raise UserError(f"image.psf_kernel: {path} states no pixel scale (no celestial "
                            f"WCS, PIXSCALE or PIXSCAL1); the image's is {pixel_scale:g} arcsec")
        if abs(scale - pixel_scale) > 0.01 * pixel_scale:
            raise UserError(f"image.psf_kernel: {path} has pixels of {scale:g} arcsec, the "
                            f"image {pixel_scale:g} arcsec (image.pixel_scale); resample the "
                            f"kernel to the image's pixels")
    return data


def load_psf_kernel(path: str | None, pixel_scale: float | None = None) -> np.ndarray:
    """A pixel PSF kernel from a ``.npy`` or FITS file (:data:`FITS_SUFFIXES`; the FITS
    pixel scale must be ``pixel_scale`` (arcsec) within 1% when that is given): 2-d, odd
    side, finite, positive sum."""
    if str(path).lower().endswith(FITS_SUFFIXES):
        kernel = _read_fits_kernel(str(path), pixel_scale)
    else:
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
    then background, then sky, dark current and read noise) so an item's noise depends only
    on its generator. The sky and dark current are subtracted, their Poisson noise kept:
    Gaussian with sigma ``image.background_sigma`` (counts/s)."""
    noisy = np.array(model, dtype=np.float64)
    if image.exposure_time is not None:
        noisy += rng.standard_normal(model.shape) * np.sqrt(np.abs(model) / image.exposure_time)
    if image.background_rms > 0:
        noisy += rng.standard_normal(model.shape) * (image.background_rms * float(np.max(model)))
    sigma = image.background_sigma
    if sigma > 0:
        noisy += rng.standard_normal(model.shape) * sigma
    return noisy


def normalise(img: np.ndarray) -> np.ndarray:
    """``img`` divided by its maximum, as float32 (an all-zero image stays zero)."""
    peak = float(np.max(img))
    out = img / peak if peak > 0 else np.zeros_like(img)
    return out.astype(np.float32)


# --------------------------------------------------------------------------- fused engine's grid


def _grid(image: Image, supersampling: int):
    """(x, y, bin) of lenstronomy's regular grid on ``image`` with ``supersampling``: the
    float64 coordinates (arcsec) of every point to evaluate, and the function that turns
    their flux into the (H, W) image as ImageModel does (subpixel mean, PSF, pixel area)."""
    kw = data_kwargs(image)
    if image.psf == "none":
        # Without a PSF, lenstronomy's numerics reduce to its regular (supersampled)
        # grid and subpixel averaging; using that class alone spares ImageModel's imports
        # (astropy, scipy.signal: about a second of start-up per process).
        from lenstronomy.ImSim.Numerics.grid import RegularGrid
        grid = RegularGrid(image.size, image.size, kw["transform_pix2angle"], kw["ra_at_xy_0"],
                           kw["dec_at_xy_0"], supersampling_factor=supersampling)
        area = grid.pixel_width ** 2
        def bin_(flux):
            return grid.flux_array2image_low_high(flux)[0] * area
    else:
        from lenstronomy.Data.imaging_data import ImageData
        from lenstronomy.Data.psf import PSF
        from lenstronomy.ImSim.Numerics.numerics_subframe import NumericsSubFrame
        data, psf = ImageData(**kw), PSF(**psf_kwargs(image))
        psf.set_pixel_size(data.pixel_width)
        grid = NumericsSubFrame(pixel_grid=data, psf=psf, supersampling_factor=supersampling,
                                supersampling_convolution=False)
        bin_ = grid.re_size_convolve
    x, y = (np.ascontiguousarray(c, dtype=np.float64) for c in grid.coordinates_evaluate)
    return x, y, bin_


def _vector(kwargs: dict, component: str) -> np.ndarray:
    return np.array([float(kwargs[k]) for k in KWARGS[component]], dtype=np.float64)


# --------------------------------------------------------------------------- renderer


class Renderer:
    """Renders lens systems on one image grid; build once per process, call per system.

    ``Renderer(image_cfg)`` builds the lenstronomy model objects (grid, PSF, lens and
    light models, numerics) once. ``engine``: ``"fused"`` (default) or ``"lenstronomy"``
    (``ImageModel.image``); both give the same image (see the module docstring).
    ``image.supersampling_mode: adaptive`` applies to the fused engine; the lenstronomy
    engine is the reference and always supersamples every pixel."""

    def __init__(self, image: Image, engine: str = "fused"):
        if engine not in ("fused", "lenstronomy"):
            raise ValueError(f"unknown engine {engine!r}")
        self.image, self.engine = image, engine
        self.shape = (image.size, image.size)
        self._model = None
        #: pixels supersampled by the last adaptive render (a diagnostic)
        self.last_supersampled = 0
        self.adaptive = (engine == "fused" and image.supersampling_mode == "adaptive"
                         and image.supersampling > 1)
        if engine == "lenstronomy":
            self._model = build_image_model(image)
            return
        self._x, self._y, self._bin = _grid(image, image.supersampling)
        if self.adaptive:
            # pixel centres, and each pixel's subpixels as one row (lenstronomy's regular
            # supersampled grid is row-major over (size * ss, size * ss))
            ss, n = image.supersampling, image.size
            self._sub_x, self._sub_y = (c.reshape(n, ss, n, ss).transpose(0, 2, 1, 3)
                                        .reshape(n * n, ss * ss).copy() for c in (self._x, self._y))
            x, y, self._bin = _grid(image, 1)
            # centres of the pixels and of a frame one pixel wide around the image (the
            # grid is linear: odd reflection extrapolates it exactly)
            self._x, self._y = (np.pad(c.reshape(n, n), 1, mode="reflect", reflect_type="odd")
                                .ravel() for c in (x, y))
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
            params = (_vector(kwargs_lens[0], "lens_mass"), _vector(kwargs_source[0], "source_light"),
                      _vector(kwargs_lens_light[0], "lens_light"))
            flux = lensed_flux(self._x, self._y, *params, self._flux)
            if self.adaptive:
                flux = self._supersample_where_needed(params)
            # lenstronomy's own subpixel binning, PSF and pixel-area units, as ImageModel.image
            img = self._bin(flux)
        else:
            img = self.model.image(kwargs_lens=kwargs_lens, kwargs_source=kwargs_source,
                                   kwargs_lens_light=kwargs_lens_light)
        # q = 1 and pixels on the lens centre are finite in lenstronomy's SIE; guard anyway
        # so one bad system cannot poison a dataset silently.
        if not np.all(np.isfinite(img)):
            raise FloatingPointError(f"non-finite pixels for lens {kwargs_lens}, "
                                     f"source {kwargs_source}, lens light {kwargs_lens_light}")
        return img

    def _supersample_where_needed(self, params: tuple[np.ndarray, np.ndarray, np.ndarray]
                                  ) -> np.ndarray:
        """Adaptive mode: from the flux at pixel centres (with the frame) in ``self._flux``,
        the flux per pixel (H * W,): the mean over the pixel's subpixels where
        :func:`needs_supersampling` says so, the centre value elsewhere."""
        n = self.image.size
        centre = self._flux.reshape(n + 2, n + 2)
        flux = centre[1:-1, 1:-1].ravel()  # a copy: the slice is not contiguous
        chosen = needs_supersampling(centre, self.image.adaptive_threshold)
        self._supersample(np.flatnonzero(chosen), params, flux)
        # A centre sample on a cusp (the lens light's centre) can exceed its pixel's mean
        # several times over; the threshold is relative to the image's true maximum, so
        # choose again against the maximum now known and add the pixels that were missed.
        peak = float(np.max(np.abs(flux)))
        if peak > 0 and peak < float(np.max(np.abs(centre[1:-1, 1:-1]))):
            more = needs_supersampling(centre, self.image.adaptive_threshold, peak) & ~chosen
            self._supersample(np.flatnonzero(more), params, flux)
            chosen |= more
        self.last_supersampled = int(np.count_nonzero(chosen))
        return flux

    def _supersample(self, pixels: np.ndarray, params: tuple[np.ndarray, np.ndarray, np.ndarray],
                     flux: np.ndarray) -> None:
        """``flux[pixels]`` = the mean flux over each pixel's subpixels."""
        if pixels.size:
            sub_x, sub_y = self._sub_x[pixels].ravel(), self._sub_y[pixels].ravel()
            sub = lensed_flux(sub_x, sub_y, *params, np.empty_like(sub_x))
            flux[pixels] = sub.reshape(pixels.size, -1).mean(axis=1)

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
