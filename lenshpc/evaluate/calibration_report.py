"""The calibration products of REPORT (rank 0): ``calibration.json``
(:mod:`lenshpc.evaluate.calibration_file`), the figure ``figures/calibration_coverage``
(PNG and PDF) and report.md's section "Calibration of the uncertainties".

:func:`write` writes the file and the figure from :func:`lenshpc.evaluate.calibration_run.measure`'s
results; :func:`products` (called by :func:`lenshpc.evaluate.report.write_all`) lists them
for the completion marker and gives the section's lines from the file, or removes them
when this evaluation ran without MC dropout.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from lenshpc.config import UserError
from lenshpc.dataset.columns import TARGETS
from lenshpc.evaluate import calibration as cal, calibration_file
from lenshpc.evaluate.tables import md_table

FIGURE = "calibration_coverage"


def write(out_dir: Path, measured: Mapping[str, Any] | None, cfg) -> list[Path]:
    """calibration.json and (with ``evaluate.figures``) the figure; UserError naming the
    file that could not be written."""
    if measured is None:
        return []
    path = Path(out_dir) / calibration_file.CALIBRATION
    try:
        written = [calibration_file.write(out_dir, measured["record"])]
        if cfg.evaluate.figures:
            from lenshpc.evaluate.figures import save
            path = Path(out_dir) / "figures" / f"{FIGURE}.png"
            written += save(fig_coverage_calibration(measured["curves"], TARGETS),
                            Path(out_dir) / "figures", FIGURE, cfg.evaluate.dpi)
    except OSError as exc:
        raise UserError(f"cannot write {path}: {exc.strerror or exc}; make room or make it "
                        f"writable and run the same command again") from None
    return written


def _paths(out_dir: Path) -> list[Path]:
    return [Path(out_dir) / calibration_file.CALIBRATION,
            *(Path(out_dir) / "figures" / f"{FIGURE}.{ext}" for ext in ("png", "pdf"))]


def products(out_dir: Path, measured: bool) -> tuple[list[Path], list[str]]:
    """(files, report.md lines) of the calibration; with ``measured`` False (no MC
    dropout this time) an earlier run's files are removed and both are empty."""
    paths = _paths(out_dir)
    if not measured:
        for p in paths:
            p.unlink(missing_ok=True)
        return [], []
    present = [p for p in paths if p.is_file()]
    if not paths[0].is_file():
        return present, []
    record = json.loads(paths[0].read_text())
    return present, section(record, figure=paths[1].is_file())


def _fmt(v: float | None) -> str:
    return "–" if v is None else f"{v:.3f}"


def _pair(before: Mapping, after: Mapping, p: str, name: str, calibrated: bool) -> str:
    b = before[p][name]
    return f"{b:.3f} → {after[p][name]:.3f}" if calibrated else f"{b:.3f}"


def section(record: Mapping[str, Any], figure: bool = True) -> list[str]:
    """report.md's section from a calibration.json record."""
    n_test = next(iter(record["models"].values()))["test"]["n"]
    L = ["## Calibration of the uncertainties", "",
         f"Coverage: the fraction of test items whose truth lies inside the interval, for "
         f"mean ± 1σ and ± 2σ (nominal {cal.SIGMA_LEVELS[1]:.4f}, {cal.SIGMA_LEVELS[2]:.4f}) "
         f"and the central 68% and 95% of the samples (percentiles 16–84, 2.5–97.5), before "
         f"→ after the calibration; ±{cal.binomial_error(0.68, n_test):.3f} is the binomial "
         f"error of a 68% coverage on the {n_test} test items. {record['mc_samples']} "
         f"MC-dropout passes per job. " + record["method"] + " The scales are in "
         f"`{calibration_file.CALIBRATION}`; `lenshpc predict --calibration "
         f"{calibration_file.CALIBRATION}` applies them (docs/predict.md, \"Calibration\").", ""]
    L += ["### The fold ensemble x MC dropout (as `lenshpc predict` forms it), test set", ""]
    rows, no_dropout = [], []
    for model, m in record["models"].items():
        ok = m["has_dropout"]
        if not ok:
            no_dropout.append(model)
        tarp = m["test"].get("tarp")
        for p in TARGETS:
            rows.append([model, p, _fmt(m["scale"][p]),
                         *(_pair(m["test"]["before"], m["test"]["after"], p, name,
                                 ok and m["scale"][p] is not None) for name in cal.INTERVALS),
                         "" if tarp is None or p != TARGETS[0] else
                         (f"{tarp['before']:.3f} → {tarp['after']:.3f}" if ok
                          else f"{tarp['before']:.3f}")])
    L += [md_table(["model", "parameter", "median job scale", "±1σ", "±2σ", "central 68%",
                    "central 95%", "TARP max |ECP − α|"], rows), ""]
    L += ["TARP (Lemos et al. 2023, the `tarp` package): the joint (θ_E, q, e1, e2) samples "
          "against the truths, random reference points; the largest distance of the expected "
          "coverage probability from the credibility level (0 when calibrated, up to about "
          f"1/√{n_test} = {1 / np.sqrt(n_test):.3f} of noise).", ""]
    if no_dropout:
        L += [f"Models without dropout ({', '.join(no_dropout)}): no MC spread, every pass is "
              "the same prediction; their spread is the fold ensemble's only, from "
              f"{', '.join(str(record['models'][m]['n_jobs']) for m in no_dropout)} fold(s), "
              "and is not calibrated (no held-out data for an ensemble).", ""]
    L += ["### MC dropout alone (each job's own passes), mean over the folds", "",
          "Validation: each job's validation fold, where its scale is fitted (→ with its own "
          "scale, so 0.683 by construction for ±1σ); test: the test set with each job's own "
          "scale.", ""]
    rows = []
    for model, m in record["models"].items():
        jobs = list(m["jobs"].values())
        for p in TARGETS:
            scales = [j["scale"][p] for j in jobs]
            ok = m["has_dropout"] and any(s is not None for s in scales)

            def mean(part: str, when: str, name: str, jobs=jobs, p=p) -> float:
                return float(np.mean([j[part][when][p][name] for j in jobs]))
            cells = [f"{mean(part, 'before', name):.3f}"
                     + (f" → {mean(part, 'after', name):.3f}" if ok else "")
                     for part in ("validation", "test") for name in ("sigma1", "central68")]
            rows.append([model, p, ", ".join(_fmt(s) for s in scales), *cells])
    L += [md_table(["model", "parameter", "scale per fold", "validation ±1σ",
                    "validation central 68%", "test ±1σ", "test central 68%"], rows), ""]
    if no_dropout:
        L += [f"Without dropout ({', '.join(no_dropout)}) a job has no MC spread at all: "
              "its coverage counts exact predictions only.", ""]
    if figure:
        L += [f"![Calibration: observed against expected coverage](figures/{FIGURE}.png)", "",
              "Observed against expected coverage of mean ± kσ on the test set, before "
              "(dashed) and after (solid) the calibration, per parameter; markers: the central "
              "68% (o) and 95% (s) intervals after; last panel: TARP's expected coverage "
              f"probability of the joint distribution. ([PDF](figures/{FIGURE}.pdf))", ""]
    return L


