"""The study's figures of merit (docs/method.md section 3) as pure numpy functions.

Everything here takes arrays and returns numbers or arrays; no files, no MPI. Parameter
arrays are ``(N,)`` for one parameter or ``(N, 4)`` for ``theta_E, q, e1, e2``
(physical units: arcsec for ``theta_E``, dimensionless for the others); images are
``(N, H, W)`` or ``(H, W)`` normalised to a maximum of 1.

None of the functions emits numpy warnings for the edge cases the study meets (a
perfect prediction, an empty selection, a constant truth): they return ``inf`` or
``nan`` as documented instead.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import stats

#: NMAD scale: 1 / Phi^-1(3/4) = 1.482602..., so NMAD of a normal sample estimates its
#: sigma (scipy's ``median_abs_deviation(scale="normal")``).
NMAD_SCALE = 1.0 / float(stats.norm.ppf(0.75))
#: Coverage of +-k sigma of a normal distribution, k = 1, 2.
GAUSS_COVERAGE = {1: math.erf(1 / math.sqrt(2)), 2: math.erf(2 / math.sqrt(2))}

#: Columns of metrics.csv after ``model, fold, parameter`` (each a field of ParameterMetrics).
METRIC_COLUMNS = ("mae", "r2", "bias", "median_bias", "sigma", "nmad",
                  "rel_err_median", "rel_err_p90", "scaled_err_median", "scaled_err_p90",
                  "n_below_floor", "n")
#: Default |true| below which a relative error is called a small-denominator case.
REL_ERR_FLOOR = 0.01


def _as_float(a) -> np.ndarray:
    return np.asarray(a, dtype=np.float64)


def r2(true, pred) -> float:
    """Coefficient of determination ``1 - sum (y - yhat)^2 / sum (y - mean(y))^2`` of one
    parameter. ``nan`` when the truth is constant (or empty) and the prediction is not
    perfect; 1 for a perfect prediction."""
    y, yhat = _as_float(true), _as_float(pred)
    if y.size == 0:
        return math.nan
    ss_res = float(np.sum((y - yhat) ** 2))
    ss_tot = float(np.sum((y - np.mean(y)) ** 2))
    if ss_tot == 0.0:
        return 1.0 if ss_res == 0.0 else math.nan
    return 1.0 - ss_res / ss_tot


def sigma68(d) -> float:
    """Half the central 68% interval of ``d``: ``(P84(d) - P16(d)) / 2``."""
    d = _as_float(d)
    if d.size == 0:
        return math.nan
    p16, p84 = np.percentile(d, [16, 84])
    return float(p84 - p16) / 2.0


def nmad(d) -> float:
    """Normalised median absolute deviation ``median(|d - median(d)|) / Phi^-1(3/4)``
    (1.4826 median(...)): scipy's ``median_abs_deviation(d, scale="normal")``."""
    d = _as_float(d)
    if d.size == 0:
        return math.nan
    return float(stats.median_abs_deviation(d, scale="normal"))


def relative_error(true, pred) -> np.ndarray:
    """``|pred - true| / |true|`` (the study's definition) over the items whose true value
    is not exactly 0; those have no relative error at all (count them with
    :func:`n_below_floor`)."""
    y, yhat = _as_float(true), _as_float(pred)
    keep = y != 0
    return np.abs(yhat[keep] - y[keep]) / np.abs(y[keep])


def scaled_error(true, pred) -> np.ndarray:
    """``|pred - true| / std(true)``: an error that does not divide by each item's truth,
    in units of the parameter's spread over the given (test) set. Empty or nan when the
    truth does not vary."""
    y, yhat = _as_float(true), _as_float(pred)
    spread = float(np.std(y)) if y.size else 0.0
    if spread == 0.0:
        return np.full(y.shape, np.nan)
    return np.abs(yhat - y) / spread


def n_below_floor(true, floor: float = REL_ERR_FLOOR) -> int:
    """Items with ``|true| < floor``: their relative errors are dominated by the small
    denominator (e1, e2 -> 0 as q -> 1). Counted, never dropped."""
    return int(np.sum(np.abs(_as_float(true)) < floor))


@dataclass(frozen=True)
class ParameterMetrics:
    """The docs/method.md section 3 figures of one parameter on one job's test set.

    ``d = pred - true``; ``mae``, ``bias``, ``median_bias``, ``sigma``, ``nmad`` are in
    the parameter's unit, ``rel_err_*`` are fractions (over items with ``true != 0``),
    ``scaled_err_*`` are ``|d| / std(true)``, ``n_below_floor`` counts ``|true| < floor``
    and ``n`` is the number of test items."""

    mae: float
    r2: float
    bias: float
    median_bias: float
    sigma: float
    nmad: float
    rel_err_median: float
    rel_err_p90: float
    scaled_err_median: float
    scaled_err_p90: float
    n_below_floor: int
    n: int


