"""Bad input and re-runs: one clear line and exit 2; nothing already written lost;
jobs already evaluated for the same model file and dataset are not redone.

(Faults injected into real files and processes - a lost shard, a swapped model, a kill,
a read-only or full REPORT - are in tests/faults/test_evaluate_faults.py.)"""

from __future__ import annotations

import json
import shutil

import h5py
import numpy as np
import pytest

from lenshpc.cli import main
from lenshpc.config import UserError
from lenshpc.evaluate import disk, scoring
from lenshpc.io import file_sha256
from lenshpc.lock import check_done, mark_done
from lenshpc.parallel import split_evenly
from tests.conftest import lenshpc
from tests.evaluate.conftest import eval_config
from tests.evaluate.test_eval_mpi import assert_same_content


def evaluate_in_process(capsys, cfg, data, runs, out, *extra) -> tuple[int, str]:
    code = main(["evaluate", "--config", str(cfg), "--data", str(data), "--runs", str(runs),
                 "--out", str(out), *map(str, extra)])
    err = capsys.readouterr().err.strip()
    return code, err


def snapshot(directory):
    """Every product file's bytes (not the lock, which names its last holder, or markers)."""
    return {p.relative_to(directory): p.read_bytes() for p in disk.report_products(directory)}


def retrained(job_dir, model_from):
    """``job_dir`` as if train had finished it again with another model: the model file
    replaced and train's completion marker rewritten over the same files."""
    shutil.copy(model_from, job_dir / "model.keras")
    mark_done(job_dir, "train", ["model.keras", "run.json", "history.csv"])


def test_runs_from_another_dataset_are_refused_and_nothing_is_lost(tmp_path, capsys, eval_cfg,
                                                                  eval_data, eval_runs, plain_report):
    runs = tmp_path / "runs"
    shutil.copytree(eval_runs, runs)
    p = runs / "model1" / "fold-1" / "run.json"
    p.write_text(json.dumps({**json.loads(p.read_text()), "dataset_checksum": "0" * 64}))
    out = tmp_path / "report"
    shutil.copytree(plain_report[1], out)
    before = snapshot(out)
    code, err = evaluate_in_process(capsys, eval_cfg, eval_data, runs, out)
    assert code == 2
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    assert "model1/fold-1 was trained on another dataset" in err
    assert snapshot(out) == before


@pytest.mark.parametrize("case, message", [
    ("no-data", ": not found"),
    ("incomplete-data", "no dataset.h5"),
    ("no-runs", ": not found"),
    ("no-finished-job", "no finished job to evaluate"),
    ("mc-1", "--mc-samples 1: must be 0 (off) or at least 2"),
    ("out-is-a-file", "--out"),
])
def test_bad_input_is_one_line_and_exit_2(tmp_path, capsys, eval_cfg, eval_data, eval_runs,
                                          case, message):
    data, runs, out, extra = eval_data, eval_runs, tmp_path / "report", []
    if case == "no-data":
        data = tmp_path / "nothing"
    elif case == "incomplete-data":
        data = tmp_path / "partial"
        (data / "shards").mkdir(parents=True)
    elif case == "no-runs":
        runs = tmp_path / "nothing"
    elif case == "no-finished-job":
        runs = tmp_path / "runs"
        (runs / "model1" / "fold-0").mkdir(parents=True)
        (runs / "model1" / "fold-0" / "run.json").write_text(json.dumps({"finished": False}))
    elif case == "mc-1":
        extra = ["--mc-samples", "1"]
    elif case == "out-is-a-file":
        out.write_text("not a directory")
    code, err = evaluate_in_process(capsys, eval_cfg, data, runs, out, *extra)
    assert code == 2
    assert err.startswith("lenshpc evaluate: error: ") and len(err.splitlines()) == 1
    assert message in err


def test_bad_config_value_names_the_key(tmp_path, capsys, eval_data, eval_runs):
    cfg = eval_config(tmp_path / "bad.yaml", chunk_size=0)
    code, err = evaluate_in_process(capsys, cfg, eval_data, eval_runs, tmp_path / "r")
    assert code == 2 and "evaluate.chunk_size" in err and len(err.splitlines()) == 1


def test_unreadable_model_file_is_a_user_error(tmp_path, eval_data, eval_runs, plain_report):
    """A model file train vouched for but Keras cannot load: one line naming the job;
    REPORT's products untouched, its completion marker withdrawn (it was being rewritten)."""
    runs = tmp_path / "runs"
    shutil.copytree(eval_runs, runs)
    bad = tmp_path / "bad.keras"
    bad.write_bytes(b"not a keras file")
    retrained(runs / "model3" / "fold-0", bad)
    out = tmp_path / "report"
    shutil.copytree(plain_report[1], out)
    assert check_done(out, "report")
    before = snapshot(out)
    cfg = eval_config(tmp_path / "nofig.yaml", figures=False)
    proc = lenshpc("evaluate", "--config", cfg, "--data", eval_data, "--runs", runs, "--out", out,
                   timeout=600)
    assert proc.returncode == 2, proc.stderr
    assert "cannot load model" in proc.stderr and "model3/fold-0" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert snapshot(out) == before
    assert not check_done(out, "report")


