"""Writers of REPORT (rank 0, after the MPI part): CSV tables, Table 1, figures, report.md.

The numbers come from :mod:`lenshpc.evaluate.tables` (pure rows and formatting); the
drawings from :mod:`lenshpc.evaluate.figures`. Table 1 follows the study (see
``tables``): minima of the validation curves, the test-set weighted MSE in physical
units, and per parameter R², relative errors, NMAD, bias and sigma.
"""

from __future__ import annotations

import platform
import time
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from lenshpc import __version__
from lenshpc.config.train import TARGETS
from lenshpc.evaluate import figures, metrics, store
from lenshpc.evaluate.tables import (
    COVERAGE_COLUMNS,
    METRICS_CSV_COLUMNS,
    PSNR_COLUMNS,
    coverage_rows,
    csv_text,
    fmt_number,
    fmt_pm,
    group_by_model,
    job_metrics_rows,
    job_summary,
    md_table,
    model_fold,
    psnr_row,
    table1_csv,
    table1_latex,
    table1_markdown,
    table1_rows,
)
from lenshpc.io import atomic_write_text
from lenshpc.train.record import devices_summary
from lenshpc.train.state import JobFiles, read_history

UNITS = {"theta_E": "arcsec", "q": "", "e1": "", "e2": ""}


def _pooled(preds: Mapping[str, Mapping[str, Any]], name: str) -> dict[str, np.ndarray]:
    out = {}
    for model, keys in group_by_model(preds).items():
        out[model] = np.concatenate([preds[k][name] for k in keys])
    return out


