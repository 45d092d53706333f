"""Coverage and calibration of the uncertainties (issue 18 point 3).

The pure functions of lenshpc.evaluate.calibration against independent constructions
(Gaussian samples of a known spread, a direct TARP in numpy), and one end-to-end run:
``lenshpc evaluate --mc-samples 3`` writes calibration.json, ``lenshpc predict
--calibration`` applies and records it, ``--no-calibration`` does not.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from lenshpc.evaluate import calibration as cal

N, P, S = 4000, 4, 200


def gaussian_toy(true_sigma: float, claimed_sigma: float, seed: int = 1):
    """Truths y ~ N(mu, true_sigma^2) around per-item centres mu, and S samples from
    N(mu, claimed_sigma^2): the samples' spread is off by true_sigma / claimed_sigma."""
    rng = np.random.default_rng(seed)
    mu = rng.uniform(0.5, 2.0, size=(N, P))
    y = mu + rng.normal(0, true_sigma, size=(N, P))
    samples = mu + rng.normal(0, claimed_sigma, size=(S, N, P))
    return samples, y


def test_perfect_spread_covers_68_and_95():
    samples, y = gaussian_toy(0.1, 0.1)
    c = cal.coverages(samples, y)
    err = cal.binomial_error(0.68, N)
    # the sample mean and std of 200 draws wobble a little: 4 binomial errors
    np.testing.assert_allclose(c["sigma1"], cal.SIGMA_LEVELS[1], atol=4 * err)
    np.testing.assert_allclose(c["central68"], 0.68, atol=4 * err)
    np.testing.assert_allclose(c["sigma2"], cal.SIGMA_LEVELS[2], atol=4 * cal.binomial_error(0.95, N))
    np.testing.assert_allclose(c["central95"], 0.95, atol=4 * cal.binomial_error(0.95, N))


def test_fitted_scale_recovers_the_true_factor():
    samples, y = gaussian_toy(0.3, 0.1)     # under-dispersed by a factor 3
    mean, std = cal.mean_std(samples)
    scale = cal.fit_scale(y, mean, std)
    np.testing.assert_allclose(scale, 3.0, rtol=0.06)
    after = cal.scale_samples(samples, scale)
    c = cal.coverages(after, y)
    assert np.all(c["sigma1"] >= cal.TARGET) and np.all(c["sigma1"] <= cal.TARGET + 2 / N)
    np.testing.assert_allclose(c["central68"], 0.68, atol=4 * cal.binomial_error(0.68, N))
    np.testing.assert_allclose(c["sigma2"], cal.SIGMA_LEVELS[2], atol=4 * cal.binomial_error(0.95, N))
    # before: mean +- 1 "sigma" of a 3x too narrow spread covers 2 Phi(1/3) - 1 = 0.261
    np.testing.assert_allclose(cal.coverages(samples, y)["sigma1"], math.erf(1 / 3 / math.sqrt(2)),
                               atol=4 * cal.binomial_error(0.26, N))


def test_scaling_multiplies_the_std_and_keeps_the_mean():
    samples, _ = gaussian_toy(0.1, 0.1)
    scale = np.array([2.0, 0.5, 1.0, np.nan])
    m0, s0 = cal.mean_std(samples)
    m1, s1 = cal.mean_std(cal.scale_samples(samples, scale))
    np.testing.assert_allclose(m1, m0, atol=1e-12)
    np.testing.assert_allclose(s1, s0 * np.array([2.0, 0.5, 1.0, 1.0]), rtol=1e-12)


def test_zero_spread_gives_no_scale():
    y = np.zeros((10, P)) + 1.0
    mean = y + 0.1
    assert np.isnan(cal.fit_scale(y, mean, np.zeros((10, P)))).all()
    assert (cal.sigma_coverage(y, y, np.zeros((10, P)), 1) == 1).all()   # exact counts as covered


def test_scale_by_model_scales_each_model_about_its_own_mean():
    rng = np.random.default_rng(3)
    a, b, c = (rng.normal(k, 1, size=(5, 7, P)) for k in (0, 1, 10))
    out = cal.scale_by_model([a, b, c], ["m1", "m1", "m3"], {"m1": [2, 2, 2, None], "m3": None})
    mix = np.concatenate([a, b])
    centre = mix.mean(axis=0)
    np.testing.assert_allclose(out[:10, :, :3], centre[..., :3] + 2 * (mix - centre)[..., :3])
    np.testing.assert_allclose(out[:10, :, 3], mix[..., 3])
    np.testing.assert_allclose(out[10:], c)


