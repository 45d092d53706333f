"""A study's working folder and how far its pipeline has got.

``W/config.yaml`` (the resolved config every stage reads), ``W/dataset``, ``W/runs``,
``W/report``, and ``W/slurm`` (the rendered scripts, their logs, the last submission).
Both ``lenshpc slurm submit`` and ``lenshpc run`` use this layout and :func:`progress`,
so either can finish what the other started.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from lenshpc.config import Config, UserError, to_plain
from lenshpc.config.train import jobs
from lenshpc.io import atomic_write_text, read_json
from lenshpc.slurm.script import Paths

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


def _first_difference(old: Any, new: Any, path: str = "") -> str | None:
    """The key path where two plain config trees first differ, or None.

    Keys only one side has are skipped: they come from another lenshpc version (a key
    added with its default, or removed), not from the user."""
    if isinstance(old, dict) and isinstance(new, dict):
        for key in sorted(set(old) & set(new), key=str):
            diff = _first_difference(old[key], new[key], f"{path}.{key}" if path else key)
            if diff:
                return diff
        return None
    return None if old == new else (path or "(top level)")


def prepare(cfg: Config, wd: Workdir) -> None:
    """Create the workdir's folders and write ``W/config.yaml``.

    A workdir already made from a config that differs outside ``slurm:`` and
    ``evaluate:`` is refused (UserError): its dataset and runs belong to that config."""
    if wd.root.exists() and not wd.root.is_dir():
        raise UserError(f"--workdir {wd.root} exists and is not a directory")
    new = to_plain(cfg)
    if wd.config.is_file():
        try:
            old = yaml.safe_load(wd.config.read_text()) or {}
        except (OSError, yaml.YAMLError) as exc:
            raise UserError(f"--workdir {wd.root}: cannot read {wd.config.name}: {exc}") from None
        strip = lambda d: {k: v for k, v in d.items() if k not in MUTABLE_SECTIONS}  # noqa: E731
        diff = _first_difference(strip(old) if isinstance(old, dict) else old, strip(new))
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
class Progress:
    """How far a workdir's pipeline has got."""

    dataset_complete: bool
    n_jobs: int
    finished: frozenset[int]
    report_current: bool

    @property
    def unfinished(self) -> list[int]:
        """Train job indices still to do."""
        return [j for j in range(self.n_jobs) if j not in self.finished]


def _finished(run_json: Path) -> bool:
    return bool((read_json(run_json) or {}).get("finished"))


def progress(cfg: Config, wd: Workdir) -> Progress:
    """Read what is done: ``dataset.h5`` (exists only when complete), each job's
    ``run.json`` (``finished``), and whether ``report/table1.csv`` is newer than both."""
    index = wd.dataset / "dataset.h5"
    grid = jobs(cfg.train, cfg.dataset.n_folds)
    finished = frozenset(j.index for j in grid if _finished(wd.runs / j.path / "run.json"))
    table = wd.report / "table1.csv"
    inputs = [index, wd.config, *(wd.runs / j.path / "run.json" for j in grid
                                  if j.index in finished)]
    report_current = (table.is_file() and len(finished) == len(grid)
                      and all(table.stat().st_mtime >= p.stat().st_mtime
                              for p in inputs if p.exists()))
    return Progress(index.is_file(), len(grid), finished, report_current)
