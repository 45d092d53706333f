"""The simulate driver: shards of items rendered by MPI ranks into a dataset directory.

Work unit: shard k, a block of consecutive items whose size comes from the config alone
(``dataset.shard_mb`` and ``min_shards``, or ``shard_size``), never from the number of
ranks. Rank 0 takes the folder's lock (one writer per dataset, held for the whole run),
inspects the directory (config identity, free space, shards already complete) and
broadcasts its verdict and the shards left to do; they are dealt round-robin to the
ranks. Each rank renders its shards and writes each one atomically; rank 0 gathers
progress messages and, when every rank is done, writes ``dataset.h5`` and then the
completion marker ``dataset.done.json``. A killed run restarts where it stopped because
a shard file with its final name is always complete; a full disk stops the run with one
line and a rerun after freeing space resumes the same way.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from lenshpc import __version__, io, lock
from lenshpc.config import Config, UserError, loads, to_plain
from lenshpc.parallel import Progress, World
from lenshpc.simulate import population as pop
from lenshpc.simulate.dataset import PRODUCT, dataset_done, shard_ranges
from lenshpc.simulate.render import TRUTH_NAMES, Renderer

#: The config sections that define a dataset's content (the rest do not change it).
DATASET_SECTIONS = ("seed", "image", "dataset", "population")
#: MPI tag of progress messages (workers -> rank 0).
PROGRESS_TAG = 71
#: Bookkeeping file next to config.yaml: fingerprint and catalogue digest.
STATE = "simulate.json"


# --------------------------------------------------------------------------- config


def with_n_images(cfg: Config, n_images: int | None) -> Config:
    """``cfg`` with ``dataset.n_images`` replaced (fractions kept), validated again."""
    if n_images is None:
        return cfg
    data = to_plain(cfg)
    data["dataset"]["n_images"] = n_images
    return loads(data, source="--n-images")


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
        part["image"] = {k: v for k, v in image.items()
                         if k not in ("supersampling_mode", "adaptive_threshold")}
    dataset = part.get("dataset")
    if isinstance(dataset, dict) and dataset.get("shard_size") is not None:
        part["dataset"] = {k: v for k, v in dataset.items() if k not in ("shard_mb", "min_shards")}
    return part


def fingerprint(cfg: Config, catalogue_sha256: str | None) -> str:
    """sha256 (hex) of the dataset-defining config and the catalogue's bytes."""
    text = yaml.safe_dump({"config": dataset_part(cfg), "catalogue": catalogue_sha256},
                          sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()


def first_difference(old: Any, new: Any, path: str = "") -> str | None:
    """``key.path: old -> new`` of the first difference of two plain trees, or None."""
    if isinstance(old, dict) and isinstance(new, dict):
        for key in list(old) + [k for k in new if k not in old]:
            d = first_difference(old.get(key), new.get(key), f"{path}.{key}" if path else str(key))
            if d:
                return d
        return None
    if old != new:
        return f"{path}: {old!r} -> {new!r}"
    return None


# --------------------------------------------------------------------------- plan


@dataclass(frozen=True)
class Plan:
    """What rank 0 found in the output directory, broadcast to every rank."""

    error: str | None = None
    complete: bool = False
    todo: tuple[int, ...] = ()
    done: tuple[int, ...] = ()  # shards whose files say they are complete (checksums unchecked)


def _is_dataset_dir(out: Path) -> bool:
    return (out / io.CONFIG).is_file() or (out / STATE).is_file() or (out / io.INDEX).is_file()


def _foreign_files(out: Path) -> bool:
    """True if ``out`` holds files but not a lenshpc dataset (its lock file aside)."""
    return not _is_dataset_dir(out) and any(p.name != lock.LOCK_NAME for p in out.iterdir())


def _remove_products(out: Path) -> None:
    """Remove what lenshpc simulate wrote in ``out`` (and nothing else); the marker first."""
    lock.clear_done(out, PRODUCT)
    shutil.rmtree(out / io.SHARDS, ignore_errors=True)
    for name in (io.INDEX, io.CONFIG, STATE):
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
    shards, index = _estimate(cfg)
    if d.compression != "none":
        shards = d.n_images * (len(pop.LABEL_NAMES) * 4 + len(TRUTH_NAMES) * 8)
    need = shards + index
    have = 0
    with contextlib.suppress(OSError):
        with os.scandir(out / io.SHARDS) as entries:
            have += sum(e.stat().st_size for e in entries if e.name.startswith("shard-"))
    with contextlib.suppress(OSError):
        have += (out / io.INDEX).stat().st_size
    free = io.free_bytes(out)
    if need <= free + have:
        return None
    return (f"--out {out}: {d.n_images} images need about {io.human_bytes(need)} "
            f"({need} bytes) but {io.human_bytes(free)} are free there"
            + (f" (plus {io.human_bytes(have)} already written)" if have else "")
            + "; free space, choose another --out, or simulate fewer images")


def plan(out: Path, cfg: Config, fp: str, overwrite: bool) -> Plan:
    """Rank 0, holding the lock: check ``out`` against this config, prepare it, list the
    shards left to do.

    Refusals (different config without --overwrite, a foreign non-empty folder, too
    little free space, an unwritable place) come back as ``Plan(error=...)`` before
    anything is written. The dataset is complete only when :func:`dataset_done` holds."""
    if out.exists() and not out.is_dir():
        return Plan(error=f"--out {out} exists and is not a directory")
    state_file = out / STATE
    if out.is_dir() and not overwrite:
        if state_file.is_file():
            try:
                state = json.loads(state_file.read_text())
                old = yaml.safe_load((out / io.CONFIG).read_text())
            except (OSError, ValueError, yaml.YAMLError):
                return Plan(error=f"--out {out} holds a damaged dataset (unreadable {STATE} or "
                                  f"{io.CONFIG}); use --overwrite to replace it")
            if state.get("fingerprint") != fp:
                old_part = canonical_part({k: (old or {}).get(k) for k in DATASET_SECTIONS})
                diff = first_difference(old_part, dataset_part(cfg)) or "the catalogue file changed"
                return Plan(error=f"--out {out} holds a dataset made from a different config "
                                  f"({diff}); use --overwrite to replace it")
            if dataset_done(out):
                return Plan(complete=True)
        elif any(p.name != lock.LOCK_NAME for p in out.iterdir()):
            what = "an incomplete dataset" if _is_dataset_dir(out) else "files that are not a lenshpc dataset"
            return Plan(error=f"--out {out} already holds {what}; choose an empty or new "
                              f"folder, or use --overwrite")
    refusal = space_problem(out, cfg)
    if refusal:
        return Plan(error=refusal)
    try:
        if overwrite and out.is_dir():
            _remove_products(out)
        # Not finished (or damaged): the marker goes before anything is rewritten.
        lock.clear_done(out, PRODUCT)
        (out / io.SHARDS).mkdir(parents=True, exist_ok=True)
        if not state_file.is_file():
            io.atomic_write_text(out / io.CONFIG, cfg.to_yaml_text())
            io.atomic_write_text(state_file, json.dumps(
                {"fingerprint": fp, "n_images": cfg.dataset.n_images,
                 "lenshpc_version": __version__}, indent=1) + "\n")
        for stale in (out / io.SHARDS).glob(".shard-*.tmp*"):  # left by killed ranks
            stale.unlink(missing_ok=True)
    except OSError as exc:
        return Plan(error=f"cannot write to --out {out}: {exc.strerror or exc}")
    ranges = shard_ranges(cfg)
    todo, done = [], []
    for k, r in enumerate(ranges):
        info = io.shard_info(io.shard_path(out, k))
        if (info is not None and info.start == r.start and info.n == len(r)
                and info.attrs.get("fingerprint") == fp):
            done.append(k)
        else:
            todo.append(k)
    return Plan(todo=tuple(todo), done=tuple(done))


def shards_to_redo(out: Path, done: tuple[int, ...], world: World) -> list[int]:
    """Shards among ``done`` whose data no longer match their checksum (e.g. after a node
    crash), checked by all ranks in parallel; the same sorted list on every rank."""
    bad = [k for k in done[world.rank::world.size] if not io.shard_intact(io.shard_path(out, k))]
    return sorted(k for part in world.allgather(bad) for k in part)


# --------------------------------------------------------------------------- kernel


def render_items(renderer: Renderer, cfg: Config, indices: range,
                 catalogue: dict[str, np.ndarray] | None = None,
                 on_item=None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Images (n, H, W) float32, labels (n, 4) float32, truth (n, P) float64 of ``indices``.

    Item i depends only on (cfg.seed, i); ``on_item()`` is called after each image."""
    truth, labels = pop.sample(cfg.population, cfg.seed, indices, catalogue)
    images = np.empty((len(indices), cfg.image.size, cfg.image.size), np.float32)
    for j, i in enumerate(indices):
        rng = pop.item_rng(cfg.seed, i, pop.NOISE_STREAM) if cfg.image.noise else None
        images[j] = renderer.render_truth(TRUTH_NAMES, truth[j], rng=rng)
        if on_item is not None:
            on_item()
    return images, labels, truth


class _Reporter:
    """Per-image callback: rank 0 advances the progress display and drains workers'
    messages; a worker sends its count to rank 0 at most every ``every`` seconds, and a
    last message with its (write time, rank time, disk-full or None) when it is done."""

    def __init__(self, world: World, progress: Progress | None, every: float = 0.5):
        self.world, self.progress, self.every = world, progress, every
        self.pending, self.last, self.finished = 0, time.monotonic(), 0
        self.times: list[tuple[float, float, DiskFull | None]] = []

    def __call__(self, n: int = 1) -> None:
        self.pending += n
        if self.progress is not None:  # rank 0
            self.progress.advance(self.pending)
            self.pending = 0
            self.drain(block=False)
        elif time.monotonic() - self.last >= self.every:
            self.send()

    def send(self, final: tuple[float, float, DiskFull | None] | None = None) -> None:
        if self.world.comm is None:
            return
        self.world.comm.send((self.pending, final), dest=0, tag=PROGRESS_TAG)
        self.pending, self.last = 0, time.monotonic()

    def drain(self, block: bool) -> None:
        """Rank 0: take the messages waiting; with ``block``, until every worker is done.
        Waiting polls with short sleeps: a blocking MPI receive would spin a core."""
        comm = self.world.comm
        if comm is None:
            return
        while self.finished < self.world.size - 1:
            if not comm.iprobe(tag=PROGRESS_TAG):
                if not block:
                    return
                time.sleep(0.02)
                continue
            n, final = comm.recv(tag=PROGRESS_TAG)
            if self.progress is not None:
                self.progress.advance(n)
            if final is not None:
                self.finished += 1
                self.times.append(final)


def simulate(cfg: Config, out: Path, world: World, *, overwrite: bool = False,
             catalogue: dict[str, np.ndarray] | None = None, catalogue_sha256: str | None = None,
             stream=None, progress: bool = True) -> dict[str, Any]:
    """Simulate the dataset of ``cfg`` into ``out`` with this rank's share of the shards.

    Call on every rank with the same arguments. Rank 0 holds the folder's lock until the
    index and the marker are written. Returns (on every rank) a summary dict:
    ``complete_before``, ``n_images``, ``shards_done``, ``wall_time_s``, ``write_time_s``
    (this rank) and, on rank 0, ``write_share`` (writing / rank time over all ranks).
    UserError (raised on rank 0, which speaks for all) for every refusal and a full disk."""
    with contextlib.ExitStack() as held:
        return _simulate(cfg, out, world, held, overwrite=overwrite, catalogue=catalogue,
                         catalogue_sha256=catalogue_sha256, stream=stream, progress=progress)


def _simulate(cfg: Config, out: Path, world: World, held: contextlib.ExitStack, *,
              overwrite: bool, catalogue, catalogue_sha256, stream, progress) -> dict[str, Any]:
    stream = sys.stderr if stream is None else stream
    t0 = time.perf_counter()
    fp = fingerprint(cfg, catalogue_sha256)
    the_plan = None
    if world.is_root:
        refusal = take_folder(out, overwrite, held)
        the_plan = Plan(error=refusal) if refusal else plan(out, cfg, fp, overwrite)
    # Every rank gets rank 0's verdict before any work: all refuse together or all start.
    the_plan = world.bcast(the_plan)
    if the_plan.error:
        raise UserError(the_plan.error)
    summary: dict[str, Any] = {"complete_before": the_plan.complete, "n_images": cfg.dataset.n_images}
    if the_plan.complete:
        return summary
    ranges = shard_ranges(cfg)
    redo = shards_to_redo(out, the_plan.done, world) if the_plan.done else []
    todo = sorted((*the_plan.todo, *redo))
    mine = todo[world.rank::world.size]
    done_items = sum(len(ranges[k]) for k in the_plan.done if k not in redo)
    renderer = Renderer(cfg.image)
    io.h5py_module()  # imported now: start-up, not the first shard's writing time
    bar = None
    if world.is_root:
        bar = Progress(cfg.dataset.n_images, done_items, stream=stream, enabled=progress)
        if the_plan.done:
            print(f"resuming: {done_items} of {cfg.dataset.n_images} images already done in "
                  f"{len(the_plan.done) - len(redo)} shards"
                  + (f"; redoing {len(redo)} damaged shard(s)" if redo else ""),
                  file=stream, flush=True)
    report = _Reporter(world, bar)
    attrs = {"fingerprint": fp, "seed": cfg.seed}
    write_time = 0.0
    full: DiskFull | None = None
    for pos, k in enumerate(mine):
        images, labels, truth = render_items(renderer, cfg, ranges[k], catalogue, on_item=report)
        tw = time.perf_counter()
        path = io.shard_path(out, k)
        try:
            io.write_shard(path, ranges[k].start, images, labels, truth,
                           label_names=pop.LABEL_NAMES, truth_names=TRUTH_NAMES, attrs=attrs,
                           compression=cfg.dataset.compression)
        except OSError as exc:
            if not io.is_disk_full(exc):
                raise
            # Stop this rank; the others finish what they can. Rank 0 says it once.
            full = DiskFull(str(path), sum(_shard_bytes(cfg, len(ranges[j])) for j in mine[pos:]))
            break
        write_time += time.perf_counter() - tw
        _test_hook_after_shard(world.rank)
    summary.update(shards_done=len(mine) if full is None else pos, write_time_s=write_time)
    if not world.is_root:
        # the last message carries this rank's times and any disk-full; the rank is then
        # free to exit (normally: rank 0 reports the failure for every rank)
        report.send(final=(write_time, time.perf_counter() - t0, full))
        summary["wall_time_s"] = time.perf_counter() - t0
        return summary
    own_time = time.perf_counter() - t0
    report.drain(block=True)
    if bar is not None:
        bar.close()
    fulls = [f for f in (full, *(t[2] for t in report.times)) if f is not None]
    if fulls:
        _, index_bytes = _estimate(cfg)
        raise UserError(disk_full_message(fulls[0].path, sum(f.bytes for f in fulls) + index_bytes,
                                          out, "the remaining shards and the index"))
    tw = time.perf_counter()
    try:
        write_dataset_index(out, cfg, fp)
    except OSError as exc:
        if not io.is_disk_full(exc):
            raise
        raise UserError(disk_full_message(out / io.INDEX, _estimate(cfg)[1], out,
                                          "the index (the shards are kept)")) from None
    index_time = time.perf_counter() - tw
    times = [(write_time, own_time), *((w, r) for w, r, _ in report.times)]
    summary.update(wall_time_s=time.perf_counter() - t0, index_time_s=index_time,
                   write_share=(sum(w for w, _ in times) + index_time) /
                   (sum(r for _, r in times) + index_time))
    return summary


@dataclass(frozen=True)
class DiskFull:
    """A rank stopped by a full disk: the file it could not write and the bytes its
    unwritten shards need."""

    path: str
    bytes: int


def _estimate(cfg: Config) -> tuple[int, int]:
    return io.estimate_bytes(cfg.dataset.n_images, (cfg.image.size, cfg.image.size),
                             len(pop.LABEL_NAMES), len(TRUTH_NAMES), len(shard_ranges(cfg)[0]))


def _shard_bytes(cfg: Config, n: int) -> int:
    return io.estimate_bytes(n, (cfg.image.size, cfg.image.size), len(pop.LABEL_NAMES),
                             len(TRUTH_NAMES), n)[0]


def disk_full_message(path: str | Path, need: int, out: Path, what: str) -> str:
    """The one line of a full disk: the file, the bytes still needed, what to do."""
    return (f"disk full writing {path}: {what} need about {io.human_bytes(need)} ({need} bytes), "
            f"{io.human_bytes(io.free_bytes(out))} are free; free space and run the same "
            f"command again to resume")


def _test_hook_after_shard(rank: int) -> None:
    """Test hook: ``LENSHPC_TEST_SLOW_SHARD=SECONDS`` sleeps after each shard write so a test
    can kill -9 a rank between shards (never set in normal use)."""
    delay = os.environ.get("LENSHPC_TEST_SLOW_SHARD")
    if delay:
        time.sleep(float(delay))


# --------------------------------------------------------------------------- index


def write_dataset_index(out: Path, cfg: Config, fp: str | None = None) -> str:
    """Rank 0, after every shard is written: ``out/dataset.h5``, then the completion marker
    (``dataset.done.json``: dataset.h5, config.yaml and simulate.json hashed, every shard
    by size); returns the dataset checksum. With ``fp``, every shard must carry that
    config fingerprint."""
    import lenstronomy
    ranges = shard_ranges(cfg)
    d = cfg.dataset
    split = pop.split(cfg.seed, d.n_images, d.n_test, d.n_folds)
    attrs = {"image_size": cfg.image.size, "pixel_scale": cfg.image.pixel_scale,
             "supersampling_factor": cfg.image.supersampling,
             "supersampling_mode": cfg.image.supersampling_mode, "seed": cfg.seed,
             "config": cfg.to_yaml_text(), "lenshpc_version": __version__,
             "lenstronomy_version": lenstronomy.__version__, "n_folds": d.n_folds,
             "n_test": d.n_test, "n_images": d.n_images, "shard_size": len(ranges[0])}
    digest = io.write_index(out, n_items=d.n_images, image_shape=(cfg.image.size, cfg.image.size),
                            shard_ranges_=ranges, split=split, label_names=pop.LABEL_NAMES,
                            truth_names=TRUTH_NAMES, attrs=attrs,
                            shard_attrs=None if fp is None else {"fingerprint": fp})
    shards = {io.shard_name(k): io.shard_path(out, k).stat().st_size for k in range(len(ranges))}
    lock.mark_done(out, PRODUCT, [io.INDEX, io.CONFIG, STATE],
                   info={"checksum": digest, "n_images": d.n_images, "shards": shards})
    return digest
