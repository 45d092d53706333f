"""The simulate driver: shards of items rendered by MPI ranks into a dataset directory.

Work unit: shard k, a block of consecutive items whose size comes from the config alone
(``dataset.shard_mb`` and ``min_shards``, or ``shard_size``), never from the number of
ranks. Rank 0 takes the folder's lock (one writer per dataset, held for the whole run),
inspects the directory (config identity, free space, shards already complete:
:mod:`lenshpc.simulate.plan`) and broadcasts its verdict and the shards left to do; they
are dealt round-robin to the ranks. Each rank renders its shards and writes each one
atomically; rank 0 gathers progress messages and, when every rank is done, writes
``dataset.h5`` and then the completion marker ``dataset.done.json``. A killed run
restarts where it stopped because a shard file with its final name is always complete;
a full disk stops the run with one line and a rerun after freeing space resumes the same
way.
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from lenshpc import __version__, io, lock
from lenshpc.config import Config, UserError
from lenshpc.dataset import CONFIG, INDEX
from lenshpc.dataset.folder import PRODUCT, shard_ranges
from lenshpc.dataset.index import write_index
from lenshpc.dataset.shards import (
    estimate_bytes,
    h5py_module,
    shard_name,
    shard_path,
    write_shard,
)
from lenshpc.parallel import World
from lenshpc.progress import Progress
from lenshpc.simulate import population as pop
from lenshpc.simulate.plan import (
    STATE,
    ShardPlan,
    dataset_bytes,
    fingerprint,
    plan_shards,
    shards_to_redo,
    take_folder,
)
from lenshpc.simulate.render import TRUTH_NAMES, Renderer

#: MPI tag of progress messages (workers -> rank 0).
PROGRESS_TAG = 71


# --------------------------------------------------------------------------- kernel


def render_items(renderer: Renderer, cfg: Config, indices: range,
                 catalogue: dict[str, np.ndarray] | None = None,
                 on_item=None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Images (n, H, W) float32, labels (n, 4) float32, truth (n, P) float64 of ``indices``.

    Item i depends only on (cfg.seed, i); ``on_item()`` is called after each image."""
    truth, labels = pop.sample(cfg.population, cfg.seed, indices, catalogue,
                               zero_point=cfg.image.zero_point)
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

    def decide() -> ShardPlan:
        refusal = take_folder(out, overwrite, held)
        verdict = ShardPlan(error=refusal) if refusal else plan_shards(out, cfg, fp, overwrite)
        if verdict.error:
            raise UserError(verdict.error)
        return verdict

    # Every rank gets rank 0's verdict before any work: all refuse together or all start.
    the_plan = world.on_root(decide)
    summary: dict[str, Any] = {"complete_before": the_plan.complete, "n_images": cfg.dataset.n_images}
    if the_plan.complete:
        return summary
    ranges = shard_ranges(cfg)
    redo = shards_to_redo(out, the_plan.done, world) if the_plan.done else []
    todo = sorted((*the_plan.todo, *redo))
    mine = todo[world.rank::world.size]
    done_items = sum(len(ranges[k]) for k in the_plan.done if k not in redo)
    renderer = Renderer(cfg.image)
    h5py_module()  # imported now: start-up, not the first shard's writing time
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
        path = shard_path(out, k)
        try:
            write_shard(path, ranges[k].start, images, labels, truth,
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
        _, index_bytes = dataset_bytes(cfg)
        raise UserError(disk_full_message(fulls[0].path, sum(f.bytes for f in fulls) + index_bytes,
                                          out, "the remaining shards and the index"))
    tw = time.perf_counter()
    try:
        write_dataset_index(out, cfg, fp)
    except OSError as exc:
        if not io.is_disk_full(exc):
            raise
        raise UserError(disk_full_message(out / INDEX, dataset_bytes(cfg)[1], out,
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

def _shard_bytes(cfg: Config, n: int) -> int:
    return estimate_bytes(n, (cfg.image.size, cfg.image.size), len(pop.LABEL_NAMES),
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
    split = pop.split(cfg.seed, d.n_images, d.n_test, d.n_folds, d.split)
    attrs = {"image_size": cfg.image.size, "pixel_scale": cfg.image.pixel_scale,
             "supersampling_factor": cfg.image.supersampling,
             "supersampling_mode": cfg.image.supersampling_mode, "seed": cfg.seed,
             "config": cfg.to_yaml_text(), "lenshpc_version": __version__,
             "lenstronomy_version": lenstronomy.__version__, "n_folds": d.n_folds,
             "n_test": d.n_test, "n_images": d.n_images, "shard_size": len(ranges[0])}
    digest = write_index(out, n_items=d.n_images, image_shape=(cfg.image.size, cfg.image.size),
                         shard_ranges_=ranges, split=split, label_names=pop.LABEL_NAMES,
                         truth_names=TRUTH_NAMES, attrs=attrs,
                         shard_attrs=None if fp is None else {"fingerprint": fp})
    shards = {shard_name(k): shard_path(out, k).stat().st_size for k in range(len(ranges))}
    lock.mark_done(out, PRODUCT, [INDEX, CONFIG, STATE],
                   info={"checksum": digest, "n_images": d.n_images, "shards": shards})
    return digest
