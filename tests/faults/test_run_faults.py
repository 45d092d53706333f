"""Faults of `lenshpc run` and of its stages' launch, with real processes and real files.

- SIGTERM to the `lenshpc run` parent while a 2-rank training job runs: the stage is told,
  stops at a checkpoint, the parent waits for it and exits 75; nothing of the stage is
  left running; a rerun resumes the job and finishes the pipeline.
- kill -9 of the parent: its stage dies with it (parent-death signal), no orphan mpirun.
- A product without its completion marker is not done (a report with table1.csv but no
  report.done.json is made again).
- Under real mpirun, a user error agreed by all ranks ends without an MPI_ABORT banner.
"""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from lenshpc.config import load
from lenshpc.config.train import jobs
from lenshpc.lock import mark_done
from lenshpc.slurm.workdir import Workdir, prepare, progress
from tests.conftest import PYTHON, env, lenshpc, mpirun_cmd, require, simulate_dataset, write_config

#: The train tests' small study (32x32 images, 240 of them, 2 folds), one model.
SMALL = dict(image={"size": 32, "pixel_scale": 0.15},
             dataset={"n_images": 240, "test_fraction": 0.1, "n_folds": 2, "shard_size": 80},
             train={"batch_size": 16, "models": [{"name": "model3"}]})


def _processes_mentioning(text: str) -> list[tuple[int, str]]:
    """Live processes whose command line contains ``text`` (zombies have none)."""
    found = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = Path(entry.path, "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if text in cmdline:
            found.append((int(entry.name), cmdline.strip()))
    return found


def _run(config: Path, workdir: Path, stdout=subprocess.PIPE, **kw) -> subprocess.Popen:
    """`lenshpc run --np 2` in a session of its own (the test can clean up after it)."""
    return subprocess.Popen([PYTHON, "-m", "lenshpc", "run", "--config", str(config),
                             "--workdir", str(workdir), "--np", "2"],
                            stdout=stdout, stderr=subprocess.STDOUT, text=True,
                            env=env(OMPI_MCA_mpi_yield_when_idle="1", **kw),
                            start_new_session=True)


def _wait_for(path: Path, proc: subprocess.Popen, timeout: float = 600) -> None:
    end = time.monotonic() + timeout
    while not path.exists():
        assert proc.poll() is None, proc.communicate()[0][-3000:]
        assert time.monotonic() < end, f"{path} did not appear"
        time.sleep(0.1)


def _no_orphans(workdir: Path, timeout: float = 10) -> None:
    """Nothing started for ``workdir`` is still running (after a short grace)."""
    end = time.monotonic() + timeout
    while (left := _processes_mentioning(str(workdir))) and time.monotonic() < end:
        time.sleep(0.2)
    for pid, _ in left:  # leave a clean machine even when the assertion fails
        os.kill(pid, signal.SIGKILL)
    assert not left, f"processes left running: {left}"


def _history(run: Path) -> list[str]:
    return (run / "history.csv").read_text().splitlines()


@pytest.mark.mpi
@pytest.mark.slow
def test_sigterm_to_run_during_train_stops_the_job_and_a_rerun_resumes_it(tmp_path):
    require("mpirun")
    epochs = 8
    config = write_config(tmp_path / "study.yaml", **SMALL)
    config = write_config(tmp_path / "study.yaml", base=config,
                          train={"epochs": epochs, "early_stopping_patience": 0,
                                 "tensorboard": False})
    workdir = tmp_path / "w"
    run0 = workdir / "runs" / "model3" / "fold-0"
    proc = _run(config, workdir)
    try:
        _wait_for(run0 / "history.csv", proc)
        os.kill(proc.pid, signal.SIGTERM)  # the parent only, as a batch system or kill would
        out, _ = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == 75, out[-3000:]
    assert "lenshpc run: SIGTERM received; passing it to train job 0 of 2" in out, out[-3000:]
    assert "stopped by SIGTERM" in out  # the training ranks got it themselves
    assert "MPI_ABORT" not in out
    _no_orphans(workdir)
    saved = _history(run0)
    assert 1 <= len(saved) - 1 < epochs
    assert not (workdir / "runs" / "model3" / "fold-1").exists()  # no later stage started

    again = subprocess.run([PYTHON, "-m", "lenshpc", "run", "--config", str(config),
                            "--workdir", str(workdir), "--np", "2"], capture_output=True,
                           text=True, env=env(OMPI_MCA_mpi_yield_when_idle="1"), timeout=1800)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert f"resuming after epoch {len(saved) - 1}" in again.stdout
    rows = _history(run0)
    assert rows[:len(saved)] == saved  # a resume, not a restart
    assert [int(r.split(",")[0]) for r in rows[1:]] == list(range(1, epochs + 1))
    assert json.loads((run0 / "run.json").read_text())["finished"]
    with (workdir / "report" / "table1.csv").open() as f:
        assert [row["model"] for row in csv.DictReader(f)] == ["model3"]


@pytest.mark.mpi
def test_kill_9_of_run_leaves_no_stage_running(tmp_path):
    require("mpirun")
    config = write_config(tmp_path / "study.yaml", **SMALL)
    config = write_config(tmp_path / "study.yaml", base=config, dataset={"shard_size": 20})
    workdir = tmp_path / "w"
    # Test hook of simulate: every rank pauses 3 s after each of its 6 shards, so the
    # stage would run on for half a minute after its parent is gone.
    with (tmp_path / "run.log").open("w") as log:
        proc = _run(config, workdir, log, LENSHPC_TEST_SLOW_SHARD="3")
    try:
        _wait_for(workdir / "dataset" / "shards", proc)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=60)
        _no_orphans(workdir, timeout=8)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def test_sigterm_before_any_stage_exits_75_and_starts_nothing(tmp_path):
    """A signal that comes between stages stops the pipeline before the next one."""
    from lenshpc.slurm.supervise import Supervisor
    lines: list[str] = []
    with Supervisor(lines.append) as supervisor:
        os.kill(os.getpid(), signal.SIGTERM)
        status = supervisor.run("simulate", [PYTHON, "-c", "raise SystemExit(3)"], env())
    assert status == 75
    assert lines == ["lenshpc run: SIGTERM received; no stage is running, stopping"]


