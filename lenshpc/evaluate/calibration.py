"""Coverage of predicted intervals and the calibration of their spread: pure numpy.

Everything here takes arrays and returns arrays or numbers; no files, no MPI, no
TensorFlow. Shapes: ``samples`` (S, N, P) - S predictions (MC-dropout passes, or every
fold x pass of an ensemble) of N items' P parameters (theta_E in arcsec, q, e1, e2);
``truth`` (N, P); ``mean`` and ``std`` (N, P).

Two kinds of interval per nominal level (docs/predict.md, "Calibration"):

- **central**: the central 68% and 95% of the samples, percentiles 16-84 and 2.5-97.5;
- **sigma**: mean +- 1 and 2 standard deviations (ddof = 1), Gaussian content
  erf(1/sqrt 2) = 0.6827 and erf(2/sqrt 2) = 0.9545.

Coverage is the fraction of items whose truth lies inside (bounds included). The
calibration is one scale s_p per parameter of the spread about the mean: the
``target`` quantile of ``|y - mean| / std`` over held-out items, so that mean +- s_p std
covers ``target`` of them (:func:`fit_scale`); applied to samples as
``mean + s_p (sample - mean)`` (:func:`scale_samples`), which scales the standard
deviation by s_p and moves every percentile away from the mean by the factor s_p. A fold
ensemble has no held-out items but the test set; its spread is calibrated from its jobs'
scales and the folds' disagreement (:func:`calibrate_ensemble`).

TARP (Lemos, Coogan et al. 2023, arXiv:2302.03026) tests the joint distribution of the
P parameters: :func:`tarp_ecp` wraps the ``tarp`` package's ``get_tarp_coverage``.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np

#: Gaussian content of mean +- 1 and 2 sigma.
SIGMA_LEVELS = {1: math.erf(1 / math.sqrt(2)), 2: math.erf(2 / math.sqrt(2))}
#: The central intervals: name -> (low percentile, high percentile, nominal coverage).
CENTRAL = {"central68": (16.0, 84.0, 0.68), "central95": (2.5, 97.5, 0.95)}
#: Every interval: name -> nominal coverage, in the order of the report's tables.
INTERVALS = {"sigma1": SIGMA_LEVELS[1], "sigma2": SIGMA_LEVELS[2],
             **{k: v[2] for k, v in CENTRAL.items()}}
#: The coverage the fitted scale aims at (that of mean +- 1 sigma of a Gaussian).
TARGET = SIGMA_LEVELS[1]


def _f64(a) -> np.ndarray:
    return np.asarray(a, dtype=np.float64)


def mean_std(samples: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(N, P) mean and standard deviation (ddof = 1; 0 for one sample) over axis 0."""
    s = _f64(samples)
    std = s.std(axis=0, ddof=1) if len(s) > 1 else np.zeros(s.shape[1:])
    return s.mean(axis=0), std


def standardized(truth, mean, std) -> np.ndarray:
    """(N, P) ``|y - mean| / std``; 0 where the prediction is exact, inf where the spread
    is 0 and the prediction is not exact."""
    d = np.abs(_f64(truth) - _f64(mean))
    s = _f64(std)
    with np.errstate(divide="ignore", invalid="ignore"):
        z = d / s
    return np.where(d == 0, 0.0, np.where(s > 0, z, np.inf))


def sigma_coverage(truth, mean, std, k: float) -> np.ndarray:
    """(P,) fraction of items with ``|y - mean| <= k std``."""
    return np.mean(standardized(truth, mean, std) <= k, axis=0)


def central_bounds(samples: np.ndarray, level: float) -> tuple[np.ndarray, np.ndarray]:
    """(N, P) low and high ends of the central ``level`` (0..1) of the samples: the
    percentiles 50 (1 -+ level) (numpy's linear interpolation)."""
    lo, hi = np.percentile(_f64(samples), [50 * (1 - level), 50 * (1 + level)], axis=0)
    return lo, hi


def central_coverage(samples: np.ndarray, truth, low_pct: float, high_pct: float) -> np.ndarray:
    """(P,) fraction of items whose truth lies between the ``low_pct`` and ``high_pct``
    percentiles of its samples."""
    lo, hi = np.percentile(_f64(samples), [low_pct, high_pct], axis=0)
    y = _f64(truth)
    return np.mean((y >= lo) & (y <= hi), axis=0)


