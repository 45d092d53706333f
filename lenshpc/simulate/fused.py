"""Kernels of the fused engine: lenstronomy's lens and light profiles at points, compiled.

:func:`lensed_flux` evaluates lenstronomy's SIE deflection and both SERSIC_ELLIPSE
profiles at any points (arcsec), in passes that vectorise: about 15-20 ns per point
against lenstronomy's 70-150. :func:`needs_supersampling` chooses the pixels that
``image.supersampling_mode: adaptive`` supersamples. Pure functions of arrays; the grid,
the binning and the PSF stay lenstronomy's (:class:`lenshpc.simulate.render.Renderer`).
"""

from __future__ import annotations

import math

import numpy as np

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

