"""The renderer at the edges of what the config allows: never a NaN pixel in a dataset.

Every combination of extreme values the population's supports admit (Einstein radius,
axis ratios, Sersic index and radius, a dark lens, the source on the lens centre, a pixel
centre on the lens centre) renders to a finite image with maximum 1 in both
supersampling modes, or fails with FloatingPointError naming the system; nothing
non-finite comes back silently.
"""

from __future__ import annotations

import itertools
from dataclasses import replace

import numpy as np
import pytest

from lenshpc.config.simulate import Image
from lenshpc.simulate.render import Renderer

THETA_E = (1e-3, 3.65, 100.0)
LENS_E = ((0.0, 0.0), (0.9, 0.0), (-0.3, 0.6))     # round, q ~ 0.05, another direction
SERSIC = ((1e-3, 0.2), (0.1, 4.0), (100.0, 20.0))  # (R_sersic arcsec, n_sersic)


@pytest.mark.parametrize("mode", ["full", "adaptive"])
@pytest.mark.parametrize("size", [16, 17])  # 17: a pixel centre on the lens centre
def test_extreme_systems_render_finite_or_refuse(mode, size):
    renderer = Renderer(Image(size=size, supersampling=3, supersampling_mode=mode))
    rendered = 0
    for theta_E, (e1, e2), (r_src, n_src), (r_ll, n_ll), amp_ll in itertools.product(
            THETA_E, LENS_E, SERSIC, SERSIC, (0.0, 10.0)):
        lens = [{"theta_E": theta_E, "e1": e1, "e2": e2, "center_x": 0.0, "center_y": 0.0}]
        source = [{"amp": 40.0, "R_sersic": r_src, "n_sersic": n_src, "e1": 0.3, "e2": -0.2,
                   "center_x": 0.0, "center_y": 0.0}]
        light = [{"amp": amp_ll, "R_sersic": r_ll, "n_sersic": n_ll, "e1": e1 / 2, "e2": e2 / 2,
                  "center_x": 0.0, "center_y": 0.0}]
        try:
            img = renderer.render(lens, source, light)
        except FloatingPointError as exc:
            assert "non-finite pixels" in str(exc)
            continue
        assert np.all(np.isfinite(img)), (lens, source, light)
        assert img.max() in (0.0, 1.0)
        rendered += 1
    assert rendered > 0


def test_adaptive_with_everything_dark_is_zero():
    renderer = Renderer(replace(Image(size=16, supersampling=3), supersampling_mode="adaptive"))
    dark = [{"amp": 0.0, "R_sersic": 1.0, "n_sersic": 4.0, "e1": 0.0, "e2": 0.0,
             "center_x": 0.0, "center_y": 0.0}]
    lens = [{"theta_E": 1.0, "e1": 0.0, "e2": 0.0, "center_x": 0.0, "center_y": 0.0}]
    img = renderer.render(lens, dark, dark)
    assert not img.any() and renderer.last_supersampled == 0