def test_jobs_already_evaluated_are_not_redone(tmp_path, eval_data, eval_runs, plain_report):
    runs = tmp_path / "runs"
    shutil.copytree(eval_runs, runs)
    out = tmp_path / "report"
    shutil.copytree(plain_report[1], out)
    cfg = eval_config(tmp_path / "nofig.yaml", figures=False)
    args = ("evaluate", "--config", cfg, "--data", eval_data, "--runs", runs, "--out", out)

    proc = lenshpc(*args, check=True)
    assert "4 job(s) already evaluated" in proc.stdout and "evaluating" not in proc.stdout
    assert_same_content(plain_report[1] / "predictions.h5", out / "predictions.h5")
    assert (out / "metrics.csv").read_text() == (plain_report[1] / "metrics.csv").read_text()

    # one job trained again (a new model file): only that job is evaluated again
    retrained(runs / "model1" / "fold-1", runs / "model2" / "fold-0" / "model.keras")
    proc = lenshpc(*args, check=True)
    assert "evaluating 1 job(s)" in proc.stdout
    with h5py.File(out / "predictions.h5", "r") as new, \
            h5py.File(plain_report[1] / "predictions.h5", "r") as old:
        for key in ("model1/fold-0", "model2/fold-0", "model3/fold-0"):
            np.testing.assert_array_equal(new[key]["pred"][...], old[key]["pred"][...])
        # the same model file predicts the same values, whichever job it sits in
        np.testing.assert_array_equal(new["model1/fold-1"]["pred"][...], old["model2/fold-0"]["pred"][...])
        assert new["model1/fold-1"].attrs["model_checksum"] == old["model2/fold-0"].attrs["model_checksum"]


def test_units_cover_every_job_and_item_once_on_any_number_of_ranks():
    units = scoring.plan_units(n_jobs=3, n_test=30, chunk_size=8)
    assert units[:4] == [(0, 0, 8), (0, 8, 16), (0, 16, 24), (0, 24, 30)]
    for size in (1, 2, 3, 5, 13, 20):
        seen = [units[u] for rank in range(size) for u in split_evenly(len(units), rank, size)]
        assert seen == units     # contiguous, in order: every unit exactly once


def test_find_jobs_order_and_reasons(tmp_path):
    def job(model, fold, marked=True, **run_json):
        d = tmp_path / model / f"fold-{fold}"
        d.mkdir(parents=True)
        (d / "run.json").write_text(json.dumps({"finished": True, "dataset_checksum": "abc",
                                                "weights_sha256": ["w" * 64], **run_json}))
        (d / "model.keras").write_bytes(b"x")
        if marked:
            mark_done(d, "train", ["model.keras", "run.json"])
        return d

    job("model2", 0)
    job("extra", 0)
    job("model1", 1)
    job("model1", 0, marked=False)                  # run.json says finished, no marker
    job("model2", 1, marked=False, finished=False, epochs_done=4)
    (tmp_path / "model3" / "fold-0").mkdir(parents=True)
    (tmp_path / "model3" / "fold-0" / "run.json").write_text("{broken")
    found, skipped = disk.find_jobs(tmp_path, ["model1", "model2", "model3"], 2, "abc")
    assert [j.key for j in found] == ["model1/fold-1", "model2/fold-0", "extra/fold-0"]
    # the marker vouches for the file: its sha256
    assert found[0].model_checksum == file_sha256(tmp_path / "model1" / "fold-1" / "model.keras")
    reasons = dict(skipped)
    assert reasons["model1/fold-0"].startswith("not finished: run.json says finished but there "
                                               "is no train.done.json")
    assert reasons["model2/fold-1"] == "unfinished (4 epochs done)"
    assert reasons["model3/fold-0"].startswith("unreadable run.json")
    assert reasons["model3/fold-1"] == "missing (no run.json)"


def test_find_jobs_checks_model_files_against_train(tmp_path):
    """Only train's marker makes a job finished: without one (whatever run.json records)
    the job is skipped; with one, its files must be the ones it lists, else refused."""
    d = tmp_path / "model1" / "fold-0"
    d.mkdir(parents=True)
    (d / "model.keras").write_bytes(b"model bytes")
    run = {"finished": True, "dataset_checksum": "abc"}
    for extra in ({}, {"weights_sha256": ["w" * 64] * 2},
                  {"model_sha256": file_sha256(d / "model.keras")}):
        (d / "run.json").write_text(json.dumps({**run, **extra}))
        found, skipped = disk.find_jobs(tmp_path, ["model1"], 1, "abc")
        assert found == [] and "no train.done.json" in dict(skipped)["model1/fold-0"]
    (d / "run.json").write_text(json.dumps(run))          # no hash in run.json, but a marker
    mark_done(d, "train", ["model.keras", "run.json"])
    [job], _ = disk.find_jobs(tmp_path, ["model1"], 1, "abc")
    assert job.model_checksum == file_sha256(d / "model.keras")
    (d / "model.keras").write_bytes(b"another model")
    with pytest.raises(UserError, match="model1/fold-0: refused, the job is not what train finished"):
        disk.find_jobs(tmp_path, ["model1"], 1, "abc")
    (d / "model.keras").unlink()                         # marked finished, model gone
    with pytest.raises(UserError, match="model.keras is missing"):
        disk.find_jobs(tmp_path, ["model1"], 1, "abc")
