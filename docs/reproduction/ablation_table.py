"""docs/reproduction/ablation.csv from an ablation report and its runs.

    python docs/reproduction/ablation_table.py REPORT RUNS > docs/reproduction/ablation.csv

One row per ablation entry (configs/ablation.yaml: models 1 and 3 under each setting):
the factor changed from the authors' settings, the test R² of each parameter, the
median PSNR in both definitions, the test loss in physical units (comparable across
entries), the minimum validation loss as trained (physical or standardised targets,
said in ``val_loss_unit``) and the epochs run.
"""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

#: Entry-name suffix -> the factor it changes (configs/ablation.yaml).
FACTORS = {"": "authors' settings", "lenshpc": "lenshpc's defaults", "std": "standardised targets",
           "b64": "batch 64", "best": "best epoch, early stopping 6",
           "legacy": "previous (legacy) network", "max": "max-only normalisation",
           "global": "global shuffle"}
COLUMNS = ["entry", "dropout_model", "factor", "r2_theta_E", "r2_q", "r2_e1", "r2_e2",
           "psnr_study_median", "psnr_max1_median", "test_wmse_phys", "val_loss_min",
           "val_loss_unit", "epochs_run", "best_epoch"]


def rows(report: Path, runs: Path) -> list[dict[str, object]]:
    out = []
    with open(report / "table1.csv", newline="") as f:
        for row in csv.DictReader(f):
            name = row["model"]
            dropout, _, suffix = name.partition("-")
            run = json.loads((runs / name / "fold-0" / "run.json").read_text())
            out.append({
                "entry": name,
                "dropout_model": {"model1": "model1", "m1": "model1"}.get(dropout, "model3"),
                "factor": FACTORS[suffix],
                **{f"r2_{p}": f"{float(row[f'r2_{p}_mean']):.4f}"
                   for p in ("theta_E", "q", "e1", "e2")},
                "psnr_study_median": f"{float(row['psnr_study_median_mean']):.2f}",
                "psnr_max1_median": f"{float(row['psnr_median_mean']):.2f}",
                "test_wmse_phys": f"{float(row['test_wmse_phys_mean']):.5f}",
                "val_loss_min": f"{float(row['val_loss_min_mean']):.5f}",
                "val_loss_unit": ("standardised" if run["train"]["standardize_targets"]
                                  else "physical"),
                "epochs_run": run["epochs_done"],
                "best_epoch": run["best_epoch"],
            })
    return out


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print(__doc__.strip().splitlines()[2].strip(), file=sys.stderr)
        return 2
    writer = csv.DictWriter(sys.stdout, COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows(Path(argv[0]), Path(argv[1])))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
