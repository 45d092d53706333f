"""Rendering physics: equal to lenstronomy's own ImageModel; the Einstein ring sits at theta_E."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from lenshpc.config.simulate import Image
from lenshpc.simulate.render import TRUTH_NAMES, Renderer, truth_to_kwargs

LENS = [{"theta_E": 1.1, "e1": 0.12, "e2": 0.04, "center_x": 0.03, "center_y": -0.02}]
SOURCE = [{"amp": 40.0, "R_sersic": 0.2, "n_sersic": 2.5, "e1": 0.1, "e2": -0.05,
           "center_x": 0.08, "center_y": 0.05}]
LENS_LIGHT = [{"amp": 10.0, "R_sersic": 0.8, "n_sersic": 4.0, "e1": 0.05, "e2": 0.02,
               "center_x": 0.03, "center_y": -0.02}]


def lenstronomy_image(image: Image, kl, ks, kll) -> np.ndarray:
    """The reference: lenstronomy's ImageModel built from scratch for these parameters."""
    from lenstronomy.Data.imaging_data import ImageData
    from lenstronomy.Data.psf import PSF
    from lenstronomy.ImSim.image_model import ImageModel
    from lenstronomy.LensModel.lens_model import LensModel
    from lenstronomy.LightModel.light_model import LightModel
    from lenstronomy.Util.simulation_util import data_configure_simple
    psf = (PSF("NONE") if image.psf == "none" else
           PSF("GAUSSIAN", fwhm=image.psf_fwhm, pixel_size=image.pixel_scale))
    model = ImageModel(ImageData(**data_configure_simple(image.size, image.pixel_scale)), psf,
                       LensModel(["SIE"]), LightModel(["SERSIC_ELLIPSE"]),
                       LightModel(["SERSIC_ELLIPSE"]),
                       kwargs_numerics={"supersampling_factor": image.supersampling})
    return model.image(kl, ks, kll)


@pytest.mark.parametrize("image", [Image(size=64), Image(size=48, supersampling=3),
                                   Image(size=33, supersampling=2, psf="gaussian", psf_fwhm=0.2)],
                         ids=["64-plain", "48-supersampled", "33-odd-psf"])
