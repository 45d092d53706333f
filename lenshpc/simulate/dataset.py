"""Inspect and verify a dataset directory (``lenshpc dataset info|verify``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import yaml

from lenshpc import io
from lenshpc.config import UserError, from_yaml_text


def _require_dataset(root: Path) -> None:
    if not root.is_dir():
        raise UserError(f"{root}: no such dataset directory")
    if not ((root / io.INDEX).is_file() or (root / io.CONFIG).is_file()):
        raise UserError(f"{root}: not a lenshpc dataset (no {io.INDEX} or {io.CONFIG})")


def info(root: Path) -> dict[str, Any]:
    """A summary of the dataset in ``root`` (complete or not) as plain data."""
    import h5py
    _require_dataset(root)
    if not (root / io.INDEX).is_file():
        try:
            cfg = from_yaml_text((root / io.CONFIG).read_text())
        except (OSError, yaml.YAMLError) as exc:
            raise UserError(f"{root}: unreadable {io.CONFIG}: {exc}") from None
        ranges = io.shard_ranges(cfg.dataset.n_images, cfg.dataset.shard_size)
        done = [k for k in range(len(ranges)) if io.shard_info(io.shard_path(root, k))]
        return {"path": str(root), "complete": False, "n_images": cfg.dataset.n_images,
                "images_done": sum(len(ranges[k]) for k in done),
                "shards": len(ranges), "shards_done": len(done),
                "image_shape": [cfg.image.size, cfg.image.size],
                "pixel_scale": cfg.image.pixel_scale, "n_folds": cfg.dataset.n_folds,
                "n_test": cfg.dataset.n_test, "seed": cfg.seed}
    try:
        with h5py.File(root / io.INDEX, "r") as f:
            attrs = io.read_attrs(root / io.INDEX)
            labels = f["labels"][...]
            truth = f["truth"][...]
            label_names = io.decode_names(f["labels"].attrs["names"])
            truth_names = io.decode_names(f["truth"].attrs["names"])
            split = f["split"][...]
            n, h, w = f["images"].shape
    except (OSError, KeyError) as exc:
        raise UserError(f"{root / io.INDEX}: unreadable: {exc}") from None
    folds = {str(k): int(np.sum(split == k)) for k in range(int(attrs["n_folds"]))}
    def ranges(values: np.ndarray, names: list[str]) -> dict[str, list[float]]:
        if not len(values):
            return {}
        return {name: [float(np.nanmin(values[:, j])), float(np.nanmax(values[:, j]))]
                for j, name in enumerate(names)}
    return {"path": str(root), "complete": True, "n_images": int(n), "image_shape": [int(h), int(w)],
            "pixel_scale": float(attrs["pixel_scale"]),
            "supersampling_factor": int(attrs["supersampling_factor"]), "seed": int(attrs["seed"]),
            "labels": label_names, "label_ranges": ranges(labels, label_names),
            "truth": truth_names, "truth_ranges": ranges(truth, truth_names),
            "n_folds": int(attrs["n_folds"]), "fold_sizes": folds, "n_test": int(np.sum(split == -1)),
            "checksum": str(attrs["checksum"]), "lenshpc_version": str(attrs["lenshpc_version"]),
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
    lines = [f"dataset {d['path']}: complete",
             f"  images    {d['n_images']} of {h} x {w} pixels, {d['pixel_scale']} arcsec/pixel, "
             f"supersampling {d['supersampling_factor']}",
             f"  split     {d['n_folds']} folds of {', '.join(map(str, d['fold_sizes'].values()))}; "
             f"{d['n_test']} test",
             "  labels    " + ", ".join(f"{k} {lo:.3g}..{hi:.3g}" for k, (lo, hi) in d["label_ranges"].items()),
             f"  truth     {len(d['truth'])} columns:",
             *(f"    {k:24s} {lo:9.4g} .. {hi:.4g}" for k, (lo, hi) in d["truth_ranges"].items()),
             f"  seed      {d['seed']}",
             f"  checksum  {d['checksum']}",
             f"  versions  lenshpc {d['lenshpc_version']}, lenstronomy {d['lenstronomy_version']}"]
    return "\n".join(lines)


def verify(root: Path) -> tuple[list[str], str]:
    """Recompute every shard's checksum against the dataset's table.

    Returns (problems, summary line): one problem line per missing, unreadable
    (e.g. truncated) or altered shard, or an incomplete dataset."""
    import h5py
    _require_dataset(root)
    if not (root / io.INDEX).is_file():
        d = info(root)
        missing = [io.shard_name(k) for k in range(d["shards"])
                   if io.shard_info(io.shard_path(root, k)) is None]
        return ([f"{root}: incomplete: missing {', '.join(missing[:10])}"
                 + (" ..." if len(missing) > 10 else "")],
                f"{root}: INCOMPLETE ({d['shards_done']} of {d['shards']} shards)")
    try:
        with h5py.File(root / io.INDEX, "r") as f:
            names = io.decode_names(f["shards/name"][...])
            starts = f["shards/start"][...]
            counts = f["shards/n"][...]
            table = io.decode_names(f["shards/checksum"][...])
            split = f["split"][...]
            stored = str(io.read_attrs(root / io.INDEX)["checksum"])
    except (OSError, KeyError) as exc:
        raise UserError(f"{root / io.INDEX}: unreadable: {exc}") from None
    problems = []
    for name, start, n, expected in zip(names, starts, counts, table):
        path = root / io.SHARDS / name
        if not path.is_file():
            problems.append(f"{name}: missing")
            continue
        try:
            images, labels, truth = io.read_shard(path)
            own = str(io.read_attrs(path).get("checksum", ""))
        except (OSError, KeyError) as exc:
            problems.append(f"{name}: unreadable (truncated or damaged): {exc}")
            continue
        if len(images) != n or len(labels) != n or len(truth) != n:
            problems.append(f"{name}: holds {len(images)} items, expected {n}")
        elif io.checksum(images, labels, truth) != expected:
            problems.append(f"{name}: checksum mismatch (altered data)")
        elif own != expected:
            problems.append(f"{name}: checksum attribute differs from the dataset's table")
    if io.dataset_checksum(table, split) != stored:
        problems.append(f"{io.INDEX}: dataset checksum does not match its shard table and split")
    n_items = int(np.sum(counts))
    summary = (f"{root}: {len(names)} shards, {n_items} images: "
               + ("OK" if not problems else f"{len(problems)} problem(s)"))
    return problems, summary


__all__ = ["info", "info_text", "verify"]
