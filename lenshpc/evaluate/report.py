"""Tables, figures and report.md from predictions.h5 (rank 0, after the MPI part).

The per-job figures (metrics.csv, psnr.csv) and the study's Table 1 are pure functions
of the prediction arrays (:func:`job_metrics_rows`, :func:`psnr_rows`,
:func:`job_summary`, :func:`table1_rows`); the writers only format them. Table 1 is
one row per dropout model, each figure the mean +- standard deviation (ddof=0) over
the model's folds:

- loss: weighted MSE of standardised targets, as in training (run.json
  ``target_std`` and ``loss_weights``);
- MAE: mean absolute error over theta_E (arcsec), q, e1, e2 in physical units, as
  the training metric ``mae``;
- R^2 and median relative error per parameter; median PSNR (dB).
"""

from __future__ import annotations

import csv
import io
import json
import math
import platform
import time
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from lenshpc import __version__
from lenshpc.config.train import TARGETS
from lenshpc.evaluate import figures as F
from lenshpc.evaluate import metrics as M
from lenshpc.evaluate import store

UNITS = {"theta_E": "arcsec", "q": "", "e1": "", "e2": ""}
PSNR_COLUMNS = ("model", "fold", "psnr_median", "psnr_mean", "mse_mean", "n", "n_inf")
COVERAGE_COLUMNS = ("model", "fold", "parameter", "coverage_1sigma", "coverage_2sigma",
                    "mean_std", "n", "has_dropout")


# --------------------------------------------------------------------------- pure tables


def _model_fold(key: str) -> tuple[str, int]:
    model, fold = key.split("/")
    return model, int(fold.removeprefix("fold-"))


def job_metrics_rows(key: str, entry: Mapping[str, Any]) -> list[dict[str, Any]]:
    """metrics.csv rows of one job: one per parameter (METHOD.md section 3)."""
    model, fold = _model_fold(key)
    rows = []
    for j, name in enumerate(TARGETS):
        m = M.parameter_metrics(entry["true"][:, j], entry["pred"][:, j])
        rows.append({"model": model, "fold": fold, "parameter": name, **vars(m)})
    return rows


def psnr_row(key: str, entry: Mapping[str, Any]) -> dict[str, Any]:
    """psnr.csv row of one job (means over finite PSNR only; see metrics.psnr_summary)."""
    model, fold = _model_fold(key)
    return {"model": model, "fold": fold, **vars(M.psnr_summary(entry["psnr"], entry["mse"]))}


def job_summary(entry: Mapping[str, Any]) -> dict[str, float]:
    """The Table 1 figures of one job: loss, mae, r2_<p>, rel_err_median_<p>, psnr_median."""
    run = json.loads(entry["attrs"].get("run_json", "{}"))
    true, pred = entry["true"], entry["pred"]
    std = run.get("target_std") or np.std(true, axis=0).tolist()
    weights = run.get("loss_weights") or [1.0] * len(TARGETS)
    out = {"loss": M.weighted_mse_loss(true, pred, std, weights),
           "mae": float(np.mean(np.abs(pred - true))) if len(true) else math.nan}
    for j, name in enumerate(TARGETS):
        out[f"r2_{name}"] = M.r2(true[:, j], pred[:, j])
    for j, name in enumerate(TARGETS):
        rel = M.relative_error(true[:, j], pred[:, j])
        out[f"rel_err_median_{name}"] = float(np.median(rel)) if rel.size else math.nan
    out["psnr_median"] = M.psnr_summary(entry["psnr"], entry["mse"]).psnr_median
    return out


#: Table 1 figures in column order, with their header in markdown and LaTeX.
TABLE1 = ([("loss", "loss", "loss"), ("mae", "MAE", "MAE")]
          + [(f"r2_{p}", f"R² {p}", f"$R^2$ {F.SYMBOLS[p]}") for p in TARGETS]
          + [(f"rel_err_median_{p}", f"rel. err. {p}", f"rel.\\ err.\\ {F.SYMBOLS[p]}")
             for p in TARGETS]
          + [("psnr_median", "PSNR median [dB]", "PSNR [dB]")])


