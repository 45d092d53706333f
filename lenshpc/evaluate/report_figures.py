"""The report's figures (rank 0): the study's figures of docs/method.md section 7 from
predictions.h5's arrays, drawn by :mod:`lenshpc.evaluate.figures`.

PSNR figures use ``evaluate.psnr``: the study's definition (each image clipped to its own
1st-99th percentiles and scaled to [0, 1]) for comparisons with the paper, the MAX = 1
PSNR of the images as stored beside it (``both``) or alone (``max1``); every label says
which.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

import numpy as np

from lenshpc.dataset.columns import TARGETS
from lenshpc.evaluate import disk, figures, metrics
from lenshpc.evaluate.tables import group_by_model, model_fold
from lenshpc.runs import JobFiles
from lenshpc.train.state import read_history

#: Axis labels of the two PSNR definitions (per-item arrays of predictions.h5).
PSNR_DEFINITIONS = {"psnr_study": "the study's definition: each image clipped to its "
                                  "1st-99th percentiles, scaled to [0, 1]",
                    "psnr": "MAX = 1: the images as stored"}


def psnr_arrays(psnr: str) -> list[str]:
    """predictions.h5 arrays of the PSNR definitions ``evaluate.psnr`` shows, the
    headline (compared with the paper) first."""
    return {"study": ["psnr_study"], "max1": ["psnr"], "both": ["psnr_study", "psnr"]}[psnr]


def _pooled(preds: Mapping[str, Mapping[str, Any]], name: str) -> dict[str, np.ndarray]:
    out = {}
    for model, keys in group_by_model(preds).items():
        out[model] = np.concatenate([preds[k][name] for k in keys])
    return out


def typical_system(entry: Mapping[str, Any], name: str = "psnr") -> int:
    """Position (in the test set) of the system whose PSNR (array ``name``) is the median."""
    p = np.asarray(entry[name], dtype=np.float64)
    valid = np.flatnonzero(~np.isnan(p))
    if valid.size == 0:
        return 0
    order = valid[np.argsort(p[valid], kind="stable")]
    return int(order[len(order) // 2])


def make_figures(fig_dir: Path, *, preds, jobs, ds: disk.HeldOutSet, cfg,
                 mc: bool) -> list[tuple[str, str]]:
    """Write every figure; returns (file stem, caption) in report order. Images are read
    through the shards (lenshpc.dataset.index.read_items), never through the virtual dataset."""
    from lenshpc.dataset.index import read_index, read_items
    index = read_index(ds.path, truth=False)
    dpi = cfg.evaluate.dpi
    ds_cfg = ds.config   # the image the test set was made and is re-rendered with
    scale = ds_cfg.image.pixel_scale
    done: list[tuple[str, str]] = []

    def put(fig, name: str, caption: str) -> None:
        figures.save(fig, fig_dir, name, dpi)
        done.append((name, caption))

    labels = index.labels.astype(np.float64)
    n_ex = min(cfg.evaluate.n_examples, len(ds.test_index))
    ex_index = ds.test_index[:n_ex]
    ex_images = read_items(index, ex_index)
    test_mask = np.zeros(len(labels), dtype=bool)
    test_mask[ds.test_index] = True
    put(figures.fig_parameter_distributions(labels, labels[test_mask], TARGETS),
        "fig1_parameter_distributions",
        f"Parameter distributions of the sample ({len(labels)} systems; the test set outlined). "
        "theta_E in arcsec; q, e1, e2 dimensionless.")
    put(figures.fig_example_images(ex_images, labels[ex_index], scale, ex_index.tolist()),
        "fig2_example_images",
        f"The first {n_ex} test images (asinh stretch; axes in arcsec from the image centre).")

    histories: dict[str, list] = {}
    for job in jobs:
        if job.key in preds:
            h = read_history(JobFiles(job.directory).history)
            if h is not None:
                histories.setdefault(job.model, []).append(h)
    if histories:
        put(figures.fig_training_curves(histories, mae_unit=r"mean of $\theta_E$ [arcsec], $q, e_1, e_2$"),
            "fig3_training_curves",
            "Training and validation loss (weighted MSE of standardised targets) and MAE "
            "(mean over theta_E [arcsec], q, e1, e2) per epoch from history.csv: mean over "
            "folds, band +-1 standard deviation.")

    shown = psnr_arrays(cfg.evaluate.psnr)
    headline = shown[0]
    which = "; ".join(f"{panel}: {PSNR_DEFINITIONS[n]}" for panel, n in zip(
        ("top", "bottom") if len(shown) > 1 else ("PSNR",), shown, strict=True))
    put(figures.fig_psnr_distributions({PSNR_DEFINITIONS[n]: _pooled(preds, n) for n in shown}),
        "fig4_psnr_distributions",
        "PSNR of every test image re-rendered from its predicted theta_E, e1, e2, per model "
        f"(all folds); dashed lines: medians. {which[0].upper() + which[1:]}"
        + (" (the one to compare with the paper)" if "psnr_study" in shown else "")
        + ". Perfect re-renders (infinite PSNR) are counted in the legend and left out of "
        "the histogram.")

    from lenshpc.evaluate.scoring import reference_images, rerender
    from lenshpc.simulate.render import Renderer
    renderer = Renderer(ds_cfg.image)
    first: dict[str, str] = {}
    for key in preds:
        first.setdefault(model_fold(key)[0], key)
    pos = typical_system(preds[next(iter(first.values()))], headline)
    stored = read_items(index, [int(ds.test_index[pos])])[0]
    true_image = reference_images(renderer, ds.truth_names, ds.truth_test[pos:pos + 1],
                                  stored[None], ds_cfg.image.noise)[0]
    tag = "study" if headline == "psnr_study" else "MAX=1"
    predicted = {}
    for model, key in first.items():
        img, _ = rerender(renderer, ds.truth_names, ds.truth_test[pos], preds[key]["pred"][pos],
                          cfg.evaluate.theta_E_min, cfg.evaluate.max_ellipticity)
        predicted[f"{model} fold {model_fold(key)[1]}: PSNR ({tag}) "
                  f"{preds[key][headline][pos]:.1f} dB"] = \
            img if img is not None else np.zeros_like(true_image)
    item = int(ds.test_index[pos])
    t = ds.true_test[pos]
    put(figures.fig_triptych(true_image, predicted, scale,
                       rf"Test system #{item} ($\theta_E$={t[0]:.2f}$''$, $q$={t[1]:.2f}) "
                       "re-rendered from each model's predicted parameters"),
        "fig5_true_predicted_residual",
        f"One test system (#{item}, the median-PSNR system of {next(iter(first.values()))}, "
        f"by PSNR, {PSNR_DEFINITIONS[headline]}): true image, image re-rendered from each model's "
        "predicted parameters, residual; asinh stretch, axes in arcsec.")

    true_p, pred_p = _pooled(preds, "true"), _pooled(preds, "pred")
    r2 = {m: [metrics.r2(true_p[m][:, j], pred_p[m][:, j]) for j in range(len(TARGETS))] for m in pred_p}
    folds = {m: np.concatenate([np.full(len(preds[k]["pred"]), model_fold(k)[1]) for k in keys])
             for m, keys in group_by_model(preds).items()}
    put(figures.fig_predicted_vs_true(true_p, pred_p, folds, TARGETS, r2), "fig6_predicted_vs_true",
        "Predicted vs true parameters of the test set, all folds pooled, with the 1:1 line "
        "(R² of the pooled points).")

    n_p = range(len(TARGETS))
    floor = cfg.evaluate.rel_err_floor
    rel = {m: [metrics.relative_error(true_p[m][:, j], pred_p[m][:, j]) for j in n_p]
           for m in pred_p}
    scaled = {m: [metrics.scaled_error(true_p[m][:, j], pred_p[m][:, j]) for j in n_p]
              for m in pred_p}
    below = {m: [metrics.n_below_floor(true_p[m][:, j], floor) for j in n_p] for m in pred_p}
    put(figures.fig_relative_error_boxes(rel, TARGETS, scaled, below, floor),
        "fig7_relative_error_boxes",
        "Top: relative errors |pred - true| / |true| (the study's definition) per parameter "
        "and model, all folds pooled; items with true value exactly 0 have none. Bottom: "
        "|pred - true| / std(true), an error that does not divide by each item's truth. "
        f"Panel titles count the items with |true| < {floor:g} (per model), whose relative "
        "errors are mostly small denominators (e1, e2 -> 0 as q -> 1); they stay in both "
        "rows. Boxes span the quartiles, whiskers the 5th-95th percentiles, the median is "
        "written on top.")

    if mc:
        std_p = _pooled(preds, "pred_std")
        no_dropout = sorted({model_fold(k)[0] for k in preds
                             if not preds[k]["attrs"].get("mc_has_dropout", True)})
        put(figures.fig_calibration(true_p, pred_p, std_p, TARGETS, no_dropout), "fig8_calibration",
            "MC-dropout calibration: fraction of true values inside the predicted +-k sigma "
            "interval against the Gaussian expectation (points: 1 and 2 sigma).")
    return done
