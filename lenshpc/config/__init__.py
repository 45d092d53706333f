"""One config tree: YAML loaded once into frozen, typed dataclasses and validated at load.

The machinery is in :mod:`lenshpc.config.schema`; each stage's section is in a module
of this package (``simulate``, ``train``, ``evaluate``, ``slurm``). Use::

    from lenshpc.config import load, UserError
    cfg = load("configs/debug.yaml")
    cfg.image.size, cfg.dataset.n_folds, cfg.train.models ...
"""

from __future__ import annotations

import dataclasses
import os
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from lenshpc.config.evaluate import Evaluate
from lenshpc.config.population import Population
from lenshpc.config.schema import (  # noqa: F401
    UserError,
    Value,
    _bounds,
    _fmt,
    _type_name,
    build,
    first_difference,
    param,
    parse_yaml,
    to_plain,
)
from lenshpc.config.simulate import Dataset, Image
from lenshpc.config.slurm import Slurm
from lenshpc.config.train import Train


def _study_name(name: str) -> str | None:
    if not 1 <= len(name) <= 64:
        return "must have 1 to 64 characters"
    if not name.isprintable():
        return "must be printable (no newlines or control characters)"
    return None


_study_name.allowed = "1 to 64 printable characters"  # type: ignore[attr-defined]


@dataclass(frozen=True)
class Config:
    """The whole lenshpc configuration (one YAML file)."""

    name: str = param("lenshpc", check=_study_name,
                      doc="Name of the study; used in job names and the report title.")
    seed: int = param(20240601, ge=0, lt=2**63, doc="Root seed. Item i of the dataset depends "
                      "only on (seed, i). Below 2^63, so it fits a signed 64-bit integer "
                      "(HDF5 attributes, numpy).")
    image: Image = param(default_factory=Image, doc="Image grid, PSF and noise.")
    dataset: Dataset = param(default_factory=Dataset, doc="Dataset size, splits and sharding.")
    population: Population = param(default_factory=Population,
                                   doc="Where lens-system parameters come from.")
    train: Train = param(default_factory=Train, doc="Network, optimiser and the experiment grid.")
    evaluate: Evaluate = param(default_factory=Evaluate, doc="Evaluation settings.")
    slurm: Slurm = param(default_factory=Slurm, doc="Site settings for the sbatch scripts.")

    def to_yaml_text(self) -> str:
        """The resolved config as YAML text (stored with every product)."""
        return yaml.safe_dump(to_plain(self), sort_keys=False)


#: Largest config file read (bytes): a study's config is a few kB; YAML takes about a
#: minute to parse 50 MB, so a larger file is refused before parsing.
MAX_CONFIG_BYTES = 1 << 20


def load(path: str | os.PathLike) -> Config:
    """Read and validate a YAML config file; raise UserError on any problem.

    Refused in one line: a missing path, a directory, a file over MAX_CONFIG_BYTES, an
    unreadable or non-text file, an empty file or one whose top level is not a mapping."""
    p = Path(path)
    if p.is_dir():
        raise UserError(f"--config {p} is a directory, not a config file")
    if not p.is_file():
        raise UserError(f"config file not found: {p}")
    try:
        size = p.stat().st_size
        if size > MAX_CONFIG_BYTES:
            raise UserError(f"config file {p} has {size:,} bytes, over the limit of "
                            f"{MAX_CONFIG_BYTES:,} (1 MiB); a config is a few kB of YAML")
        text = p.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"config file {p} cannot be read: {exc}") from None
    data = parse_yaml(text, source=str(p))
    if data is None or data == {}:
        raise UserError(f"config file {p} has no keys: write at least `name:` (every other "
                        f"key has a default, docs/config.md)")
    if not isinstance(data, dict):
        raise UserError(f"config file {p}: the top level is {type(data).__name__}, not a "
                        f"mapping of keys (name:, image:, train:, ...)")
    return loads(data, source=str(p))


