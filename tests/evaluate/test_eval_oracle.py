"""An oracle job whose predictions are the truth, through the evaluate path in-process.

A Keras model cannot know the truth of an image, so the oracle sits at the level of
predictions: its "model" is a lookup of the dataset's true values. Everything after
the prediction is the real code: the re-render with the predicted theta_E, e1, e2
(the simulate renderer), MSE/PSNR, predictions.h5, metrics, Table 1, figures, report.
pytest turns every numpy or matplotlib warning into an error here, so "handled"
means: no warning, no crash, inf reported, kept out of the means.
"""

from __future__ import annotations

import csv
import json
import math

import h5py
import numpy as np
import pytest

from lenshpc.config import load
from lenshpc.dataset.columns import TARGETS
from lenshpc.evaluate import disk, report, run, scoring, tables
from lenshpc.simulate.render import Renderer
from tests.conftest import lenshpc, write_config


def read_images(ds) -> np.ndarray:
    with h5py.File(ds.path, "r") as f:
        return f["images"][ds.test_index]


def _entry(ds, pred, renderer, key, scores=None):
    images = read_images(ds)
    scores = scores or scoring.score_chunk(renderer, ds.truth_names, ds.truth_test, pred, images,
                                       1e-3, 0.9)
    model, fold = key.split("/")
    return {"index": ds.test_index, "true": ds.true_test, "pred": pred, **scores,
            "attrs": {"model": model, "fold": int(fold[5:]), "job": 0,
                      "run_json": json.dumps({"target_std": np.std(ds.true_test, axis=0).tolist(),
                                              "loss_weights": [1, 1, 3, 3]}),
                      "model_checksum": "oracle", "dataset_checksum": ds.checksum,
                      "settings": "{}"}}


