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

import numpy as np
import yaml

from lenshpc import __version__
from lenshpc.config.train import _flat as flat_overrides
from lenshpc.evaluate import disk, metrics, provenance
from lenshpc.evaluate.report_figures import make_figures
from lenshpc.evaluate.tables import (
    COVERAGE_COLUMNS,
    METRICS_CSV_COLUMNS,
    PSNR_COLUMNS,
    coverage_rows,
    csv_text,
    describe_overrides,
    fmt_number,
    fmt_pm,
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
from lenshpc.runs import JobFiles
from lenshpc.train.record import devices_summary
from lenshpc.train.state import read_history

UNITS = {"theta_E": "arcsec", "q": "", "e1": "", "e2": ""}


def write_all(out_dir: Path, *, cfg, ds: disk.HeldOutSet, jobs, skipped,
              runs_dir: Path, data_dir: Path, mc_samples: int, outcome,
              given_not_used: list[str] | None = None) -> list[Path]:
    """Every product of REPORT from predictions.h5: tables, figures, report.md. The image
    and population settings are the dataset's (``ds.config``), the train settings each
    job's run.json; ``cfg`` gives the evaluate settings. Returns
    the files written (for the completion marker); figures of an earlier report that
    this one does not draw are removed."""
    written: list[Path] = []

    def write(name: str, text: str) -> None:
        atomic_write_text(out_dir / name, text)
        written.append(out_dir / name)

    preds = disk.read_predictions(out_dir / disk.PREDICTIONS)
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
    t1 = table1_rows(summaries, variant_overrides(cfg, keys, jobs))
    psnr = cfg.evaluate.psnr
    caption = (f"{cfg.name}: Table 1, mean +- standard deviation over folds "
               f"({len(ds.test_index)} test systems).")
    write("table1.csv", table1_csv(t1))
    write("table1.md", table1_markdown(t1, psnr))
    write("table1.tex", table1_latex(t1, caption, psnr))

    mc = bool(mc_samples) and all("pred_std" in preds[k] for k in keys)
    cov_rows = [r for k in keys for r in coverage_rows(k, preds[k])] if mc else []
    if mc:
        write("coverage.csv", csv_text(cov_rows, COVERAGE_COLUMNS))
    else:
        (out_dir / "coverage.csv").unlink(missing_ok=True)
    from lenshpc.evaluate import calibration_report  # issue 18: written by the calibration step
    cal_files, cal_lines = calibration_report.products(out_dir, measured=bool(mc_samples))
    written += cal_files

    fig_dir = out_dir / "figures"
    figs = make_figures(fig_dir, preds=preds, jobs=jobs, ds=ds,
                        cfg=cfg, mc=mc) if cfg.evaluate.figures else []
    drawn = {fig_dir / f"{name}.{ext}" for name, _ in figs for ext in ("png", "pdf")}
    for old in fig_dir.glob("fig*.*") if fig_dir.is_dir() else []:
        if old not in drawn:
            old.unlink()
    written += sorted(drawn)
    text = report_markdown(cfg=cfg, ds=ds, jobs=jobs, skipped=skipped, preds=preds,
                           table1=t1, p_rows=p_rows, metric_rows=metric_rows, cov_rows=cov_rows,
                           figs=figs, runs_dir=runs_dir, data_dir=data_dir, mc_samples=mc_samples,
                           outcome=outcome, given_not_used=given_not_used or [],
                           calibration_lines=cal_lines)
    write("report.md", text)
    return written

def variant_overrides(cfg, keys, jobs=()) -> dict[str, str]:
    """Each evaluated model's overrides of train keys, as its jobs' run.json records them
    (``overrides``: what the model was trained with); for a run.json without that record,
    from the config's ``train.models`` entry (found by name; a model under RUNS but not
    in the config: "not in the config")."""
    entries = {m.name: m for m in cfg.train.models}
    recorded = {j.model: j.run["overrides"] for j in jobs
                if isinstance(j.run.get("overrides"), dict)}

    def described(model: str) -> str:
        if model in recorded:
            return ", ".join(f"{k}={v}" for k, v in flat_overrides(recorded[model]))
        return describe_overrides(entries[model]) if model in entries else "not in the config"
    return {model: described(model) for model in dict.fromkeys(model_fold(k)[0] for k in keys)}


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


def report_markdown(*, cfg, ds, jobs, skipped, preds, table1, p_rows, metric_rows,
                    cov_rows, figs, runs_dir, data_dir, mc_samples, outcome,
                    given_not_used=(), calibration_lines=()) -> str:
    """report.md: the tables and figures in order, with provenance."""
    ds_cfg = ds.config   # the image and population the test set was made with
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
          "- network input: each test image normalised as the job was trained "
          "(`train.normalize` of its run.json, max when it records none: x / max; study: "
          "(x - min) / (max + 1e-6)), column \"input\" below; the re-render is scored "
          "against the true image, not the network input",
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
                     f"`{str(a.get('model_checksum', ''))[:12]}`", str(clamped),
                     str(a.get("normalize", "max"))])
    L.append(md_table(["job", "index", "p1", "p2", "epochs", "model of epoch",
                       "trained on (ranks x device; settings)", "model.keras sha256",
                       "clamped for re-render", "input"], rows))
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
          "- **PSNR median** of the test images re-rendered from the predicted parameters, "
          "in dB: **study** is the study's definition, the one to compare with the paper "
          "(the true and the re-rendered image each clipped to its own 1st-99th percentiles "
          "and scaled to [0, 1], then 10 log10(1 / MSE)); **MAX=1** is 10 log10(1 / MSE) of "
          f"the images as stored (maximum 1). Shown: `evaluate.psnr: {cfg.evaluate.psnr}`; "
          "`table1.csv` and `psnr.csv` hold both.",
          "- **SSIM median, ring SSIM median**: the study's SSIM (as tf.image.ssim: Gaussian "
          "window 11 x 11, sigma 1.5 pixels) of the two percentile-scaled images, over the "
          "whole image and with both images set to 0 outside the ring |r - theta_E| <= "
          f"{cfg.evaluate.ssim_ring_width:g} arcsec around the lens centre (true theta_E; "
          "windows outside the ring then score 1).",
          "- **variants**: models whose `train.models` entry overrides train keys are listed "
          "under the table with their overrides (`overrides` in `table1.csv`).", ""]
    if tied_labels(ds_cfg):
        phi = ds_cfg.population.lens_mass.phi.params
        L += [f"**Tied labels.** The lens position angle is fixed (phi = "
              f"{dict(phi).get('value')} deg) in this dataset, so e1 and e2 are functions of q "
              "alone: only theta_E and one shape parameter are independent, and the figures of "
              "q, e1 and e2 move together by construction.", ""]
    L += [table1_markdown(table1, cfg.evaluate.psnr), ""]

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
    L += list(calibration_lines)   # "Calibration of the uncertainties" (calibration_report)

    L += ["## PSNR per job", "",
          "MAX = 1 (the images as stored): median over all test images; mean PSNR and mean "
          "MSE over the images with finite PSNR (perfect re-renders, n_inf, are kept out of "
          "the means). The study's definition (each image clipped to its own 1st-99th "
          "percentiles, scaled to [0, 1]): psnr_study_median, psnr_study_mean (over finite "
          "values). ssim_median, ssim_ring_median: medians of the study's SSIM over the image "
          "and in the ring around theta_E. Per image in `predictions.h5` (psnr, psnr_study, "
          "ssim, ssim_ring); also in `psnr.csv`.", ""]
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

    L += config_section(cfg, ds, jobs, given_not_used)
    return "\n".join(L)