def loads(data: Any, source: str = "<config>") -> Config:
    """Validate already-parsed YAML data (a mapping, or None for all defaults)."""
    cfg = build(Config, data, "")
    problem = cross_check(cfg)
    if problem:
        raise UserError(f"config {source}: {problem}")
    return cfg


def from_yaml_text(text: str) -> Config:
    """The config stored as YAML text inside a dataset or run (already validated once)."""
    return loads(yaml.safe_load(text))


def cross_check(cfg: Config) -> str | None:
    """Checks that span sections; returns an error text or None."""
    n_train = cfg.dataset.n_images - cfg.dataset.n_test
    if n_train < cfg.dataset.n_folds:
        return (f"dataset.n_folds: {cfg.dataset.n_folds} folds need at least that many "
                f"non-test items, but dataset.n_images={cfg.dataset.n_images} leaves {n_train}")
    folds = cfg.train.folds
    if folds is not None:
        if not folds:
            return "train.folds: [] trains nothing; give at least one fold, or null for all"
        bad = [k for k in folds if k >= cfg.dataset.n_folds]
        if bad:
            return (f"train.folds: fold {bad[0]} does not exist; dataset.n_folds "
                    f"{cfg.dataset.n_folds} has folds 0..{cfg.dataset.n_folds - 1}")
        if len(set(folds)) != len(folds):
            return "train.folds: a fold appears twice"
    for component in ("lens_light", "source_light"):
        if getattr(cfg.population, component).mag is not None and cfg.image.zero_point is None:
            return (f"population.{component}.mag: magnitudes need image.zero_point (or an "
                    f"image.observation preset)")
    for model in cfg.train.models:
        network = cfg.train.for_model(model).network
        if network.layers(cfg.image.size)[-1][-1] < 1:
            return (f"train.network: the {network.architecture} network needs larger images "
                    f"than image.size {cfg.image.size}" + (
                        f" (model {model.name})" if model.overrides else ""))
    return None


# --------------------------------------------------------------------------- docs


def schema_markdown() -> str:
    """Markdown reference of every config key, its default, unit and allowed values."""
    lines = ["# Configuration reference", "",
             "Generated from `lenshpc/config/*.py` by `lenshpc config docs`; do not edit by hand.",
             "Every key is optional; a missing key takes its default. Unknown keys and keys "
             "given twice are refused. Numbers must be finite; integers may be written as "
             "`76396` or `7.6396e+4`, not with a fraction.",
             "",
             "Defaults marked *(assumed)* are values the study leaves unstated: the toolkit "
             "assumes them and they are config values so that they can be changed.", ""]

    def walk(cls: type, prefix: str) -> None:
        hints = typing.get_type_hints(cls)
        rows, subs = [], []
        for f in dataclasses.fields(cls):
            tp = hints[f.name]
            key = f"{prefix}{f.name}"
            if dataclasses.is_dataclass(tp) and not (isinstance(tp, type) and issubclass(tp, Value)):
                subs.append((tp, key))
                continue
            default = f.default if f.default is not dataclasses.MISSING else (
                f.default_factory() if f.default_factory is not dataclasses.MISSING else None)
            allowed = [_type_name(tp)]
            if _bounds(f.metadata):
                allowed.append(_bounds(f.metadata))
            own = tp.doc_allowed() if isinstance(tp, type) and issubclass(tp, Value) else None
            if own:
                allowed = [own]
            if getattr(f.metadata.get("check"), "allowed", None):
                allowed.append(f.metadata["check"].allowed)
            rows.append(f"| `{key}` | `{_fmt(to_plain(default))}` | {f.metadata.get('unit', '')} | "
                        f"{'; '.join(allowed)} | {f.metadata['doc']} |")
        if rows:
            lines.extend([f"## `{prefix.rstrip('.') or '(top level)'}`", "",
                          (cls.__doc__ or "").strip().splitlines()[0], "",
                          "| key | default | unit | allowed | meaning |",
                          "|---|---|---|---|---|", *rows, ""])
        for tp, key in subs:
            walk(tp, key + ".")

    walk(Config, "")
    return "\n".join(lines)