def fig_coverage_calibration(curves: Mapping[str, Any], names=TARGETS):
    """Rows: the fold ensemble x MC dropout, MC dropout alone (each job's, averaged over
    folds); columns: each parameter's observed coverage of mean +- k sigma against the
    expected, before (dashed) and after (solid), and TARP's ECP against alpha."""
    from lenshpc.evaluate.figures import SYMBOLS, _colors, _figure
    expected = np.asarray(curves["expected"])
    models = curves["models"]
    fig = _figure(2.0 * (len(names) + 1) + 0.4, 4.6)
    axes = fig.subplots(2, len(names) + 1, squeeze=False, sharex=True, sharey=True)
    rows = (("fold ensemble x MC dropout", lambda m: [m["ensemble"]]),
            ("MC dropout alone (mean over folds)", lambda m: m["jobs"]))
    for r, (title, pick) in enumerate(rows):
        for model, color in zip(models, _colors(len(models)), strict=True):
            m = models[model]
            parts = pick(m)
            label = model if m["has_dropout"] else f"{model} (no dropout)"
            for c in range(len(names)):
                ax = axes[r][c]
                before = np.mean([p["before"]["sigma"][:, c] for p in parts], axis=0)
                after = np.mean([p["after"]["sigma"][:, c] for p in parts], axis=0)
                ax.plot(expected, before, color=color, lw=1.0, ls="--")
                ax.plot(expected, after, color=color, lw=1.3, label=label if c == 0 else None)
                for key, level, marker in (("central68", 0.68, "o"), ("central95", 0.95, "s")):
                    ax.plot(level, np.mean([p["after"][key][c] for p in parts]), marker,
                            color=color, ms=3.5)
            tarps = [p["tarp"] for p in parts if p["tarp"][0] is not None]
            ax = axes[r][len(names)]
            for when, ls in ((0, "--"), (1, "-")):
                if tarps:
                    alpha = tarps[0][when][0]
                    ax.plot(alpha, np.mean([t[when][1] for t in tarps], axis=0), color=color,
                            ls=ls, lw=1.0 if when == 0 else 1.3)
        for c, ax in enumerate(axes[r]):
            ax.plot([0, 1], [0, 1], color="k", lw=0.7)
            ax.set_xlim(0, 1)
            ax.set_ylim(0, 1.02)
            if r == 0:
                ax.set_title(SYMBOLS.get(names[c], names[c]) if c < len(names) else "TARP (joint)")
            if r == 1:
                ax.set_xlabel(r"expected coverage" if c < len(names) else r"credibility $\alpha$")
        axes[r][0].set_ylabel(f"{title}\nobserved coverage", fontsize=8)
    axes[0][0].legend(loc="upper left", fontsize=7)
    fig.suptitle("Coverage on the test set: dashed before, solid after the calibration "
                 "(scales fitted on the validation folds)")
    return fig