def config_section(cfg, ds, jobs, given_not_used) -> list[str]:
    """report.md's "Config": what produced the numbers, from where it was recorded: the
    dataset's own config (its dataset-defining sections), each job's train settings from
    its run.json, the evaluate settings given; and the given values that were not used."""
    L = ["## Config", "",
         f"What produced these numbers. The dataset's sections (the test set was made and is "
         f"re-rendered with them; from the config stored in `{ds.path.name}`):", "",
         "```yaml", provenance.dataset_sections_yaml(ds.config), "```", "",
         "Each model's train settings, as its jobs' `run.json` records them (`train`, and "
         "the dropout rates `p1`, `p2`):", ""]
    for keys, text in provenance.train_settings_yaml(jobs):
        L += [f"{keys}:", "", "```yaml", text, "```", ""]
    plain = yaml.safe_load(cfg.to_yaml_text()) or {}
    L += ["The evaluate settings given to `lenshpc evaluate`:", "", "```yaml",
          yaml.safe_dump({"evaluate": plain.get("evaluate")}, sort_keys=False).rstrip(),
          "```", ""]
    if given_not_used:
        L += ["Given, not used: train keys the given config sets to other values than the "
              "jobs were trained with, which do not decide the model evaluated (the job's "
              "value first):", "", *(f"- `{line}`" for line in given_not_used), ""]
    return L
