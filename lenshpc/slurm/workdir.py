"""A study's working folder and how far its pipeline has got.

``W/config.yaml`` (the resolved config every stage reads), ``W/dataset``, ``W/runs``,
``W/report``, and ``W/slurm`` (the rendered scripts, their logs, the last submission).
Both ``lenshpc slurm submit`` and ``lenshpc run`` use this layout and :func:`progress`,
so either can finish what the other started. Whether a stage's product is finished is
asked of its completion marker only (:func:`stage_done`, :mod:`lenshpc.lock`): the same
predicate the stage itself uses. A file merely existing never means done.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from lenshpc.config import Config, UserError, from_yaml_text, to_plain
from lenshpc.config.schema import first_difference
from lenshpc.config.train import jobs
from lenshpc.dataset.folder import dataset_done
from lenshpc.io import atomic_write_text
from lenshpc.lock import Done, check_done, marker_path
from lenshpc.runs import JobFiles, job_done
from lenshpc.slurm.script import Paths, Stage

#: Sections a workdir's config may change between submissions: they do not change
#: what the dataset or the trained models are (evaluate is redone when they change).
MUTABLE_SECTIONS = ("slurm", "evaluate")


@dataclass(frozen=True)
class Workdir:
    """The folders of one study under ``root``."""

    root: Path

    @property
    def config(self) -> Path:
        return self.root / "config.yaml"

    @property
    def dataset(self) -> Path:
        return self.root / "dataset"

    @property
    def runs(self) -> Path:
        return self.root / "runs"

    @property
    def report(self) -> Path:
        return self.root / "report"

    @property
    def slurm(self) -> Path:
        return self.root / "slurm"

    @property
    def logs(self) -> Path:
        return self.slurm / "logs"

    @property
    def submitted(self) -> Path:
        """Job ids of the last ``lenshpc slurm submit``."""
        return self.slurm / "submitted.json"

    def paths(self) -> Paths:
        return Paths(self.root, self.config, self.dataset, self.runs, self.report, self.logs)


#: The completion marker of each stage's product, in the folder the product is in:
#: W/dataset (simulate), W/runs/<model>/fold-<k> (each train job), W/report (evaluate).
PRODUCTS: dict[Stage, str] = {"simulate": "dataset", "train": "train", "evaluate": "report"}


def stage_done(stage: Stage, folder: Path) -> Done:
    """Whether ``stage``'s product in ``folder`` is finished and intact: the predicate the
    stage itself uses: :func:`lenshpc.dataset.folder.dataset_done` (which also checks the
    shards its marker lists), :func:`lenshpc.runs.job_done` for a train job."""
    if stage == "simulate":
        return dataset_done(folder)
    if stage == "train":
        return job_done(folder)
    return check_done(folder, PRODUCTS[stage])


def _marker(folder: Path, stage: Stage) -> dict[str, Any]:
    try:
        return json.loads(marker_path(folder, PRODUCTS[stage]).read_text())
    except (OSError, ValueError):
        return {}


def _report_inputs_match(wd: Workdir, grid: list, report_info: dict[str, Any]) -> bool | None:
    """Whether the report was made from the dataset and models now finished, by what its
    marker records (the dataset checksum, each job's model sha256); None if it records
    neither."""
    models, checksum = report_info.get("models"), report_info.get("dataset_checksum")
    if not isinstance(models, dict) and checksum is None:
        return None
    if checksum is not None and checksum != (_marker(wd.dataset, "simulate").get("info") or
                                             {}).get("checksum"):
        return False
    if isinstance(models, dict):
        now = {j.path: ((_marker(wd.runs / j.path, "train").get("files") or {})
                        .get(JobFiles.MODEL_NAME) or {}).get("sha256") for j in grid}
        if models != now:
            return False
    return True


def prepare(cfg: Config, wd: Workdir) -> None:
    """Create the workdir's folders and write ``W/config.yaml``.

    A workdir already made from a config that differs outside ``slurm:`` and
    ``evaluate:`` is refused (UserError): its dataset and runs belong to that config."""
    if wd.root.exists() and not wd.root.is_dir():
        raise UserError(f"--workdir {wd.root} exists and is not a directory")
    if wd.config.is_file():
        # Read through the loader, so keys a newer lenshpc added take their defaults.
        try:
            old = to_plain(from_yaml_text(wd.config.read_text()))
        except (OSError, yaml.YAMLError, UserError) as exc:
            raise UserError(f"--workdir {wd.root}: cannot read {wd.config.name}: "
                            f"{str(exc).splitlines()[0]}") from None
        new = to_plain(cfg)
        strip = lambda d: {k: v for k, v in d.items() if k not in MUTABLE_SECTIONS}  # noqa: E731
        diff = first_difference(strip(old), strip(new))
        if diff:
            raise UserError(f"--workdir {wd.root} was made from a different config (they differ "
                            f"at {diff}); use a new workdir for it")
    text = cfg.to_yaml_text()
    try:
        for folder in (wd.root, wd.dataset, wd.runs, wd.report):
            folder.mkdir(parents=True, exist_ok=True)
        if not wd.config.is_file() or wd.config.read_text() != text:
            atomic_write_text(wd.config, text)
    except OSError as exc:
        raise UserError(f"cannot write to --workdir {wd.root}: {exc.strerror or exc}") from None


@dataclass(frozen=True)
class StudyProgress:
    """How far a workdir's pipeline has got."""

    dataset_complete: bool
    n_jobs: int
    finished: frozenset[int]
    report_current: bool

    @property
    def unfinished(self) -> list[int]:
        """Train job indices still to do."""
        return [j for j in range(self.n_jobs) if j not in self.finished]


def progress(cfg: Config, wd: Workdir) -> StudyProgress:
    """What is done, by the completion markers (:func:`stage_done`): the dataset, each
    training job, and the report. The report is current when it is finished, was made
    from the dataset and models finished now (as its marker records; else its marker is
    newer than theirs), and is newer than ``W/config.yaml`` (whose ``evaluate:`` section
    may change between runs)."""
    grid = jobs(cfg.train, cfg.dataset.n_folds)
    dataset = bool(stage_done("simulate", wd.dataset))
    finished = frozenset(j.index for j in grid if stage_done("train", wd.runs / j.path))
    report = stage_done("evaluate", wd.report)
    current = dataset and len(finished) == len(grid) and bool(report)
    if current:
        stamp = marker_path(wd.report, PRODUCTS["evaluate"]).stat().st_mtime
        inputs = [wd.config]
        match = _report_inputs_match(wd, grid, report.info or {})
        if match is None:
            inputs += [marker_path(wd.dataset, PRODUCTS["simulate"]),
                       *(marker_path(wd.runs / j.path, PRODUCTS["train"]) for j in grid)]
        current = match is not False and all(stamp >= p.stat().st_mtime
                                             for p in inputs if p.exists())
    return StudyProgress(dataset, len(grid), finished, current)
