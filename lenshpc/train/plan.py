"""The plan of a training job, checked before TensorFlow starts (numpy and h5py only).

:func:`plan_job` runs on every rank before any collective call: rank 0 takes the job
folder's lock; the config, dataset, fold and job folder are checked, and the checkpoint
(if any) is read once, under the lock. Every problem is one :class:`UserError` line,
the same on every rank. :func:`resume_key` is what a job folder is bound to.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from lenshpc.config import Config, UserError
from lenshpc.config.schema import first_difference, to_plain
from lenshpc.config.train import ARCHITECTURE_DEFAULTS, Job, Network
from lenshpc.dataset.index import DatasetIndex
from lenshpc.env import launch_env
from lenshpc.lock import exclusive
from lenshpc.runs import JobFiles, job_done
from lenshpc.train import data
from lenshpc.train.state import Checkpoint, CheckpointError, load_checkpoint, read_json


def launcher_rank() -> int:
    """This process' rank as its launcher announced it (before Horovod starts)."""
    return launch_env().rank


def resume_key(cfg: Config, job: Job, dataset_checksum: str) -> dict[str, Any]:
    """Everything that decides what a job computes, by config path. A job directory
    started with another key cannot be continued (epochs and I/O settings may change)."""
    t = cfg.train
    return {
        "dataset checksum": dataset_checksum,
        "seed": cfg.seed,
        f"train.models[{job.model.name}]": {"p1": job.model.p1, "p2": job.model.p2},
        "fold": job.fold,
        "train.network": network_key(t.network),
        "train.loss_weights": list(t.loss_weights),
        "train.standardize_targets": t.standardize_targets,
        "train.batch_size": t.batch_size,
        "train.learning_rate": t.learning_rate,
        "train.warmup_epochs": t.warmup_epochs,
        "train.early_stopping_patience": t.early_stopping_patience,
        "train.reduce_lr_factor": t.reduce_lr_factor,
        "train.reduce_lr_patience": t.reduce_lr_patience,
        "train.min_lr": t.min_lr,
        "train.keep": t.keep,
        "train.normalize": t.normalize,
        "train.shuffle": t.shuffle if t.shuffle == "global" else f"buffer of {t.shuffle_buffer}",
        # In mixed precision the loss scale is part of the optimizer's state.
        "train.precision": t.precision,
    }


def network_key(network: Network) -> dict[str, Any]:
    """The network as the resume key records it: every layer-geometry value in force
    (the architecture's where the config leaves it null)."""
    out = to_plain(network)
    for key in ARCHITECTURE_DEFAULTS[network.architecture]:
        out[key] = network.geometry(key)
    if network.architecture == "legacy" and out["pool_size"] is None:
        out["pool_size"] = 2
    return out


def _with_later_keys(started: dict[str, Any]) -> dict[str, Any]:
    """A checkpoint's resume key with the keys added since at the values it trained with:
    job folders started before them trained with today's defaults."""
    started = dict(started)
    started.setdefault("train.precision", "float32")
    started.setdefault("train.normalize", "max")
    started.setdefault("train.shuffle", "global")
    network = started.get("train.network")
    if isinstance(network, dict) and "architecture" not in network:
        # Written before the study network existed: the legacy one, every key a value.
        started["train.network"] = {"architecture": "legacy", **network}
    return started


@dataclass
class JobPlan:
    """A checked job: what to train on, where, for how long, and from which state."""

    cfg: Config
    job: Job
    dataset: DatasetIndex
    files: JobFiles
    epochs: int
    train_items: np.ndarray
    val_items: np.ndarray
    target_mean: np.ndarray
    target_std: np.ndarray
    key: dict[str, Any]
    checkpoint: Checkpoint | None = None   # read once, under the job's lock
    finished_note: str | None = None       # set when there is nothing left to do
    refusal: str | None = None             # rank 0 could not take the job's lock
    devices: list[dict[str, Any]] = field(default_factory=list)
    started: float = field(default_factory=time.time)
    _lock: contextlib.ExitStack = field(default_factory=contextlib.ExitStack)

    @property
    def name(self) -> str:
        return f"job {self.job.index} ({self.job.model.name}, fold {self.job.fold})"


def plan_job(cfg: Config, job: Job, data_dir: str | Path, runs: str | Path,
             epochs: int | None = None) -> JobPlan:
    """Check the inputs of one job and decide what to do; UserError on any problem.

    Reads only small things (labels, split, attributes, the job's JSON files), so every
    rank can run it before any collective call and reach the same verdict."""
    # A variant's own train settings (train.models[i] overrides) from here on.
    cfg = dataclasses.replace(cfg, train=cfg.train.for_model(job.model))
    epochs = cfg.train.epochs if epochs is None else epochs
    if epochs < 1:
        raise UserError(f"--epochs must be at least 1, not {epochs}")
    dataset = data.open_dataset(data_dir, cfg)
    train_items, val_items = data.fold_items(dataset.split, job.fold)
    if len(train_items) == 0 or len(val_items) == 0:
        raise UserError(f"dataset {dataset.path}: fold {job.fold} leaves {len(train_items)} "
                        f"training and {len(val_items)} validation items")
    mean, std = data.target_stats(dataset.labels[train_items], cfg.train.standardize_targets)
    runs = Path(runs)
    if runs.exists() and not runs.is_dir():
        raise UserError(f"--out {runs} exists and is not a directory")
    files = JobFiles(runs / job.path)
    existing = next(p for p in (files.root, *files.root.parents) if p.exists())
    if not existing.is_dir():
        raise UserError(f"--out {runs}: {existing} is a file, not a directory")
    if not os.access(existing, os.W_OK):
        raise UserError(f"cannot write to {existing} (for --out {runs})")
    key = resume_key(cfg, job, dataset.checksum)
    plan = JobPlan(cfg, job, dataset, files, epochs, train_items, val_items, mean, std, key)

    if launcher_rank() == 0:
        # Held until the process ends; the other ranks work under rank 0's lock.
        try:
            plan._lock.enter_context(exclusive(files.root, "job"))
        except UserError as exc:
            plan.refusal = str(exc)
            return plan

    run_info = read_json(files.run_json)
    if files.checkpoint.exists():
        try:
            plan.checkpoint = load_checkpoint(files.checkpoint)
        except CheckpointError as exc:
            raise UserError(f"{files.checkpoint} cannot be used: {exc}; delete it to restart "
                            f"the job from epoch 0") from None
    elif run_info is not None and run_info.get("epochs_done", 0) > 0:
        raise UserError(f"{files.root} has a run.json but no checkpoint.npz; remove "
                        f"{files.root} to start the job again")
    if plan.checkpoint is not None:
        state = plan.checkpoint.state
        diff = first_difference(_with_later_keys(state.key), key)
        if diff:
            raise UserError(f"{files.root} was started with other settings ({diff}); use "
                            f"another --out or remove that directory")
        done = state.epochs_done
        finished = bool(job_done(files.root))
        if finished and state.early_stopped:
            plan.finished_note = (f"{plan.name} is finished: it stopped early after epoch "
                                  f"{done} (val_loss did not improve); nothing to do")
        elif finished and done >= epochs:
            plan.finished_note = (f"{plan.name} is finished ({done} epochs"
                                  f"{'' if done == epochs else f', more than --epochs {epochs}'})"
                                  f"; nothing to do")
    return plan