def direct_tarp(samples, y, references, n_bins):
    """Lemos et al. (2023), Algorithm 2, written out: normalise by the truths' range, the
    fraction f of samples nearer the reference than the truth, ECP = CDF of f."""
    lo, hi = y.min(axis=0), y.max(axis=0)
    s, t = (samples - lo) / (hi - lo + 1e-10), (y - lo) / (hi - lo + 1e-10)
    d_s = np.linalg.norm(s - references, axis=-1)
    d_t = np.linalg.norm(t - references, axis=-1)
    f = np.mean(d_s < d_t, axis=0)
    edges = np.linspace(f.min(), f.max(), n_bins + 1)
    return edges, np.concatenate([[0], np.cumsum(np.histogram(f, bins=edges)[0]) / len(f)])


def test_tarp_is_the_papers_test_and_uniform_when_calibrated():
    samples, y = gaussian_toy(0.1, 0.1, seed=5)
    alpha, ecp = cal.tarp_ecp(samples, y, seed=7, n_bins=20)
    refs = np.random.default_rng(7).uniform(0, 1, size=y.shape)
    a2, e2 = direct_tarp(samples, y, refs, 20)
    np.testing.assert_allclose(alpha, a2, atol=1e-12)
    np.testing.assert_allclose(ecp, e2, atol=1e-12)
    assert cal.tarp_deviation(alpha, ecp) < 0.05      # uniform: ECP = alpha
    narrow, _ = gaussian_toy(0.3, 0.1, seed=5)
    _, y_wide = gaussian_toy(0.3, 0.1, seed=5)
    assert cal.tarp_deviation(*cal.tarp_ecp(narrow, y_wide, seed=7, n_bins=20)) > 0.2


# --------------------------------------------------------------------------- end to end


@pytest.fixture(scope="module")
def cutouts_h5(eval_root, eval_data):
    """The first 12 test images of the evaluate dataset as an HDF5 input of predict."""
    import h5py
    path = eval_root / "cutouts-calibration.h5"
    if not path.exists():
        with h5py.File(eval_data / "dataset.h5", "r") as f:
            from lenshpc.dataset.folder import open_dataset
            index = open_dataset(eval_data)
            test = np.flatnonzero(f["split"][...] == -1)[:12]
        from lenshpc.dataset.index import read_items
        images = read_items(index, test)
        with h5py.File(path, "w") as f:
            f.create_dataset("images", data=images)
            f.attrs["pixel_scale"] = float(index.config.image.pixel_scale)
    return path


def test_evaluate_writes_calibration_and_predict_applies_it(mc_report, eval_cfg, eval_runs,
                                                            eval_root, cutouts_h5):
    from astropy.table import Table

    from tests.conftest import lenshpc
    _, out = mc_report
    record = json.loads((out / "calibration.json").read_text())
    assert record["format"] == "lenshpc-calibration" and record["mc_samples"] == 3
    m1 = record["models"]["model1"]
    assert m1["has_dropout"] and set(m1["jobs"]) == {"model1/fold-0", "model1/fold-1"}
    for key, job in m1["jobs"].items():
        fold = int(key.split("-")[-1])
        assert job["fold"] == fold and len(job["model_sha256"]) == 64
        # fitted so that +-1 sigma covers at least 68.27% of its own validation fold
        for p, s in job["scale"].items():
            if s is not None:
                assert job["validation"]["after"][p]["sigma1"] >= cal.TARGET
    m3 = record["models"]["model3"]
    assert not m3["has_dropout"] and all(v is None for v in m3["scale"].values())
    assert "not calibrated" in m3["transfer"]
    text = (out / "report.md").read_text()
    assert "## Calibration of the uncertainties" in text and "TARP" in text
    assert (out / "figures" / "calibration_coverage.png").stat().st_size > 5000
    # the report's completion marker lists (and hashes) the calibration products
    assert "calibration.json" in (out / "report.done.json").read_text()

    def run(name, *extra):
        cat = eval_root / f"cat-{name}.fits"
        lenshpc("predict", "--config", eval_cfg, "--runs", eval_runs, "--models", "model1",
                "--mc-samples", "3", "--no-progress", "--out", cat, *extra, cutouts_h5,
                timeout=900, check=True)
        return Table.read(cat, mask_invalid=False)

    plain = run("plain", "--no-calibration")
    calibrated = run("calibrated", "--calibration", out / "calibration.json")
    from lenshpc.io import file_sha256
    assert plain.meta["CALIB"] == "none"
    assert calibrated.meta["CALIB"] == file_sha256(out / "calibration.json")
    prov = json.loads(calibrated.meta["PROVJSON"])["calibration"]
    assert prov["scales"]["model1"] == [m1["scale"][p] for p in ("theta_E", "q", "e1", "e2")]
    for p in ("theta_E", "q", "e1", "e2"):
        s = m1["scale"][p] or 1.0
        np.testing.assert_allclose(calibrated[f"{p}_mean"], plain[f"{p}_mean"], rtol=1e-12)
        np.testing.assert_allclose(calibrated[f"{p}_std"], s * plain[f"{p}_std"], rtol=1e-9)
