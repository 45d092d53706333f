"""A pixel PSF from a FITS kernel file (``image.psf: pixel``, ``image.psf_kernel``): it is the
kernel the images are convolved with (a kernel that is a delta one pixel off centre shifts
the image by one pixel; a FITS file renders exactly as the same array in a .npy file), and
a kernel whose pixel scale is not the image's, or states none, is refused by ``lenshpc
simulate`` in one line before any work."""

from __future__ import annotations

import numpy as np
import pytest
from astropy.io import fits

from lenshpc.config import UserError, load
from lenshpc.simulate.render import Renderer, load_psf_kernel
from tests.conftest import lenshpc, write_config

SCALE = 0.074
#: one system well inside a 32 px image (SIE, Sersic source and lens light)
ROW = {"theta_E": 0.8, "e1": 0.1, "e2": -0.05, "source_x": 0.05, "source_y": 0.02}


def _kernel_header(scale: float | None):
    from astropy.wcs import WCS
    if scale is None:
        return fits.Header()
    w = WCS(naxis=2)
    w.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    w.wcs.crval = [150.0, 2.0]
    w.wcs.crpix = [3.0, 3.0]
    w.wcs.cdelt = [-scale / 3600, scale / 3600]
    return w.to_header()


def _write_kernel(path, kernel: np.ndarray, scale: float | None = SCALE):
    fits.PrimaryHDU(kernel, header=_kernel_header(scale)).writeto(path)
    return path


def _shifted_delta() -> np.ndarray:
    k = np.zeros((5, 5))
    k[2, 3] = 1.0      # one pixel towards +x (column)
    return k


def _config(tmp_path, name: str, **image):
    return write_config(tmp_path / f"{name}.yaml", image={"size": 32, "pixel_scale": SCALE,
                                                          "supersampling": 1, **image},
                        dataset={"n_images": 8, "shard_size": 8, "test_fraction": 0.25})


def _image(cfg_path) -> np.ndarray:
    cfg = load(cfg_path)
    return Renderer(cfg.image, engine="lenstronomy").model_image(*_kwargs())


def _kwargs():
    lens = [{"theta_E": ROW["theta_E"], "e1": ROW["e1"], "e2": ROW["e2"],
             "center_x": 0.0, "center_y": 0.0}]
    source = [{"amp": 50.0, "R_sersic": 0.2, "n_sersic": 2.0, "e1": 0.0, "e2": 0.1,
               "center_x": ROW["source_x"], "center_y": ROW["source_y"]}]
    light = [{"amp": 6.0, "R_sersic": 0.5, "n_sersic": 4.0, "e1": 0.1, "e2": -0.05,
              "center_x": 0.0, "center_y": 0.0}]
    return lens, source, light


def test_a_fits_kernel_is_the_kernel_the_image_is_convolved_with(tmp_path):
    plain = _image(_config(tmp_path, "none", psf="none"))
    path = _write_kernel(tmp_path / "delta.fits", _shifted_delta())
    shifted = _image(_config(tmp_path, "delta", psf="pixel", psf_kernel=str(path)))
    # the convolution with a delta at +1 column moves every pixel one column to the right
    np.testing.assert_allclose(shifted[2:-2, 3:-2], plain[2:-2, 2:-3], rtol=1e-6, atol=1e-9)
    assert not np.allclose(shifted, plain)

    rng = np.random.default_rng(3)
    blur = rng.random((7, 7)) + 1.0
    np.save(tmp_path / "blur.npy", blur)
    _write_kernel(tmp_path / "blur.fits", blur)
    from_npy = _image(_config(tmp_path, "npy", psf="pixel", psf_kernel=str(tmp_path / "blur.npy")))
    from_fits = _image(_config(tmp_path, "fits", psf="pixel",
                               psf_kernel=str(tmp_path / "blur.fits")))
    np.testing.assert_array_equal(from_fits, from_npy)


def test_a_kernel_of_another_pixel_scale_is_refused(tmp_path):
    k = np.ones((5, 5))
    np.testing.assert_array_equal(load_psf_kernel(str(_write_kernel(tmp_path / "ok.fits", k)),
                                                  SCALE * 1.005), k)   # within 1%
    with pytest.raises(UserError, match="0.1 arcsec"):
        load_psf_kernel(str(_write_kernel(tmp_path / "wide.fits", k, 0.1)), SCALE)
    with pytest.raises(UserError, match="states no pixel scale"):
        load_psf_kernel(str(_write_kernel(tmp_path / "bare.fits", k, None)), SCALE)
    header = fits.Header()
    header["PIXSCALE"] = SCALE
    fits.PrimaryHDU(k, header=header).writeto(tmp_path / "keyword.fits")
    assert load_psf_kernel(str(tmp_path / "keyword.fits"), SCALE).shape == (5, 5)


@pytest.mark.parametrize("case", ["wide", "bare", "even", "cube", "text"])
def test_simulate_refuses_a_bad_kernel_in_one_line_before_any_work(tmp_path, case):
    path = tmp_path / f"{case}.fits"
    if case == "wide":
        _write_kernel(path, np.ones((5, 5)), 0.1)
    elif case == "bare":
        _write_kernel(path, np.ones((5, 5)), None)
    elif case == "even":
        _write_kernel(path, np.ones((4, 4)))
    elif case == "cube":
        fits.PrimaryHDU(np.ones((2, 5, 5))).writeto(path)
    else:
        path.write_text("not a FITS file\n")
    cfg = _config(tmp_path, case, psf="pixel", psf_kernel=str(path))
    proc = lenshpc("simulate", "--config", cfg, "--out", tmp_path / "data", "--no-progress")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "image.psf_kernel" in lines[0] and str(path) in lines[0], lines
    assert not (tmp_path / "data").exists()   # refused before anything was written
