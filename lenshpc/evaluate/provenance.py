"""Which settings produced evaluate's numbers, and the refusal of a config that contradicts them.

Evaluate holds one config, assembled from what made its inputs:

- **seed, image, dataset, population** come from the dataset (the config stored with it:
  the test set was made, and is re-rendered, with them). A given config that differs at
  any of their keys is refused, naming the first (``lenshpc.dataset.folder.open_dataset``,
  compared as simulate compares them).
- **train** comes from each job's run.json (``train``: its effective train section,
  ``p1``/``p2``: its dropout). A given config that differs at a key that decides what the
  model computes (:data:`MODEL_KEYS`, the dropout rates) is refused, naming the first key
  and the job. The other train keys (epochs, devices, input and I/O settings) did not
  decide the model evaluated: a different value is *given, not used*, and report.md lists
  it. Jobs of models the config does not name are evaluated as recorded.
- **evaluate** and **name** are the given config's (they decide the evaluation itself).
"""

from __future__ import annotations

from typing import Any, Iterable

import yaml

from lenshpc.config import Config, UserError
from lenshpc.config.schema import first_difference
from lenshpc.dataset.identity import DATASET_SECTIONS
from lenshpc.runs import JobRun

#: Train keys that decide what a job's model computes (those of train's resume key): a
#: given config must agree with the job's run.json at every one of them.
MODEL_KEYS = ("network", "loss_weights", "standardize_targets", "normalize", "shuffle",
              "shuffle_buffer", "batch_size", "learning_rate", "warmup_epochs",
              "early_stopping_patience", "reduce_lr_factor", "reduce_lr_patience", "min_lr",
              "keep", "precision")
#: Train keys that choose which jobs are evaluated (used, never compared with a job).
GRID_KEYS = ("models", "folds")


def _given_train(cfg: Config, model: str) -> dict[str, Any] | None:
    """The effective train section the config gives ``model``'s jobs, with its dropout
    rates; None when the config has no such model."""
    entry = next((m for m in cfg.train.models if m.name == model), None)
    if entry is None:
        return None
    return {**cfg.train.for_model(entry).effective(), "p1": entry.p1, "p2": entry.p2}


def _recorded_train(job: JobRun) -> dict[str, Any] | None:
    train = job.run.get("train")
    if not isinstance(train, dict):
        return None
    return {**train, "p1": job.run.get("p1"), "p2": job.run.get("p2")}


def check_jobs(cfg: Config, jobs: Iterable[JobRun]) -> list[str]:
    """Refuse (UserError naming the job and the first key) a config whose train settings
    contradict a job's run.json at a key that decides the model; return the keys it
    gives other values that were not used, one line each (``train.epochs: 20 -> 30
    (model1/fold-0, ...)``), the job's value first."""
    unused: dict[str, list[str]] = {}
    for job in jobs:
        given, recorded = _given_train(cfg, job.model), _recorded_train(job)
        if given is None or recorded is None:
            continue
        decisive = [k for k in (*MODEL_KEYS, "p1", "p2") if k in recorded and k in given
                    and not (k == "shuffle_buffer" and recorded.get("shuffle") != "buffer")]
        diff = first_difference({k: recorded[k] for k in decisive},
                                {k: given[k] for k in decisive}, "train")
        if diff:
            diff = diff.replace("train.p1", f"train.models[{job.model}].p1").replace(
                "train.p2", f"train.models[{job.model}].p2")
            raise UserError(f"{job.key} was trained with other settings than the given config "
                            f"(they differ at {diff}; the job's run.json value first); give "
                            f"the config it was trained with")
        for key in sorted(set(recorded) - set(decisive) - set(GRID_KEYS) - {"p1", "p2"}):
            other = first_difference(recorded[key], given.get(key), f"train.{key}")
            if other:
                unused.setdefault(other, []).append(job.key)
    return [f"{line} ({', '.join(keys)})" for line, keys in unused.items()]


def dataset_sections_yaml(ds_config: Config) -> str:
    """The dataset-defining sections of the dataset's own config, as YAML."""
    plain = yaml.safe_load(ds_config.to_yaml_text()) or {}
    return yaml.safe_dump({k: plain[k] for k in DATASET_SECTIONS if k in plain},
                          sort_keys=False).rstrip()


def train_settings_yaml(jobs: Iterable[JobRun]) -> list[tuple[str, str]]:
    """Each model's train settings as its jobs' run.json records them: (the jobs, YAML),
    one entry per distinct record (folds of a model trained alike share one)."""
    groups: dict[str, list[str]] = {}
    for job in jobs:
        recorded = _recorded_train(job)
        text = ("(not recorded: a run.json of an older lenshpc)" if recorded is None else
                yaml.safe_dump(recorded, sort_keys=False).rstrip())
        groups.setdefault(text, []).append(job.key)
    return [(", ".join(keys), text) for text, keys in groups.items()]


__all__ = ["GRID_KEYS", "MODEL_KEYS", "check_jobs", "dataset_sections_yaml",
           "train_settings_yaml"]
