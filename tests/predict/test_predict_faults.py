"""lenshpc predict under faults, with real processes: killed with SIGKILL mid-run and
resumed (on another rank count) to the same catalogue bit for bit, a second run into the
same catalogue refused while the first goes on, a damaged chunk file predicted again, a
full disk ending in one line and a rerun that finishes."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
from astropy.table import Table

from lenshpc.predict import catalogue
from tests.conftest import PYTHON, env, lenshpc, mpirun
from tests.faults.disk import fill, resize, small_disk
from tests.predict.conftest import SCALE, SIZE, render

N_CUTOUTS = 600
TIMEOUT = 600
NUMBERS = [f"{p}_{s}" for p in ("theta_E", "q", "e1", "e2")
           for s in ("mean", "std", "p16", "p50", "p84")]


@pytest.fixture(scope="module")
def many(tmp_path_factory) -> Path:
    """600 cutouts (200 chunks of 3) in one HDF5 file: a run of several seconds."""
    path = tmp_path_factory.mktemp("many") / "cutouts.h5"
    base = np.stack([render(SIZE, SCALE, t, i) for i, t in enumerate(np.linspace(0.5, 1.5, 20))])
    rng = np.random.default_rng(0)
    images = np.concatenate([base + rng.normal(0, 0.01, base.shape) for _ in range(N_CUTOUTS // 20)])
    with h5py.File(path, "w") as f:
        f.create_dataset("images", data=images.astype(np.float32))
        f.attrs["pixel_scale"] = SCALE
    return path


def _args(cfg, runs, out, *inputs):
    return ("predict", "--config", cfg, "--runs", runs, "--out", out, "--mc-samples", "4",
            "--no-progress", *inputs)


@pytest.fixture(scope="module")
def reference(trained, many, tmp_path_factory) -> Table:
    cfg, runs = trained
    out = tmp_path_factory.mktemp("reference") / "cat.fits"
    lenshpc(*_args(cfg, runs, out, many), timeout=TIMEOUT, check=True)
    return Table.read(out, mask_invalid=False)


def _same(path: Path, reference: Table) -> None:
    t = Table.read(path, mask_invalid=False)
    assert list(t["source"]) == list(reference["source"])
    for col in NUMBERS + ["flag"]:
        np.testing.assert_array_equal(t[col], reference[col], err_msg=col)


def _start(cfg, runs, out, many) -> subprocess.Popen:
    return subprocess.Popen([PYTHON, "-m", "lenshpc", *map(str, _args(cfg, runs, out, many))],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env(),
                            start_new_session=True)


def _wait_for_chunks(proc: subprocess.Popen, out: Path, n: int) -> None:
    """Until ``n`` chunk files of the run writing ``out`` exist (it holds the lock by then)."""
    deadline = time.monotonic() + TIMEOUT
    root = catalogue.partial_root(out)
    while len(list(root.glob("*/chunk-*.npz"))) < n:
        assert proc.poll() is None, f"predict ended before {n} chunks: {proc.communicate()}"
        assert time.monotonic() < deadline
        time.sleep(0.01)


def _killed_after(cfg, runs, out: Path, many: Path, n: int) -> None:
    """A run of predict into ``out``, killed with SIGKILL once ``n`` chunks are saved."""
    proc = _start(cfg, runs, out, many)
    try:
        _wait_for_chunks(proc, out, n)
        os.killpg(proc.pid, signal.SIGKILL)
    finally:
        _kill(proc)


def _kill(proc: subprocess.Popen) -> None:
    """Kill ``proc``'s group if it still runs; always reap it and close its pipes."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
    proc.communicate()


def _one_line(proc, *fragments: str) -> str:
    assert proc.returncode == 2, (proc.returncode, proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("lenshpc predict: error: "), proc.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


def test_killed_run_resumes_to_the_same_catalogue_on_another_rank_count(trained, many, reference,
                                                                        tmp_path):
    cfg, runs = trained
    out = tmp_path / "cat.fits"
    _killed_after(cfg, runs, out, many, 5)
    assert not out.exists()                                  # nothing under the final name
    saved = len(list(catalogue.partial_root(out).glob("*/chunk-*.npz")))
    assert 5 <= saved < N_CUTOUTS // 3
    again = mpirun(2, *_args(cfg, runs, out, many), timeout=TIMEOUT)
    assert "reused from an interrupted run" in again.stdout, again.stdout
    _same(out, reference)
    assert not catalogue.partial_root(out).exists()


def test_a_second_run_into_the_same_catalogue_is_refused(trained, many, reference, tmp_path):
    cfg, runs = trained
    out = tmp_path / "cat.fits"
    first = _start(cfg, runs, out, many)
    try:
        _wait_for_chunks(first, out, 1)
        os.killpg(first.pid, signal.SIGSTOP)                 # held: it cannot finish first
        try:
            second = lenshpc(*_args(cfg, runs, out, many), timeout=TIMEOUT)
        finally:
            os.killpg(first.pid, signal.SIGCONT)
        _one_line(second, f"catalogue {out} is being written by pid {first.pid}")
        assert first.poll() is None                          # the refusal disturbed nothing
        _, stderr = first.communicate(timeout=TIMEOUT)
    finally:
        _kill(first)
    assert first.returncode == 0, stderr
    _same(out, reference)


def test_a_damaged_chunk_is_predicted_again(trained, many, reference, tmp_path):
    cfg, runs = trained
    out = tmp_path / "cat.fits"
    _killed_after(cfg, runs, out, many, 3)
    chunks = sorted(catalogue.partial_root(out).glob("*/chunk-*.npz"))
    chunks[0].write_bytes(b"not a chunk")                     # damaged
    np.savez(chunks[1], stats=np.zeros((2, 4, 5)), flags=np.zeros(2, np.int32))   # wrong rows
    again = lenshpc(*_args(cfg, runs, out, many), timeout=TIMEOUT, check=True)
    assert "reused from an interrupted run" in again.stdout
    _same(out, reference)


def test_a_full_disk_is_one_line_and_the_rerun_finishes(trained, many, reference, tmp_path):
    cfg, runs = trained
    with small_disk(tmp_path / "disk", "2M") as disk:
        out = disk / "cat.fits"
        filler = fill(disk)
        proc = lenshpc(*_args(cfg, runs, out, many), timeout=TIMEOUT)
        _one_line(proc, "No space left on device")
        assert not out.exists()
        filler.unlink()
        resize(disk, "8M")
        lenshpc(*_args(cfg, runs, out, many), timeout=TIMEOUT, check=True)
        _same(out, reference)
