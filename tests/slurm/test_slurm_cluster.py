"""On a real one-node Slurm: the debug pipeline through `lenshpc slurm submit`, train
tasks that are requeued (by `scontrol requeue`, and by their own script after the
time-limit warning) resuming from their checkpoints, and the srun launch of a 2-rank
train task (the tested multi-node path)."""

from __future__ import annotations

import csv
import json
import re
import shutil
import time
from pathlib import Path

import pytest

from lenshpc.config import load
from lenshpc.config.train import jobs
from tests.conftest import lenshpc, mpirun, simulate_dataset, write_config

pytestmark = [pytest.mark.slurm, pytest.mark.slow]

#: A small pipeline: 200 images, 2 folds x 3 models = 6 array tasks, 2 epochs each.
SMALL = dict(dataset={"n_images": 200, "shard_size": 50},
             train={"epochs": 2},
             slurm={"simulate": {"ntasks": 2, "time": "00:15:00"},
                    "train": {"time": "00:15:00"},
                    "evaluate": {"ntasks": 2, "time": "00:15:00"}})


def _submitted(workdir: Path) -> dict[str, str]:
    return json.loads((workdir / "slurm" / "submitted.json").read_text())["jobs"]


def _history(run: Path) -> list[dict[str, str]]:
    path = run / "history.csv"
    if not path.is_file():
        return []
    with path.open() as f:
        return list(csv.DictReader(f))


def _finished(run: Path) -> bool:
    try:
        return bool(json.loads((run / "run.json").read_text())["finished"])
    except (OSError, ValueError, KeyError):
        return False


def _logs(workdir: Path) -> str:
    return "\n".join(f"--- {p.name}\n{p.read_text()[-3000:]}"
                     for p in sorted((workdir / "slurm" / "logs").glob("*.out")))


@pytest.fixture(scope="module")
def pipeline(slurm_cluster, tmp_path_factory):
    """The debug pipeline submitted with `lenshpc slurm submit`, run to the end."""
    base = tmp_path_factory.mktemp("pipeline")
    config = write_config(base / "study.yaml", **SMALL)
    workdir = base / "w"
    proc = lenshpc("slurm", "submit", "--config", config, "--workdir", workdir, check=True)
    assert slurm_cluster.wait_empty(timeout=1200), f"queue not empty:\n{_logs(workdir)}"
    return config, workdir, proc.stdout


def test_pipeline_trains_every_job_and_reports_all_models(pipeline):
    config, workdir, out = pipeline
    ids = _submitted(workdir)
    assert set(ids) == {"simulate", "train", "evaluate"}
    assert (f"submitted train (array 0-5): job {ids['train']}, "
            f"after simulate {ids['simulate']}") in out
    assert f"submitted evaluate: job {ids['evaluate']}, after train {ids['train']}" in out
    assert (workdir / "dataset" / "dataset.h5").is_file(), _logs(workdir)
    cfg = load(config)
    for job in jobs(cfg.train, cfg.dataset.n_folds):
        run = json.loads((workdir / "runs" / job.path / "run.json").read_text())
        assert run["finished"] and run["job"] == job.index, _logs(workdir)
        assert [int(r["epoch"]) for r in _history(workdir / "runs" / job.path)] == [1, 2]
        # One log per array task, named %x-%A_%a, starting with the task's own description.
        log = workdir / "slurm" / "logs" / f"debug-train-{ids['train']}_{job.index}.out"
        assert f"slurm job {ids['train']}_{job.index} (debug-train)" in log.read_text()
    with (workdir / "report" / "table1.csv").open() as f:
        assert sorted(row["model"] for row in csv.DictReader(f)) == ["model1", "model2", "model3"]


def test_submit_again_submits_nothing_when_complete(pipeline, slurm_cluster):
    config, workdir, _ = pipeline
    proc = lenshpc("slurm", "submit", "--config", config, "--workdir", workdir, check=True)
    assert "nothing to submit" in proc.stdout
    assert "submitted" not in proc.stdout and slurm_cluster.queue() == []