def coverages(samples: np.ndarray, truth) -> dict[str, np.ndarray]:
    """Every interval of :data:`INTERVALS`: name -> (P,) coverage of the samples."""
    mean, std = mean_std(samples)
    out = {f"sigma{k}": sigma_coverage(truth, mean, std, k) for k in SIGMA_LEVELS}
    out.update({name: central_coverage(samples, truth, lo, hi)
                for name, (lo, hi, _) in CENTRAL.items()})
    return out


def binomial_error(p: float, n: int) -> float:
    """Standard error of a coverage fraction ``p`` measured on ``n`` items."""
    return math.sqrt(p * (1 - p) / n) if n > 0 else math.nan


def fit_scale(truth, mean, std, target: float = TARGET) -> np.ndarray:
    """(P,) the scale s_p of the spread such that mean +- s_p std covers ``target`` of the
    items: the smallest ``|y - mean| / std`` whose empirical distribution reaches
    ``target`` (numpy's ``inverted_cdf`` quantile, so the covered fraction is at least
    ``target``). nan where that is infinite or 0 (too many items with zero spread: a
    model without dropout has no MC spread to scale)."""
    z = standardized(truth, mean, std)
    if z.shape[0] == 0:
        return np.full(z.shape[1:], np.nan)
    # 1e-9 more: the item on the boundary stays inside when the rescaled samples' std is
    # recomputed (its last bits may differ from s * std)
    s = np.quantile(z, target, axis=0, method="inverted_cdf") * (1 + 1e-9)
    return np.where(np.isfinite(s) & (s > 0), s, np.nan)


def scale_samples(samples: np.ndarray, scale) -> np.ndarray:
    """``mean + scale (samples - mean)`` per parameter, the mean over axis 0; a nan scale
    leaves that parameter as it is."""
    s = _f64(samples)
    k = np.where(np.isfinite(_f64(scale)), _f64(scale), 1.0)
    centre = s.mean(axis=0, keepdims=True)
    return centre + k * (s - centre)


#: One job's P validation scales (None or nan where not calibrated), or None for none.
JobScale = Sequence[float | None] | np.ndarray | None


def _job_scale(scale: JobScale) -> np.ndarray | None:
    if scale is None:
        return None
    k = np.array([np.nan if v is None else float(v) for v in scale], dtype=np.float64)
    return None if np.isnan(k).all() else k