def group_by_model(keys: Iterable[str]) -> dict[str, list[str]]:
    """Job keys grouped by model, in first-seen order."""
    groups: dict[str, list[str]] = {}
    for key in keys:
        groups.setdefault(_model_fold(key)[0], []).append(key)
    return groups


def table1_rows(summaries: Mapping[str, Mapping[str, float]]) -> list[dict[str, Any]]:
    """One row per model: ``model``, ``n_folds``, ``folds`` and ``<figure>_mean``,
    ``<figure>_std`` over the model's folds for every Table 1 figure."""
    rows = []
    for model, keys in group_by_model(summaries).items():
        row: dict[str, Any] = {"model": model, "n_folds": len(keys),
                               "folds": " ".join(str(_model_fold(k)[1]) for k in keys)}
        for name, _, _ in TABLE1:
            values = [summaries[k][name] for k in keys]
            row[f"{name}_mean"], row[f"{name}_std"] = M.fold_mean_std(values)
        rows.append(row)
    return rows


def coverage_rows(key: str, entry: Mapping[str, Any]) -> list[dict[str, Any]]:
    """MC-dropout coverage of +-1 and +-2 sigma per parameter of one job."""
    model, fold = _model_fold(key)
    rows = []
    for j, name in enumerate(TARGETS):
        y, mu, s = entry["true"][:, j], entry["pred"][:, j], entry["pred_std"][:, j]
        rows.append({"model": model, "fold": fold, "parameter": name,
                     "coverage_1sigma": M.coverage(y, mu, s, 1),
                     "coverage_2sigma": M.coverage(y, mu, s, 2),
                     "mean_std": float(np.mean(s)) if s.size else math.nan, "n": int(y.size),
                     "has_dropout": bool(entry["attrs"].get("mc_has_dropout", True))})
    return rows


# --------------------------------------------------------------------------- formatting


def fmt_number(v: float, digits: int = 4) -> str:
    """A number for tables: ``inf``, ``nan`` spelled out, else ``digits`` significant."""
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "nan"
    if isinstance(v, float) and math.isinf(v):
        return "inf" if v > 0 else "-inf"
    if isinstance(v, (bool, np.bool_)):
        return str(bool(v)).lower()
    if isinstance(v, (int, np.integer)):
        return str(int(v))
    return f"{float(v):.{digits}g}"


def fmt_pm(mean: float, std: float, tex: bool = False, n: int = 2) -> str:
    """``mean ± std`` rounded at the std's first significant digit (second if it is 1
    or 2); with one fold (``n == 1``) the mean alone, to 3 significant digits."""
    pm = r" \pm " if tex else " ± "
    if not math.isfinite(mean):
        return r"$\infty$" if tex and mean == math.inf else fmt_number(mean)
    if n <= 1 or not math.isfinite(std) or std == 0:
        body = f"{mean:.3g}" if n <= 1 or not math.isfinite(std) else f"{mean:.3g}{pm}0"
    else:
        exponent = int(math.floor(math.log10(std)))
        lead = int(std / 10 ** exponent)
        decimals = min(max(0, -exponent + (1 if lead <= 2 else 0)), 8)
        body = f"{mean:.{decimals}f}{pm}{std:.{decimals}f}"
    return f"${body}$" if tex else body


