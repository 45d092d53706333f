"""lenshpc predict end to end: real trained runs, FITS cutouts written by the tests, real
mpirun; the same catalogue on 1 and 2 ranks; flags; refusals in one line."""

from __future__ import annotations

import json

import numpy as np
from astropy.io import fits
from astropy.table import Table

from lenshpc.io import file_sha256
from tests.conftest import lenshpc, mpirun
from tests.predict.conftest import SCALE, SIZE, render, wcs_header

NUMBERS = [f"{p}_{s}" for p in ("theta_E", "q", "e1", "e2")
           for s in ("mean", "std", "p16", "p50", "p84")]


def _predict(n: int, cfg, runs, out, *inputs, extra=()):
    args = ("predict", "--config", cfg, "--runs", runs, "--out", out, "--mc-samples", "4",
            "--no-progress", *extra, *inputs)
    if n == 1:
        return lenshpc(*args, timeout=600, check=True)
    return mpirun(n, *args, timeout=600)


def test_same_catalogue_on_1_and_2_ranks_with_flags(trained, cutouts, tmp_path):
    cfg, runs = trained
    one, two = tmp_path / "one.fits", tmp_path / "two.fits"
    _predict(1, cfg, runs, one, cutouts)
    _predict(2, cfg, runs, two, cutouts)
    a, b = Table.read(one, mask_invalid=False), Table.read(two, mask_invalid=False)
    assert list(a["source"]) == list(b["source"])
    for col in NUMBERS + ["flag"]:
        np.testing.assert_array_equal(a[col], b[col], err_msg=col)
    assert len(a) == 3 + 3 + 1
    flags = {str(s).split("/")[-1]: int(f) for s, f in zip(a["source"], a["flag"], strict=True)}
    assert flags["cube.fits[0][1]"] & 1                      # NAN
    assert flags["small.fits[0]"] & 2                        # SIZE: not predicted
    assert not flags["single-2.fits[0]"] & (1 | 2)           # 40 px, centre-cropped
    small = [i for i, s in enumerate(a["source"]) if "small" in s][0]
    assert np.isnan(a["theta_E_mean"][small])
    ok = [i for i in range(len(a)) if i != small]
    assert np.isfinite(np.array([a[c][ok] for c in NUMBERS])).all()
    assert (a["theta_E_std"][ok] > 0).all()                  # 4 dropout passes differ
    assert (a["theta_E_p16"][ok] <= a["theta_E_p84"][ok]).all()
    prov = json.loads(a.meta["PROVJSON"])
    model = runs / "model1" / "fold-0" / "model.keras"
    assert prov["models"]["model1/fold-0"]["sha256"] == file_sha256(model)
    assert prov["inputs"][str(cutouts / "cube.fits")] == file_sha256(cutouts / "cube.fits")
    assert prov["mc_samples"] == 4 and a.meta["LENSHPC"]
    assert not list(tmp_path.glob(".*partial*"))             # partial files removed


def test_csv_and_mosaic(trained, tmp_path):
    """A mosaic with positions (one at the edge), written as CSV."""
    cfg, runs = trained
    mosaic = np.zeros((120, 120))
    mosaic[44:76, 44:76] = render(SIZE, SCALE, 1.0, 3)
    fits.PrimaryHDU(mosaic, header=wcs_header(120, SCALE)).writeto(tmp_path / "mosaic.fits")
    from astropy.wcs import WCS
    w = WCS(wcs_header(120, SCALE))
    ra, dec = w.pixel_to_world_values([59.5, 5.0], [59.5, 60.0])
    Table({"RA": ra, "Dec": dec}).write(tmp_path / "pos.csv")
    out = tmp_path / "mosaic.csv"
    _predict(1, cfg, runs, out, extra=("--image", tmp_path / "mosaic.fits",
                                       "--positions", tmp_path / "pos.csv"))
    t = Table.read(out, format="ascii.ecsv")
    assert len(t) == 2 and not t["flag"][0] & 4 and t["flag"][1] & 4   # EDGE
    assert t["flag"][1] & 1                                            # missing pixels: NAN


def test_resume_reuses_finished_chunks(trained, cutouts, tmp_path):
    """A chunk a killed run saved (under the same inputs, models and settings) is reused,
    not predicted again: here a planted chunk 0 with recognisable numbers."""
    from lenshpc.predict import catalogue
    cfg, runs = trained
    out = tmp_path / "cat.fits"
    _predict(1, cfg, runs, out, cutouts)
    first = Table.read(out, mask_invalid=False)
    folder = catalogue.partial_dir(out, catalogue.provenance_key(json.loads(first.meta["PROVJSON"])))
    planted = np.full((3, 4, 5), 7.0)
    catalogue.save_chunk(folder, 0, planted, np.zeros(3, np.int32))
    out.unlink()
    proc = _predict(1, cfg, runs, out, cutouts)
    assert "3 reused from an interrupted run" in proc.stdout
    again = Table.read(out, mask_invalid=False)
    assert (np.array([again[c][:3] for c in NUMBERS]) == 7.0).all()
    for col in NUMBERS:
        np.testing.assert_array_equal(again[col][3:], first[col][3:])
    assert not folder.exists()


def test_wrong_pixel_scale_refused_in_one_line(trained, tmp_path):
    cfg, runs = trained
    path = tmp_path / "wide.fits"
    fits.PrimaryHDU(render(SIZE, 0.1, 1.0, 1), header=wcs_header(SIZE, 0.1)).writeto(path)
    proc = lenshpc("predict", "--config", cfg, "--runs", runs, "--out", tmp_path / "x.fits", path)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "0.1 arcsec" in lines[0] and "0.074 arcsec" in lines[0], lines
    assert str(path) in lines[0] and "--resample" in lines[0]
    assert not (tmp_path / "x.fits").exists()
    # --resample makes it an explicit choice, recorded in the header and the flag
    ok = lenshpc("predict", "--config", cfg, "--runs", runs, "--out", tmp_path / "x.fits",
                 "--resample", "--mc-samples", "0", path, check=True)
    assert ok.returncode == 0
    t = Table.read(tmp_path / "x.fits")
    assert t.meta["RESAMPLE"] and t["flag"][0] & 16


def test_non_fits_refused_in_one_line(trained, tmp_path):
    cfg, runs = trained
    bad = tmp_path / "notes.fits"
    bad.write_text("not a FITS file\n")
    proc = lenshpc("predict", "--config", cfg, "--runs", runs, "--out", tmp_path / "x.fits", bad)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1 and str(bad) in lines[0], proc.stderr
    text = tmp_path / "notes.txt"
    text.write_text("hello\n")
    proc = lenshpc("predict", "--config", cfg, "--runs", runs, "--out", tmp_path / "x.fits", text)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1 and str(text) in lines[0], proc.stderr
