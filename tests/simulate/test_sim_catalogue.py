"""Catalogues read as published (Cao et al.'s CSST tables), and every catalogue value held
to the bounds of the config key it stands for."""

from __future__ import annotations

import csv
import dataclasses
import json

import h5py
import numpy as np
import pytest

from lenshpc.config import UserError, loads
from lenshpc.config.distribution import PARAM_MAX, Support
from lenshpc.config.population import CATALOGUE_PRESETS, Population, value_allowed
from lenshpc.simulate import population as pop
from lenshpc.simulate.catalogue import read_catalogue
from lenshpc.simulate.render import TRUTH_NAMES
from tests.conftest import ROOT, lenshpc, write_config

DATA = ROOT / "tests" / "data"
CSST = [DATA / "csst_udf_stack_head200.csv", DATA / "csst_double_src_wf_stack_head200.csv"]


def _population(path, columns) -> Population:
    return loads({"population": {"kind": "catalogue", "catalogue": str(path),
                                 "catalogue_columns": columns}}).population


def _plain_columns(path) -> dict[str, list[str]]:
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    return {k: [r[k] for r in rows] for k in rows[0]}


# --------------------------------------------------------------------------- CSST tables


@pytest.mark.parametrize("path", CSST, ids=lambda p: p.stem)
def test_csst_tables_read_as_published(path):
    """Both public files, with their text (best_band) and true/false (if_ring) columns:
    each mapped column as written, the lens angle fixed at 10 deg as the study does."""
    population = _population(path, "csst")
    cat = read_catalogue(path, population, 200)
    plain = _plain_columns(path)
    assert {"best_band", "if_ring"} <= set(plain) or {"best_band0", "if_ring0"} <= set(plain)
    for name, column in CATALOGUE_PRESETS["csst"].items():
        assert cat[name].shape == (200,) and cat[name].dtype == np.float64
        if isinstance(column, str):
            np.testing.assert_array_equal(cat[name], np.array(plain[column], dtype=float))
        else:
            assert np.all(cat[name] == 10.0)
    truth, labels = pop.sample(population, 1, range(200), cat)
    theta_E, q, e1, e2 = labels.T.astype(np.float64)
    np.testing.assert_allclose(theta_E, np.array(plain["thetaE_s0"], float), rtol=1e-7)
    np.testing.assert_allclose(q, np.array(plain["q_l"], float), rtol=1e-7)
    np.testing.assert_allclose(e2 / e1, np.tan(np.deg2rad(20)), rtol=1e-4)   # 10 deg lens
    names = list(TRUTH_NAMES)
    # the source position is relative to the lens centre, as in the table
    np.testing.assert_allclose(truth[:, names.index("source_light.center_x")],
                               np.array(plain["x_s0"], float))
    np.testing.assert_allclose(truth[:, names.index("lens_light.R_sersic")],
                               np.array(plain["re_l"], float))