def _marked_workdir(tmp_path: Path) -> tuple[object, Workdir]:
    """A workdir whose dataset and every job carry real completion markers."""
    config = write_config(tmp_path / "study.yaml", **SMALL)
    cfg = load(config)
    wd = Workdir(tmp_path / "w")
    prepare(cfg, wd)
    simulate_dataset(config, wd.dataset)  # a real one, with simulate's own marker
    for job in jobs(cfg.train, cfg.dataset.n_folds):
        run = wd.runs / job.path
        run.mkdir(parents=True)
        for name in ("model.keras", "run.json", "history.csv"):
            (run / name).write_text(name)
        mark_done(run, "train", ["model.keras", "run.json", "history.csv"])
    return config, wd


def test_report_with_table1_but_no_marker_is_not_done(tmp_path):
    """Evaluate killed after table1.csv but before report.md: neither `lenshpc run` nor
    `slurm submit` may call that report done."""
    config, wd = _marked_workdir(tmp_path)
    cfg = load(config)
    (wd.report / "table1.csv").write_text("model\nmodel3\n")
    done = progress(cfg, wd)
    assert done.dataset_complete and not done.unfinished
    assert not done.report_current
    proc = lenshpc("slurm", "submit", "--config", config, "--workdir", wd.root, "--dry-run",
                   check=True)
    sbatch = [line for line in proc.stdout.splitlines() if line.startswith("sbatch ")]
    assert sbatch == [f"sbatch --parsable {wd.slurm / 'evaluate.sbatch'}"]

    (wd.report / "report.md").write_text("# report\n")
    mark_done(wd.report, "report", ["table1.csv", "report.md"])
    assert progress(cfg, wd).report_current
    # A product changed after it was marked is not done any more.
    (wd.report / "report.md").write_text("# edited\n")
    assert not progress(cfg, wd).report_current


