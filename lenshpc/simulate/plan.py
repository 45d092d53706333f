"""What rank 0 of simulate decides before any work: the dataset's identity, the folder, the plan.

The identity of a dataset is the fingerprint of the config sections that define its
content and of the catalogue's bytes (:func:`fingerprint`), kept in ``simulate.json``
beside ``config.yaml``. Rank 0 takes the folder's lock (one writer per dataset, held for
the whole run, :func:`take_folder`), then inspects the directory: config identity, free
space, shards already complete (:func:`plan_shards`). Its verdict, a :class:`ShardPlan`, is
broadcast to every rank; a refusal is one line and nothing is written.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import yaml

from lenshpc import __version__, io, lock
from lenshpc.config import Config, UserError, loads, to_plain
from lenshpc.config.schema import first_difference
from lenshpc.dataset import CONFIG, INDEX, SHARDS
from lenshpc.dataset.folder import PRODUCT, dataset_done, shard_ranges
from lenshpc.dataset.identity import (  # noqa: F401 (canonical_part, fingerprint re-exported)
    DATASET_SECTIONS,
    STATE,
    canonical_part,
    dataset_part,
    fingerprint,
)
from lenshpc.dataset.shards import estimate_bytes, shard_info, shard_intact, shard_path
from lenshpc.parallel import World
from lenshpc.simulate import population as pop
from lenshpc.simulate.render import TRUTH_NAMES

# --------------------------------------------------------------------------- config


def with_n_images(cfg: Config, n_images: int | None) -> Config:
    """``cfg`` with ``dataset.n_images`` replaced (fractions kept), validated again."""
    if n_images is None:
        return cfg
    data = to_plain(cfg)
    data["dataset"]["n_images"] = n_images
    return loads(data, source="--n-images")


# --------------------------------------------------------------------------- plan


@dataclass(frozen=True)
class ShardPlan:
    """What rank 0 found in the output directory, broadcast to every rank."""

    error: str | None = None
    complete: bool = False
    todo: tuple[int, ...] = ()
    done: tuple[int, ...] = ()  # shards whose files say they are complete (checksums unchecked)


def _is_dataset_dir(out: Path) -> bool:
    return (out / CONFIG).is_file() or (out / STATE).is_file() or (out / INDEX).is_file()


def _foreign_files(out: Path) -> bool:
    """True if ``out`` holds files but not a lenshpc dataset (its lock file aside)."""
    return not _is_dataset_dir(out) and any(p.name != lock.LOCK_NAME for p in out.iterdir())


def _remove_products(out: Path) -> None:
    """Remove what lenshpc simulate wrote in ``out`` (and nothing else); the marker first."""
    lock.clear_done(out, PRODUCT)
    shutil.rmtree(out / SHARDS, ignore_errors=True)
    for name in (INDEX, CONFIG, STATE):
        (out / name).unlink(missing_ok=True)


def take_folder(out: Path, overwrite: bool, held: contextlib.ExitStack) -> str | None:
    """Rank 0: make ``out`` and take its lock into ``held``; the refusal as one line, or None.

    A foreign folder is refused before the lock file is created in it."""
    if out.exists() and not out.is_dir():
        return f"--out {out} exists and is not a directory"
    if out.is_dir() and not overwrite and _foreign_files(out):
        return (f"--out {out} already holds files that are not a lenshpc dataset; choose an "
                f"empty or new folder, or use --overwrite")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        return f"cannot write to --out {out}: {exc.strerror or exc}"
    if not os.access(out, os.W_OK):
        return f"cannot write to --out {out}: permission denied"
    try:
        held.enter_context(lock.exclusive(out, "dataset"))
    except UserError as exc:
        return str(exc)
    return None


def space_problem(out: Path, cfg: Config) -> str | None:
    """Rank 0: the refusal when the dataset cannot fit in the free space of ``out``'s file
    system (counting the products already there, which are kept or replaced), or None.

    Uncompressed, images are counted in full; compressed, only what never compresses
    (labels, truth, the index), and a full disk later is met by the disk-full handling."""
    d = cfg.dataset
    shards, index = dataset_bytes(cfg)
    if d.compression != "none":
        shards = d.n_images * (len(pop.LABEL_NAMES) * 4 + len(TRUTH_NAMES) * 8)
    need = shards + index
    have = 0
    with contextlib.suppress(OSError):
        with os.scandir(out / SHARDS) as entries:
            have += sum(e.stat().st_size for e in entries if e.name.startswith("shard-"))
    with contextlib.suppress(OSError):
        have += (out / INDEX).stat().st_size
    free = io.free_bytes(out)
    if need <= free + have:
        return None
    return (f"--out {out}: {d.n_images} images need about {io.human_bytes(need)} "
            f"({need} bytes) but {io.human_bytes(free)} are free there"
            + (f" (plus {io.human_bytes(have)} already written)" if have else "")
            + "; free space, choose another --out, or simulate fewer images")


def plan_shards(out: Path, cfg: Config, fp: str, overwrite: bool) -> ShardPlan:
    """Rank 0, holding the lock: check ``out`` against this config, prepare it, list the
    shards left to do.

    Refusals (different config without --overwrite, a foreign non-empty folder, too
    little free space, an unwritable place) come back as ``ShardPlan(error=...)`` before
    anything is written. The dataset is complete only when :func:`dataset_done` holds."""
    if out.exists() and not out.is_dir():
        return ShardPlan(error=f"--out {out} exists and is not a directory")
    state_file = out / STATE
    if out.is_dir() and not overwrite:
        if state_file.is_file():
            try:
                state = json.loads(state_file.read_text())
                old = yaml.safe_load((out / CONFIG).read_text())
            except (OSError, ValueError, yaml.YAMLError):
                return ShardPlan(error=f"--out {out} holds a damaged dataset (unreadable {STATE} or "
                                  f"{CONFIG}); use --overwrite to replace it")
            if state.get("fingerprint") != fp:
                old_part = canonical_part({k: (old or {}).get(k) for k in DATASET_SECTIONS})
                diff = first_difference(old_part, dataset_part(cfg)) or "the catalogue file changed"
                return ShardPlan(error=f"--out {out} holds a dataset made from a different config "
                                  f"({diff}); use --overwrite to replace it")
            if dataset_done(out):
                return ShardPlan(complete=True)
        elif any(p.name != lock.LOCK_NAME for p in out.iterdir()):
            what = "an incomplete dataset" if _is_dataset_dir(out) else "files that are not a lenshpc dataset"
            return ShardPlan(error=f"--out {out} already holds {what}; choose an empty or new "
                              f"folder, or use --overwrite")
    refusal = space_problem(out, cfg)
    if refusal:
        return ShardPlan(error=refusal)
    try:
        if overwrite and out.is_dir():
            _remove_products(out)
        # Not finished (or damaged): the marker goes before anything is rewritten.
        lock.clear_done(out, PRODUCT)
        (out / SHARDS).mkdir(parents=True, exist_ok=True)
        if not state_file.is_file():
            io.atomic_write_text(out / CONFIG, cfg.to_yaml_text())
            io.atomic_write_text(state_file, json.dumps(
                {"fingerprint": fp, "n_images": cfg.dataset.n_images,
                 "lenshpc_version": __version__}, indent=1) + "\n")
        for stale in (out / SHARDS).glob(".shard-*.tmp*"):  # left by killed ranks
            stale.unlink(missing_ok=True)
    except OSError as exc:
        return ShardPlan(error=f"cannot write to --out {out}: {exc.strerror or exc}")
    ranges = shard_ranges(cfg)
    todo, done = [], []
    for k, r in enumerate(ranges):
        info = shard_info(shard_path(out, k))
        if (info is not None and info.start == r.start and info.n == len(r)
                and info.attrs.get("fingerprint") == fp):
            done.append(k)
        else:
            todo.append(k)
    return ShardPlan(todo=tuple(todo), done=tuple(done))


def shards_to_redo(out: Path, done: tuple[int, ...], world: World) -> list[int]:
    """Shards among ``done`` whose data no longer match their checksum (e.g. after a node
    crash), checked by all ranks in parallel; the same sorted list on every rank."""
    bad = [k for k in done[world.rank::world.size] if not shard_intact(shard_path(out, k))]
    return sorted(k for part in world.allgather(bad) for k in part)


def dataset_bytes(cfg: Config) -> tuple[int, int]:
    """(shard bytes, index bytes) of ``cfg``'s dataset, uncompressed (an upper bound)."""
    return estimate_bytes(cfg.dataset.n_images, (cfg.image.size, cfg.image.size),
                          len(pop.LABEL_NAMES), len(TRUTH_NAMES), len(shard_ranges(cfg)[0]))