def test_oracle_job_zero_errors_r2_one_infinite_psnr(tmp_path, eval_cfg, eval_data):
    ds = disk.read_held_out(eval_data)
    ds_cfg = ds.config
    renderer = Renderer(ds_cfg.image)
    oracle = ds.true_test.copy()          # the lookup: predictions are the true values

    entry = _entry(ds, oracle, renderer, "oracle/fold-0")
    assert np.all(entry["mse"] == 0) and np.all(np.isinf(entry["psnr"]))
    assert np.all(np.isinf(entry["psnr_study"]))
    assert np.all(entry["ssim"] == pytest.approx(1.0)) and np.all(entry["ssim_ring"] == pytest.approx(1.0))
    assert not entry["clamped"].any()

    for row in tables.job_metrics_rows("oracle/fold-0", entry):
        for name in ("mae", "bias", "median_bias", "sigma", "nmad", "rel_err_median", "rel_err_p90",
                     "test_loss"):
            assert row[name] == 0.0, (row["parameter"], name)
        assert row["r2"] == 1.0
    p = tables.psnr_row("oracle/fold-0", entry)
    assert p["psnr_median"] == math.inf and math.isnan(p["psnr_mean"]) and math.isnan(p["mse_mean"])
    assert p["n_inf"] == p["n"] == len(ds.test_index)
    summary = tables.job_summary(entry, history=None)
    assert summary["test_wmse_phys"] == 0.0 and summary["psnr_median"] == math.inf
    assert all(summary[f"r2_{p}"] == 1.0 and summary[f"rel_err_median_{p}"] == 0.0 for p in TARGETS)
    assert math.isnan(summary["val_loss_min"])          # no history.csv: no curve minima

    # A second oracle fold and a slightly wrong model beside it, through the whole report.
    rng = np.random.default_rng(0)
    wrong = oracle.copy()
    wrong[:, 0] += rng.normal(0, 0.01, len(wrong))        # theta_E off by ~0.01 arcsec
    preds = {"oracle/fold-0": entry, "oracle/fold-1": _entry(ds, oracle, renderer, "oracle/fold-1"),
             "offset/fold-0": _entry(ds, wrong, renderer, "offset/fold-0")}
    assert np.all(np.isfinite(preds["offset/fold-0"]["psnr"]))
    out = tmp_path / "report"
    out.mkdir()
    disk.write_predictions(out / disk.PREDICTIONS, preds, reuse=set(), root_attrs={})
    jobs = []
    for key in preds:
        model, fold = key.split("/")
        d = tmp_path / "runs" / key
        d.mkdir(parents=True)
        jobs.append(disk.JobRun(model, int(fold[5:]), 0, d, {"p1": 0.0, "p2": 0.0}))
    cfg = load(eval_cfg)
    outcome = run.Outcome(evaluated=list(preds), reused=[], n_ranks=1, work_seconds=1.0,
                          cpu_seconds=1.0, n_images=0)
    report.write_all(out, cfg=cfg, ds=ds, jobs=jobs, skipped=[],
                     runs_dir=tmp_path / "runs", data_dir=eval_data, mc_samples=0, outcome=outcome)

    with open(out / "table1.csv", newline="") as f:
        t1 = {r["model"]: r for r in csv.DictReader(f)}
    assert t1["oracle"]["psnr_median_mean"] == "inf" and t1["oracle"]["test_wmse_phys_mean"] == "0.0"
    assert t1["oracle"]["psnr_study_median_mean"] == "inf"
    assert math.isfinite(float(t1["offset"]["psnr_study_median_mean"]))
    assert all(float(t1["oracle"][f"r2_{p}_mean"]) == 1.0 for p in TARGETS)
    assert math.isfinite(float(t1["offset"]["psnr_median_mean"]))
    md = (out / "table1.md").read_text()
    assert "| oracle | 2 |" in md and "inf" in md
    assert r"$\infty$" in (out / "table1.tex").read_text()
    with open(out / "psnr.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert rows[0]["psnr_median"] == "inf" and rows[0]["psnr_mean"] == "nan"
    assert rows[0]["psnr_study_median"] == "inf" and rows[0]["psnr_study_mean"] == "nan"
    assert (out / "figures" / "fig4_psnr_distributions.png").stat().st_size > 5000
    assert "perfect re-renders" in (out / "report.md").read_text()


def test_reference_image_with_noise_is_the_noise_free_render(tmp_path):
    """Noise on: PSNR compares with the noise-free render of the truth, not the noisy image."""
    cfg = write_config(tmp_path / "noisy.yaml", image={"size": 32, "background_rms": 0.05},
                       dataset={"n_images": 24, "test_fraction": 0.25, "n_folds": 2, "shard_size": 24})
    lenshpc("simulate", "--config", cfg, "--out", tmp_path / "noisy", "--no-progress", check=True)
    ds = disk.read_held_out(tmp_path / "noisy")
    ds_cfg = ds.config
    assert ds_cfg.image.noise
    renderer = Renderer(ds_cfg.image)
    stored = read_images(ds)
    ref = scoring.reference_images(renderer, ds.truth_names, ds.truth_test, stored, noise=True)
    assert ref.shape == stored.shape and not np.array_equal(ref, stored)
    scores = scoring.score_chunk(renderer, ds.truth_names, ds.truth_test, ds.true_test, ref, 1e-3, 0.9)
    assert np.all(np.isinf(scores["psnr"]))                 # the oracle is perfect again
    # against the noisy image the oracle would score about 10 log10(1 / rms^2) ~ 26 dB
    noisy = scoring.score_chunk(renderer, ds.truth_names, ds.truth_test, ds.true_test, stored, 1e-3, 0.9)
    assert np.all(noisy["psnr"] < 40)


@pytest.mark.parametrize("pred, expect", [
    ((1.0, 0.8, 0.1, 0.05), (1.0, 0.1, 0.05, False)),
    ((-0.3, 0.8, 0.1, 0.05), (1e-3, 0.1, 0.05, True)),
    ((float("nan"), 0.8, 0.1, 0.05), (1e-3, 0.1, 0.05, True)),
    ((1.0, 0.1, 1.2, 1.6), (1.0, 0.9 * 0.6, 0.9 * 0.8, True)),
    ((1.0, 0.1, float("inf"), 0.0), (1.0, 0.0, 0.0, True)),
])
def test_predictions_are_moved_into_the_renderable_domain(pred, expect):
    got = scoring.renderable(pred[0], pred[2], pred[3], 1e-3, 0.9)
    assert got[:3] == pytest.approx(expect[:3]) and got[3] is expect[3]
