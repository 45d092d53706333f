"""The report's tables as pure functions of the prediction arrays and training curves.

Per job: metrics.csv rows (one per parameter), the psnr.csv row, and the job's Table 1
figures (:func:`job_summary`). Table 1 is one row per dropout model, each figure the
mean ± standard deviation (ddof=0) over the model's folds, as the study defines it:

- ``val_loss_min``, ``val_mae_min``: the minima over epochs of the validation loss
  (weighted MSE of standardised targets, as trained) and MAE, from ``history.csv``;
- ``test_wmse_phys``: the weighted MSE (1, 1, 3, 3) of the test set in *physical* units
  (theta_E in arcsec), the scale of the study's 0.092;
- per parameter: R², median relative error, NMAD, bias, sigma, 90th-percentile
  relative error, median ``|d| / std(true)`` and the count below the ``|true|`` floor;
- ``psnr_study_median``: the median PSNR (dB) of the re-rendered images by the study's
  definition (each image clipped to its own 1st-99th percentiles and scaled to [0, 1];
  :mod:`lenshpc.evaluate.image_metrics`), the one to compare with the paper;
  ``psnr_median`` the same with the images as stored (MAX = 1); ``ssim_median`` and
  ``ssim_ring_median`` the medians of the study's SSIM over the image and in the ring
  around theta_E.

Which PSNR the markdown and LaTeX tables show is ``evaluate.psnr`` (table1.csv has
every figure). Rows of a table1.csv written before the study's PSNR existed are shown
as they were (one PSNR column, MAX = 1).

No files are read or written here: formatting (markdown, LaTeX, CSV) is text out.
"""

from __future__ import annotations

import csv
import io
import math
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from lenshpc.config.train import parse_job_key
from lenshpc.dataset.columns import TARGETS
from lenshpc.evaluate import metrics

PSNR_COLUMNS = ("model", "fold", "psnr_median", "psnr_mean", "mse_mean", "n", "n_inf",
                "psnr_study_median", "psnr_study_mean", "ssim_median", "ssim_ring_median")
COVERAGE_COLUMNS = ("model", "fold", "parameter", "coverage_1sigma", "coverage_2sigma",
                    "mean_std", "n", "has_dropout")
METRICS_CSV_COLUMNS = ("model", "fold", "parameter") + metrics.METRIC_COLUMNS + ("test_loss",)
SYMBOLS_TEX = {"theta_E": r"$\theta_E$", "q": r"$q$", "e1": r"$e_1$", "e2": r"$e_2$"}

#: Job-level Table 1 figures: (name, markdown header, LaTeX header).
JOB_FIGURES = (("val_loss_min", "min val. loss", "min.\\ val.\\ loss"),
               ("val_mae_min", "min val. MAE", "min.\\ val.\\ MAE"),
               ("test_wmse_phys", "test wMSE (phys.)", "test wMSE (phys.)"),
               ("psnr_median", "PSNR median [dB]", "PSNR [dB]"),
               ("psnr_study_median", "PSNR median, study [dB]", "PSNR (study) [dB]"),
               ("ssim_median", "SSIM median", "SSIM"),
               ("ssim_ring_median", "ring SSIM median", "ring SSIM"))
#: Headers of the MAX = 1 PSNR when the study's is shown too (or alone, evaluate.psnr: max1).
PSNR_MAX1_HEADERS = ("PSNR median, MAX=1 [dB]", "PSNR (MAX=1) [dB]")
#: Per-parameter Table 1 figures: (name, header, is a fraction shown in %).
PARAM_FIGURES = (("r2", "R²", False), ("rel_err_median", "median rel. err. [%]", True),
                 ("rel_err_p90", "rel. err. 90% [%]", True), ("nmad", "NMAD", False),
                 ("bias", "bias", False), ("sigma", "sigma", False),
                 ("scaled_err_median", "median abs(d)/std", False),
                 ("n_below_floor", "n below floor", False))
#: Every Table 1 figure name, in table1.csv's column order.
TABLE1 = tuple(n for n, _, _ in JOB_FIGURES) + tuple(
    f"{n}_{p}" for n, _, _ in PARAM_FIGURES for p in TARGETS)