def test_a_job_whose_files_changed_after_its_marker_is_trained_again(tmp_path):
    config, wd = _marked_workdir(tmp_path)
    cfg = load(config)
    assert progress(cfg, wd).unfinished == []
    (wd.runs / "model3" / "fold-1" / "model.keras").write_text("another job's model")
    assert progress(cfg, wd).unfinished == [1]
    next((wd.dataset / "shards").glob("shard-*.h5")).unlink()
    assert not progress(cfg, wd).dataset_complete


@pytest.mark.mpi
@pytest.mark.parametrize("quiet", [False, True])
def test_agreed_user_error_under_mpirun_is_one_line_without_mpi_abort(tmp_path, quiet):
    """Every rank refuses the same unwritable --out: they finalize MPI instead of aborting.

    Open MPI's mpirun itself still reports any non-zero exit with a banner of its own;
    ``mpirun -q`` leaves the user's line last."""
    require("mpirun")
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    cmd = mpirun_cmd(2, "simulate", "--config", write_config(tmp_path / "s.yaml", **SMALL),
                     "--out", blocker / "sub")
    if quiet:
        cmd.insert(1, "-q")
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env(), timeout=120)
    line = f"lenshpc simulate: error: --out {blocker / 'sub'}: {blocker} is a file, not a folder"
    assert proc.returncode == 2, proc.stderr
    assert "MPI_ABORT" not in proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert lines.count(line) == 1, proc.stderr
    if quiet:
        assert lines[-1] == line, proc.stderr


def test_report_is_current_only_for_the_models_its_marker_names(tmp_path):
    """The report's marker records the dataset checksum and each model's sha256: a job
    trained again into another model makes the report stale, whatever the file times."""
    config, wd = _marked_workdir(tmp_path)
    cfg = load(config)
    grid = jobs(cfg.train, cfg.dataset.n_folds)
    marker = lambda folder, product: json.loads((folder / f"{product}.done.json").read_text())  # noqa: E731
    models = {j.path: marker(wd.runs / j.path, "train")["files"]["model.keras"]["sha256"]
              for j in grid}
    checksum = marker(wd.dataset, "dataset")["info"]["checksum"]
    (wd.report / "report.md").write_text("# report\n")
    mark_done(wd.report, "report", ["report.md"],
              info={"dataset_checksum": checksum, "models": models})
    assert progress(cfg, wd).report_current
    run = wd.runs / grid[1].path
    (run / "model.keras").write_text("trained again")
    mark_done(run, "train", ["model.keras", "run.json", "history.csv"])
    report_marker = wd.report / "report.done.json"
    os.utime(report_marker, (2e10, 2e10))  # newer than everything: times do not decide
    assert not progress(cfg, wd).report_current


def test_only_the_stage_processes_are_signalled_not_their_launchers():
    from lenshpc.slurm.supervise import is_stage_process
    py = "/venv/bin/python"
    assert is_stage_process([py, "-m", "mpi4py", "-m", "lenshpc", "train", "--job", "0"])
    assert is_stage_process([py, "-m", "lenshpc", "simulate"])
    assert not is_stage_process(["mpirun", "-n", "2", py, "-m", "mpi4py", "-m", "lenshpc"])
    assert not is_stage_process([py, "/venv/bin/horovodrun", "-np", "2", py, "-m", "lenshpc"])
    assert not is_stage_process(["/bin/sh", "-c", f"{py} -m lenshpc train"])
    assert not is_stage_process(["srun", "--mpi=pmix", py, "-m", "lenshpc"])
