"""Table 1 of a run beside the study's published figures (docs/reproduction.md).

:data:`STUDY` holds what the study reports (docs/method.md, "What the study reports"):
ranges where it gives ranges. :func:`comparison_markdown` puts one or more runs'
``table1.csv`` rows beside it (the PSNR by the study's definition, each image clipped to
its own 1st-99th percentiles; from a table1.csv older than it, the MAX = 1 PSNR);
:func:`rows_from_csv` reads such a file back. The reproduction document embeds the
output between markers, and a test regenerates it from the committed ``table1.csv``
files, so its numbers cannot drift from the run's.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import Any, Mapping, Sequence

from lenshpc.dataset.columns import TARGETS
from lenshpc.evaluate.tables import fmt_pm, md_table

#: The study's figures per model, as it states them (text: ranges and "about" kept).
STUDY: dict[str, dict[str, str]] = {
    "model1": {"r2": "0.95 to 0.97", "psnr_median": "36.9", "nmad": "0.01 to 0.04",
               "rel_err_p90_theta_E": "≈ 9", "loss": "≈ 0.006 (0.092 / 15)",
               "mae": "≈ 0.021 (0.085 / 4)"},
    "model2": {"r2": "0.95 to 0.97", "psnr_median": "36.8", "nmad": "0.01 to 0.04",
               "rel_err_p90_theta_E": "≈ 9", "loss": "≈ 0.006 (0.092 / 15)",
               "mae": "≈ 0.021 (0.085 / 4)"},
    "model3": {"r2": "down to ≈ 0.56", "psnr_median": "29.2", "nmad": "0.07 to 0.10",
               "rel_err_p90_theta_E": "—", "loss": "0.092", "mae": "0.085"},
}

#: Rows of the comparison: (label, study key, run figure(s), scale of the run figure).
ROWS: tuple[tuple[str, str, tuple[str, ...], float], ...] = (
    ("R² theta_E", "r2", ("r2_theta_E",), 1.0),
    ("R² q", "r2", ("r2_q",), 1.0),
    ("R² e1", "r2", ("r2_e1",), 1.0),
    ("R² e2", "r2", ("r2_e2",), 1.0),
    ("NMAD (range over parameters)", "nmad", tuple(f"nmad_{p}" for p in TARGETS), 1.0),
    ("rel. err. theta_E, 90% [%]", "rel_err_p90_theta_E", ("rel_err_p90_theta_E",), 100.0),
    ("loss: study min. / test wMSE phys.", "loss", ("test_wmse_phys",), 1.0),
    ("MAE: study min. / min. val. MAE", "mae", ("val_mae_min",), 1.0),
    ("PSNR median [dB]", "psnr_median", ("psnr_study_median",), 1.0),
)
#: Run figures read in their place from a table1.csv written before they existed: the
#: study's PSNR falls back to the MAX = 1 one (the only PSNR lenshpc then computed).
FALLBACK = {"psnr_study_median": "psnr_median"}


def rows_from_csv(path: str | Path) -> dict[str, dict[str, Any]]:
    """``table1.csv`` as ``{model: {column: float | str}}``."""
    out: dict[str, dict[str, Any]] = {}
    with open(path, newline="") as f:
        for r in csv.DictReader(f):
            row: dict[str, Any] = {}
            for k, v in r.items():
                try:
                    row[k] = int(v) if k == "n_folds" else float(v)
                except ValueError:
                    row[k] = v
            out[r["model"]] = row
    return out


def _run_cell(row: Mapping[str, Any] | None, figures: Sequence[str], scale: float) -> str:
    if row is None:
        return "—"
    n = int(row.get("n_folds", 1))
    figures = [f if f"{f}_mean" in row else FALLBACK.get(f, f) for f in figures]
    if len(figures) == 1:
        name = figures[0]
        return fmt_pm(float(row[f"{name}_mean"]), float(row[f"{name}_std"]), n=n, scale=scale)
    means = [float(row[f"{f}_mean"]) * scale for f in figures]
    finite = [m for m in means if math.isfinite(m)]
    if not finite:
        return "nan"
    return f"{min(finite):.3g} to {max(finite):.3g}"


def comparison_markdown(runs: Mapping[str, Mapping[str, Mapping[str, Any]]]) -> str:
    """One markdown table: rows model x figure, columns the study then each run
    (``runs``: {column title: rows_from_csv(...)}) ; run cells are mean ± std over folds."""
    header = ["model", "figure", "study"] + list(runs)
    body = []
    for model, study in STUDY.items():
        for label, key, figures, scale in ROWS:
            cells = [_run_cell(r.get(model), figures, scale) for r in runs.values()]
            body.append([model, label, study.get(key, "—")] + cells)
    return md_table(header, body)


# --------------------------------------------------------------------------- the document

#: Blocks of docs/reproduction.md generated from committed CSV files: marker -> source.
BLOCKS = ("table1", "comparison")


def _block(text: str, name: str, content: str) -> str:
    start, end = f"<!-- {name} -->\n", f"<!-- /{name} -->"
    a = text.index(start) + len(start)
    b = text.index(end, a)
    return text[:a] + content + text[b:]


def ablation_markdown(path: str | Path) -> str:
    """The ablation table (``ablation.csv`` of docs/reproduction/ablation_table.py) as
    markdown: one row per entry, models 1 and 3 under each setting."""
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    header = ["setting", "model", "R² theta_E", "R² q", "R² e1", "R² e2",
              "PSNR study [dB]", "PSNR MAX=1 [dB]", "test wMSE phys.", "min. val. loss",
              "epochs (best)"]
    body = [[r["factor"], r["dropout_model"], r["r2_theta_E"], r["r2_q"], r["r2_e1"],
             r["r2_e2"], r["psnr_study_median"], r["psnr_max1_median"], r["test_wmse_phys"],
             r["val_loss_min"] + (" (std.)" if r["val_loss_unit"] == "standardised" else ""),
             f"{r['epochs_run']} ({r['best_epoch']})"] for r in rows]
    return md_table(header, body)


def render_document(text: str, folder: str | Path) -> str:
    """``text`` with its generated blocks rewritten from ``folder``'s ``table1.csv`` (the
    reproduction run), ``demo-table1.csv`` (the debug demo), ``study/table1.csv`` (the
    run with the authors' settings) and ``ablation.csv``; the last three where present,
    each into its block where the text has its markers."""
    from lenshpc.evaluate.tables import table1_markdown
    folder = Path(folder)
    run = rows_from_csv(folder / "table1.csv")
    text = _block(text, "table1", table1_markdown(list(run.values())))
    runs = {}
    study = folder / "study" / "table1.csv"
    if study.is_file():
        runs["authors' settings (reduced)"] = rows_from_csv(study)
        if "<!-- study-table1 -->" in text:
            text = _block(text, "study-table1",
                          table1_markdown(list(runs["authors' settings (reduced)"].values())))
    runs["this run (reduced)" if not runs else "lenshpc's settings (reduced)"] = run
    if (folder / "demo-table1.csv").is_file():
        runs["debug demo"] = rows_from_csv(folder / "demo-table1.csv")
    if (folder / "ablation.csv").is_file() and "<!-- ablation -->" in text:
        text = _block(text, "ablation", ablation_markdown(folder / "ablation.csv"))
    return _block(text, "comparison", comparison_markdown(runs))


if __name__ == "__main__":  # python -m lenshpc.evaluate.compare docs/reproduction.md
    import sys
    doc = Path(sys.argv[1])
    doc.write_text(render_document(doc.read_text(), doc.with_suffix("")))
