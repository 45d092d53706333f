"""Fixtures of the predict tests: one real tiny training job (``lenshpc simulate`` and
``lenshpc train``, as tests/evaluate/conftest.py makes them) and cutouts written here:
lenstronomy images rendered directly, with a celestial WCS in their FITS headers."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tests.conftest import lenshpc, simulate_dataset, write_config

SIZE, SCALE = 32, 0.074
OVERRIDES = dict(
    image={"size": SIZE, "pixel_scale": SCALE},
    dataset={"n_images": 80, "test_fraction": 0.25, "n_folds": 2, "shard_size": 40},
    train={"epochs": 1, "batch_size": 16, "folds": [0],
           "models": [{"name": "model1", "p1": 0.2, "p2": 0.3}]},
    evaluate={"chunk_size": 3, "batch_size": 2},
)


def wcs_header(size: int, scale: float, ra: float = 150.0, dec: float = 2.0):
    """A TAN WCS of ``size`` pixels of ``scale`` arcsec centred on (ra, dec) degrees."""
    from astropy.wcs import WCS
    w = WCS(naxis=2)
    w.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    w.wcs.crval = [ra, dec]
    w.wcs.crpix = [(size + 1) / 2, (size + 1) / 2]
    w.wcs.cdelt = [-scale / 3600, scale / 3600]
    return w.to_header()


def render(size: int, scale: float, theta_E: float, seed: int) -> np.ndarray:
    """A lens image rendered by lenstronomy's ImageModel (SIE, Sersic lens light and
    source), with a little Gaussian noise."""
    from lenstronomy.Data.imaging_data import ImageData
    from lenstronomy.Data.psf import PSF
    from lenstronomy.ImSim.image_model import ImageModel
    from lenstronomy.LensModel.lens_model import LensModel
    from lenstronomy.LightModel.light_model import LightModel
    from lenstronomy.Util.simulation_util import data_configure_simple
    model = ImageModel(ImageData(**data_configure_simple(size, scale)), PSF(psf_type="NONE"),
                       lens_model_class=LensModel(["SIE"]),
                       source_model_class=LightModel(["SERSIC_ELLIPSE"]),
                       lens_light_model_class=LightModel(["SERSIC_ELLIPSE"]))
    rng = np.random.default_rng(seed)
    img = model.image(
        kwargs_lens=[{"theta_E": theta_E, "e1": 0.1, "e2": 0.02, "center_x": 0, "center_y": 0}],
        kwargs_source=[{"amp": 50, "R_sersic": 0.2, "n_sersic": 2.5, "e1": 0.0, "e2": 0.1,
                        "center_x": 0.05, "center_y": 0.0}],
        kwargs_lens_light=[{"amp": 10, "R_sersic": 0.6, "n_sersic": 4, "e1": 0.1, "e2": 0.0,
                            "center_x": 0, "center_y": 0}])
    return img + rng.normal(0, 0.01 * img.max(), img.shape)


@pytest.fixture(scope="session")
def trained(tmp_path_factory) -> tuple[Path, Path]:
    """(config, runs) of one real 1-epoch job, model1 fold 0 (dropout 0.2/0.3)."""
    root = tmp_path_factory.mktemp("predict")
    cfg = write_config(root / "predict.yaml", **OVERRIDES)
    data = simulate_dataset(cfg, root / "data")
    lenshpc("train", "--config", cfg, "--data", data, "--out", root / "runs", "--job", "0",
            timeout=900, check=True)
    return cfg, root / "runs"


@pytest.fixture(scope="module")
def cutouts(tmp_path_factory) -> Path:
    """A folder of FITS cutouts: three single images (one 40 px, centre-cropped), a cube of
    three planes with one NaN pixel in plane 1, one 24 px image (too small)."""
    from astropy.io import fits
    folder = tmp_path_factory.mktemp("cutouts")
    for k, theta in enumerate((0.6, 0.9, 1.2)):
        size = 40 if k == 2 else SIZE
        fits.PrimaryHDU(render(size, SCALE, theta, k), header=wcs_header(size, SCALE)).writeto(
            folder / f"single-{k}.fits")
    cube = np.stack([render(SIZE, SCALE, t, 10 + i) for i, t in enumerate((0.7, 1.0, 1.4))])
    cube[1, 5, 7] = np.nan
    fits.PrimaryHDU(cube, header=wcs_header(SIZE, SCALE)).writeto(folder / "cube.fits")
    fits.PrimaryHDU(render(24, SCALE, 0.8, 20), header=wcs_header(24, SCALE)).writeto(
        folder / "small.fits")
    return folder