def typical_system(entry: Mapping[str, Any]) -> int:
    """Position (in the test set) of the system whose PSNR is closest to the median."""
    p = np.asarray(entry["psnr"], dtype=np.float64)
    valid = np.flatnonzero(~np.isnan(p))
    if valid.size == 0:
        return 0
    order = valid[np.argsort(p[valid], kind="stable")]
    return int(order[len(order) // 2])


# --------------------------------------------------------------------------- the report


def write_all(out_dir: Path, *, cfg, ds: store.DatasetInfo, ds_cfg, jobs, skipped,
              runs_dir: Path, data_dir: Path, mc_samples: int, outcome) -> list[Path]:
    """Every product of REPORT from predictions.h5: tables, figures, report.md. Returns
    the files written (for the completion marker); figures of an earlier report that
    this one does not draw are removed."""
    written: list[Path] = []

    def write(name: str, text: str) -> None:
        atomic_write_text(out_dir / name, text)
        written.append(out_dir / name)

    preds = store.read_predictions(out_dir / store.PREDICTIONS)
    keys = [j.key for j in jobs if j.key in preds]
    preds = {k: preds[k] for k in keys}

    floor = cfg.evaluate.rel_err_floor
    metric_rows = [r for k in keys for r in job_metrics_rows(k, preds[k], floor)]
    write("metrics.csv", csv_text(metric_rows, METRICS_CSV_COLUMNS))
    p_rows = [psnr_row(k, preds[k]) for k in keys]
    write("psnr.csv", csv_text(p_rows, PSNR_COLUMNS))

    directories = {j.key: j.directory for j in jobs}
    summaries = {k: job_summary(preds[k], read_history(JobFiles(directories[k]).history), floor)
                 for k in keys}
    t1 = table1_rows(summaries)
    caption = (f"{cfg.name}: Table 1, mean +- standard deviation over folds "
               f"({len(ds.test_index)} test systems).")
    write("table1.csv", table1_csv(t1))
    write("table1.md", table1_markdown(t1))
    write("table1.tex", table1_latex(t1, caption))

    mc = bool(mc_samples) and all("pred_std" in preds[k] for k in keys)
    cov_rows = [r for k in keys for r in coverage_rows(k, preds[k])] if mc else []
    if mc:
        write("coverage.csv", csv_text(cov_rows, COVERAGE_COLUMNS))
    else:
        (out_dir / "coverage.csv").unlink(missing_ok=True)

    fig_dir = out_dir / "figures"
    figs = make_figures(fig_dir, preds=preds, jobs=jobs, ds=ds, ds_cfg=ds_cfg,
                        cfg=cfg, mc=mc) if cfg.evaluate.figures else []
    drawn = {fig_dir / f"{name}.{ext}" for name, _ in figs for ext in ("png", "pdf")}
    for old in fig_dir.glob("fig*.*") if fig_dir.is_dir() else []:
        if old not in drawn:
            old.unlink()
    written += sorted(drawn)
    text = report_markdown(cfg=cfg, ds=ds, ds_cfg=ds_cfg, jobs=jobs, skipped=skipped, preds=preds,
                           table1=t1, p_rows=p_rows, metric_rows=metric_rows, cov_rows=cov_rows,
                           figs=figs, runs_dir=runs_dir, data_dir=data_dir, mc_samples=mc_samples,
                           outcome=outcome)
    write("report.md", text)
    return written


def make_figures(fig_dir: Path, *, preds, jobs, ds: store.DatasetInfo, ds_cfg, cfg,
                 mc: bool) -> list[tuple[str, str]]:
    """Write every figure; returns (file stem, caption) in report order. Images are read
    through the shards (lenshpc.dataset.index.read_items), never through the virtual dataset."""
    from lenshpc.dataset.index import read_index, read_items
    index = read_index(ds.path, truth=False)
    dpi = cfg.evaluate.dpi
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

    psnr = _pooled(preds, "psnr")
    put(figures.fig_psnr_distributions(psnr), "fig4_psnr_distributions",
        "PSNR (MAX = 1) of every test image re-rendered from its predicted theta_E, e1, e2, "
        "per model (all folds); dashed lines: medians. Perfect re-renders (infinite PSNR) "
        "are counted in the legend and left out of the histogram.")

    from lenshpc.evaluate.kernels import reference_images, rerender
    from lenshpc.simulate.render import Renderer
    renderer = Renderer(ds_cfg.image)
    first: dict[str, str] = {}
    for key in preds:
        first.setdefault(model_fold(key)[0], key)
    pos = typical_system(preds[next(iter(first.values()))])
    stored = read_items(index, [int(ds.test_index[pos])])[0]
    true_image = reference_images(renderer, ds.truth_names, ds.truth_test[pos:pos + 1],
                                  stored[None], ds_cfg.image.noise)[0]
    predicted = {}
    for model, key in first.items():
        img, _ = rerender(renderer, ds.truth_names, ds.truth_test[pos], preds[key]["pred"][pos],
                          cfg.evaluate.theta_E_min, cfg.evaluate.max_ellipticity)
        predicted[f"{model} fold {model_fold(key)[1]}: PSNR {preds[key]['psnr'][pos]:.1f} dB"] = \
            img if img is not None else np.zeros_like(true_image)
    item = int(ds.test_index[pos])
    t = ds.true_test[pos]
    put(figures.fig_triptych(true_image, predicted, scale,
                       rf"Test system #{item} ($\theta_E$={t[0]:.2f}$''$, $q$={t[1]:.2f}) "
                       "re-rendered from each model's predicted parameters"),
        "fig5_true_predicted_residual",
        f"One test system (#{item}, the median-PSNR system of {next(iter(first.values()))}): true "
        "image, image re-rendered from each model's predicted parameters, residual; asinh "
        "stretch, axes in arcsec.")

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


def _versions(jobs) -> dict[str, str]:
    import h5py
    import matplotlib
    out = {"lenshpc": __version__, "python": platform.python_version(), "numpy": np.__version__,
           "h5py": h5py.__version__, "matplotlib": matplotlib.__version__}
    try:
        import lenstronomy
        out["lenstronomy"] = lenstronomy.__version__
    except ImportError:  # pragma: no cover
        pass
    for job in jobs:
        for k, v in (job.run.get("versions") or {}).items():
            out.setdefault(f"{k} (train)", str(v))
        break
    return out


def tied_labels(ds_cfg) -> bool:
    """Whether the dataset's e1, e2 are functions of q alone (a fixed lens angle)."""
    pop = ds_cfg.population
    return pop.kind == "parametric" and pop.lens_mass.phi.dist == "constant"


def report_markdown(*, cfg, ds, ds_cfg, jobs, skipped, preds, table1, p_rows, metric_rows,
                    cov_rows, figs, runs_dir, data_dir, mc_samples, outcome) -> str:
    """report.md: the tables and figures in order, with provenance."""
    img = ds_cfg.image
    noise = img.noise
    L: list[str] = [f"# {cfg.name}: evaluation report", ""]
    L += [f"Generated {time.strftime('%Y-%m-%d %H:%M:%S %Z')} by lenshpc {__version__} "
          f"(`lenshpc evaluate`, {outcome.n_ranks} rank(s)).", ""]
    L += ["## Provenance", ""]
    L += [f"- dataset: `{Path(data_dir).resolve()}` — checksum `{ds.checksum}`; "
          f"{ds.n_items} systems, {len(ds.test_index)} in the test set; images "
          f"{img.size}x{img.size} pixels of "
          f"{img.pixel_scale} arcsec, supersampling {img.supersampling}, PSF {img.psf}, "
          f"noise {'on' if noise else 'off'}",
          f"- runs: `{Path(runs_dir).resolve()}`",
          "- true image for MSE/PSNR: "
          + ("the noise-free render of the true parameters (same PSF); the dataset images carry "
             "noise, the re-render does not" if noise else "the stored (noise-free) image"),
          f"- re-render: predicted theta_E, e1, e2 replace the truth (q enters only through "
          f"e1, e2); predictions outside the renderable domain are moved to theta_E >= "
          f"{cfg.evaluate.theta_E_min} arcsec, |e| <= {cfg.evaluate.max_ellipticity} for the "
          f"re-render only",
          "- MC dropout: " + (f"{mc_samples} passes per image, dropout active, batch "
                               f"normalisation in inference mode" if mc_samples else "off"),
          f"- evaluated now: {len(outcome.evaluated)} job(s)"
          + (f" ({outcome.n_images} images in {outcome.work_seconds:.1f} s on "
             f"{outcome.n_ranks} rank(s), {outcome.cpu_seconds:.1f} CPU s)"
             if outcome.evaluated else "")
          + f"; reused from predictions.h5: {len(outcome.reused)}", ""]
    L += ["### Jobs included", ""]
    rows = []
    for job in jobs:
        if job.key not in preds:
            continue
        a = preds[job.key]["attrs"]
        r = job.run
        clamped = int(np.sum(preds[job.key]["clamped"])) if "clamped" in preds[job.key] else 0
        rows.append([job.key, str(job.job), fmt_number(r.get("p1")), fmt_number(r.get("p2")),
                     f"{r.get('epochs_done', '?')}"
                     + (" (early stop)" if r.get("early_stopped") else ""),
                     f"{r.get('model_epoch', '?')} ({r.get('keep', 'last')})",
                     devices_summary(r.get("devices") or []),
                     f"`{str(a.get('model_checksum', ''))[:12]}`", str(clamped)])
    L.append(md_table(["job", "index", "p1", "p2", "epochs", "model of epoch",
                       "trained on (ranks x device; settings)", "model.keras sha256",
                       "clamped for re-render"], rows))
    L += ["### Jobs missing or unfinished (skipped)", ""]
    L += [f"- {k}: {reason}" for k, reason in skipped] or ["- none"]
    L += [""]
    L += ["### Versions", ""]
    L += [f"- {k}: {v}" for k, v in _versions(jobs).items()]
    L += [f"- lenstronomy (dataset): {ds.attrs.get('lenstronomy_version', '?')}",
          f"- lenshpc (dataset): {ds.attrs.get('lenshpc_version', '?')}", ""]

    floor = cfg.evaluate.rel_err_floor
    L += ["## Table 1", "",
          "The study's Table 1, per dropout model: mean ± standard deviation (ddof = 0) over "
          "folds (a model with one fold shows its value alone). Also in `table1.csv` "
          "(fractions, not %) and `table1.tex`.", "",
          "- **min val. loss, min val. MAE**: the minima over epochs of the validation loss "
          "(weighted MSE 1, 1, 3, 3 of standardised targets, as trained) and of the validation "
          "MAE (mean over theta_E [arcsec], q, e1, e2), read from each job's `history.csv`: "
          "the study reports the minimum values attained during training.",
          "- **test wMSE (phys.)**: the same weighted MSE on the test set in physical units "
          "(theta_E in arcsec), the scale of the study's loss figures (0.092 for its model 3). "
          "The test-set loss in standardised units is `test_loss` in `metrics.csv`.",
          "- per parameter, with d = pred - true on the test set: R²; the median and 90th "
          "percentile of the relative error |d| / |true| (%, the study's definition); NMAD = "
          "1.4826 median(|d - median(d)|); bias = mean(d); sigma = (P84(d) - P16(d)) / 2; the "
          "median of |d| / std(true), an error that does not divide by each item's truth; and "
          f"the number of test items with |true| < {floor:g} (kept in every figure, counted "
          "here because their relative errors are mostly small denominators).",
          "- **PSNR median**: of the test images re-rendered from the predicted parameters "
          "(dB, MAX = 1).", ""]
    if tied_labels(ds_cfg):
        phi = ds_cfg.population.lens_mass.phi.params
        L += [f"**Tied labels.** The lens position angle is fixed (phi = "
              f"{dict(phi).get('value')} deg) in this dataset, so e1 and e2 are functions of q "
              "alone: only theta_E and one shape parameter are independent, and the figures of "
              "q, e1 and e2 move together by construction.", ""]
    L += [table1_markdown(table1), ""]

    if cov_rows:
        L += ["## MC-dropout coverage", "",
              f"Fraction of true values inside the predicted ±1σ and ±2σ intervals "
              f"(Gaussian: {metrics.GAUSS_COVERAGE[1]:.3f} and {metrics.GAUSS_COVERAGE[2]:.3f}), mean ± "
              f"standard deviation over folds; mean σ in the parameter's unit. Also in "
              f"`coverage.csv`.", ""]
        header = ["model", "parameter", "±1σ", "±2σ", "mean σ"]
        body = []
        no_dropout = []
        groups: dict[tuple[str, str], list[dict]] = {}
        for r in cov_rows:
            groups.setdefault((r["model"], r["parameter"]), []).append(r)
            if not r["has_dropout"] and r["model"] not in no_dropout:
                no_dropout.append(r["model"])
        for (model, param), rs in groups.items():
            unit = f" {UNITS[param]}" if UNITS[param] else ""
            body.append([model, param,
                         fmt_pm(*metrics.fold_mean_std([r["coverage_1sigma"] for r in rs]), n=len(rs)),
                         fmt_pm(*metrics.fold_mean_std([r["coverage_2sigma"] for r in rs]), n=len(rs)),
                         fmt_pm(*metrics.fold_mean_std([r["mean_std"] for r in rs]), n=len(rs)) + unit])
        L += [md_table(header, body), ""]
        if no_dropout:
            L += [f"Models without dropout ({', '.join(no_dropout)}) have zero spread: every MC "
                  f"pass gives the same prediction, so only exact predictions count as "
                  f"covered.", ""]

    L += ["## PSNR per job", "",
          "Median over all test images; mean PSNR and mean MSE over the images with finite "
          "PSNR (perfect re-renders, n_inf, are kept out of the means). Also in `psnr.csv`.", ""]
    L += [md_table(list(PSNR_COLUMNS),
                   [[str(r["model"]), str(r["fold"])] + [fmt_number(r[c]) for c in PSNR_COLUMNS[2:]]
                    for r in p_rows]), ""]

    L += ["## Metrics per job and parameter", "",
          "docs/method.md section 3 with d = pred - true: MAE, bias = mean(d), median_bias = "
          "median(d), sigma = (P84(d) - P16(d)) / 2, NMAD = 1.4826 median(|d - median(d)|) in "
          "the parameter's unit (theta_E: arcsec); relative error |d| / |true| over items with "
          "true != 0: median and 90th percentile; |d| / std(true): median and 90th "
          f"percentile; n_below_floor: items with |true| < {floor:g}. Also in `metrics.csv`, "
          "with the job's test-set loss in standardised units (`test_loss`).", ""]
    cols = ("model", "fold", "parameter") + metrics.METRIC_COLUMNS
    body = [[str(r["model"]), str(r["fold"]), str(r["parameter"])]
            + [fmt_number(r[c]) for c in metrics.METRIC_COLUMNS] for r in metric_rows]
    L += [md_table(list(cols), body), ""]

    L += ["## Figures", ""]
    if not figs:
        L += ["Not drawn this time (`evaluate.figures: false`).", ""]
    for i, (name, caption) in enumerate(figs, 1):
        L += [f"### Figure {i}", "", f"![{caption}](figures/{name}.png)", "",
              f"{caption} ([PDF](figures/{name}.pdf))", ""]

    L += ["## Config", "", "The config given to `lenshpc evaluate`:", "", "```yaml",
          cfg.to_yaml_text().rstrip(), "```", ""]
    if ds.config_text and ds.config_text.strip() != cfg.to_yaml_text().strip():
        L += ["The dataset's own config (used for re-rendering):", "", "```yaml",
              ds.config_text.rstrip(), "```", ""]
    return "\n".join(L)
