"""Metric functions of METHOD.md section 3 against independent computations."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import special

from lenshpc.evaluate import metrics as M


def test_nmad_of_large_normal_sample_is_its_sigma():
    rng = np.random.default_rng(1)
    d = rng.normal(0.3, 0.05, 200_000)
    assert M.nmad(d) == pytest.approx(0.05, rel=0.01)
    # independent: the MAD by sorting, over Phi^-1(3/4) from the error function's inverse
    mad = np.sort(np.abs(d - np.sort(d)[[99_999, 100_000]].mean()))[[99_999, 100_000]].mean()
    assert M.nmad(d) == pytest.approx(mad / (math.sqrt(2) * special.erfinv(0.5)), rel=1e-12)
    # the 16-84 half width of a normal sample is its sigma too
    assert M.sigma68(d) == pytest.approx(0.05, rel=0.01)


def test_nmad_and_sigma_of_a_hand_computed_sample():
    d = np.array([1.0, 2.0, 3.0, 4.0, 10.0])
    # median 3; |d - 3| = 2, 1, 0, 1, 7, median 1; Phi^-1(3/4) = 0.6744897501960817
    assert M.nmad(d) == pytest.approx(1 / 0.6744897501960817, rel=1e-12)
    # P16 and P84 by linear interpolation between order statistics: ranks 0.64 and 3.36
    assert M.sigma68(d) == pytest.approx(((4 + 0.36 * 6) - (1 + 0.64 * 1)) / 2, rel=1e-12)


def test_r2_is_one_for_perfect_and_matches_the_definition():
    rng = np.random.default_rng(2)
    y = rng.uniform(0.1, 3.0, 1000)
    assert M.r2(y, y) == 1.0
    yhat = y + rng.normal(0, 0.2, y.size)
    expected = 1 - sum((a - b) ** 2 for a, b in zip(y, yhat, strict=True)) / sum((a - y.mean()) ** 2 for a in y)
    assert M.r2(y, yhat) == pytest.approx(expected, rel=1e-12)
    # the mean as prediction scores exactly 0
    assert M.r2(y, np.full_like(y, y.mean())) == pytest.approx(0.0, abs=1e-12)
    # a constant truth: defined only for a perfect prediction
    assert M.r2(np.ones(5), np.ones(5)) == 1.0
    assert math.isnan(M.r2(np.ones(5), np.arange(5.0)))


def test_relative_error_skips_true_zeros():
    y = np.array([0.0, 2.0, -4.0, 0.0, 1.0])
    yhat = np.array([5.0, 3.0, -3.0, -1.0, 1.0])
    np.testing.assert_allclose(M.relative_error(y, yhat), [0.5, 0.25, 0.0])
    m = M.parameter_metrics(y, yhat)
    assert m.rel_err_median == pytest.approx(0.25)
    assert m.rel_err_p90 == pytest.approx(np.percentile([0.5, 0.25, 0.0], 90))
    assert m.n == 5  # zeros count for the other figures
    # all-zero truth: no relative error, no warning
    assert math.isnan(M.parameter_metrics(np.zeros(3), np.ones(3)).rel_err_median)


def test_parameter_metrics_on_known_inputs():
    y = np.array([1.0, 2.0, 3.0, 4.0])
    yhat = np.array([1.5, 1.5, 3.5, 4.5])   # d = +.5, -.5, +.5, +.5
    m = M.parameter_metrics(y, yhat)
    assert m.mae == pytest.approx(0.5)
    assert m.bias == pytest.approx(0.25)
    assert m.median_bias == pytest.approx(0.5)
    # d sorted: -.5, .5, .5, .5; P16 at rank 0.48 is -0.02, P84 at rank 2.52 is 0.5
    assert m.sigma == pytest.approx((0.5 - -0.02) / 2)
    assert m.nmad == 0.0     # three of four deviations from the median (0.5) are 0
    assert m.r2 == pytest.approx(1 - 1.0 / 5.0)
    assert tuple(vars(m)) == M.METRIC_COLUMNS


def test_perfect_prediction_gives_zero_errors():
    rng = np.random.default_rng(3)
    y = rng.uniform(0.05, 1, 50)
    m = M.parameter_metrics(y, y.copy())
    assert (m.mae, m.bias, m.median_bias, m.sigma, m.nmad, m.rel_err_median, m.rel_err_p90) == (0,) * 7
    assert m.r2 == 1.0


def test_weighted_mse_loss_in_standardised_units():
    true = np.array([[1.0, 0.5, 0.1, 0.0], [2.0, 0.7, 0.2, 0.1]])
    pred = true + np.array([[0.2, 0.0, 0.0, 0.1], [0.0, 0.1, 0.0, 0.0]])
    std = np.array([0.5, 0.2, 0.1, 0.05])
    w = (1, 1, 3, 3)
    # by hand: item 1: (0.2/0.5)^2 + 3 (0.1/0.05)^2 = 0.16 + 12; item 2: (0.1/0.2)^2 = 0.25
    assert M.weighted_mse_loss(true, pred, std, w) == pytest.approx((12.16 + 0.25) / 2)


def test_psnr_and_mse_of_images():
    rng = np.random.default_rng(4)
    a = rng.uniform(0, 1, (3, 8, 8))
    b = a.copy()
    b[1] += 0.1
    b[2, 0, 0] += 0.8
    mse = M.image_mse(a, b)
    np.testing.assert_allclose(mse, [0.0, 0.01, 0.64 / 64])
    p = M.psnr(mse)
    assert p[0] == math.inf
    assert p[1] == pytest.approx(20.0)
    assert p[2] == pytest.approx(10 * math.log10(64 / 0.64))
    assert M.psnr(0.0) == math.inf and M.psnr(1e-4) == pytest.approx(40.0)
    assert math.isnan(M.psnr(np.array([np.nan]))[0])


def test_psnr_summary_keeps_perfect_renders_out_of_means():
    p = np.array([np.inf, 30.0, 40.0, np.inf, np.inf])
    m = np.array([0.0, 1e-3, 1e-4, 0.0, 0.0])
    s = M.psnr_summary(p, m)
    assert s.psnr_median == math.inf        # most are perfect
    assert s.psnr_mean == pytest.approx(35.0)
    assert s.mse_mean == pytest.approx(5.5e-4)
    assert (s.n, s.n_inf) == (5, 3)
    all_perfect = M.psnr_summary(np.full(4, np.inf), np.zeros(4))
    assert all_perfect.psnr_median == math.inf and math.isnan(all_perfect.psnr_mean)


def test_coverage_and_fold_summary():
    rng = np.random.default_rng(5)
    mu = rng.normal(size=100_000)
    y = mu + rng.normal(size=mu.size) * 0.3
    s = np.full(mu.size, 0.3)
    assert M.coverage(y, mu, s, 1) == pytest.approx(M.GAUSS_COVERAGE[1], abs=0.01)
    assert M.coverage(y, mu, s, 2) == pytest.approx(M.GAUSS_COVERAGE[2], abs=0.01)
    assert M.coverage(y, mu, np.zeros(mu.size), 1) == 0.0
    assert M.fold_mean_std([1.0, 2.0, 3.0]) == pytest.approx((2.0, np.std([1, 2, 3])))
    assert M.fold_mean_std([5.0]) == (5.0, 0.0)
    mean, std = M.fold_mean_std([30.0, np.inf])
    assert mean == math.inf and math.isnan(std)
    assert all(math.isnan(v) for v in M.fold_mean_std([np.nan, np.nan]))
