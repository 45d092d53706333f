"""Observation presets: a CSST wide-field dataset (configs/csst.yaml, r band) made by the real
``lenshpc simulate`` has the noise and PSF that Cao et al.'s numbers imply.

The expected noise is computed here from the numbers themselves (written out, not read from
lenshpc): caoxiaoyue/sim_csst_lens, paper/simulation/wf/csst_setting.yaml, r band."""

from __future__ import annotations

import math

import numpy as np
import pytest

from lenshpc.config import load
from lenshpc.config.observation import preset_values
from lenshpc.dataset.index import read_index, read_items
from lenshpc.simulate.render import Renderer, truth_to_kwargs
from tests.conftest import ROOT, simulate_dataset, write_config

# csst_setting.yaml, band r (index 1)
ZERO_MAG, SKY_MAG, PIXEL, T_TOTAL, N_EXP, READOUT, DARK, FWHM = (
    26.04, 22.10, 0.074, 300.0, 2, 5.0, 0.02, 0.064)
SKY_PER_PIXEL = 10 ** (-0.4 * (SKY_MAG - ZERO_MAG)) * PIXEL ** 2          # e-/s/pixel
#: variance (counts/s)^2 of an empty pixel: Poisson of sky and dark counts, read noise
BACKGROUND_VAR = (SKY_PER_PIXEL + DARK) * T_TOTAL / T_TOTAL ** 2 + N_EXP * READOUT ** 2 / T_TOTAL ** 2


def test_csst_preset_numbers():
    cfg = load(ROOT / "configs" / "csst.yaml")
    im = cfg.image
    assert (im.pixel_scale, im.psf, im.psf_fwhm, im.zero_point, im.sky_brightness,
            im.exposure_time, im.num_exposures, im.read_noise, im.dark_current) == (
        PIXEL, "gaussian", FWHM, ZERO_MAG, SKY_MAG, T_TOTAL, N_EXP, READOUT, DARK)
    assert im.background_sigma == pytest.approx(math.sqrt(BACKGROUND_VAR), rel=1e-12)
    # every lenstronomy survey resolves, with its numbers read from lenstronomy itself
    from lenstronomy.SimulationAPI.ObservationConfig.Euclid import Euclid
    vis = Euclid(band="VIS").kwargs_single_band()
    got = preset_values("euclid", "VIS")
    assert got["pixel_scale"] == vis["pixel_scale"] and got["psf_fwhm"] == vis["seeing"]
    assert got["exposure_time"] == vis["exposure_time"] * vis["num_exposures"]


@pytest.fixture(scope="module")
def csst_dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("csst")
    cfg = write_config(root / "csst.yaml", base=ROOT / "configs" / "csst.yaml",
                       dataset={"n_images": 24, "shard_size": 12, "test_fraction": 0.25})
    return load(cfg), simulate_dataset(cfg, root / "data")


def _residuals(cfg, data, fwhm: float = FWHM):
    """Per image: the stored image rescaled to counts/s against the noise-free model (a
    Gaussian PSF of ``fwhm`` arcsec), and the expected variance of every pixel."""
    import dataclasses
    index = read_index(data)
    images = read_items(index, np.arange(index.n_items))
    renderer = Renderer(dataclasses.replace(cfg.image, psf_fwhm=fwhm))
    out = []
    for img, row in zip(images, index.truth, strict=True):
        model = renderer.model_image(*truth_to_kwargs(index.truth_names, row))
        scale = float(np.sum(img * model) / np.sum(model ** 2))   # stored = noisy / max(noisy)
        variance = BACKGROUND_VAR + np.clip(model, 0, None) / T_TOTAL
        out.append((img / scale - model, variance))
    return out


def test_background_rms_in_corners(csst_dataset):
    cfg, data = csst_dataset
    corner = np.zeros((cfg.image.size,) * 2, bool)
    for sy in (slice(0, 8), slice(-8, None)):
        for sx in (slice(0, 8), slice(-8, None)):
            corner[sy, sx] = True
    res = _residuals(cfg, data)
    measured = math.sqrt(np.mean([np.mean(r[corner] ** 2) for r, _ in res]))
    expected = math.sqrt(np.mean([np.mean(v[corner]) for _, v in res]))
    # 24 images x 256 corner pixels: the rms is known to about 1%
    assert measured == pytest.approx(expected, rel=0.05)
    assert expected == pytest.approx(math.sqrt(BACKGROUND_VAR), rel=0.2)   # nearly empty


def _chi2(cfg, data, fwhm: float) -> float:
    """Mean of (residual^2 / variance) over the bright pixels (where the PSF matters: the
    Poisson variance of the model above twice the background's)."""
    bright = [(r, v, v > 3 * BACKGROUND_VAR) for r, v in _residuals(cfg, data, fwhm)]
    return float(np.mean(np.concatenate([r[b] ** 2 / v[b] for r, v, b in bright])))


def test_psf_is_the_presets(csst_dataset):
    cfg, data = csst_dataset
    assert _chi2(cfg, data, FWHM) == pytest.approx(1.0, abs=0.05)
    # a PSF 50% wider or narrower leaves residuals above the noise: the test sees the PSF
    assert _chi2(cfg, data, 1.5 * FWHM) > 1.1
    assert _chi2(cfg, data, FWHM / 1.5) > 1.02