def test_csst_angles_and_radii_need_no_conversion():
    """Cao et al.'s SIE deflection and Sersic light (SimCsstLens/SimLensImage/MassLightModel.py,
    written out here) at (q, pa) equal lenstronomy's SIE and SERSIC_ELLIPSE at e1, e2 of
    (q, phi = pa): degrees counter-clockwise from +x to the major axis, Einstein and
    half-light radii in the same intermediate-axis convention, arcsec."""
    from lenstronomy.LensModel.lens_model import LensModel
    from lenstronomy.LightModel.light_model import LightModel
    x, y = (c.ravel() for c in np.meshgrid(np.linspace(-2, 2, 41) + 0.013,
                                            np.linspace(-2, 2, 41) + 0.007))

    def rotate(x, y, deg):   # their Util.xy_transform
        p = np.deg2rad(deg)
        return x * np.cos(p) + y * np.sin(p), -x * np.sin(p) + y * np.cos(p)

    q, pa, theta_E = 0.55, 35.0, 1.2
    e1, e2 = (float(v) for v in pop.ellipticity(np.array(q), np.array(pa)))
    xn, yn = rotate(x, y, pa - 90)
    r, f = np.hypot(xn, yn), np.sqrt(1 / q - q)
    ax = np.arcsinh(np.sqrt(1 / q**2 - 1) * xn / r) / f * theta_E
    ay = np.arcsin(np.sqrt(1 - q**2) * yn / r) / f * theta_E
    theirs = rotate(ax, ay, -(pa - 90))
    ours = LensModel(["SIE"]).alpha(x, y, [dict(theta_E=theta_E, e1=e1, e2=e2, center_x=0,
                                                 center_y=0)])
    np.testing.assert_allclose(ours, theirs, atol=1e-6)
    n, re = 1.0, 0.4
    xn, yn = rotate(x, y, pa)
    k = 1.9992 * n - 0.3271   # lenstronomy's b(n); theirs is the exact one (a 0.4% change)
    theirs = np.exp(-k * ((np.sqrt(q * xn**2 + yn**2 / q) / re) ** (1 / n) - 1))
    ours = LightModel(["SERSIC_ELLIPSE"]).surface_brightness(
        x, y, [dict(amp=1, R_sersic=re, n_sersic=n, e1=e1, e2=e2, center_x=0, center_y=0)])
    np.testing.assert_allclose(ours, theirs, rtol=1e-10)


def test_mapping_of_columns_and_constants_and_missing_column(tmp_path):
    path = CSST[0]
    population = _population(path, {"lens_mass.theta_E": "thetaE_s0", "source_light.phi": 45})
    cat = read_catalogue(path, population, 10)
    assert set(cat) == {"lens_mass.theta_E", "source_light.phi"}
    assert np.all(cat["source_light.phi"] == 45.0)
    missing = _population(path, {"lens_mass.theta_E": "theta_E"})
    with pytest.raises(UserError, match=r"no column 'theta_E' \(population.catalogue_columns"
                                        r".lens_mass.theta_E\); its columns: thetaE_s0"):
        read_catalogue(path, missing, 10)
    # a text column mapped to a parameter is refused at its first row, naming the value
    text = _population(path, {"lens_mass.theta_E": "best_band"})
    with pytest.raises(UserError, match=r"row 0 \(line 2\), column 'best_band' "
                                        r"\(lens_mass.theta_E\): 'g' is text, not a number"):
        read_catalogue(path, text, 10)
    flag = _population(path, {"lens_mass.q": "if_ring"})
    with pytest.raises(UserError, match=r"'False' is true/false, not a number; allowed: "
                                        r"values within \(0, 1\]"):
        read_catalogue(path, flag, 10)


@pytest.mark.parametrize("columns, message", [
    ("cst", "'cst' is not a preset; expected one of csst"),
    ({"lens_mass.theta": "a"}, "catalogue_columns.lens_mass.theta: not a population parameter"),
    ({"lens_mass.theta_E": 0}, "catalogue_columns.lens_mass.theta_E: 0 is out of range; "
                               "allowed: values within (0, 100] arcsec"),
    ({"source_light.n_sersic": -1}, "allowed: values within (0, 20]"),
    ({"lens_mass.q": True}, "true is not a column name or a number"),
    ({}, "is not a preset name or a non-empty mapping"),
])
def test_bad_catalogue_columns_are_refused_at_load(columns, message):
    with pytest.raises(UserError) as err:
        _population("x.csv", columns)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_catalogue_columns_need_a_catalogue():
    with pytest.raises(UserError, match="catalogue_columns: given, but population.kind is "
                                        "'parametric'"):
        loads({"population": {"catalogue_columns": "csst"}})


# --------------------------------------------------------------------------- bounds


