"""sbatch rendering, the submission plan, `lenshpc config` — no Slurm daemon needed.

Golden files: the paper config's scripts are the examples in ``slurm/paper/`` (what users
read); variants are in ``tests/slurm/golden/``. After an intended change, regenerate both
with ``LENSHPC_UPDATE_GOLDEN=1 pytest tests/slurm/test_slurm_render.py`` and read the diff.
In CI (``CI`` set) the goldens are never rewritten: a difference fails.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from lenshpc.config import load, loads, schema_markdown
from lenshpc.env import from_environ
from lenshpc.lock import mark_done
from lenshpc.slurm import script
from lenshpc.slurm.submit import plan
from lenshpc.slurm.workdir import StudyProgress, Workdir, prepare, progress
from tests.conftest import ROOT, lenshpc, write_config

GOLDEN = Path(__file__).parent / "golden"
EXAMPLE_WORKDIR = Workdir(Path("/scratch/lenshpc/paper"))
EXAMPLE_SETUP = ("source /opt/lenshpc/.venv/bin/activate",)
UPDATE = bool(os.environ.get("LENSHPC_UPDATE_GOLDEN")) and not os.environ.get("CI")


def _config(base: str, **overrides) -> object:
    data = yaml.safe_load((ROOT / "configs" / f"{base}.yaml").read_text())
    for section, values in overrides.items():
        data.setdefault(section, {}).update(values)
    return loads(data)


#: name -> (config, stage): variants of the site settings worth pinning.
VARIANTS = {
    "debug-mpirun-simulate": (lambda: _config("debug", slurm={"mpi_launcher": "mpirun",
                                                              "srun_mpi": None}), "simulate"),
    "debug-mpirun-train": (lambda: _config("debug", slurm={
        "train": {"launcher": "mpirun", "cpus_per_task": 2, "max_parallel": 2}}), "train"),
    "site-horovodrun-train": (lambda: _config("paper", slurm={
        "account": "astro", "partition": "cpu", "qos": "normal", "extra": ["--mail-type=FAIL"],
        "modules": ["openmpi/4.1", "cuda/12.2"],
        "setup": ["source $HOME/envs/lens/bin/activate"],
        "environment": ["HDF5_USE_FILE_LOCKING=FALSE", "NCCL_DEBUG=WARN", "NOTE=two words"],
        "train": {"launcher": "horovodrun", "nodes": 2, "ranks": 8, "gpus": 4,
                  "gpu_option": "gpus-per-node", "partition": "gpu", "signal_seconds": 600,
                  "max_requeues": 5, "extra": ["--constraint=a100", "--exclusive"]}}), "train"),
    "site-evaluate-srun-pmi2": (lambda: _config("paper", slurm={
        "srun_mpi": "pmi2", "evaluate": {"nodes": 2, "ntasks": 64, "cpus_per_task": 2,
                                         "mem_per_cpu": "2000M"}}), "evaluate"),
}


def mark_dataset_done(folder: Path) -> None:
    """A stand-in for a finished dataset: an index and one shard under the marker simulate
    writes (lenshpc.dataset.folder.dataset_done checks both)."""
    (folder / "shards").mkdir(parents=True, exist_ok=True)
    (folder / "shards" / "shard-00000.h5").write_bytes(b"shard")
    (folder / "dataset.h5").write_bytes(b"index")
    mark_done(folder, "dataset", ["dataset.h5"], info={"shards": {"shard-00000.h5": 5}})


def _check_golden(path: Path, text: str) -> None:
    if UPDATE:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    assert path.is_file(), f"missing golden file {path}: run with LENSHPC_UPDATE_GOLDEN=1"
    assert text == path.read_text(), (f"{path} differs from the rendered script; if intended, "
                                      "regenerate with LENSHPC_UPDATE_GOLDEN=1 and read the diff")


def _bash_n(text: str, tmp_path: Path) -> None:
    f = tmp_path / "check.sh"
    f.write_text(text)
    proc = subprocess.run(["bash", "-n", str(f)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


@pytest.mark.parametrize("stage", script.STAGES)
def test_paper_examples_in_slurm_folder_are_current(stage, tmp_path):
    text = script.render(load(ROOT / "configs" / "paper.yaml"), stage, EXAMPLE_WORKDIR.paths(),
                         EXAMPLE_SETUP)
    _check_golden(ROOT / "slurm" / "paper" / f"{stage}.sbatch", text)
    _bash_n(text, tmp_path)


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_golden_variants(name, tmp_path):
    make, stage = VARIANTS[name]
    text = script.render(make(), stage, EXAMPLE_WORKDIR.paths(), EXAMPLE_SETUP)
    _check_golden(GOLDEN / f"{name}.sbatch", text)
    _bash_n(text, tmp_path)


def _sbatch_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith("#SBATCH")]


def test_sbatch_lines_are_sorted_quoted_and_before_any_command():
    cfg = _config("debug")
    paths = script.Paths.under(Path("/data/my study"), Path("/data/my study/config.yaml"),
                               Path("/data/my study/slurm/logs"))
    for stage in script.STAGES:
        text = script.render(cfg, stage, paths, EXAMPLE_SETUP)
        lines = text.splitlines()
        sbatch = _sbatch_lines(text)
        assert sbatch == sorted(sbatch)
        # sbatch stops reading #SBATCH at the first command: all of them come first.
        first_command = next(i for i, line in enumerate(lines[1:], 1) if not line.startswith("#"))
        assert all(lines.index(line) < first_command for line in sbatch)
        assert "#SBATCH --chdir='/data/my study'" in sbatch
        log = "%x-%A_%a.out" if stage == "train" else "%x-%j.out"
        assert f"#SBATCH --output='/data/my study/slurm/logs/{log}'" in sbatch


def test_extra_options_override_and_flags():
    cfg = _config("debug", slurm={"extra": ["--time=00:10:00", "--exclusive"],
                                  "train": {"extra": ["--requeue"], "gpus": 2, "ranks": 2}})
    opts = script.sbatch_options(cfg, "train", EXAMPLE_WORKDIR.paths())
    assert opts["time"] == "00:10:00" and opts["exclusive"] is None
    assert opts["gres"] == "gpu:2" and opts["signal"] == "B:USR1@300"


def test_array_spec():
    assert script.array_spec(range(12)) == "0-11"
    assert script.array_spec([9, 0, 1, 2, 5, 7, 8], max_parallel=3) == "0-2,5,7-9%3"
    assert script.array_spec([4]) == "4"


def test_render_cli_paper(tmp_path):
    out = tmp_path / "scripts"
    proc = lenshpc("slurm", "render", "--config", ROOT / "configs" / "paper.yaml", "--out", out,
                   "--workdir", tmp_path / "w", check=True)
    assert "sbatch --parsable" in proc.stdout
    cfg = load(out / "config.yaml")  # the resolved config the scripts read
    assert cfg == load(ROOT / "configs" / "paper.yaml")
    texts = {s: (out / f"{s}.sbatch").read_text() for s in script.STAGES}
    for stage, text in texts.items():
        assert subprocess.run(["bash", "-n", str(out / f"{stage}.sbatch")]).returncode == 0
        assert os.access(out / f"{stage}.sbatch", os.X_OK)
        assert f"--config {out / 'config.yaml'}" in text
    train = _sbatch_lines(texts["train"])
    for expected in ("--array=0-11", "--gres=gpu:1", "--time=12:00:00", "--cpus-per-task=8",
                     "--mem-per-cpu=4G", "--signal=B:USR1@300", "--requeue", "--open-mode=append",
                     "--job-name=paper-train"):
        assert f"#SBATCH {expected}" in train
    assert "#SBATCH --ntasks=64" in texts["simulate"] and "#SBATCH --nodes=2" in texts["simulate"]
    assert "#SBATCH --ntasks=32" in texts["evaluate"]
    assert re.search(r"^srun --mpi=pmix python -m mpi4py -m lenshpc simulate",
                     texts["simulate"], re.M)


def test_submit_dry_run_shows_the_chain_and_resubmits_only_what_is_missing(tmp_path):
    cfg_path = write_config(tmp_path / "study.yaml", slurm={"train": {"max_parallel": 2}})
    w = tmp_path / "w"
    proc = lenshpc("slurm", "submit", "--config", cfg_path, "--workdir", w, "--dry-run", check=True)
    sbatch = [line for line in proc.stdout.splitlines() if line.startswith("sbatch ")]
    assert sbatch == [
        f"sbatch --parsable {w / 'slurm' / 'simulate.sbatch'}",
        f"sbatch --parsable --array=0-5%2 --dependency=afterok:<simulate job id> "
        f"--kill-on-invalid-dep=yes {w / 'slurm' / 'train.sbatch'}",
        f"sbatch --parsable --dependency=afterok:<train job id> --kill-on-invalid-dep=yes "
        f"{w / 'slurm' / 'evaluate.sbatch'}",
    ]
    for d in ("dataset", "runs", "report", "slurm/logs"):
        assert (w / d).is_dir()
    assert not (w / "slurm" / "submitted.json").exists()

    # The dataset is complete and jobs 0, 1 and 4 finished (their markers say so; a run.json
    # saying "finished" is not enough): only the rest is trained.
    mark_dataset_done(w / "dataset")
    cfg = load(cfg_path)
    from lenshpc.config.train import jobs
    for job in jobs(cfg.train, cfg.dataset.n_folds):
        run = w / "runs" / job.path
        run.mkdir(parents=True)
        (run / "run.json").write_text(json.dumps({"finished": True}))
        if job.index in (0, 1, 4):
            mark_done(run, "train", ["run.json"])
    proc = lenshpc("slurm", "submit", "--config", cfg_path, "--workdir", w, "--dry-run", check=True)
    sbatch = [line for line in proc.stdout.splitlines() if line.startswith("sbatch ")]
    assert sbatch[0].startswith("sbatch --parsable --array=2-3,5%2 ")
    assert "--dependency" not in sbatch[0]
    assert "--dependency=afterok:<train job id>" in sbatch[1]
    assert len(sbatch) == 2


def test_plan_rules():
    scripts = Path("/w/slurm")
    stages = lambda p: [(s.stage, s.array, s.after) for s in plan(p, scripts)]  # noqa: E731
    fresh = StudyProgress(False, 4, frozenset(), False)
    assert stages(fresh) == [("simulate", None, None), ("train", (0, 1, 2, 3), "simulate"),
                             ("evaluate", None, "train")]
    trained = StudyProgress(True, 4, frozenset({0, 1, 2, 3}), False)
    assert stages(trained) == [("evaluate", None, None)]
    assert stages(StudyProgress(True, 4, frozenset({0, 1, 2, 3}), True)) == []
    assert stages(StudyProgress(True, 4, frozenset({1}), False)) == [
        ("train", (0, 2, 3), None), ("evaluate", None, "train")]


def test_progress_report_is_current_only_when_newer_than_every_run(tmp_path):
    cfg = _config("debug")
    wd = Workdir(tmp_path / "w")
    prepare(cfg, wd)
    mark_dataset_done(wd.dataset)
    from lenshpc.config.train import jobs
    grid = jobs(cfg.train, cfg.dataset.n_folds)
    for job in grid:
        (wd.runs / job.path).mkdir(parents=True)
        (wd.runs / job.path / "run.json").write_text('{"finished": true}')
        mark_done(wd.runs / job.path, "train", ["run.json"])
    (wd.report / "table1.csv").write_text("model\n")
    marker = mark_done(wd.report, "report", ["table1.csv"])
    os.utime(marker, (1e10, 1e10))
    assert progress(cfg, wd) == StudyProgress(True, len(grid), frozenset(range(len(grid))), True)
    # job 2 trained further (its marker rewritten after the report's)
    os.utime(wd.runs / grid[2].path / "train.done.json", (2e10, 2e10))
    assert not progress(cfg, wd).report_current


def test_workdir_of_another_config_is_refused(tmp_path):
    cfg = tmp_path / "a.yaml"
    w = tmp_path / "w"
    write_config(cfg)
    lenshpc("slurm", "submit", "--config", cfg, "--workdir", w, "--dry-run", check=True)
    # Site settings and evaluation may change; the science may not.
    write_config(cfg, slurm={"train": {"time": "00:30:00"}}, evaluate={"mc_samples": 4})
    lenshpc("slurm", "submit", "--config", cfg, "--workdir", w, "--dry-run", check=True)
    write_config(cfg, train={"epochs": 7})
    before = (w / "config.yaml").read_text()
    proc = lenshpc("slurm", "submit", "--config", cfg, "--workdir", w, "--dry-run")
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        f"lenshpc slurm: error: --workdir {w} was made from a different config "
        "(they differ at train.epochs: 20 -> 7); use a new workdir for it"]
    assert (w / "config.yaml").read_text() == before


def test_submit_without_sbatch_is_one_line(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "lenshpc", "slurm", "submit", "--config",
         str(ROOT / "configs" / "debug.yaml"), "--workdir", str(tmp_path / "w")],
        capture_output=True, text=True, env={"PATH": "/nonexistent", "HOME": str(tmp_path)})
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "lenshpc slurm: error: sbatch not found: submit from a Slurm login node, or use "
        "`lenshpc run` on one machine (--dry-run shows the commands)"]


@pytest.mark.parametrize("slurm, message", [
    ({"train": {"time": "two hours"}}, "config slurm.train.time: 'two hours' is not a Slurm time"),
    ({"train": {"ranks": 3, "nodes": 2}}, "config slurm.train.ranks: 3 ranks cannot be spread"),
    ({"extra": ["constraint=a100"]}, "config slurm.extra: "),
    ({"environment": ["1BAD=x"]}, "config slurm.environment: "),
    ({"simulate": {"mem_per_cpu": "lots"}}, "config slurm.simulate.mem_per_cpu: 'lots' is not"),
    ({"mpi_launcher": "aprun"}, "config slurm.mpi_launcher: 'aprun' is not allowed"),
])
def test_bad_slurm_section_is_one_line(tmp_path, slurm, message):
    cfg = write_config(tmp_path / "bad.yaml", slurm=slurm)
    proc = lenshpc("config", "check", cfg)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"lenshpc config: error: {message}"), lines


def test_config_check_and_docs():
    proc = lenshpc("config", "check", ROOT / "configs" / "paper.yaml", check=True)
    assert "12 training jobs (Slurm array 0-11)" in proc.stdout
    proc = lenshpc("config", "check", "--resolved", ROOT / "configs" / "debug.yaml", check=True)
    assert loads(yaml.safe_load(proc.stdout)) == load(ROOT / "configs" / "debug.yaml")
    proc = lenshpc("config", "docs", check=True)
    assert proc.stdout == schema_markdown()


def test_docs_config_md_is_generated_from_the_schema():
    assert (ROOT / "docs" / "config.md").read_text() == schema_markdown(), (
        "docs/config.md is stale: regenerate it with `lenshpc config docs > docs/config.md`")


def test_slurm_env_adapter():
    env = from_environ({"SLURM_JOB_ID": "17", "SLURM_ARRAY_JOB_ID": "12",
                        "SLURM_ARRAY_TASK_ID": "5",
                        "SLURM_RESTART_COUNT": "2", "SLURM_NTASKS": "4", "SLURM_CPUS_PER_TASK": "8",
                        "SLURM_JOB_NODELIST": "gpu[01-02]", "SLURM_MEM_PER_CPU": "4096",
                        "SLURM_GPUS_ON_NODE": "2", "SLURM_JOB_PARTITION": "gpu",
                        "SLURM_JOB_NAME": "paper-train", "SLURM_JOB_ACCOUNT": "(null)"})
    assert env.in_job and env.job_ref == "12_5" and env.restart_count == 2
    assert (env.ntasks, env.cpus_per_task, env.mem_per_cpu_mb, env.gpus_on_node) == (4, 8, 4096, 2)
    assert env.account is None
    assert env.describe() == ("slurm job 12_5 (paper-train), restart 2, on gpu[01-02], "
                              "4 task(s) x 8 cpu(s), 2 gpu(s) per node, partition gpu")
    outside = from_environ({})
    assert not outside.in_job and outside.job_ref is None and outside.restart_count == 0
    assert lenshpc("slurm", "env", check=True).stdout.strip() in ("not inside a Slurm job",
                                                                  from_environ().describe())