def csv_text(rows: Sequence[Mapping[str, Any]], columns: Sequence[str]) -> str:
    """CSV with a header; floats with full precision (repr), inf/nan spelled out."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(columns)
    for row in rows:
        w.writerow([_csv_value(row[c]) for c in columns])
    return buf.getvalue()


def _csv_value(v: Any) -> str:
    if isinstance(v, (bool, np.bool_)):
        return str(bool(v)).lower()
    if isinstance(v, (float, np.floating)):
        v = float(v)
        if math.isnan(v) or math.isinf(v):
            return "nan" if math.isnan(v) else ("inf" if v > 0 else "-inf")
        return repr(v)
    return str(v)


def md_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def table1_markdown(rows: Sequence[Mapping[str, Any]]) -> str:
    header = ["model", "folds"] + [md for _, md, _ in TABLE1]
    body = [[r["model"], str(r["n_folds"])]
            + [fmt_pm(r[f"{n}_mean"], r[f"{n}_std"], n=r["n_folds"]) for n, _, _ in TABLE1]
            for r in rows]
    return md_table(header, body)


def table1_latex(rows: Sequence[Mapping[str, Any]], caption: str) -> str:
    """A booktabs ``table`` (needs \\usepackage{booktabs}); one row per model."""
    cols = "l" + "c" * (len(TABLE1) + 1)
    head = " & ".join(["model", "folds"] + [tex for _, _, tex in TABLE1]) + r" \\"
    lines = [r"\begin{table*}", r"\centering", r"\small", rf"\caption{{{caption}}}",
             r"\label{tab:table1}", rf"\begin{{tabular}}{{{cols}}}", r"\toprule", head, r"\midrule"]
    for r in rows:
        cells = [r["model"].replace("_", r"\_"), str(r["n_folds"])]
        cells += [fmt_pm(r[f"{n}_mean"], r[f"{n}_std"], tex=True, n=r["n_folds"])
                  for n, _, _ in TABLE1]
        lines.append(" & ".join(cells) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}", r"\end{table*}"]
    return "\n".join(lines) + "\n"


def table1_csv(rows: Sequence[Mapping[str, Any]]) -> str:
    columns = ["model", "n_folds", "folds"] + [f"{n}_{s}" for n, _, _ in TABLE1
                                               for s in ("mean", "std")]
    return csv_text(rows, columns)


# --------------------------------------------------------------------------- inputs of figures


def read_history(path: Path) -> dict[str, np.ndarray] | None:
    """history.csv as column arrays (epoch, loss, val_loss, mae, val_mae, lr), or None."""
    try:
        with open(path, newline="") as f:
            rows = list(csv.DictReader(f))
    except OSError:
        return None
    if not rows:
        return None
    cols = ("epoch", "loss", "val_loss", "mae", "val_mae")
    try:
        return {c: np.array([float(r[c]) for r in rows]) for c in cols}
    except (KeyError, ValueError, TypeError):
        return None


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
              runs_dir: Path, data_dir: Path, mc_samples: int, outcome) -> None:
    """Every product of REPORT from predictions.h5: tables, figures, report.md."""
    preds = store.read_predictions(out_dir / store.PREDICTIONS)
    keys = [j.key for j in jobs if j.key in preds]
    preds = {k: preds[k] for k in keys}

    metric_rows = [r for k in keys for r in job_metrics_rows(k, preds[k])]
    store.write_text(out_dir / "metrics.csv",
                     csv_text(metric_rows, ("model", "fold", "parameter") + M.METRIC_COLUMNS))
    p_rows = [psnr_row(k, preds[k]) for k in keys]
    store.write_text(out_dir / "psnr.csv", csv_text(p_rows, PSNR_COLUMNS))

    summaries = {k: job_summary(preds[k]) for k in keys}
    t1 = table1_rows(summaries)
    caption = (f"{cfg.name}: test-set figures per dropout model, mean $\\pm$ standard deviation "
               f"over folds ({len(ds.test_index)} test systems).")
    store.write_text(out_dir / "table1.csv", table1_csv(t1))
    store.write_text(out_dir / "table1.md", table1_markdown(t1))
    store.write_text(out_dir / "table1.tex", table1_latex(t1, caption))

    mc = bool(mc_samples) and all("pred_std" in preds[k] for k in keys)
    cov_rows = [r for k in keys for r in coverage_rows(k, preds[k])] if mc else []
    if mc:
        store.write_text(out_dir / "coverage.csv", csv_text(cov_rows, COVERAGE_COLUMNS))
    else:
        (out_dir / "coverage.csv").unlink(missing_ok=True)

    figs = make_figures(out_dir / "figures", preds=preds, jobs=jobs, ds=ds, ds_cfg=ds_cfg,
                        cfg=cfg, mc=mc) if cfg.evaluate.figures else []
    text = report_markdown(cfg=cfg, ds=ds, ds_cfg=ds_cfg, jobs=jobs, skipped=skipped, preds=preds,
                           table1=t1, p_rows=p_rows, metric_rows=metric_rows, cov_rows=cov_rows,
                           figs=figs, runs_dir=runs_dir, data_dir=data_dir, mc_samples=mc_samples,
                           outcome=outcome)
    store.write_text(out_dir / "report.md", text)


def make_figures(fig_dir: Path, *, preds, jobs, ds: store.DatasetInfo, ds_cfg, cfg,
                 mc: bool) -> list[tuple[str, str]]:
    """Write every figure; returns (file stem, caption) in report order."""
    import h5py
    dpi = cfg.evaluate.dpi
    scale = ds_cfg.image.pixel_scale
    done: list[tuple[str, str]] = []

    def put(fig, name: str, caption: str) -> None:
        F.save(fig, fig_dir, name, dpi)
        done.append((name, caption))

    with h5py.File(ds.path, "r") as f:
        labels = f["labels"][...].astype(np.float64)
        n_ex = min(cfg.evaluate.n_examples, len(ds.test_index))
        ex_index = ds.test_index[:n_ex]
        ex_images = f["images"][ex_index]
    test_mask = np.zeros(len(labels), dtype=bool)
    test_mask[ds.test_index] = True
    put(F.fig_parameter_distributions(labels, labels[test_mask], TARGETS),
        "fig1_parameter_distributions",
        f"Parameter distributions of the sample ({len(labels)} systems; the test set outlined). "
        "theta_E in arcsec; q, e1, e2 dimensionless.")
    put(F.fig_example_images(ex_images, labels[ex_index], scale, ex_index.tolist()),
        "fig2_example_images",
        f"The first {n_ex} test images (asinh stretch; axes in arcsec from the image centre).")

    histories: dict[str, list] = {}
    for job in jobs:
        if job.key in preds:
            h = read_history(job.directory / "history.csv")
            if h is not None:
                histories.setdefault(job.model, []).append(h)
    if histories:
        put(F.fig_training_curves(histories, mae_unit=r"mean of $\theta_E$ [arcsec], $q, e_1, e_2$"),
            "fig3_training_curves",
            "Training and validation loss (weighted MSE of standardised targets) and MAE "
            "(mean over theta_E [arcsec], q, e1, e2) per epoch from history.csv: mean over "
            "folds, band +-1 standard deviation.")

    psnr = _pooled(preds, "psnr")
    put(F.fig_psnr_distributions(psnr), "fig4_psnr_distributions",
        "PSNR (MAX = 1) of every test image re-rendered from its predicted theta_E, e1, e2, "
        "per model (all folds); dashed lines: medians. Perfect re-renders (infinite PSNR) "
        "are counted in the legend and left out of the histogram.")

    from lenshpc.evaluate.run import reference_images, rerender
    from lenshpc.simulate.render import Renderer
    renderer = Renderer(ds_cfg.image)
    first = {}
    for key in preds:
        first.setdefault(_model_fold(key)[0], key)
    pos = typical_system(preds[next(iter(first.values()))])
    with h5py.File(ds.path, "r") as f:
        stored = f["images"][int(ds.test_index[pos])]
    true_image = reference_images(renderer, ds.truth_names, ds.truth_test[pos:pos + 1],
                                  stored[None], ds_cfg.image.noise)[0]
    predicted = {}
    for model, key in first.items():
        img, _ = rerender(renderer, ds.truth_names, ds.truth_test[pos], preds[key]["pred"][pos],
                          cfg.evaluate.theta_E_min, cfg.evaluate.max_ellipticity)
        predicted[f"{model} fold {_model_fold(key)[1]}: PSNR {preds[key]['psnr'][pos]:.1f} dB"] = \
            img if img is not None else np.zeros_like(true_image)
    item = int(ds.test_index[pos])
    t = ds.true_test[pos]
    put(F.fig_triptych(true_image, predicted, scale,
                       rf"Test system #{item} ($\theta_E$={t[0]:.2f}$''$, $q$={t[1]:.2f}) "
                       "re-rendered from each model's predicted parameters"),
        "fig5_true_predicted_residual",
        f"One test system (#{item}, the median-PSNR system of {next(iter(first.values()))}): true "
        "image, image re-rendered from each model's predicted parameters, residual; asinh "
        "stretch, axes in arcsec.")

    true_p, pred_p = _pooled(preds, "true"), _pooled(preds, "pred")
    r2 = {m: [M.r2(true_p[m][:, j], pred_p[m][:, j]) for j in range(len(TARGETS))] for m in pred_p}
    folds = {m: np.concatenate([np.full(len(preds[k]["pred"]), _model_fold(k)[1]) for k in keys])
             for m, keys in group_by_model(preds).items()}
    put(F.fig_predicted_vs_true(true_p, pred_p, folds, TARGETS, r2), "fig6_predicted_vs_true",
        "Predicted vs true parameters of the test set, all folds pooled, with the 1:1 line "
        "(R² of the pooled points).")

    rel = {m: [M.relative_error(true_p[m][:, j], pred_p[m][:, j]) for j in range(len(TARGETS))]
           for m in pred_p}
    put(F.fig_relative_error_boxes(rel, TARGETS), "fig7_relative_error_boxes",
        "Relative errors |pred - true| / |true| per parameter and model (all folds; items with "
        "true value 0 left out): boxes span the quartiles, whiskers the 5th-95th percentiles, "
        "the median is written on top.")

    if mc:
        std_p = _pooled(preds, "pred_std")
        no_dropout = sorted({_model_fold(k)[0] for k in preds
                             if not preds[k]["attrs"].get("mc_has_dropout", True)})
        put(F.fig_calibration(true_p, pred_p, std_p, TARGETS, no_dropout), "fig8_calibration",
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
                     str(r.get("n_ranks", "?")), f"`{str(a.get('model_checksum', ''))[:12]}`",
                     str(clamped)])
    L.append(md_table(["job", "index", "p1", "p2", "epochs", "train ranks",
                       "model.keras sha256", "clamped for re-render"], rows))
    L += ["### Jobs missing or unfinished (skipped)", ""]
    L += [f"- {k}: {reason}" for k, reason in skipped] or ["- none"]
    L += [""]
    L += ["### Versions", ""]
    L += [f"- {k}: {v}" for k, v in _versions(jobs).items()]
    L += [f"- lenstronomy (dataset): {ds.attrs.get('lenstronomy_version', '?')}",
          f"- lenshpc (dataset): {ds.attrs.get('lenshpc_version', '?')}", ""]

    L += ["## Table 1", "",
          "Test-set figures per dropout model, mean ± standard deviation (ddof = 0) over folds "
          "(a model with one fold shows its value alone). "
          "loss: weighted MSE of standardised targets (as in training); MAE: mean over "
          "theta_E [arcsec], q, e1, e2 (physical units, as the training metric); R² and median "
          "relative error per parameter; median PSNR of the re-rendered images (dB, MAX = 1). "
          "Also in `table1.csv` and `table1.tex`.", ""]
    L += [table1_markdown(table1), ""]

    if cov_rows:
        L += ["## MC-dropout coverage", "",
              f"Fraction of true values inside the predicted ±1σ and ±2σ intervals "
              f"(Gaussian: {M.GAUSS_COVERAGE[1]:.3f} and {M.GAUSS_COVERAGE[2]:.3f}), mean ± "
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
                         fmt_pm(*M.fold_mean_std([r["coverage_1sigma"] for r in rs]), n=len(rs)),
                         fmt_pm(*M.fold_mean_std([r["coverage_2sigma"] for r in rs]), n=len(rs)),
                         fmt_pm(*M.fold_mean_std([r["mean_std"] for r in rs]), n=len(rs)) + unit])
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
          "METHOD.md section 3 with d = pred - true: MAE, bias = mean(d), median_bias = "
          "median(d), sigma = (P84(d) - P16(d)) / 2, NMAD = 1.4826 median(|d - median(d)|) in "
          "the parameter's unit (theta_E: arcsec); relative error |d| / |true| over items with "
          "true != 0: median and 90th percentile. Also in `metrics.csv`.", ""]
    cols = ("model", "fold", "parameter") + M.METRIC_COLUMNS
    body = [[str(r["model"]), str(r["fold"]), str(r["parameter"])]
            + [fmt_number(r[c]) for c in M.METRIC_COLUMNS] for r in metric_rows]
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
