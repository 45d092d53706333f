"""The identity of a dataset: which config sections define its content, in a canonical form.

A dataset is defined by the sections :data:`DATASET_SECTIONS` of the config that made it
(stored beside it in ``config.yaml`` and in the index's ``config`` attribute). Their
canonical form (:func:`canonical_part`) leaves out keys that do not change the content as
set, and keys added after datasets were first made while they hold the value that
reproduces those datasets. Simulate fingerprints it (:func:`fingerprint`, kept in
``simulate.json``) to resume or refuse a folder; train and evaluate compare a given config
with a dataset's stored one the same way (:func:`config_difference`).
"""

from __future__ import annotations

import hashlib
from typing import Any

import yaml

from lenshpc.config import Config, to_plain
from lenshpc.config.schema import first_difference

#: The config sections that define a dataset's content (the rest do not change it).
DATASET_SECTIONS = ("seed", "image", "dataset", "population")
#: Bookkeeping file next to config.yaml: fingerprint and catalogue digest.
STATE = "simulate.json"


def dataset_part(cfg: Config) -> dict[str, Any]:
    """The plain data of the sections that define a dataset's content (see
    :func:`canonical_part`)."""
    plain = to_plain(cfg)
    return canonical_part({k: plain[k] for k in DATASET_SECTIONS})


def canonical_part(part: dict[str, Any]) -> dict[str, Any]:
    """``part`` (plain dataset-defining sections) without the keys that do not change the
    content as set (the adaptive threshold in full supersampling), nor the keys added after
    datasets were first made while they hold the value that reproduces those datasets: a
    dataset made before they existed keeps its fingerprint (it resumes, and a rerun finds
    it complete)."""
    part = dict(part)
    image = part.get("image")
    if isinstance(image, dict) and image.get("supersampling_mode", "full") == "full":
        part["image"] = image = {k: v for k, v in image.items()
                                 if k not in ("supersampling_mode", "adaptive_threshold")}
    if isinstance(image, dict):   # the observation keys, at the values of datasets before them
        part["image"] = {k: v for k, v in image.items()
                         if not (k in OBSERVATION_DEFAULTS and v == OBSERVATION_DEFAULTS[k])}
    dataset = part.get("dataset")
    if isinstance(dataset, dict) and dataset.get("split", "random") == "random":
        dataset = part["dataset"] = {k: v for k, v in dataset.items() if k != "split"}
    if isinstance(dataset, dict) and dataset.get("shard_size") is not None:
        part["dataset"] = {k: v for k, v in dataset.items() if k not in ("shard_mb", "min_shards")}
    population = part.get("population")
    if isinstance(population, dict) and population.get("catalogue_columns", None) is None:
        part["population"] = population = {k: v for k, v in population.items()
                                           if k != "catalogue_columns"}
    if isinstance(population, dict) and population.get("lens_light_shape", "own") == "own":
        part["population"] = population = {k: v for k, v in population.items()
                                           if k != "lens_light_shape"}
    if isinstance(population, dict):   # magnitudes unset: as datasets made before they existed
        part["population"] = {k: ({p: x for p, x in v.items() if not (p == "mag" and x is None)}
                                  if k in ("lens_light", "source_light") and isinstance(v, dict)
                                  else v) for k, v in population.items()}
    return part


#: Image keys added with observation presets, at the values that reproduce older datasets.
OBSERVATION_DEFAULTS: dict[str, Any] = {
    "observation": {"survey": None, "band": None}, "zero_point": None, "sky_brightness": None,
    "num_exposures": 1, "read_noise": 0.0, "dark_current": 0.0}


def fingerprint(cfg: Config, catalogue_sha256: str | None) -> str:
    """sha256 (hex) of the dataset-defining config and the catalogue's bytes."""
    text = yaml.safe_dump({"config": dataset_part(cfg), "catalogue": catalogue_sha256},
                          sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()


def stored_part(config_text: str) -> dict[str, Any]:
    """The canonical dataset-defining part of a stored config (YAML text, as written by
    simulate; keys of an older lenshpc are read as they are, as simulate reads them)."""
    old = yaml.safe_load(config_text) or {}
    if not isinstance(old, dict):
        old = {}
    return canonical_part({k: old.get(k) for k in DATASET_SECTIONS})


def config_difference(config_text: str, cfg: Config) -> str | None:
    """Where ``cfg``'s dataset-defining sections first differ from the stored config
    ``config_text`` (``dotted.key: stored -> given``), or None when they define the same
    dataset."""
    return first_difference(stored_part(config_text), dataset_part(cfg))


__all__ = ["DATASET_SECTIONS", "OBSERVATION_DEFAULTS", "STATE", "canonical_part",
           "config_difference", "dataset_part", "fingerprint", "stored_part"]
