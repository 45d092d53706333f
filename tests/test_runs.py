"""One "finished" for a job folder: evaluate (lenshpc.runs.find_jobs) and `lenshpc run`
(lenshpc.slurm.workdir.progress) agree on every state a job folder can be in.

The folders are made of real files written by train's own writers (run.json,
history.csv, train.done.json by lenshpc.lock.mark_done); no model is loaded by either
predicate, so model.keras holds stand-in bytes.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from lenshpc.config import UserError, load
from lenshpc.lock import mark_done
from lenshpc.runs import JobFiles, find_jobs, job_done
from lenshpc.slurm.workdir import Workdir, prepare, progress
from lenshpc.train.state import write_history, write_json
from tests.conftest import write_config

CHECKSUM = "c" * 64
KEY = "model1/fold-0"   # job 0 of configs/debug.yaml's grid


def finished_job(d: Path) -> JobFiles:
    """A job folder as train leaves it when finished: model, run.json, history, marker."""
    files = JobFiles(d)
    d.mkdir(parents=True, exist_ok=True)
    files.model.write_bytes(b"model bytes " * 100)
    write_json(files.run_json, {"job": 0, "model": "model1", "fold": 0, "finished": True,
                                "epochs_done": 2, "dataset_checksum": CHECKSUM})
    write_history(files.history, [{"epoch": e, "loss": 1.0, "val_loss": 1.0, "mae": 0.1,
                                   "val_mae": 0.1, "lr": 1e-3} for e in (1, 2)])
    mark_done(d, files.PRODUCT, files.finished_products)
    return files


def _run_json(files: JobFiles, **changes) -> None:
    run = json.loads(files.run_json.read_text())
    run.update(changes)
    write_json(files.run_json, run)


def no_run_json(files):
    shutil.rmtree(files.root)
    files.root.mkdir()


def unfinished(files):
    files.marker.unlink()
    files.model.unlink()
    _run_json(files, finished=False, epochs_done=1)


def finished_without_marker(files):
    files.marker.unlink()


def marker_but_model_missing(files):
    files.model.unlink()


def marker_and_files(files):
    pass


def damaged_model(files):
    data = bytearray(files.model.read_bytes())
    data[5] ^= 0xFF                      # same size, other sha256
    files.model.write_bytes(bytes(data))


def run_json_changed_after_marker(files):
    _run_json(files, note="edited")


def marker_unreadable(files):
    files.marker.write_text("{not json")


STATES = {no_run_json: False, unfinished: False, finished_without_marker: False,
          marker_but_model_missing: False, marker_and_files: True, damaged_model: False,
          run_json_changed_after_marker: False, marker_unreadable: False}


@pytest.mark.parametrize("state", list(STATES), ids=[s.__name__ for s in STATES])
def test_evaluate_and_lenshpc_run_agree_on_every_state_of_a_job_folder(tmp_path, state):
    cfg = load(write_config(tmp_path / "study.yaml"))
    wd = Workdir(tmp_path / "w")
    prepare(cfg, wd)
    files = finished_job(wd.runs / KEY)
    state(files)

    by_run = 0 in progress(cfg, wd).finished           # lenshpc run / slurm submit
    try:
        found, skipped = find_jobs(wd.runs, [m.name for m in cfg.train.models],
                                   cfg.dataset.n_folds, CHECKSUM)
        by_evaluate, refused = KEY in [j.key for j in found], None
    except UserError as exc:                           # a marker its files no longer match
        by_evaluate, refused, skipped = False, str(exc), []
    assert by_run == by_evaluate == bool(job_done(files.root)) == STATES[state]
    if not by_evaluate:   # evaluate says why: skipped with a reason, or refused in one line
        reason = refused or dict(skipped)[KEY]
        assert reason and "\n" not in reason
    if state is finished_without_marker:
        assert "no train.done.json" in dict(skipped)[KEY]
