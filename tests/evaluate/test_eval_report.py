"""``lenshpc evaluate`` as a user runs it: the products in REPORT, with and without MC dropout."""

from __future__ import annotations

import csv
import math

import h5py
import numpy as np
import pytest

from lenshpc.dataset.columns import TARGETS

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
            assert g["psnr_study"].shape == g["ssim"].shape == g["ssim_ring"].shape == (n,)
            assert np.all(np.isfinite(g["psnr_study"][...]))
            assert np.all(np.abs(g["ssim"][...]) <= 1) and np.all(np.abs(g["ssim_ring"][...]) <= 1)
            assert g.attrs["normalize"] == "max"           # run.json records none yet: max
            assert "pred_std" not in g
            # true values are the labels (theta_E, e1, e2 at float64 precision)
            np.testing.assert_allclose(g["true"][...], labels[test_items], rtol=1e-6, atol=1e-7)
            assert np.all(np.isfinite(g["pred"][...]))
            assert np.all(g["mse"][...] >= 0) and not np.any(np.isnan(g["psnr"][...]))

    rows = read_csv(out / "metrics.csv")
    assert list(rows[0]) == ["model", "fold", "parameter", "mae", "r2", "bias", "median_bias",
                             "sigma", "nmad", "rel_err_median", "rel_err_p90",
                             "scaled_err_median", "scaled_err_p90", "n_below_floor", "n",
                             "test_loss"]
    assert [(r["model"], r["fold"], r["parameter"]) for r in rows] == [
        (k.split("/")[0], k.split("-")[1], p) for k in EVALUATED for p in TARGETS]
    assert all(int(r["n"]) == len(test_items) for r in rows)
    assert all(float(r["mae"]) > 0 and float(r["nmad"]) >= 0 for r in rows)

    psnr = read_csv(out / "psnr.csv")
    assert list(psnr[0]) == ["model", "fold", "psnr_median", "psnr_mean", "mse_mean", "n", "n_inf",
                             "psnr_study_median", "psnr_study_mean", "ssim_median",
                             "ssim_ring_median"]
    assert len(psnr) == len(EVALUATED)
    assert all(math.isfinite(float(r["psnr_median"])) for r in psnr)
    with h5py.File(out / "predictions.h5", "r") as f:
        for r, key in zip(psnr, EVALUATED, strict=True):
            assert float(r["psnr_study_median"]) == np.median(f[key]["psnr_study"][...])
            assert float(r["ssim_ring_median"]) == np.median(f[key]["ssim_ring"][...])

    for name in FIGURES:
        for ext, magic in (("png", b"\x89PNG"), ("pdf", b"%PDF")):
            path = out / "figures" / f"{name}.{ext}"
            assert path.stat().st_size > 5000, path
            assert path.read_bytes()[:4] == magic
    assert not (out / "figures" / "fig8_calibration.png").exists()
    assert not list(out.glob(".*tmp*")) and not list((out / "figures").glob(".*tmp*"))


def test_table1_has_every_model_of_the_debug_run(plain_report):
    _, out = plain_report
    md = (out / "table1.md").read_text().split("\n\n")
    part_a, part_b = md[0].splitlines(), md[1].splitlines()
    assert part_a[0] == ("| model | folds | min val. loss | min val. MAE | test wMSE (phys.) | "
                         "PSNR median, study [dB] | PSNR median, MAX=1 [dB] | SSIM median | "
                         "ring SSIM median |")
    assert [line.split("|")[1].strip() for line in part_a[2:]] == ["model1", "model2", "model3"]
    assert " ± " in part_a[2]                            # model1: 2 folds, mean ± std
    assert part_b[0].startswith("| model | parameter | R² | median rel. err. [%] |")
    assert [tuple(c.strip() for c in line.split("|")[1:3]) for line in part_b[2:]] == [
        (m, p) for m in ("model1", "model2", "model3") for p in TARGETS]
    rows = read_csv(out / "table1.csv")
    assert [r["model"] for r in rows] == ["model1", "model2", "model3"]
    assert [r["n_folds"] for r in rows] == ["2", "1", "1"]
    assert {"val_loss_min_mean", "val_loss_min_std", "val_mae_min_mean", "test_wmse_phys_mean",
            "r2_theta_E_mean", "rel_err_median_e2_std", "nmad_q_mean", "bias_e1_mean",
            "sigma_theta_E_std", "rel_err_p90_theta_E_mean", "n_below_floor_e2_mean",
            "psnr_median_mean", "psnr_study_median_mean", "ssim_median_mean",
            "ssim_ring_median_std", "overrides"} <= set(rows[0])
    assert all(r["overrides"] == "" for r in rows)             # no variant in the config
    assert "Variants" not in (out / "table1.md").read_text()
    assert "loss_mean" not in rows[0] and "mae_mean" not in rows[0]
    tex = (out / "table1.tex").read_text()
    assert tex.count(r"\toprule") == 2 and r"\pm" in tex
    assert tex.count(r"\\") == 3 + 1 + 12 + 1          # rows + header of each table


def test_table1_minima_come_from_history_csv(plain_report, eval_runs):
    from lenshpc.train.state import read_history
    _, out = plain_report
    rows = {r["model"]: r for r in read_csv(out / "table1.csv")}
    for model, folds in (("model1", (0, 1)), ("model2", (0,))):
        mins = [read_history(eval_runs / model / f"fold-{k}" / "history.csv") for k in folds]
        for col in ("val_loss", "val_mae"):
            values = [float(np.min(h[col])) for h in mins]
            assert float(rows[model][f"{col}_min_mean"]) == np.mean(values)
            assert float(rows[model][f"{col}_min_std"]) == np.std(values)


def test_physical_weighted_mse_and_floor_counts_match_a_direct_computation(plain_report):
    _, out = plain_report
    rows = {r["model"]: r for r in read_csv(out / "table1.csv")}
    with h5py.File(out / "predictions.h5", "r") as f:
        true, pred = f["model2/fold-0"]["true"][...], f["model2/fold-0"]["pred"][...]
    direct = np.mean(1 * (pred[:, 0] - true[:, 0]) ** 2 + 1 * (pred[:, 1] - true[:, 1]) ** 2
                     + 3 * (pred[:, 2] - true[:, 2]) ** 2 + 3 * (pred[:, 3] - true[:, 3]) ** 2)
    assert float(rows["model2"]["test_wmse_phys_mean"]) == pytest.approx(direct, rel=1e-12)
    for j, p in enumerate(TARGETS):
        assert float(rows["model2"][f"n_below_floor_{p}_mean"]) == np.sum(np.abs(true[:, j]) < 0.01)
    metrics = [r for r in read_csv(out / "metrics.csv") if r["model"] == "model2"]
    assert {r["test_loss"] for r in metrics} and len({r["test_loss"] for r in metrics}) == 1


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
    assert "**Tied labels.**" in text and "e1 and e2 are functions of q" in text
    assert "1st-99th percentiles" in text and "`evaluate.psnr: both`" in text
    assert "study's definition: each image clipped" in text     # the figures say which PSNR
    assert "the one to compare with the paper" in text
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
