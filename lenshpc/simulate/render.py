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
(:func:`lensed_flux`: about 15-20 ns per point against lenstronomy's 70-150), then lets
lenstronomy's own numerics bin the subpixels and apply the PSF;
``tests/simulate/test_sim_render.py`` holds it equal to ``ImageModel`` to 1e-10.

``image.supersampling_mode: adaptive`` (fused engine) evaluates every pixel centre, then
supersamples only the pixels :func:`needs_supersampling` chooses (where the image varies
on sub-pixel scales: the ring, the lens centre); the others keep their centre value.
Its difference from full supersampling is at most 1e-4 of the normalised image at the
default threshold (held over the population by the same tests), for about a tenth of the
points at the paper config.
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
    # error_model="numpy": a division by zero gives inf/nan instead of raising, so the
    # loops carry no branch and LLVM vectorises them (AVX2/AVX-512 where the CPU has it).
    return numba.njit(cache=True, nogil=True, error_model="numpy")(func)


def _sersic_constants(p):
    """(amp, R_sersic floor, 1/n, b_n, a, b, c, centre x, y) of lenstronomy's SersicElliptic:
    R^2 = (a dx - b dy)^2 + (-b dx + c dy)^2 is its product-average elliptical radius."""
    amp, r_sersic, n, e1, e2, cx, cy = p[0], p[1], p[2], p[3], p[4], p[5], p[6]
    norm = math.sqrt(max(abs(1.0 - e1 * e1 - e2 * e2), 0.000001))
    rs = max(SERSIC_SMOOTHING, max(0.0, r_sersic))
    bn = max(1.9992 * n - 0.3271, 0.00001)
    return amp, rs, 1.0 / n, bn, (1.0 - e1) / norm, e2 / norm, (1.0 + e1) / norm, cx, cy


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


# The flux of a batch of points is computed in passes: compiled loops do the arithmetic
# (no calls inside, so they vectorise) and numpy's ufuncs do the transcendental functions
# (numpy's own SIMD exp/log and its SVML atan/atanh on AVX-512; about 1 ns per value).
# A scalar compiled loop calling libm cost about 80-150 ns per point on this kind of CPU;
# the passes cost about 15-25 ns. Each batch's work arrays stay in the L2 cache.

def _pass_sie_arguments(x, y, k, root, qd, s, cp, sp, lx, ly, t_atan, t_atanh):
    """Arguments of the SIE deflection's atan and atanh at each (x, y)."""
    for i in range(x.size):
        dx = x[i] - lx
        dy = y[i] - ly
        xr = dx * cp + dy * sp
        yr = -dx * sp + dy * cp
        psi = math.sqrt(qd * qd * (s * s + xr * xr) + yr * yr)
        t_atan[i] = root * xr / (psi + s)
        t_atanh[i] = root * yr / (psi + qd * qd * s)


def _pass_radii(x, y, t_atan, t_atanh, k, cp, sp, S, L, frac):
    """Elliptical radius / R_sersic of the source (at the deflected position, into
    ``frac[:n]``) and of the lens light (``frac[n:]``); inf beyond lenstronomy's cut-off."""
    # constants into locals first: read from the arrays inside the loop, they could alias
    # ``frac`` and would keep the loop from vectorising
    s_rs, s_a, s_b, s_c, s_x, s_y = S[1], S[4], S[5], S[6], S[7], S[8]
    l_rs, l_a, l_b, l_c, l_x, l_y = L[1], L[4], L[5], L[6], L[7], L[8]
    n = x.size
    for i in range(n):
        fx = k * t_atan[i]
        fy = k * t_atanh[i]
        # rotate the deflection back to the sky frame (angle -phi)
        ax = fx * cp - fy * sp
        ay = fx * sp + fy * cp
        dx = x[i] - ax - s_x
        dy = y[i] - ay - s_y
        xe = s_a * dx - s_b * dy
        ye = -s_b * dx + s_c * dy
        f = max(SERSIC_SMOOTHING, math.sqrt(xe * xe + ye * ye)) / s_rs
        frac[i] = f if f <= SERSIC_MAX_R_FRAC else math.inf
        dx = x[i] - l_x
        dy = y[i] - l_y
        xe = l_a * dx - l_b * dy
        ye = -l_b * dx + l_c * dy
        f = max(SERSIC_SMOOTHING, math.sqrt(xe * xe + ye * ye)) / l_rs
        frac[n + i] = f if f <= SERSIC_MAX_R_FRAC else math.inf


def _pass_scale(v, n, a_first, a_second):
    """``v[:n] *= a_first``, ``v[n:] *= a_second``."""
    for i in range(n):
        v[i] *= a_first
    for i in range(n, v.size):
        v[i] *= a_second


def _pass_sersic_exponent(v, n, bn_first, bn_second):
    """``v = -b_n (v - 1)`` with the source's b_n on ``v[:n]``, the lens light's after."""
    for i in range(n):
        v[i] = -bn_first * (v[i] - 1.0)
    for i in range(n, v.size):
        v[i] = -bn_second * (v[i] - 1.0)


def _pass_sum(v, amp_first, amp_second, out):
    """``out = amp_first v[:n] + amp_second v[n:]`` (n = out.size)."""
    n = out.size
    for i in range(n):
        out[i] = amp_first * v[i] + amp_second * v[n + i]


_sersic_constants = _jit(_sersic_constants)
_sie_constants = _jit(_sie_constants)
_pass_sie_arguments = _jit(_pass_sie_arguments)
_pass_radii = _jit(_pass_radii)
_pass_scale = _jit(_pass_scale)
_pass_sersic_exponent = _jit(_pass_sersic_exponent)
_pass_sum = _jit(_pass_sum)

#: Points per batch of :func:`lensed_flux`: four float64 work arrays of this length
#: (256 kB) stay in the L2 cache.
BATCH = 8192


def lensed_flux(x: np.ndarray, y: np.ndarray, lens: np.ndarray, source: np.ndarray,
                lens_light: np.ndarray, out: np.ndarray) -> np.ndarray:
    """Surface brightness of the source (lensed by the SIE) plus the lens light at (x, y).

    ``x``, ``y`` float64 (arcsec), any length; ``lens`` = (theta_E, e1, e2, center_x,
    center_y); ``source``, ``lens_light`` = (amp, R_sersic, n_sersic, e1, e2, center_x,
    center_y), arcsec; result into ``out`` (same length as ``x``), which is returned.
    lenstronomy's formulas (SIE, SERSIC_ELLIPSE) to rounding: the same numpy functions."""
    k, root, qd, s, cp, sp, lx, ly = _sie_constants(lens)
    S = np.array(_sersic_constants(source))
    L = np.array(_sersic_constants(lens_light))
    size = min(BATCH, x.size)
    t_atan, t_atanh = np.empty(size), np.empty(size)
    work = np.empty(2 * size)
    for lo in range(0, x.size, BATCH):
        hi = min(lo + BATCH, x.size)
        n = hi - lo
        xb, yb, ta, th, v = x[lo:hi], y[lo:hi], t_atan[:n], t_atanh[:n], work[:2 * n]
        _pass_sie_arguments(xb, yb, k, root, qd, s, cp, sp, lx, ly, ta, th)
        np.arctan(ta, out=ta)
        np.arctanh(th, out=th)
        _pass_radii(xb, yb, ta, th, k, cp, sp, S, L, v)
        # (R / R_sersic)^(1/n) = exp(log(R / R_sersic) / n); inf (cut off) gives 0 below
        np.log(v, out=v)
        _pass_scale(v, n, S[2], L[2])
        np.exp(v, out=v)
        _pass_sersic_exponent(v, n, S[3], L[3])
        np.exp(v, out=v)
        _pass_sum(v, S[0], L[0], out[lo:hi])
    return out


def needs_supersampling(centre: np.ndarray, threshold: float,
                        peak: float | None = None) -> np.ndarray:
    """Pixels (bool, (H, W)) of an image that adaptive mode supersamples.

    ``centre`` is the (H + 2, W + 2) flux at the centres of the image's pixels and of a
    one-pixel frame around it (so the Laplacian is known on the border too). A pixel is
    chosen where the 5-point Laplacian of the flux divided by ``peak`` (default: the
    image's max |flux|) exceeds ``threshold`` in magnitude, and so is every pixel next to one (3x3 dilation).
    Why it bounds the error: a pixel's mean over an s x s subgrid differs from its centre
    value by about (1 - 1/s^2) / 24 of the Laplacian in pixel units, plus higher orders,
    which are large only where the Laplacian is; the dilation covers features narrower
    than a pixel that a centre sample can straddle."""
    h, w = centre.shape[0] - 2, centre.shape[1] - 2
    if peak is None:
        peak = float(np.max(np.abs(centre[1:-1, 1:-1])))
    if not peak > 0:
        return np.zeros((h, w), bool)
    lap = centre[:-2, 1:-1] + centre[2:, 1:-1]
    lap += centre[1:-1, :-2]
    lap += centre[1:-1, 2:]
    lap -= 4.0 * centre[1:-1, 1:-1]
    above = np.abs(lap, out=lap) > threshold * peak
    # 3x3 dilation, separable: along rows, then along columns
    rows = above.copy()
    rows[1:] |= above[:-1]
    rows[:-1] |= above[1:]
    out = rows.copy()
    out[:, 1:] |= rows[:, :-1]
    out[:, :-1] |= rows[:, 1:]
    return out


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
