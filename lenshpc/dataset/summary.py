"""``lenshpc dataset info`` and ``lenshpc dataset verify``: what a dataset folder holds, and
whether every shard is what the index records.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import yaml

from lenshpc.config import UserError, from_yaml_text
from lenshpc.dataset import CONFIG, INDEX
from lenshpc.dataset.folder import dataset_done, shard_ranges
from lenshpc.dataset.index import check_shard, dataset_checksum, read_index
from lenshpc.dataset.shards import shard_info, shard_name, shard_path
from lenshpc.parallel import World


def _require_dataset(root: Path) -> None:
    if not root.is_dir():
        raise UserError(f"{root}: no such dataset directory")
    if not ((root / INDEX).is_file() or (root / CONFIG).is_file()):
        raise UserError(f"{root}: not a lenshpc dataset (no {INDEX} or {CONFIG})")


def _incomplete(root: Path) -> dict[str, Any]:
    try:
        cfg = from_yaml_text((root / CONFIG).read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise UserError(f"{root}: unreadable {CONFIG}: {exc}") from None
    ranges = shard_ranges(cfg)
    done = [k for k in range(len(ranges)) if shard_info(shard_path(root, k))]
    return {"path": str(root), "complete": False, "n_images": cfg.dataset.n_images,
            "images_done": sum(len(ranges[k]) for k in done),
            "shards": len(ranges), "shards_done": len(done),
            "missing": [shard_name(k) for k in sorted(set(range(len(ranges))) - set(done))],
            "image_shape": [cfg.image.size, cfg.image.size],
            "pixel_scale": cfg.image.pixel_scale, "n_folds": cfg.dataset.n_folds,
            "n_test": cfg.dataset.n_test, "seed": cfg.seed}


def info(root: Path) -> dict[str, Any]:
    """A summary of the dataset in ``root`` (complete or not) as plain data.

    Reads only ``dataset.h5`` (labels and truth are ordinary arrays there), never a shard
    of a complete dataset; ``finished`` is the verdict of :func:`dataset_done`."""
    _require_dataset(root)
    if not (root / INDEX).is_file():
        return _incomplete(root)
    index = read_index(root)
    attrs = index.attrs
    split = index.split
    folds = {str(k): int(np.sum(split == k)) for k in range(index.n_folds)}

    def ranges(values: np.ndarray, names: tuple[str, ...]) -> dict[str, list[float]]:
        if not len(values):
            return {}
        return {name: [float(np.min(values[:, j])), float(np.max(values[:, j]))]
                for j, name in enumerate(names)}
    done = dataset_done(root, hashed=False)
    h, w = index.image_shape
    return {"path": str(root), "complete": True, "finished": done.ok,
            "not_finished_because": done.reason,
            "n_images": index.n_items, "image_shape": [h, w], "shards": len(index.shards),
            "pixel_scale": float(attrs["pixel_scale"]),
            "supersampling_factor": int(attrs["supersampling_factor"]),
            "supersampling_mode": str(attrs.get("supersampling_mode", "full")), "seed": int(attrs["seed"]),
            "labels": list(index.label_names), "label_ranges": ranges(index.labels, index.label_names),
            "truth": list(index.truth_names),
            "truth_ranges": {} if index.truth is None else ranges(index.truth, index.truth_names),
            "n_folds": index.n_folds, "fold_sizes": folds, "n_test": int(np.sum(split == -1)),
            "checksum": index.checksum, "lenshpc_version": str(attrs["lenshpc_version"]),
            "lenstronomy_version": str(attrs["lenstronomy_version"])}


def info_text(d: dict[str, Any]) -> str:
    """The summary of :func:`info` as readable lines."""
    h, w = d["image_shape"]
    if not d["complete"]:
        return "\n".join([
            f"dataset {d['path']}: INCOMPLETE",
            f"  images    {d['images_done']} of {d['n_images']} done "
            f"({d['shards_done']} of {d['shards']} shards); run the same simulate command to finish",
            f"  image     {h} x {w} pixels, {d['pixel_scale']} arcsec/pixel",
            f"  split     {d['n_folds']} folds, {d['n_test']} test"])
    head = (f"dataset {d['path']}: complete" if d["finished"] else
            f"dataset {d['path']}: NOT FINISHED ({d['not_finished_because']}); run the same "
            f"simulate command to finish it, or lenshpc dataset verify")
    lines = [head,
             f"  images    {d['n_images']} of {h} x {w} pixels in {d['shards']} shards, "
             f"{d['pixel_scale']} arcsec/pixel, supersampling {d['supersampling_factor']}"
             + (f" ({d['supersampling_mode']})" if d["supersampling_mode"] != "full" else ""),
             f"  split     {d['n_folds']} folds of {', '.join(map(str, d['fold_sizes'].values()))}; "
             f"{d['n_test']} test",
             "  labels    " + ", ".join(f"{k} {lo:.3g}..{hi:.3g}" for k, (lo, hi) in d["label_ranges"].items()),
             f"  truth     {len(d['truth'])} columns:",
             *(f"    {k:24s} {lo:9.4g} .. {hi:.4g}" for k, (lo, hi) in d["truth_ranges"].items()),
             f"  seed      {d['seed']}",
             f"  checksum  {d['checksum']}",
             f"  versions  lenshpc {d['lenshpc_version']}, lenstronomy {d['lenstronomy_version']}"]
    return "\n".join(lines)


def verify(root: Path, world: World | None = None) -> tuple[list[str], str]:
    """Check every shard against the index and the index against itself.

    Per shard (dealt round-robin to the ranks of ``world``, one open at a time): exists,
    readable, its items, its data's checksum against the table, and the index's labels and
    truth of its items against the shard's. Of the index: finite labels and the dataset
    checksum over the table and split. Returns (problems, summary line) on every rank."""
    world = world or World()
    _require_dataset(root)
    if not (root / INDEX).is_file():
        d = _incomplete(root)
        missing = d["missing"]
        return ([f"{root}: incomplete: missing {', '.join(missing[:10])}"
                 + (" ..." if len(missing) > 10 else "")],
                f"{root}: INCOMPLETE ({d['shards_done']} of {d['shards']} shards)")
    index = read_index(root, finite=False)
    mine = []
    for k in range(world.rank, len(index.shards), world.size):
        problem = check_shard(index, k)
        if problem:
            mine.append((k, problem))
    problems = [line for _, line in sorted(p for part in world.allgather(mine) for p in part)]
    bad = np.flatnonzero(~np.isfinite(index.labels).all(axis=1))
    if bad.size:
        problems.append(f"{INDEX}: {bad.size} items have labels that are not finite "
                        f"(first: item {bad[0]})")
    if dataset_checksum(index.shards.checksum, index.split) != index.checksum:
        problems.append(f"{INDEX}: dataset checksum does not match its shard table and split")
    summary = (f"{root}: {len(index.shards)} shards, {index.n_items} images: "
               + ("OK" if not problems else f"{len(problems)} problem(s)"))
    return problems, summary


__all__ = ["info", "info_text", "verify"]