def parameter_metrics(true, pred, floor: float = REL_ERR_FLOOR) -> ParameterMetrics:
    """All figures of one parameter from its true and predicted values, shape ``(N,)``."""
    y, yhat = _as_float(true).ravel(), _as_float(pred).ravel()
    if y.shape != yhat.shape:
        raise ValueError(f"true {y.shape} and pred {yhat.shape} differ in shape")
    d = yhat - y
    rel = relative_error(y, yhat)
    scaled = scaled_error(y, yhat)
    scaled = scaled[np.isfinite(scaled)]
    empty = y.size == 0
    return ParameterMetrics(
        mae=math.nan if empty else float(np.mean(np.abs(d))),
        r2=r2(y, yhat),
        bias=math.nan if empty else float(np.mean(d)),
        median_bias=math.nan if empty else float(np.median(d)),
        sigma=sigma68(d),
        nmad=nmad(d),
        rel_err_median=float(np.median(rel)) if rel.size else math.nan,
        rel_err_p90=float(np.percentile(rel, 90)) if rel.size else math.nan,
        scaled_err_median=float(np.median(scaled)) if scaled.size else math.nan,
        scaled_err_p90=float(np.percentile(scaled, 90)) if scaled.size else math.nan,
        n_below_floor=n_below_floor(y, floor),
        n=int(y.size),
    )


def weighted_mse_loss(true, pred, target_std, loss_weights) -> float:
    """The training loss on standardised targets:
    ``(1/N) sum_i sum_j w_j ((y_ij - yhat_ij) / s_j)^2`` for ``(N, P)`` arrays, where
    ``s_j`` is the training fold's standard deviation of parameter j (the mean cancels)."""
    y, yhat = _as_float(true), _as_float(pred)
    if y.shape[0] == 0:
        return math.nan
    s = _as_float(target_std)
    w = _as_float(loss_weights)
    z = (y - yhat) / s
    return float(np.mean(np.sum(w * z ** 2, axis=1)))


def weighted_mse_physical(true, pred, loss_weights) -> float:
    """The study's loss in physical units, the scale of its Table 1:
    ``(1/N) sum_i sum_j w_j (y_ij - yhat_ij)^2`` for ``(N, P)`` arrays (theta_E in arcsec)."""
    y, yhat = _as_float(true), _as_float(pred)
    if y.shape[0] == 0:
        return math.nan
    return float(np.mean(np.sum(_as_float(loss_weights) * (y - yhat) ** 2, axis=1)))


# --------------------------------------------------------------------------- images


def image_mse(true_image, pred_image) -> np.ndarray | float:
    """``(1 / (m n)) sum (I - K)^2`` over the last two axes (float64)."""
    a, b = _as_float(true_image), _as_float(pred_image)
    out = np.mean((a - b) ** 2, axis=(-2, -1))
    return float(out) if np.ndim(out) == 0 else out


def psnr(mse, max_value: float = 1.0) -> np.ndarray | float:
    """``10 log10(MAX^2 / MSE)`` in dB; ``inf`` where MSE is 0 (a perfect re-render),
    ``nan`` where MSE is nan."""
    m = _as_float(mse)
    out = np.full(m.shape, np.inf)
    pos = m > 0
    out[pos] = 10.0 * np.log10(max_value ** 2 / m[pos])
    out[np.isnan(m)] = np.nan
    return float(out) if out.ndim == 0 else out


@dataclass(frozen=True)
class PsnrSummary:
    """One job's PSNR row. ``psnr_median`` over all items (may be inf when most
    re-renders are perfect); ``psnr_mean`` and ``mse_mean`` over the items with finite
    PSNR (nan if none); ``n`` items, ``n_inf`` of them perfect."""

    psnr_median: float
    psnr_mean: float
    mse_mean: float
    n: int
    n_inf: int


def psnr_summary(psnr_values, mse_values) -> PsnrSummary:
    """Median of all PSNR values; means over finite ones only (perfect re-renders, with
    infinite PSNR and zero MSE, are kept out of both means)."""
    p, m = _as_float(psnr_values), _as_float(mse_values)
    valid = ~np.isnan(p)
    finite = np.isfinite(p)
    return PsnrSummary(
        psnr_median=float(np.median(p[valid])) if valid.any() else math.nan,
        psnr_mean=float(np.mean(p[finite])) if finite.any() else math.nan,
        mse_mean=float(np.mean(m[finite])) if finite.any() else math.nan,
        n=int(p.size),
        n_inf=int(np.sum(np.isinf(p))),
    )


# --------------------------------------------------------------------------- MC dropout


def coverage(true, mean, std, k: float) -> float:
    """Fraction of items whose true value lies within ``mean +- k * std`` (inclusive).
    With zero spread only exact predictions count as covered."""
    y, mu, s = _as_float(true), _as_float(mean), _as_float(std)
    if y.size == 0:
        return math.nan
    return float(np.mean(np.abs(y - mu) <= k * s))


# --------------------------------------------------------------------------- over folds


def fold_mean_std(values) -> tuple[float, float]:
    """Mean and (population, ddof=0) standard deviation of one figure over folds.

    nan values (a figure undefined for a fold) are ignored; if any value is +inf the
    mean is inf and the spread nan; all nan gives (nan, nan)."""
    v = _as_float(values).ravel()
    v = v[~np.isnan(v)]
    if v.size == 0:
        return math.nan, math.nan
    if np.isinf(v).any():
        return (math.inf if (v == np.inf).any() else -math.inf), math.nan
    return float(np.mean(v)), float(np.std(v))