def _config_keys() -> dict[str, dataclasses.Field]:
    """Every population parameter, walked from the config's own dataclass fields."""
    keys = {}
    for comp in dataclasses.fields(Population):
        if dataclasses.is_dataclass(comp.default_factory if comp.default_factory
                                    is not dataclasses.MISSING else None):
            for f in dataclasses.fields(comp.default_factory):
                keys[f"{comp.name}.{f.name}"] = f
    return keys


KEYS = _config_keys()


def test_the_bounds_table_covers_every_parameter():
    assert set(KEYS) == set(pop.parameter_names(loads(None).population))
    assert len(KEYS) == 19   # 17 parameters, and the magnitudes of the two lights
    for name, f in KEYS.items():
        # a check the catalogue reader could not apply would let values through
        assert f.metadata.get("check") is None or isinstance(f.metadata["check"], Support), name
    assert value_allowed("lens_mass.theta_E") == "values within (0, 100] arcsec"


def _bad_value(f: dataclasses.Field) -> tuple[str, str]:
    """(a good value, a bad value) of config key ``f`` as CSV text."""
    check = f.metadata.get("check")
    if isinstance(check, Support):
        return repr((check.low + check.high) / 2), repr(check.high * 1.5 if check.low == 0
                                                         else check.low)
    return "1.0", repr(2 * PARAM_MAX)


@pytest.mark.parametrize("name", list(KEYS))
def test_every_config_bound_refuses_a_catalogue_value(tmp_path, name):
    """One bad value per key, in a CSV with a text column: the refusal is one line naming
    the file, row, line, column, value and what the config key allows."""
    good, bad = _bad_value(KEYS[name])
    path = tmp_path / "cat.csv"
    rows = [good, good, good, bad, good]
    path.write_text("# a comment\nid,band,c\n" + "".join(f"{i},g,{v}\n" for i, v in enumerate(rows)))
    population = _population(path, {name: "c"})
    assert read_catalogue(path, population, 3)[name].tolist() == [float(good)] * 3
    with pytest.raises(UserError) as err:
        read_catalogue(path, population, 5)
    text = str(err.value)
    assert "\n" not in text
    assert text == (f"catalogue {path} row 3 (line 6), column 'c' ({name}): {bad} is out of "
                    f"range; allowed: {value_allowed(name)}")
    for special in ("nan", "-inf"):
        path.write_text(f"c\n{good}\n{special}\n")
        with pytest.raises(UserError, match=rf"row 1 \(line 3\), column 'c' \({name}\): "
                                            rf"{special} is out of range"):
            read_catalogue(path, population, 2)


@pytest.mark.parametrize("name, value, allowed", [
    ("source_light.R_sersic", -0.1, r"\(0, 100\] arcsec"),
    ("lens_light.n_sersic", -4.0, r"\(0, 20\]"),
    ("lens_mass.theta_E", 100.5, r"\(0, 100\] arcsec"),
])
def test_negative_sersic_and_large_einstein_radius_are_refused(tmp_path, name, value, allowed):
    path = tmp_path / "cat.csv"
    path.write_text(f"{name}\n{value}\n")
    with pytest.raises(UserError, match=rf"row 0 \(line 2\), column '{name}' \({name}\): "
                                        rf"{value} is out of range; allowed: values within {allowed}"):
        read_catalogue(path, loads(None).population, 1)


def test_rows_of_the_wrong_width_are_named(tmp_path):
    path = tmp_path / "cat.csv"
    path.write_text("lens_mass.theta_E,lens_mass.q\n1.0,0.5\n1.2\n")
    with pytest.raises(UserError) as err:
        read_catalogue(path, loads(None).population, 2)
    assert str(err.value) == (f"catalogue {path} row 1 (line 3): 1 fields, too few for the "
                              f"header's 2 columns")
    path.write_text("lens_mass.theta_E\n1.0\n1.0,2.0\n")
    with pytest.raises(UserError, match=r"row 1 \(line 3\): 2 fields, too many"):
        read_catalogue(path, loads(None).population, 2)


