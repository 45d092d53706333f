"""Hostile config files against the installed `lenshpc` command, as a user would write them.

Each case was accepted at load once and then failed later, or silently did something else:
a key given twice (YAML keeps the last one), integers written as 1.0e+308 (a hang in
simulate), a seed beyond 64 bits, a model name too long for a path, a figure resolution
that exhausts memory, NaN, a pixel scale of 1e308 (it reached the renderer). Every one must
now end at load: exit status 2, exactly one line on stderr, no traceback, and nothing
written.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.conftest import PYTHON, env

#: The installed console script (``[project.scripts]``), not ``python -m``.
LENSHPC = str(Path(PYTHON).parent / "lenshpc")

HOSTILE = {
    "duplicate top-level key": ("seed: 1\nname: twice\nseed: 2\n",
                                "config seed: given twice in {f}, at lines 1 and 3"),
    "duplicate section": ("image:\n  size: 64\ndataset:\n  n_images: 100\nimage:\n  size: 32\n",
                          "config image: given twice in {f}, at lines 1 and 5"),
    "duplicate key in a section": ("dataset:\n  n_images: 100\n  n_folds: 2\n  n_images: 200\n",
                                   "config dataset.n_images: given twice in {f}, at lines 2 and 4"),
    "duplicate key in a list item": ("train:\n  models:\n    - {name: a, p1: 0.1, p1: 0.2}\n",
                                     "config train.models[0].p1: given twice in {f}, both on line 3"),
    "1e308 images": ("dataset:\n  n_images: 1.0e+308\n",
                     "config dataset.n_images: 1e+308 is not an integer below 2^53"),
    "1e308 shard size": ("dataset:\n  shard_size: 1.0e+308\n",
                         "config dataset.shard_size: 1e+308 is not an integer below 2^53"),
    "a billion and one images": ("dataset:\n  n_images: 1000000001\n",
                                 "config dataset.n_images: 1000000001 is out of range; "
                                 "allowed: >= 1 and <= 1000000000"),
    "fractional integer": ("dataset:\n  n_folds: 2.5\n", "config dataset.n_folds: 2.5 is not an "
                                                         "integer"),
    "seed of 2^64": ("seed: 18446744073709551616\n", "config seed: 18446744073709551616 is out "
                                                     "of range; allowed: >= 0 and < 2^63"),
    "seed of 400 digits": ("seed: " + "9" * 400 + "\n", "config seed: an integer of 400 digits "
                                                        "is out of range"),
    "seed of 5000 digits": ("seed: " + "9" * 5000 + "\n", "holds a value YAML cannot read: "
                                                         "Exceeds the limit"),
    "nesting 20000 deep": ("train: " + "[" * 20000 + "]" * 20000 + "\n",
                           "is nested too deeply to be a config"),
    "300-character model name": ("train:\n  models:\n    - {name: " + "m" * 300 + "}\n",
                                 "config train.models[0].name: 'mmmm"),
    "dpi 100000": ("evaluate:\n  dpi: 100000\n", "config evaluate.dpi: 100000 is out of range; "
                                                 "allowed: >= 50 and <= 1200"),
    "NaN noise": ("image:\n  background_rms: .nan\n", "config image.background_rms: .nan is not "
                                                      "a finite number"),
    "NaN learning rate": ("train:\n  learning_rate: .NaN\n", "config train.learning_rate: .nan "
                                                             "is not a finite number"),
    "NaN in a distribution": ("population:\n  lens_mass:\n    q: {dist: uniform, low: .nan, "
                              "high: 1}\n", "config population.lens_mass.q.low: .nan is not a "
                                            "finite number"),
    "infinite constant": ("population:\n  source_light:\n    center_x: .inf\n",
                          "config population.source_light.center_x: .inf is not a finite number"),
    "pixel scale 1e308": ("image:\n  pixel_scale: 1.0e+308\n", "config image.pixel_scale: "
                                                               "1.0e+308 is out of range"),
    "PSF wider than the field": ("image:\n  psf: gaussian\n  psf_fwhm: 9.0\n",
                                 "config image.psf_fwhm: 9 arcsec is wider than the 4.736 arcsec "
                                 "field"),
    "lognormal that overflows": ("population:\n  lens_mass:\n    theta_E: {dist: lognormal, "
                                 "median: 1, sigma: 1.0e+6, low: 0.1, high: 3}\n",
                                 "config population.lens_mass.theta_E.sigma: 1000000.0 is out "
                                 "of range"),
    "Einstein radius of a kiloarcsec": ("population:\n  lens_mass:\n    theta_E: {dist: uniform, "
                                        "low: 0.1, high: 1000}\n",
                                        "must have its values within (0, 100] arcsec"),
    "number written as text": ("image:\n  pixel_scale: 1e-1\n",
                               "config image.pixel_scale: '1e-1' is not a number (YAML reads it "
                               "as text"),
}


def _refused_in_one_line(proc: subprocess.CompletedProcess, expected: str) -> None:
    lines = proc.stderr.splitlines()
    assert proc.returncode == 2, (proc.returncode, proc.stderr)
    assert len(lines) == 1, proc.stderr
    assert "Traceback" not in proc.stderr and "Traceback" not in proc.stdout
    assert expected in lines[0], lines[0]


@pytest.mark.parametrize("case", HOSTILE)
def test_config_check_refuses_in_one_line(tmp_path, case):
    text, expected = HOSTILE[case]
    f = tmp_path / "hostile.yaml"
    f.write_text(text)
    proc = subprocess.run([LENSHPC, "config", "check", str(f)], capture_output=True, text=True,
                          timeout=120, env=env())
    _refused_in_one_line(proc, expected.format(f=f))
    assert proc.stdout == ""


@pytest.mark.parametrize("case", ["duplicate section", "1e308 images", "pixel scale 1e308"])
def test_simulate_refuses_before_any_work(tmp_path, case):
    """The stage that hung (1e308 images) or rendered (pixel scale 1e308) stops at load."""
    text, expected = HOSTILE[case]
    f = tmp_path / "hostile.yaml"
    f.write_text(text)
    out = tmp_path / "dataset"
    proc = subprocess.run([LENSHPC, "simulate", "--config", str(f), "--out", str(out),
                           "--no-progress"], capture_output=True, text=True, timeout=300,
                          env=env())
    _refused_in_one_line(proc, expected.format(f=f))
    assert not out.exists() or not any(out.iterdir())