def test_requeued_train_tasks_resume_from_their_checkpoints(pipeline, slurm_cluster, tmp_path):
    """Task 0 is requeued by `scontrol requeue` (TERM; Slurm requeues it); task 1 gets the
    time-limit warning (USR1 to the batch shell; its script passes it to the training
    processes and requeues the task). Both resume from their last whole epoch."""
    _, done_workdir, _ = pipeline
    workdir = tmp_path / "w"
    (workdir).mkdir()
    # Same dataset as the pipeline's (copied: no simulate job), longer training of one model.
    shutil.copytree(done_workdir / "dataset", workdir / "dataset")
    config = write_config(tmp_path / "long.yaml", **SMALL)
    config = write_config(tmp_path / "long.yaml", base=config,
                          train={"models": [{"name": "model3"}], "epochs": 25,
                                 "early_stopping_patience": 0},
                          # horovodrun: the launcher whose signal forwarding is the
                          # script's own (srun and mpirun forward signals themselves).
                          slurm={"train": {"launcher": "horovodrun"}})
    proc = lenshpc("slurm", "submit", "--config", config, "--workdir", workdir, check=True)
    assert "submitted simulate" not in proc.stdout
    submitted = _submitted(workdir)
    array = submitted["train"]
    slurm_cluster.run("scancel", submitted["evaluate"])  # the pipeline test covers evaluate
    runs = {k: workdir / "runs" / "model3" / f"fold-{k}" for k in (0, 1)}

    # Interrupt each task once it has a whole epoch on disk.
    before: dict[int, list[dict[str, str]]] = {}
    deadline = time.monotonic() + 600
    while len(before) < 2 and time.monotonic() < deadline:
        for k, run in runs.items():
            if k in before:
                continue
            history = _history(run)
            if history and not _finished(run):
                before[k] = history
                if k == 0:
                    slurm_cluster.run("scontrol", "requeue", f"{array}_0")
                else:
                    slurm_cluster.run("scancel", "--batch", "--signal=USR1", f"{array}_1")
        time.sleep(0.2)
    assert len(before) == 2, f"no checkpoint in time:\n{_logs(workdir)}"
    assert slurm_cluster.wait_empty(timeout=900), f"queue not empty:\n{_logs(workdir)}"

    for k, run in runs.items():
        log = (workdir / "slurm" / "logs" / f"debug-train-{array}_{k}.out").read_text()
        info = json.loads((run / "run.json").read_text())
        assert info["finished"] and info["epochs_done"] == 25, log
        history = _history(run)
        assert [int(r["epoch"]) for r in history] == list(range(1, 26)), log
        # The rows written before the interruption are kept as they were: a resume,
        # not a restart.
        assert history[:len(before[k])] == before[k]
        assert "resuming after epoch" in log and f"slurm job {array}_{k}" in log
        # The second attempt appended to the same log (--open-mode=append).
        assert f"slurm job {array}_{k} (debug-train), restart 1" in log, log
    usr1_log = (workdir / "slurm" / "logs" / f"debug-train-{array}_1.out").read_text()
    assert "SIGUSR1 received" in usr1_log and "requeueing it" in usr1_log


def test_srun_train_task_requeued_after_time_limit_warning_resumes_exactly(slurm_cluster,
                                                                           tmp_path):
    """The multi-node path: a 2-rank train task launched by `srun --mpi=<plugin>` gets the
    time-limit warning (USR1 to its batch shell), passes it on, exits 75, requeues itself
    and resumes; the result is the one of an uninterrupted run, bit for bit."""
    plugins = slurm_cluster.run("srun", "--mpi=list").stdout
    mpi = next((p for p in ("pmix", "pmi2") if re.search(rf"^\s*{p}\b", plugins, re.M)), None)
    if mpi is None:
        pytest.fail(f"srun offers neither pmix nor pmi2:\n{plugins}")
    epochs = 6
    config = write_config(tmp_path / "srun.yaml", image={"size": 32, "pixel_scale": 0.15},
                          dataset={"n_images": 240, "test_fraction": 0.1, "n_folds": 2,
                                   "shard_size": 80},
                          train={"batch_size": 16, "models": [{"name": "model3"}],
                                 "epochs": epochs, "early_stopping_patience": 0,
                                 "tensorboard": False},
                          slurm={"srun_mpi": mpi,
                                 "train": {"launcher": "srun", "ranks": 2,
                                           "time": "00:15:00"}})
    workdir = tmp_path / "w"
    simulate_dataset(config, workdir / "dataset")
    lenshpc("slurm", "render", "--config", config, "--out", workdir / "slurm",
            "--workdir", workdir, check=True)
    script = (workdir / "slurm" / "train.sbatch").read_text()
    assert f"srun --mpi={mpi} python -m mpi4py -m lenshpc train" in script
    array = slurm_cluster.run("sbatch", "--parsable", "--array=0",
                              str(workdir / "slurm" / "train.sbatch")).stdout.strip()
    run = workdir / "runs" / "model3" / "fold-0"

    deadline = time.monotonic() + 600
    while not (before := _history(run)) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert before and not _finished(run), f"no checkpoint in time:\n{_logs(workdir)}"
    slurm_cluster.run("scancel", "--batch", "--signal=USR1", f"{array}_0")
    assert slurm_cluster.wait_empty(timeout=900), f"queue not empty:\n{_logs(workdir)}"

    log = (workdir / "slurm" / "logs" / f"debug-train-{array}_0.out").read_text()
    assert "SIGUSR1 received" in log and "stopped by SIGUSR1" in log, log
    # Every rank exited 75 by itself (no MPI_Abort), and srun said so.
    assert "Exited with exit code 75" in log and "MPI_ABORT" not in log, log
    assert "requeueing it" in log and f"slurm job {array}_0 (debug-train), restart 1" in log, log
    assert "resuming after epoch" in log, log
    info = json.loads((run / "run.json").read_text())
    assert info["finished"] and info["epochs_done"] == epochs, log
    assert [s["n_ranks"] for s in info["sessions"]] == [2, 2]
    history = _history(run)
    assert history[:len(before)] == before
    assert [int(r["epoch"]) for r in history] == list(range(1, epochs + 1))

    # The same job, uninterrupted, under mpirun: the same history and weights.
    reference = tmp_path / "reference"
    mpirun(2, "train", "--config", workdir / "slurm" / "config.yaml", "--data",
           workdir / "dataset", "--out", reference, "--job", 0, timeout=900)
    ref = reference / "model3" / "fold-0"
    assert (run / "history.csv").read_text() == (ref / "history.csv").read_text()
    assert info["weights_sha256"] == json.loads((ref / "run.json").read_text())["weights_sha256"]