def calibrate_ensemble(per_job: Sequence[np.ndarray], scales: Sequence[JobScale]) -> np.ndarray:
    """The fold ensemble of one model, calibrated: ``per_job`` (S_k, N, P) each job's
    passes, ``scales`` each job's P validation scales (None or nan: not calibrated, that
    job or parameter is taken as it is). Returns the pooled samples (sum S_k, N, P),
    scaled per item and parameter about the ensemble mean so that their std is
    ``sqrt(V)`` (docs/predict.md, "How it transfers to the ensemble"):

    - each job's samples are first scaled about its own mean by its scale, so that job
      k's spread s_k sigma_k is its calibrated error: W = mean_k (s_k sigma_k)^2 estimates
      E[(m_k - y)^2] = Var(b) + Var(eps), where m_k = y + b + eps_k (b shared by the folds,
      eps_k each fold's own);
    - the folds' disagreement B = var_k(m_k) (ddof 0) estimates Var(eps) (K - 1) / K;
    - the ensemble mean's error has variance Var(b) + Var(eps) / K, hence
      V = max(W - B, B / (K - 1)), the floor being Var(b) = 0; V = W for one job.
    """
    arrays = [_f64(a) for a in per_job]
    ks = [_job_scale(sc) for sc in scales]
    if all(k is None for k in ks):
        return np.concatenate(arrays)
    jobs = [scale_samples(a, np.full(a.shape[-1], np.nan) if k is None else k)
            for a, k in zip(arrays, ks, strict=True)]
    pooled = np.concatenate(jobs)
    if len(jobs) == 1:
        return pooled
    means = np.stack([a.mean(axis=0) for a in jobs])                 # (K, N, P)
    within = np.mean([a.var(axis=0, ddof=1) if len(a) > 1 else np.zeros(a.shape[1:])
                      for a in jobs], axis=0)
    between = means.var(axis=0)
    K = len(jobs)
    target = np.sqrt(np.maximum(within - between, between / (K - 1)))
    centre = pooled.mean(axis=0, keepdims=True)
    spread = pooled.std(axis=0, ddof=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        t = np.where(spread > 0, target / spread, 1.0)
    # a parameter no job calibrates stays as the jobs give it
    calibrated = np.array([any(k is not None and np.isfinite(k[p]) for k in ks)
                           for p in range(pooled.shape[-1])])
    t = np.where(calibrated[None, :], t, 1.0)
    return centre + t[None] * (pooled - centre)


def scale_by_model(per_job: Sequence[np.ndarray], models: Sequence[str],
                   scales: Sequence[JobScale]) -> np.ndarray:
    """The samples of several jobs, each model's calibrated: ``per_job`` (S_j, N, P) in job
    order, ``models`` each job's model, ``scales`` each job's P validation scales (None:
    not calibrated). Each model's fold ensemble is calibrated by
    :func:`calibrate_ensemble`, the mixture ``lenshpc predict`` summarises; returns every
    job's samples concatenated in job order."""
    out = [_f64(a) for a in per_job]
    for model in dict.fromkeys(models):
        rows = [i for i, m in enumerate(models) if m == model]
        calibrated = calibrate_ensemble([out[i] for i in rows], [scales[i] for i in rows])
        starts = np.cumsum([0] + [len(out[i]) for i in rows])
        for i, a, b in zip(rows, starts[:-1], starts[1:], strict=True):
            out[i] = calibrated[a:b]
    return np.concatenate(out)


def observed_sigma_curve(truth, mean, std, expected: np.ndarray) -> np.ndarray:
    """(L, P) the observed coverage of mean +- k std at the Gaussian contents ``expected``
    (L,), k = sqrt(2) erfinv(expected): the points of a calibration figure."""
    from scipy.special import erfinv
    k = math.sqrt(2) * erfinv(np.clip(_f64(expected), 0, 1))
    z = standardized(truth, mean, std)
    return np.stack([np.mean(z <= kk, axis=0) for kk in k])


def observed_central_curve(samples: np.ndarray, truth, expected: np.ndarray) -> np.ndarray:
    """(L, P) the observed coverage of the central ``expected`` (L,) of the samples."""
    return np.stack([central_coverage(samples, truth, 50 * (1 - a), 50 * (1 + a))
                     for a in _f64(expected)])


# --------------------------------------------------------------------------- TARP


def tarp_ecp(samples: np.ndarray, truth, seed: int,
             n_bins: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """TARP's expected coverage probability of the joint samples (S, N, P): (alpha, ecp),
    each (n_bins + 1,), from the ``tarp`` package (``get_tarp_coverage``, Euclidean
    distance, each parameter normalised to [0, 1] over the truths). The reference points
    are drawn here, uniform in the unit cube, from ``default_rng(seed)`` (the package's own
    draw goes through numpy's global generator). Calibrated samples give ecp = alpha.
    ``n_bins`` defaults to N // 10, between 5 and 50."""
    from tarp import get_tarp_coverage
    s, y = _f64(samples), _f64(truth)
    n = y.shape[0]
    bins = n_bins or int(min(50, max(5, n // 10)))
    references = np.random.default_rng(seed).uniform(0, 1, size=y.shape)
    # the package seeds numpy's global generator with ``seed``; it is not used here
    ecp, alpha = get_tarp_coverage(s.copy(), y.copy(), references=references,
                                   metric="euclidean", num_alpha_bins=bins, norm=True,
                                   bootstrap=False, seed=seed)
    return np.asarray(alpha, dtype=np.float64), np.asarray(ecp, dtype=np.float64)


def tarp_deviation(alpha: np.ndarray, ecp: np.ndarray) -> float:
    """The largest ``|ecp - alpha|``: 0 for calibrated samples (up to the sampling noise
    of N items, about 1 / sqrt(N)); positive means over- or under-confident somewhere."""
    return float(np.max(np.abs(_f64(ecp) - _f64(alpha))))