def model_fold(key: str) -> tuple[str, int]:
    return parse_job_key(key)


def group_by_model(keys: Iterable[str]) -> dict[str, list[str]]:
    """Job keys grouped by model, in first-seen order."""
    groups: dict[str, list[str]] = {}
    for key in keys:
        groups.setdefault(model_fold(key)[0], []).append(key)
    return groups


def _run_std_weights(entry: Mapping[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    import json
    run = json.loads(entry["attrs"].get("run_json", "{}"))
    true = entry["true"]
    std = np.asarray(run.get("target_std") or np.std(true, axis=0), dtype=np.float64)
    weights = np.asarray(run.get("loss_weights") or [1.0] * len(TARGETS), dtype=np.float64)
    return std, weights


def job_metrics_rows(key: str, entry: Mapping[str, Any],
                     floor: float = metrics.REL_ERR_FLOOR) -> list[dict[str, Any]]:
    """metrics.csv rows of one job: one per parameter, plus the job's test-set loss in
    training's standardised units (``test_loss``, the same on the job's rows)."""
    model, fold = model_fold(key)
    std, weights = _run_std_weights(entry)
    loss = metrics.weighted_mse_loss(entry["true"], entry["pred"], std, weights)
    rows = []
    for j, name in enumerate(TARGETS):
        m = metrics.parameter_metrics(entry["true"][:, j], entry["pred"][:, j], floor)
        rows.append({"model": model, "fold": fold, "parameter": name, **vars(m),
                     "test_loss": loss})
    return rows


def _median(entry: Mapping[str, Any], name: str) -> float:
    """Median of a per-item score over the items where it is not nan (nan if none or
    absent: predictions of a lenshpc without it)."""
    v = np.asarray(entry.get(name, ()), dtype=np.float64)
    v = v[~np.isnan(v)]
    return float(np.median(v)) if v.size else math.nan


def psnr_row(key: str, entry: Mapping[str, Any]) -> dict[str, Any]:
    """psnr.csv row of one job: the MAX = 1 PSNR (means over finite PSNR only; see
    metrics.psnr_summary), then the study's PSNR (median; mean over finite values) and
    the medians of SSIM and ring SSIM."""
    model, fold = model_fold(key)
    study = np.asarray(entry.get("psnr_study", ()), dtype=np.float64)
    finite = study[np.isfinite(study)]
    return {"model": model, "fold": fold,
            **vars(metrics.psnr_summary(entry["psnr"], entry["mse"])),
            "psnr_study_median": _median(entry, "psnr_study"),
            "psnr_study_mean": float(np.mean(finite)) if finite.size else math.nan,
            "ssim_median": _median(entry, "ssim"), "ssim_ring_median": _median(entry, "ssim_ring")}


def job_summary(entry: Mapping[str, Any], history: Mapping[str, np.ndarray] | None,
                floor: float = metrics.REL_ERR_FLOOR) -> dict[str, float]:
    """The Table 1 figures of one job (see the module doc); ``history`` is the job's
    history.csv as columns (nan minima without it)."""
    true, pred = entry["true"], entry["pred"]
    _, weights = _run_std_weights(entry)

    def minimum(col: str) -> float:
        if history is None or col not in history:
            return math.nan
        v = np.asarray(history[col], dtype=np.float64)
        v = v[np.isfinite(v)]
        return float(v.min()) if v.size else math.nan

    out = {"val_loss_min": minimum("val_loss"), "val_mae_min": minimum("val_mae"),
           "test_wmse_phys": metrics.weighted_mse_physical(true, pred, weights),
           "psnr_median": metrics.psnr_summary(entry["psnr"], entry["mse"]).psnr_median,
           **{name: _median(entry, name[:-len("_median")])
              for name in ("psnr_study_median", "ssim_median", "ssim_ring_median")}}
    for j, name in enumerate(TARGETS):
        m = metrics.parameter_metrics(true[:, j], pred[:, j], floor)
        for figure, _, _ in PARAM_FIGURES:
            out[f"{figure}_{name}"] = float(getattr(m, figure))
    return out


def describe_overrides(model: Any) -> str:
    """A ``train.models`` entry's overrides of train keys as one line, e.g.
    ``batch_size=64, standardize_targets=true`` ('' when none)."""
    if hasattr(model, "describe_overrides"):
        return str(model.describe_overrides())
    return ", ".join(f"{k}={_csv_value(v)}" for k, v in getattr(model, "overrides", ()))


def table1_rows(summaries: Mapping[str, Mapping[str, float]],
                overrides: Mapping[str, str] | None = None) -> list[dict[str, Any]]:
    """One row per model: ``model``, ``n_folds``, ``folds``, ``overrides`` (the variant's
    overrides of train keys, from ``overrides[model]``) and ``<figure>_mean``,
    ``<figure>_std`` over the model's folds for every Table 1 figure."""
    rows = []
    for model, keys in group_by_model(summaries).items():
        row: dict[str, Any] = {"model": model, "n_folds": len(keys),
                               "folds": " ".join(str(model_fold(k)[1]) for k in keys),
                               "overrides": (overrides or {}).get(model, "")}
        for name in TABLE1:
            row[f"{name}_mean"], row[f"{name}_std"] = metrics.fold_mean_std(
                [summaries[k][name] for k in keys])
        rows.append(row)
    return rows


def coverage_rows(key: str, entry: Mapping[str, Any]) -> list[dict[str, Any]]:
    """MC-dropout coverage of +-1 and +-2 sigma per parameter of one job."""
    model, fold = model_fold(key)
    rows = []
    for j, name in enumerate(TARGETS):
        y, mu, s = entry["true"][:, j], entry["pred"][:, j], entry["pred_std"][:, j]
        rows.append({"model": model, "fold": fold, "parameter": name,
                     "coverage_1sigma": metrics.coverage(y, mu, s, 1),
                     "coverage_2sigma": metrics.coverage(y, mu, s, 2),
                     "mean_std": float(np.mean(s)) if s.size else math.nan, "n": int(y.size),
                     "has_dropout": bool(entry["attrs"].get("mc_has_dropout", True))})
    return rows


# --------------------------------------------------------------------------- formatting


def fmt_number(v: Any, digits: int = 4) -> str:
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


def fmt_pm(mean: float, std: float, tex: bool = False, n: int = 2, scale: float = 1.0) -> str:
    """``mean ± std`` (times ``scale``) rounded at the std's first significant digit
    (second if it is 1 or 2); with one fold (``n == 1``) the mean alone, 3 significant
    digits."""
    pm = r" \pm " if tex else " ± "
    mean, std = mean * scale, std * scale
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


def _cells(r: Mapping[str, Any], name: str, percent: bool, tex: bool) -> str:
    return fmt_pm(r[f"{name}_mean"], r[f"{name}_std"], tex=tex, n=r["n_folds"],
                  scale=100.0 if percent else 1.0)


def job_columns(rows: Sequence[Mapping[str, Any]], psnr: str = "both") -> list[tuple[str, str, str]]:
    """Part (a)'s figures as (name, markdown header, LaTeX header): the curve minima and
    test wMSE, then the PSNR ``psnr`` names (study, max1 or both: the study's first) and
    the SSIM medians. Rows without the study's figures (an older table1.csv) get the one
    PSNR column they had."""
    spec = {name: (md, tex) for name, md, tex in JOB_FIGURES}
    cols = [(n, *spec[n]) for n in ("val_loss_min", "val_mae_min", "test_wmse_phys")]
    if not all("psnr_study_median_mean" in r for r in rows):
        return cols + [("psnr_median", *spec["psnr_median"])]
    if psnr in ("study", "both"):
        cols.append(("psnr_study_median", *spec["psnr_study_median"]))
    if psnr in ("max1", "both"):
        cols.append(("psnr_median", *PSNR_MAX1_HEADERS))
    return cols + [(n, *spec[n]) for n in ("ssim_median", "ssim_ring_median")]


def overrides_note(rows: Sequence[Mapping[str, Any]]) -> str:
    """``model4: batch_size=64; ...`` for the variants with overrides ('' if none)."""
    return "; ".join(f"{r['model']}: {r['overrides']}" for r in rows if r.get("overrides"))


def table1_markdown(rows: Sequence[Mapping[str, Any]], psnr: str = "both") -> str:
    """Table 1 in two parts: (a) per model, (b) per model and parameter; then, if any
    variant overrides train keys, a line listing them. ``psnr``: evaluate.psnr."""
    cols = job_columns(rows, psnr)
    head_a = ["model", "folds"] + [md for _, md, _ in cols]
    body_a = [[r["model"], str(r["n_folds"])] + [_cells(r, n, False, False)
                                                 for n, _, _ in cols] for r in rows]
    head_b = ["model", "parameter"] + [h for _, h, _ in PARAM_FIGURES]
    body_b = [[r["model"], p] + [_cells(r, f"{n}_{p}", pct, False) for n, _, pct in PARAM_FIGURES]
              for r in rows for p in TARGETS]
    note = overrides_note(rows)
    return (md_table(head_a, body_a) + "\n" + md_table(head_b, body_b)
            + (f"\nVariants (overrides of the train section): {note}.\n" if note else ""))


def tex_escape(text: str) -> str:
    """LaTeX-safe text (config and model names in captions and cells)."""
    special = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#",
               "_": r"\_", "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}",
               "^": r"\textasciicircum{}"}
    return "".join(special.get(c, c) for c in str(text))


def table1_latex(rows: Sequence[Mapping[str, Any]], caption: str, psnr: str = "both") -> str:
    """Two booktabs tables (needs \\usepackage{booktabs}); ``caption`` is plain text;
    ``psnr``: evaluate.psnr (which PSNR part (a) shows)."""
    cap = tex_escape(caption)
    out = []
    cols = job_columns(rows, psnr)
    names = [n for n, _, _ in cols]
    what = "median PSNR"
    if "psnr_study_median" in names:
        what += (" (study: each image clipped to its own 1st--99th percentiles and scaled to "
                 "[0, 1]" + ("; MAX=1: the images as stored" if "psnr_median" in names else "")
                 + ")")
    if "ssim_median" in names:
        what += ", median SSIM over the image and in the ring around $\\theta_E$"
    head_a = " & ".join(["model", "folds"] + [tex for _, _, tex in cols]) + r" \\"
    lines = [r"\begin{table}", r"\centering", r"\small",
             rf"\caption{{{cap} (a) Per model: minima of the validation curves, test-set "
             rf"weighted MSE in physical units, {what}.}}", r"\label{tab:table1a}",
             rf"\begin{{tabular}}{{l{'c' * (len(cols) + 1)}}}", r"\toprule", head_a,
             r"\midrule"]
    for r in rows:
        lines.append(" & ".join([tex_escape(r["model"]), str(r["n_folds"])]
                                + [_cells(r, n, False, True) for n, _, _ in cols])
                     + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}"]
    note = overrides_note(rows)
    if note:
        lines += [r"\par\smallskip\footnotesize Variants (overrides of the train section): "
                  + tex_escape(note) + "."]
    lines += [r"\end{table}", ""]
    out += lines
    head_b = " & ".join(["model", "param."] + [tex_escape(h) for _, h, _ in PARAM_FIGURES])
    lines = [r"\begin{table*}", r"\centering", r"\small",
             rf"\caption{{{cap} (b) Per model and parameter.}}", r"\label{tab:table1b}",
             rf"\begin{{tabular}}{{ll{'c' * len(PARAM_FIGURES)}}}", r"\toprule",
             head_b + r" \\", r"\midrule"]
    for r in rows:
        for p in TARGETS:
            lines.append(" & ".join([tex_escape(r["model"]), SYMBOLS_TEX[p]]
                                    + [_cells(r, f"{n}_{p}", pct, True)
                                       for n, _, pct in PARAM_FIGURES]) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}", r"\end{table*}"]
    out += lines
    return "\n".join(out) + "\n"


def table1_csv(rows: Sequence[Mapping[str, Any]]) -> str:
    columns = ["model", "n_folds", "folds", "overrides"] + [f"{n}_{s}" for n in TABLE1
                                               for s in ("mean", "std")]
    return csv_text(rows, columns)
