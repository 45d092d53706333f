"""``lenshpc evaluate`` as a user runs it: the products in REPORT, with and without MC dropout."""

from __future__ import annotations

import csv
import math

import h5py
import numpy as np

from lenshpc.config.train import TARGETS

FIGURES = ("fig1_parameter_distributions", "fig2_example_images", "fig3_training_curves",
           "fig4_psnr_distributions", "fig5_true_predicted_residual", "fig6_predicted_vs_true",
           "fig7_relative_error_boxes")
EVALUATED = ("model1/fold-0", "model1/fold-1", "model2/fold-0", "model3/fold-0")


def read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_products_of_a_plain_run(plain_report, eval_data):
    proc, out = plain_report
    for name in ("predictions.h5", "metrics.csv", "psnr.csv", "table1.csv", "table1.md",
                 "table1.tex", "report.md"):
        assert (out / name).stat().st_size > 0, name
    assert not (out / "coverage.csv").exists()
    with h5py.File(eval_data / "dataset.h5", "r") as f:
        test_items = np.flatnonzero(f["split"][...] == -1)
        labels = f["labels"][...]
    with h5py.File(out / "predictions.h5", "r") as f:
        keys = [f"{m}/{k}" for m in f for k in f[m]]
        assert keys == list(EVALUATED)
        for key in keys:
            g = f[key]
            n = len(test_items)
            np.testing.assert_array_equal(g["index"][...], test_items)
            assert g["true"].shape == g["pred"].shape == (n, 4)
            assert g["psnr"].shape == g["mse"].shape == (n,)
            assert "pred_std" not in g
            # true values are the labels (theta_E, e1, e2 at float64 precision)
            np.testing.assert_allclose(g["true"][...], labels[test_items], rtol=1e-6, atol=1e-7)
            assert np.all(np.isfinite(g["pred"][...]))
            assert np.all(g["mse"][...] >= 0) and not np.any(np.isnan(g["psnr"][...]))

    rows = read_csv(out / "metrics.csv")
    assert list(rows[0]) == ["model", "fold", "parameter", "mae", "r2", "bias", "median_bias",
                             "sigma", "nmad", "rel_err_median", "rel_err_p90", "n"]
    assert [(r["model"], r["fold"], r["parameter"]) for r in rows] == [
        (k.split("/")[0], k.split("-")[1], p) for k in EVALUATED for p in TARGETS]
    assert all(int(r["n"]) == len(test_items) for r in rows)
    assert all(float(r["mae"]) > 0 and float(r["nmad"]) >= 0 for r in rows)

    psnr = read_csv(out / "psnr.csv")
    assert list(psnr[0])[:6] == ["model", "fold", "psnr_median", "psnr_mean", "mse_mean", "n"]
    assert len(psnr) == len(EVALUATED)
    assert all(math.isfinite(float(r["psnr_median"])) for r in psnr)

    for name in FIGURES:
        for ext, magic in (("png", b"\x89PNG"), ("pdf", b"%PDF")):
            path = out / "figures" / f"{name}.{ext}"
            assert path.stat().st_size > 5000, path
            assert path.read_bytes()[:4] == magic
    assert not (out / "figures" / "fig8_calibration.png").exists()
    assert not list(out.glob(".*tmp*")) and not list((out / "figures").glob(".*tmp*"))


def test_table1_has_every_model_of_the_debug_run(plain_report):
    _, out = plain_report
    md = (out / "table1.md").read_text().splitlines()
    assert md[0].startswith("| model | folds | loss | MAE | R² theta_E")
    assert [line.split("|")[1].strip() for line in md[2:]] == ["model1", "model2", "model3"]
    assert " ± " in md[2]                                # model1: 2 folds, mean ± std
    rows = read_csv(out / "table1.csv")
    assert [r["model"] for r in rows] == ["model1", "model2", "model3"]
    assert [r["n_folds"] for r in rows] == ["2", "1", "1"]
    assert {"loss_mean", "loss_std", "mae_mean", "r2_theta_E_mean", "rel_err_median_e2_std",
            "psnr_median_mean"} <= set(rows[0])
    tex = (out / "table1.tex").read_text()
    assert tex.count(r"\\") == 4 and r"\pm" in tex and r"\toprule" in tex


def test_report_lists_jobs_figures_and_provenance(plain_report, eval_data):
    proc, out = plain_report
    text = (out / "report.md").read_text()
    checksum = h5py.File(eval_data / "dataset.h5", "r").attrs["checksum"]
    assert checksum in text
    assert "model2/fold-1: unfinished" in text and "model3/fold-1: missing" in text
    for key in EVALUATED:
        assert f"| {key} |" in text
    positions = [text.index(f"figures/{name}.png") for name in FIGURES]
    assert positions == sorted(positions)
    assert "## Table 1" in text and "tensorflow (train)" in text and "```yaml" in text
    # skipped jobs are also said on the terminal
    assert "skipping model2/fold-1: unfinished" in proc.stdout
    assert "skipping model3/fold-1: missing" in proc.stdout


def test_mc_dropout_spread_coverage_and_calibration(mc_report):
    _, out = mc_report
    with h5py.File(out / "predictions.h5", "r") as f:
        for key in EVALUATED:
            std = f[key]["pred_std"][...]
            assert std.shape == (len(f[key]["index"]), 4)
            if key.startswith("model3"):                     # no dropout: zero spread
                assert np.all(std == 0) and not f[key].attrs["mc_has_dropout"]
            else:
                assert np.all(std[:, 0] > 0) and f[key].attrs["mc_has_dropout"]
    cov = read_csv(out / "coverage.csv")
    assert len(cov) == len(EVALUATED) * 4
    for r in cov:
        assert 0 <= float(r["coverage_1sigma"]) <= float(r["coverage_2sigma"]) <= 1
    text = (out / "report.md").read_text()
    assert "## MC-dropout coverage" in text and "Models without dropout (model3)" in text
    assert (out / "figures" / "fig8_calibration.png").stat().st_size > 5000
    assert (out / "figures" / "fig8_calibration.pdf").stat().st_size > 5000
    assert "figures/fig8_calibration.png" in text
