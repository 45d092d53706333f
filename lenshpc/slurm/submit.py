"""Render the three scripts into ``W/slurm`` and submit what is missing as a chain.

simulate -> train array (``afterok`` on simulate) -> evaluate (``afterok`` on the whole
array). Stages already done are left out, as their completion markers say
(:func:`lenshpc.slurm.workdir.progress`): no simulate when the dataset's marker says it
is complete, an array over the unfinished jobs only, no evaluate when the report is
current (finished, made from the dataset and models finished now, newer than the config).
``--kill-on-invalid-dep=yes`` removes a dependent job whose dependency failed, so the
queue empties and a later submission can pick up from there.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from lenshpc.config import Config, UserError
from lenshpc.slurm import script
from lenshpc.slurm.script import Stage
from lenshpc.slurm.workdir import StudyProgress, Workdir, prepare, progress


@dataclass(frozen=True)
class Submission:
    """One sbatch call of the chain."""

    stage: Stage
    script: Path
    array: tuple[int, ...] | None = None
    after: Stage | None = None  # the stage whose job must end OK first

    def command(self, job_ids: dict[str, str], max_parallel: int = 0) -> list[str]:
        """The sbatch command line; dependencies name ``job_ids[after]``."""
        cmd = ["sbatch", "--parsable"]
        if self.array is not None:
            cmd.append(f"--array={script.array_spec(self.array, max_parallel)}")
        if self.after is not None:
            cmd += [f"--dependency=afterok:{job_ids[self.after]}", "--kill-on-invalid-dep=yes"]
        return cmd + [str(self.script)]


def plan(done: StudyProgress, scripts: Path) -> list[Submission]:
    """What to submit, in order, given what is done. Pure."""
    chain: list[Submission] = []
    if not done.dataset_complete:
        chain.append(Submission("simulate", scripts / "simulate.sbatch"))
    if done.unfinished:
        chain.append(Submission("train", scripts / "train.sbatch", tuple(done.unfinished),
                                chain[-1].stage if chain else None))
    if chain or not done.report_current:
        chain.append(Submission("evaluate", scripts / "evaluate.sbatch", None,
                                chain[-1].stage if chain else None))
    return chain


def render_scripts(cfg: Config, out: Path, paths: script.Paths,
                   setup: tuple[str, ...] | None = None) -> dict[Stage, Path]:
    """Write ``out/<stage>.sbatch`` for every stage; returns their paths."""
    setup = script.environment_setup() if setup is None else setup
    written = {}
    try:
        out.mkdir(parents=True, exist_ok=True)
        paths.logs.mkdir(parents=True, exist_ok=True)
        for stage in script.STAGES:
            path = out / f"{stage}.sbatch"
            path.write_text(script.render(cfg, stage, paths, setup))
            path.chmod(0o755)
            written[stage] = path
    except OSError as exc:
        raise UserError(f"cannot write the scripts into {out}: {exc.strerror or exc}") from None
    return written


def _still_queued(job_ids: list[str]) -> list[str]:
    """Those of ``job_ids`` that squeue still lists (pending or running)."""
    if not job_ids or shutil.which("squeue") is None:
        return []
    proc = subprocess.run(["squeue", "-h", "-o", "%i", "-j", ",".join(job_ids)],
                          capture_output=True, text=True)
    return proc.stdout.split() if proc.returncode == 0 else []


def _sbatch(cmd: list[str]) -> str:
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    except FileNotFoundError:
        raise UserError("sbatch not found: submit from a Slurm login node, or use "
                        "`lenshpc run` on one machine (--dry-run shows the commands)") from None
    except subprocess.TimeoutExpired:
        raise UserError(f"sbatch did not answer within 120 s: {' '.join(cmd)}") from None
    if proc.returncode != 0:
        why = (proc.stderr.strip().splitlines() or [f"exit status {proc.returncode}"])[-1]
        raise UserError(f"sbatch refused {Path(cmd[-1]).name}: {why}")
    return proc.stdout.strip().split(";")[0]


def submit(cfg: Config, wd: Workdir, dry_run: bool = False,
           say: Callable[[str], None] = print) -> dict[str, str]:
    """Render the scripts into ``W/slurm`` and submit the missing part of the chain.

    Returns {stage: job id} of what was submitted (placeholders with ``dry_run``)."""
    last: dict[str, str] = {}
    if wd.submitted.is_file():
        try:
            last = json.loads(wd.submitted.read_text()).get("jobs", {})
        except (OSError, ValueError, AttributeError):
            last = {}
    queued = _still_queued(list(last.values()))
    if queued and not dry_run:
        raise UserError(f"jobs of the last submission to {wd.root} are still queued or running "
                        f"({', '.join(queued)}); wait for them or scancel them first")
    prepare(cfg, wd)
    scripts = render_scripts(cfg, wd.slurm, wd.paths())
    done = progress(cfg, wd)
    chain = plan(done, wd.slurm)
    say(f"workdir {wd.root}: dataset {'complete' if done.dataset_complete else 'to simulate'}, "
        f"{len(done.finished)} of {done.n_jobs} training jobs finished, "
        f"report {'up to date' if done.report_current else 'to (re)make'}")
    say(f"scripts: {', '.join(str(p) for p in scripts.values())}")
    if not chain:
        say(f"nothing to submit: the study is complete ({wd.report / 'report.md'})")
        return {}
    ids: dict[str, str] = {}
    for sub in chain:
        cmd = sub.command(ids if not dry_run else {s: f"<{s} job id>" for s in script.STAGES},
                          cfg.slurm.train.max_parallel)
        if dry_run:
            ids[sub.stage] = f"<{sub.stage} job id>"
            say(" ".join(cmd))
            continue
        try:
            ids[sub.stage] = _sbatch(cmd)
        except UserError as exc:
            if ids:
                raise UserError(f"{exc} (already submitted: "
                                f"{', '.join(f'{s} {i}' for s, i in ids.items())})") from None
            raise
        wd.submitted.write_text(json.dumps({"time": time.strftime("%Y-%m-%dT%H:%M:%S"),
                                            "jobs": ids}, indent=1) + "\n")
        jobs = f" (array {script.array_spec(sub.array)})" if sub.array else ""
        after = f", after {sub.after} {ids[sub.after]}" if sub.after else ""
        say(f"submitted {sub.stage}{jobs}: job {ids[sub.stage]}{after}")
    if not dry_run:
        say(f"logs: {wd.logs}; report when done: {wd.report / 'report.md'}")
    return ids