def test_image_equals_lenstronomy_rendering(image):
    renderer = Renderer(image)
    ref = lenstronomy_image(image, LENS, SOURCE, LENS_LIGHT)
    np.testing.assert_allclose(renderer.model_image(LENS, SOURCE, LENS_LIGHT), ref, rtol=1e-10,
                               atol=1e-12 * ref.max())
    img = renderer.render(LENS, SOURCE, LENS_LIGHT)
    assert img.dtype == np.float32 and img.shape == (image.size, image.size)
    assert img.max() == 1.0
    np.testing.assert_allclose(img, ref / ref.max(), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("engine", ["fused", "lenstronomy"])
def test_both_engines_equal_lenstronomy_over_the_population(engine):
    """Random systems of the default population (plus round and edge cases) on a
    supersampled odd grid, whose central pixel sits on the lens centre."""
    from lenshpc.config import loads
    from lenshpc.simulate import population as pop
    image = Image(size=41, supersampling=2)
    truth, _ = pop.sample(loads(None).population, 11, range(12))
    edge = truth[0].copy()
    names = list(TRUTH_NAMES)
    for key in ("lens_mass.e1", "lens_mass.e2", "lens_mass.center_x", "lens_mass.center_y",
                "source_light.center_x", "source_light.center_y"):
        edge[names.index(key)] = 0.0  # q = 1, source exactly behind the lens
    renderer = Renderer(image, engine=engine)
    for row in (*truth, edge):
        kl, ks, kll = truth_to_kwargs(TRUTH_NAMES, row)
        ref = lenstronomy_image(image, kl, ks, kll)
        got = renderer.model_image(kl, ks, kll)
        assert np.all(np.isfinite(got))
        np.testing.assert_allclose(got, ref, rtol=1e-10, atol=1e-12 * ref.max())


def test_truth_row_round_trip():
    row = [{**LENS[0]}, {**LENS_LIGHT[0]}, {**SOURCE[0]}]
    values = [row[("lens_mass", "lens_light", "source_light").index(n.split(".")[0])][n.split(".")[1]]
              for n in TRUTH_NAMES]
    kl, ks, kll = truth_to_kwargs([n.encode() for n in TRUTH_NAMES], values)
    assert kl == LENS and ks == SOURCE and kll == LENS_LIGHT
    renderer = Renderer(Image(size=32))
    np.testing.assert_array_equal(renderer.render_truth(TRUTH_NAMES, values),
                                  renderer.render(LENS, SOURCE, LENS_LIGHT))
    with pytest.raises(ValueError, match="unknown truth column"):
        truth_to_kwargs([*TRUTH_NAMES, "lens_mass.gamma"], [*values, 2.0])
    with pytest.raises(ValueError, match="lacks"):
        truth_to_kwargs(TRUTH_NAMES[1:], values[1:])


@pytest.mark.parametrize("size", [64, 65])  # 65: a pixel centre sits exactly on the lens centre
def test_round_lens_q_equal_one_gives_no_nan(size):
    lens = [{**LENS[0], "e1": 0.0, "e2": 0.0, "center_x": 0.0, "center_y": 0.0}]
    light = [{**LENS_LIGHT[0], "e1": 0.0, "e2": 0.0, "center_x": 0.0, "center_y": 0.0}]
    img = Renderer(Image(size=size, supersampling=2)).render(lens, SOURCE, light)
    assert np.all(np.isfinite(img)) and img.max() == 1.0


def test_circular_sie_with_compact_source_on_axis_makes_a_ring_at_theta_E():
    theta_E, scale, size = 1.2, 0.02, 201
    lens = [{"theta_E": theta_E, "e1": 0.0, "e2": 0.0, "center_x": 0.0, "center_y": 0.0}]
    source = [{"amp": 100.0, "R_sersic": 0.02, "n_sersic": 1.0, "e1": 0.0, "e2": 0.0,
               "center_x": 0.0, "center_y": 0.0}]
    dark = [{"amp": 0.0, "R_sersic": 1.0, "n_sersic": 4.0, "e1": 0.0, "e2": 0.0,
             "center_x": 0.0, "center_y": 0.0}]
    img = Renderer(Image(size=size, pixel_scale=scale, supersampling=2)).render(lens, source, dark)
    x = (np.arange(size) - (size - 1) / 2) * scale
    r = np.hypot(*np.meshgrid(x, x))
    bins = np.arange(0, r.max(), scale)
    which = np.digitize(r.ravel(), bins)
    profile = np.array([img.ravel()[which == k].mean() if np.any(which == k) else 0
                        for k in range(1, len(bins))])
    r_peak = (bins[:-1] + scale / 2)[np.argmax(profile)]
    assert abs(r_peak - theta_E) <= scale
    # a ring, not a blob: the brightness at the ring is the same in every direction
    on_ring = img[np.abs(r - theta_E) < scale / 2]
    assert on_ring.min() > 0.5 * on_ring.max()
    assert img[size // 2, size // 2] < 0.01


def test_noise_comes_from_the_items_generator():
    image = Image(size=32, background_rms=0.05, exposure_time=100.0)
    renderer = Renderer(image)
    clean = renderer.render(LENS, SOURCE, LENS_LIGHT)
    a = renderer.render(LENS, SOURCE, LENS_LIGHT, rng=np.random.default_rng([1, 2, 1]))
    b = renderer.render(LENS, SOURCE, LENS_LIGHT, rng=np.random.default_rng([1, 2, 1]))
    c = renderer.render(LENS, SOURCE, LENS_LIGHT, rng=np.random.default_rng([1, 3, 1]))
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c) and not np.array_equal(a, clean)
    assert a.max() == 1.0
    # background sigma is 5% of the noise-free maximum: the residual has that scale
    assert 0.02 < np.std(a - clean) < 0.1


# --------------------------------------------------------------------------- adaptive mode

#: The stated bound of adaptive supersampling: |adaptive - full| of the normalised image
#: (maximum 1), at the default threshold (docs/performance.md, image.supersampling_mode).
ADAPTIVE_BOUND = 1e-4


def test_adaptive_choosing_every_pixel_is_full_supersampling():
    """With a threshold that chooses every pixel, adaptive mode is full mode: the subpixels
    it gathers per pixel are lenstronomy's, binned the same way."""
    from lenshpc.config import loads
    from lenshpc.simulate import population as pop
    for image in (Image(size=40, supersampling=3), Image(size=33, supersampling=4, psf="gaussian")):
        full = Renderer(image)
        every = Renderer(replace(image, supersampling_mode="adaptive", adaptive_threshold=1e-300))
        truth, _ = pop.sample(loads(None).population, 5, range(6))
        for row in truth:
            kl, ks, kll = truth_to_kwargs(TRUTH_NAMES, row)
            ref = full.model_image(kl, ks, kll)
            np.testing.assert_allclose(every.model_image(kl, ks, kll), ref, rtol=1e-12,
                                       atol=1e-14 * ref.max())
            assert every.last_supersampled == image.size ** 2


@pytest.mark.parametrize("image", [
    Image(size=112, supersampling=3),
    Image(size=112, supersampling=3, psf="gaussian", psf_fwhm=0.15, background_rms=0.01,
          exposure_time=1000.0),
    Image(size=64, supersampling=2, psf="gaussian", psf_fwhm=0.3),
    Image(size=45, supersampling=4, pixel_scale=0.1),
], ids=["paper", "paper-psf-noise", "64-ss2-psf", "45-ss4-odd"])
def test_adaptive_supersampling_within_its_bound_over_the_population(image):
    """300 systems of the default population (the paper's): every pixel of the adaptive
    image within ADAPTIVE_BOUND of full supersampling (with noise configured, the
    noise-free part, which is what adaptive mode changes), and fewer pixels supersampled."""
    from lenshpc.config import loads
    from lenshpc.simulate import population as pop
    full = Renderer(image)
    adaptive = Renderer(replace(image, supersampling_mode="adaptive"))
    truth, _ = pop.sample(loads(None).population, 23, range(300))
    worst, chosen = 0.0, 0
    for row in truth:
        a = full.render_truth(TRUTH_NAMES, row).astype(np.float64)
        b = adaptive.render_truth(TRUTH_NAMES, row).astype(np.float64)
        assert b.max() == 1.0
        worst = max(worst, float(np.abs(a - b).max()))
        chosen += adaptive.last_supersampled
    assert worst <= ADAPTIVE_BOUND, worst
    assert chosen < 0.75 * len(truth) * image.size ** 2


def test_adaptive_noise_uses_the_same_draws():
    image = Image(size=48, supersampling=3, background_rms=0.02, exposure_time=500.0)
    full, adaptive = Renderer(image), Renderer(replace(image, supersampling_mode="adaptive"))
    a = full.render(LENS, SOURCE, LENS_LIGHT, rng=np.random.default_rng([4, 5]))
    b = adaptive.render(LENS, SOURCE, LENS_LIGHT, rng=np.random.default_rng([4, 5]))
    assert np.abs(a - b).max() < 1e-3  # same noise: only the model part differs


def test_adaptive_without_supersampling_is_the_plain_render():
    image = Image(size=32)
    np.testing.assert_array_equal(Renderer(replace(image, supersampling_mode="adaptive"))
                                  .render(LENS, SOURCE, LENS_LIGHT),
                                  Renderer(image).render(LENS, SOURCE, LENS_LIGHT))
