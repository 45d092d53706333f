"""Session fixtures of the evaluate tests: a real tiny dataset (``lenshpc simulate``), real
1-epoch training runs (``lenshpc train``) and one real evaluation (``lenshpc evaluate``).

The runs directory holds model1 folds 0 and 1, model2 fold 0 and model3 fold 0 (all
trained for real), model2 fold 1 unfinished (its run.json says so, as after a crash)
and model3 fold 1 missing.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from tests.conftest import PYTHON, env, lenshpc, simulate_dataset, write_config

#: Small enough for a few seconds of simulate and train, big enough for several units.
OVERRIDES = dict(
    image={"size": 32},
    dataset={"n_images": 120, "test_fraction": 0.25, "n_folds": 2, "shard_size": 40},
    train={"epochs": 1, "batch_size": 16},
    # several chunks per job and a batch boundary inside each chunk
    evaluate={"chunk_size": 8, "batch_size": 5, "n_examples": 4, "dpi": 60},
)
TRAINED = {0: "model1/fold-0", 1: "model1/fold-1", 2: "model2/fold-0", 4: "model3/fold-0"}


def eval_config(path: Path, **evaluate) -> Path:
    """The tests' config, with ``evaluate`` keys overridden."""
    over = {k: dict(v) for k, v in OVERRIDES.items()}
    over["evaluate"].update(evaluate)
    return write_config(path, **over)


@pytest.fixture(scope="session")
def eval_root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("evaluate")


@pytest.fixture(scope="session")
def eval_cfg(eval_root) -> Path:
    return eval_config(eval_root / "eval.yaml")


@pytest.fixture(scope="session")
def eval_data(eval_root, eval_cfg) -> Path:
    return simulate_dataset(eval_cfg, eval_root / "data")


def train_runs(cfg: Path, data: Path, runs: Path) -> Path:
    """Real `lenshpc train` runs (1 epoch) of the jobs in TRAINED, two at a time, plus an
    unfinished job (model2 fold 1) and a missing one (model3 fold 1)."""
    pending = list(TRAINED)
    while pending:
        batch, pending = pending[:2], pending[2:]
        procs = {j: subprocess.Popen([PYTHON, "-m", "lenshpc", "train", "--config", str(cfg),
                                      "--data", str(data), "--out", str(runs), "--job", str(j)],
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                     env=env())
                 for j in batch}
        for j, p in procs.items():
            out, _ = p.communicate(timeout=900)
            assert p.returncode == 0, f"lenshpc train --job {j} -> {p.returncode}\n{out}"
    # model2 fold 1 stopped after its first epoch: run.json says finished false, no model
    run = json.loads((runs / "model2" / "fold-0" / "run.json").read_text())
    run.update(finished=False, fold=1, job=3)
    (runs / "model2" / "fold-1").mkdir(parents=True)
    (runs / "model2" / "fold-1" / "run.json").write_text(json.dumps(run))
    return runs


@pytest.fixture(scope="session")
def eval_runs(eval_root, eval_cfg, eval_data) -> Path:
    return train_runs(eval_cfg, eval_data, eval_root / "runs")


@pytest.fixture(scope="session")
def mc_report(eval_root, eval_cfg, eval_data, eval_runs) -> tuple[subprocess.CompletedProcess, Path]:
    """One process, MC dropout with 3 passes, all figures."""
    out = eval_root / "report-mc"
    proc = lenshpc("evaluate", "--config", eval_cfg, "--data", eval_data, "--runs", eval_runs,
                   "--out", out, "--mc-samples", "3", timeout=900, check=True)
    return proc, out


@pytest.fixture(scope="session")
def plain_report(eval_root, eval_cfg, eval_data, eval_runs) -> tuple[subprocess.CompletedProcess, Path]:
    """One process, no MC dropout, all figures."""
    out = eval_root / "report"
    proc = lenshpc("evaluate", "--config", eval_cfg, "--data", eval_data, "--runs", eval_runs,
                   "--out", out, timeout=900, check=True)
    return proc, out
