"""``--resample``: a cutout of another pixel scale, resampled to the training's, is the scene
the training's pixels would have shown (centre and scale exact), the same from a single FITS
image and from a mosaic position; a mosaic of another scale is refused
without it, naming both scales."""

from __future__ import annotations

import numpy as np
from astropy.io import fits
from astropy.table import Table
from astropy.wcs import WCS

from lenshpc.config import load
from lenshpc.predict import inputs, kernels
from tests.conftest import lenshpc
from tests.predict.conftest import SCALE, SIZE, wcs_header

WIDE = 0.1    # arcsec: the survey's pixels, 35% larger than the training's 0.074


def _sky(size: int, scale: float) -> np.ndarray:
    """A smooth lens-like scene (an elliptical galaxy, an off-centre arc-like blob),
    sampled at the centres of ``size`` pixels of ``scale`` arcsec about the image centre:
    known everywhere, so a resampled image can be checked against the scene itself."""
    x = (np.arange(size) - (size - 1) / 2) * scale
    xx, yy = np.meshgrid(x, x)
    galaxy = np.exp(-0.5 * ((xx / 0.5) ** 2 + (yy / 0.35) ** 2))
    arc = 0.6 * np.exp(-0.5 * (((xx - 0.45) / 0.2) ** 2 + ((yy + 0.3) / 0.35) ** 2))
    return galaxy + arc


def test_resampling_keeps_the_centre_and_gives_the_training_pixels():
    native, wide = _sky(SIZE, SCALE), _sky(44, WIDE)
    image, flag = kernels.prepare(wide, WIDE, SIZE, SCALE, True)
    assert flag & kernels.FLAGS["RESAMPLED"] and image.shape == (SIZE, SIZE)

    def error(img):
        return float(np.abs(img - native).max())

    # the scene at 0.074" to the spline's accuracy; a 1% scale error or a shift of half a
    # 0.1" pixel is many times that
    assert error(image) < 2e-3, error(image)
    assert error(kernels.prepare(wide, WIDE * 1.01, SIZE, SCALE, True)[0]) > 5 * error(image)
    shifted = kernels.prepare(_sky(45, WIDE)[:44, :44], WIDE, SIZE, SCALE, True)[0]
    assert error(shifted) > 5 * error(image)
    # odd and even sizes alike: the centre stays the centre
    assert error(kernels.prepare(_sky(45, WIDE), WIDE, SIZE, SCALE, True)[0]) < 2e-3
    # a cutout too small for the training field once resampled is not predicted
    assert kernels.prepare(wide[:23, :23], WIDE, SIZE, SCALE, True)[1] & kernels.FLAGS["SIZE"]
    assert kernels.prepare(wide[:24, :24], WIDE, SIZE, SCALE, True)[0] is not None


def test_a_mosaic_position_resamples_as_the_single_image(trained, tmp_path):
    cfg, runs = trained
    lens = _sky(44, WIDE)
    mosaic = np.zeros((120, 120))
    mosaic[38:82, 38:82] = lens                     # lens centre at pixel (59.5, 59.5)
    fits.PrimaryHDU(mosaic, header=wcs_header(120, WIDE)).writeto(tmp_path / "mosaic.fits")
    fits.PrimaryHDU(lens, header=wcs_header(44, WIDE)).writeto(tmp_path / "single.fits")
    ra, dec = WCS(wcs_header(120, WIDE)).pixel_to_world_values([59.5], [59.5])
    Table({"RA": ra, "Dec": dec}).write(tmp_path / "pos.csv")

    # the pixels the network sees, both ways
    c_cfg = load(cfg)
    seen = []
    for cutouts in (inputs.scan([], str(tmp_path / "mosaic.fits"), str(tmp_path / "pos.csv"), None)[0],
                    inputs.scan([str(tmp_path / "single.fits")], None, None, None)[0]):
        c = cutouts[0]
        pixels, edge = inputs.read_pixels(c, kernels.grab_size(c.kind, c.pixel_scale, SIZE,
                                                               c_cfg.image.pixel_scale, True))
        seen.append(kernels.prepare(pixels, c.pixel_scale, SIZE, c_cfg.image.pixel_scale, True,
                                    edge)[0])
    inputs.close_mosaics()
    np.testing.assert_allclose(seen[0], seen[1], atol=1e-3 * lens.max())

    out = tmp_path / "cat.csv"
    args = ("predict", "--config", cfg, "--runs", runs, "--mc-samples", "0", "--no-progress",
            "--image", tmp_path / "mosaic.fits", "--positions", tmp_path / "pos.csv")
    refused = lenshpc(*args, "--out", out)
    lines = refused.stderr.strip().splitlines()
    assert refused.returncode == 2 and len(lines) == 1, refused.stderr
    assert "mosaic.fits" in lines[0] and "0.1 arcsec" in lines[0] and "0.074 arcsec" in lines[0]
    assert not out.exists()
    lenshpc(*args, "--resample", "--out", out, check=True)
    t = Table.read(out, format="ascii.ecsv")
    assert len(t) == 1 and t["flag"][0] == kernels.FLAGS["RESAMPLED"] and t.meta["RESAMPLE"]
    assert np.isfinite(t["theta_E_mean"][0])