def test_hdf5_values_and_types_are_held_to_the_same_bounds(tmp_path):
    path = tmp_path / "cat.h5"
    table = np.zeros(4, dtype=[("te", "f8"), ("ring", "?"), ("band", "S1")])
    table["te"] = [1.0, 2.0, -1.0, 1.0]
    with h5py.File(path, "w") as f:
        f["systems"] = table
    with pytest.raises(UserError, match=r"row 2, column 'te' \(lens_mass.theta_E\): -1.0 is out "
                                        r"of range; allowed: values within \(0, 100\] arcsec"):
        read_catalogue(path, _population(path, {"lens_mass.theta_E": "te"}), 4)
    assert read_catalogue(path, _population(path, {"lens_mass.theta_E": "te"}), 2)[
        "lens_mass.theta_E"].tolist() == [1.0, 2.0]
    with pytest.raises(UserError, match=r"column 'ring' \(lens_mass.q\): the column is "
                                        r"true/false, not numbers"):
        read_catalogue(path, _population(path, {"lens_mass.q": "ring"}), 2)


def test_sample_refuses_a_value_the_config_would_refuse():
    """A catalogue handed to the renderer directly is checked too, before any image."""
    population = loads(None).population
    with pytest.raises(UserError, match=r"item 5, lens_mass.q: 1.5 is out of range"):
        pop.sample(population, 1, range(4, 8), {"lens_mass.q": np.array([0.5] * 5 + [1.5, 0.5, 0.5])})


def test_a_bad_catalogue_never_makes_a_complete_dataset(tmp_path):
    path = tmp_path / "cat.csv"
    lines = ["thetaE_s0,q_l,best_band"] + [f"{0.5 + 0.01 * i},0.8,g" for i in range(19)] + ["0,0.8,g"]
    path.write_text("\n".join(lines) + "\n")
    cfg = write_config(tmp_path / "c.yaml", dataset={"n_images": 20, "shard_size": 10},
                       image={"size": 16},
                       population={"kind": "catalogue", "catalogue": str(path),
                                   "catalogue_columns": {"lens_mass.theta_E": "thetaE_s0",
                                                         "lens_mass.q": "q_l"}})
    out = tmp_path / "ds"
    run = lenshpc("simulate", "--config", cfg, "--out", out, "--no-progress")
    assert run.returncode == 2
    assert run.stderr.strip().splitlines()[-1].endswith(
        f"catalogue {path} row 19 (line 21), column 'thetaE_s0' (lens_mass.theta_E): 0 is out "
        f"of range; allowed: values within (0, 100] arcsec")
    assert not (out / "dataset.done.json").exists() and not (out / "dataset.h5").exists()


def test_csst_catalogue_simulates_with_the_study_split(tmp_path):
    """The public wide-field table end to end: images from its rows, the ordered split
    (the study's: first rows cross-validation, interleaved folds; last rows test)."""
    cfg = write_config(tmp_path / "c.yaml", dataset={"n_images": 24, "shard_size": 12,
                                                     "test_fraction": 0.25, "n_folds": 2,
                                                     "split": "ordered"},
                       image={"size": 32},
                       population={"kind": "catalogue", "catalogue": str(CSST[1]),
                                   "catalogue_columns": "csst"})
    out = tmp_path / "ds"
    lenshpc("simulate", "--config", cfg, "--out", out, "--no-progress", check=True)
    with h5py.File(out / "dataset.h5", "r") as f:
        split, labels = f["split"][...], f["labels"][...]
        assert "split: ordered" in f.attrs["config"] and "catalogue_columns: csst" in f.attrs["config"]
    np.testing.assert_array_equal(split, [0, 1] * 9 + [-1] * 6)
    plain = _plain_columns(CSST[1])
    np.testing.assert_array_equal(labels[:, 0], np.array(plain["thetaE_s0"][:24], float)
                                  .astype(np.float32))
    assert json.loads((out / "dataset.done.json").read_text())
