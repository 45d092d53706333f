"""Faults of the dataset and of simulate, with real processes, real files and real mpirun.

- Many shards (600) and an open-file limit of 256 under 2 ranks: info, verify and train's
  reading never see NaN (a read through the virtual ``images`` does: the hazard is real).
- The index's labels and truth equal the shards'; verify catches an index that disagrees.
- Two simulates into one --out: the second is refused in one line naming the holder.
- A truncated dataset.h5 or shard, or a missing marker, is not "complete".
- A full disk (a real 2 MB tmpfs) while shards or the index are written: one line naming
  the file and the bytes needed, exit 2, and a rerun after freeing space resumes.
- What cannot fit is refused up front, at once, however large ``n_images`` is.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import signal
import subprocess
import time
from pathlib import Path

import h5py
import numpy as np
import pytest

from lenshpc.config import UserError, load
from lenshpc.dataset.folder import dataset_done
from lenshpc.dataset.index import read_index, read_items
from lenshpc.dataset.shards import estimate_bytes, read_shard
from lenshpc.train import data as D
from tests.conftest import PYTHON, env, lenshpc, mpirun_cmd, require, write_config
from tests.faults.disk import fill, small_disk

#: Low enough that a read through the virtual dataset of 600 shards runs out of files.
NOFILE = 256
TINY = dict(image={"size": 16, "pixel_scale": 0.3})


def _under_ulimit(cmd: list[str], nofile: int = NOFILE, **extra: str) -> subprocess.CompletedProcess:
    """Run ``cmd`` with soft and hard RLIMIT_NOFILE set to ``nofile`` (no raising it back)."""
    line = f"ulimit -n {nofile} && exec " + " ".join(shlex.quote(str(c)) for c in cmd)
    return subprocess.run(["bash", "-c", line], capture_output=True, text=True, timeout=300,
                          env=env(**extra))


def _one_line_error(proc: subprocess.CompletedProcess, command: str, *fragments: str) -> str:
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    errors = [x for x in proc.stderr.splitlines() if f"lenshpc {command}: error:" in x]
    assert len(errors) == 1, proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    for fragment in fragments:
        assert fragment in errors[0], errors[0]
    return errors[0]


def _shard_arrays(root: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Images, labels, truth of every shard in item order, read shard by shard."""
    parts = [read_shard(p) for p in sorted((root / "shards").glob("shard-*.h5"))]
    return tuple(np.concatenate([p[i] for p in parts]) for i in range(3))


# --------------------------------------------------------------------------- many shards


@pytest.fixture(scope="module")
def many(tmp_path_factory) -> tuple[Path, Path]:
    """600 shards of 2 images, simulated by 2 ranks under the low open-file limit."""
    require("mpirun")
    root = tmp_path_factory.mktemp("many")
    cfg = write_config(root / "c.yaml", **TINY,
                       dataset={"n_images": 1200, "shard_size": 2, "n_folds": 2, "test_fraction": 0.1})
    proc = _under_ulimit(mpirun_cmd(2, "simulate", "--config", cfg, "--out", root / "ds",
                                    "--no-progress"))
    assert proc.returncode == 0, proc.stderr
    return cfg, root / "ds"


@pytest.mark.mpi
def test_the_low_limit_does_fill_a_virtual_read_with_nan(many):
    """The hazard the layout avoids: plain h5py through ``images`` past the limit."""
    _, out = many
    code = ("import h5py, numpy as np, sys; a = h5py.File(sys.argv[1])['images'][...]; "
            "print(int(np.isnan(a).reshape(len(a), -1).any(axis=1).sum()))")
    proc = _under_ulimit([PYTHON, "-c", code, out / "dataset.h5"])
    assert proc.returncode == 0, proc.stderr
    assert int(proc.stdout) > 0


@pytest.mark.mpi
def test_index_arrays_equal_the_shards(many):
    _, out = many
    images, labels, truth = _shard_arrays(out)
    index = read_index(out)
    assert len(index.shards) == 600 and index.n_items == 1200
    np.testing.assert_array_equal(index.labels, labels)
    np.testing.assert_array_equal(index.truth, truth)
    with h5py.File(out / "dataset.h5", "r") as f:
        assert not f["labels"].is_virtual and not f["truth"].is_virtual and f["images"].is_virtual
    assert np.isfinite(images).all()


@pytest.mark.mpi
def test_info_and_verify_under_the_low_limit_with_two_ranks(many):
    _, out = many
    _, labels, truth = _shard_arrays(out)
    proc = _under_ulimit(mpirun_cmd(2, "dataset", "info", out, "--json"))
    assert proc.returncode == 0, proc.stderr
    info = json.loads(proc.stdout)  # printed once, by rank 0
    assert info["complete"] and info["finished"] and info["n_images"] == 1200
    for j, name in enumerate(info["labels"]):
        assert info["label_ranges"][name] == [float(labels[:, j].min()), float(labels[:, j].max())]
    for j, name in enumerate(info["truth"]):
        assert info["truth_ranges"][name] == [float(truth[:, j].min()), float(truth[:, j].max())]
    proc = _under_ulimit(mpirun_cmd(2, "dataset", "verify", out))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().endswith("600 shards, 1200 images: OK")


READ_SHARE = """
import resource, sys
import numpy as np
from mpi4py import MPI
from lenshpc.config import load
from lenshpc.train import data as D
comm = MPI.COMM_WORLD
cfg = load(sys.argv[1])
ds = D.open_dataset(sys.argv[2], cfg)
train, val = D.fold_items(ds.split, 0)
ids = np.concatenate([D.rank_share(train, comm.rank, comm.size), D.rank_share(val, comm.rank, comm.size)])
x, y = D.read_items(ds.path, ids, 1 << 12)
np.savez(f"{sys.argv[3]}/rank{comm.rank}.npz", ids=ids, x=x, y=y,
         nofile=resource.getrlimit(resource.RLIMIT_NOFILE)[0])
"""


@pytest.mark.mpi
def test_train_reads_its_share_under_the_low_limit_with_two_ranks(many, tmp_path):
    cfg, out = many
    script = tmp_path / "read_share.py"
    script.write_text(READ_SHARE)
    proc = _under_ulimit(["mpirun", "-n", "2", "--oversubscribe", "--bind-to", "none", PYTHON,
                          "-m", "mpi4py", script, cfg, out, tmp_path])
    assert proc.returncode == 0, proc.stderr
    images, labels, _ = _shard_arrays(out)
    seen = []
    for rank in (0, 1):
        got = np.load(tmp_path / f"rank{rank}.npz")
        assert got["nofile"] == NOFILE  # the limit was in force
        assert np.isfinite(got["x"]).all()
        np.testing.assert_array_equal(got["x"][..., 0], images[got["ids"]])
        np.testing.assert_array_equal(got["y"], labels[got["ids"]])
        seen.extend(got["ids"].tolist())
    split = read_index(out, truth=False).split
    assert sorted(seen) == np.flatnonzero(split >= 0).tolist()


# --------------------------------------------------------------------------- a small dataset


@pytest.fixture(scope="module")
def small(tmp_path_factory) -> tuple[Path, Path]:
    """40 images in 10 shards and its config."""
    root = tmp_path_factory.mktemp("small")
    cfg = write_config(root / "c.yaml", **TINY,
                       dataset={"n_images": 40, "shard_size": 4, "n_folds": 2, "test_fraction": 0.1})
    lenshpc("simulate", "--config", cfg, "--out", root / "ds", "--no-progress", check=True)
    return cfg, root / "ds"


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def _checksum(out: Path) -> str:
    with h5py.File(out / "dataset.h5", "r") as f:
        return str(f.attrs["checksum"])


def test_verify_catches_an_index_that_disagrees_with_the_shards(small, tmp_path):
    cfg, src = small
    for array, fragment in (("labels", "labels of items 4..7"), ("truth", "truth of items 4..7")):
        out = _copy(src, tmp_path / array)
        with h5py.File(out / "dataset.h5", "r+") as f:
            f[array][5, 0] += 0.125
        proc = lenshpc("dataset", "verify", out)
        assert proc.returncode == 1, proc.stdout
        assert fragment in proc.stderr and "shard-00001.h5" in proc.stderr
        # the marker's hash of dataset.h5 no longer holds: simulate rebuilds the index
        assert not dataset_done(out)
        proc = lenshpc("simulate", "--config", cfg, "--out", out, "--no-progress", check=True)
        assert "already complete" not in proc.stdout
        assert lenshpc("dataset", "verify", out).returncode == 0
        assert _checksum(out) == _checksum(src)


def test_nan_labels_are_refused_in_one_line_where_they_are_read(small, tmp_path):
    cfg, src = small
    out = _copy(src, tmp_path / "nan")
    with h5py.File(out / "dataset.h5", "r+") as f:
        f["labels"][3, 1] = np.nan
    _one_line_error(lenshpc("dataset", "info", out), "dataset", "not finite", "item 3")
    with pytest.raises(UserError, match="labels that are not finite"):
        D.open_dataset(out, load(cfg))
    proc = lenshpc("dataset", "verify", out)
    assert proc.returncode == 1 and "not finite" in proc.stderr


def test_a_truncated_or_missing_shard_is_named_where_images_are_read(small, tmp_path):
    cfg, src = small
    out = _copy(src, tmp_path / "trunc")
    index = D.open_dataset(out, load(cfg))
    shard = out / "shards" / "shard-00002.h5"
    os.truncate(shard, shard.stat().st_size - 2048)
    for source in (index, index.path):
        with pytest.raises(UserError, match="shard-00002.h5") as err:
            D.read_items(source, np.arange(40))
        assert "cannot read dataset.h5" not in str(err.value)
    with pytest.raises(UserError, match="shard-00002.h5"):
        D.open_dataset(out, load(cfg))
    shard.unlink()
    with pytest.raises(UserError, match="shard-00002.h5.*missing"):
        read_items(index, [9])
    # items of intact shards still read
    assert read_items(index, [0, 39]).shape == (2, 16, 16)


def test_a_truncated_index_or_a_missing_marker_is_not_complete(small, tmp_path):
    cfg, src = small
    out = _copy(src, tmp_path / "index")
    os.truncate(out / "dataset.h5", (out / "dataset.h5").stat().st_size // 2)
    assert not dataset_done(out)
    proc = lenshpc("simulate", "--config", cfg, "--out", out, "--no-progress", check=True)
    assert "already complete" not in proc.stdout and dataset_done(out)
    assert _checksum(out) == _checksum(src)

    out = _copy(src, tmp_path / "marker")
    (out / "dataset.done.json").unlink()
    with pytest.raises(UserError, match="not finished"):
        D.open_dataset(out, load(cfg))
    proc = lenshpc("simulate", "--config", cfg, "--out", out, "--no-progress", check=True)
    assert "already complete" not in proc.stdout and dataset_done(out)


def test_a_shard_failing_verify_is_not_complete_and_is_redone(small, tmp_path):
    cfg, src = small
    out = _copy(src, tmp_path / "shard")
    shard = out / "shards" / "shard-00007.h5"
    os.truncate(shard, shard.stat().st_size - 4096)
    assert lenshpc("dataset", "verify", out).returncode == 1
    kept = (out / "shards" / "shard-00000.h5").stat().st_mtime_ns
    proc = lenshpc("simulate", "--config", cfg, "--out", out, "--no-progress", check=True)
    assert "already complete" not in proc.stdout
    assert (out / "shards" / "shard-00000.h5").stat().st_mtime_ns == kept
    assert lenshpc("dataset", "verify", out).returncode == 0
    assert _checksum(out) == _checksum(src)


# --------------------------------------------------------------------------- one writer


def _slow_simulate(cfg, out, pause: str) -> subprocess.Popen:
    """``lenshpc simulate`` (one process) that pauses ``pause`` s after each shard (a test
    hook), so other processes can act while it runs."""
    return subprocess.Popen([PYTHON, "-m", "lenshpc", "simulate", "--config", str(cfg), "--out",
                             str(out), "--no-progress"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True,
                            env=env(LENSHPC_TEST_SLOW_SHARD=pause), start_new_session=True)


def _wait_for(predicate, what: str, proc: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert proc.poll() is None, (what, proc.communicate())
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


@pytest.mark.mpi
def test_a_second_simulate_into_the_same_out_is_refused_naming_the_holder(small, tmp_path):
    require("mpirun")
    cfg, src = small
    other = write_config(tmp_path / "other.yaml", base=cfg, seed=99)
    out = tmp_path / "ds"
    # Test hook: the first run pauses after each shard, so the others start while it runs.
    first = _slow_simulate(cfg, out, "1.0")
    try:
        _wait_for(lambda: list((out / "shards").glob("shard-*.h5")), "a first shard", first)
        holder = f"pid {first.pid}"
        same = subprocess.run(mpirun_cmd(2, "simulate", "--config", cfg, "--out", out,
                                         "--no-progress"),
                              capture_output=True, text=True, timeout=120, env=env())
        _one_line_error(same, "simulate", "is being written by", holder)
        replace = lenshpc("simulate", "--config", other, "--out", out, "--overwrite", "--no-progress")
        _one_line_error(replace, "simulate", "is being written by", holder)
        assert first.poll() is None  # the refusals did not disturb the first run
        stdout, stderr = first.communicate(timeout=120)
    finally:
        if first.poll() is None:
            os.killpg(first.pid, signal.SIGKILL)
            first.wait()
    assert first.returncode == 0, stderr
    assert lenshpc("dataset", "verify", out).returncode == 0
    assert _checksum(out) == _checksum(src)  # the first run's seed, whole
    assert "seed: 1234" in (out / "config.yaml").read_text()
    proc = lenshpc("simulate", "--config", cfg, "--out", out, check=True)
    assert "already complete" in proc.stdout


def test_an_interrupted_overwrite_leaves_no_marker(small, tmp_path):
    cfg, src = small
    out = _copy(src, tmp_path / "ds")
    proc = subprocess.Popen([PYTHON, "-m", "lenshpc", "simulate", "--config", str(cfg), "--out",
                             str(out), "--n-images", "20", "--overwrite", "--no-progress"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env=env(LENSHPC_TEST_SLOW_SHARD="0.5"), start_new_session=True)
    try:
        _wait_for(lambda: len(list((out / "shards").glob("shard-*.h5"))) == 1
                  and not (out / "dataset.h5").exists(), "the first new shard", proc)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert not (out / "dataset.done.json").exists() and not dataset_done(out)
    proc = lenshpc("simulate", "--config", cfg, "--out", out, "--n-images", "20", "--no-progress",
                   check=True)
    assert "already complete" not in proc.stdout and dataset_done(out)


# --------------------------------------------------------------------------- disk space


@pytest.fixture
def disk(tmp_path) -> Path:
    """A real 2 MB file system (tmpfs), unmounted afterwards."""
    with small_disk(tmp_path / "disk", "2M") as mnt:
        yield mnt


#: About 1.2 MB of dataset: fits the 2 MB disk, which a filler then takes away.
FITS = dict(dataset={"n_images": 600, "shard_size": 50, "n_folds": 2, "test_fraction": 0.1})


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> tuple[Path, str]:
    root = tmp_path_factory.mktemp("ref")
    cfg = write_config(root / "c.yaml", **TINY, **FITS)
    lenshpc("simulate", "--config", cfg, "--out", root / "ds", "--no-progress", check=True)
    return cfg, _checksum(root / "ds")


@pytest.mark.mpi
def test_disk_full_while_shards_are_written_then_resume(disk, reference):
    require("mpirun")
    cfg, checksum = reference
    out = disk / "ds"
    run = subprocess.Popen(mpirun_cmd(2, "simulate", "--config", cfg, "--out", out, "--no-progress"),
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                           env=env(LENSHPC_TEST_SLOW_SHARD="0.3"), start_new_session=True)
    try:
        _wait_for(lambda: list((out / "shards").glob("shard-*.h5")), "a first shard", run)
        filler = fill(disk)
        stdout, stderr = run.communicate(timeout=120)
    finally:
        if run.poll() is None:
            os.killpg(run.pid, signal.SIGKILL)
            run.wait()
    line = _one_line_error(subprocess.CompletedProcess(run.args, run.returncode, stdout, stderr),
                           "simulate", "disk full writing", str(out / "shards"), "bytes)",
                           "run the same command again")
    need = int(line.split("(")[1].split(" bytes")[0])
    assert 0 < need <= sum(estimate_bytes(600, (16, 16), 4, 19, 50))
    assert not (out / "dataset.h5").exists() and not list((out / "shards").glob(".*tmp*"))
    filler.unlink()
    proc = subprocess.run(mpirun_cmd(2, "simulate", "--config", cfg, "--out", out, "--no-progress"),
                          capture_output=True, text=True, timeout=300, env=env())
    assert proc.returncode == 0, proc.stderr
    assert "resuming" in proc.stderr
    assert _checksum(out) == checksum and dataset_done(out)


def test_disk_full_while_the_index_is_written_then_resume(disk, reference):
    cfg, checksum = reference
    out = disk / "ds"
    run = _slow_simulate(cfg, out, "0.3")
    try:
        # the hook pauses after the last shard too: the disk fills before the index
        _wait_for(lambda: len(list((out / "shards").glob("shard-*.h5"))) == 12, "12 shards", run)
        filler = fill(disk)
        stdout, stderr = run.communicate(timeout=120)
    finally:
        if run.poll() is None:
            os.killpg(run.pid, signal.SIGKILL)
            run.wait()
    _one_line_error(subprocess.CompletedProcess(run.args, run.returncode, stdout, stderr),
                    "simulate", f"disk full writing {out / 'dataset.h5'}", "bytes)")
    assert not (out / "dataset.h5").exists() and not list(out.glob(".dataset*"))
    stamps = {p.name: p.stat().st_mtime_ns for p in (out / "shards").iterdir()}
    filler.unlink()
    proc = lenshpc("simulate", "--config", cfg, "--out", out, "--no-progress", check=True)
    assert "resuming" in proc.stderr
    assert {p.name: p.stat().st_mtime_ns for p in (out / "shards").iterdir()} == stamps
    assert _checksum(out) == checksum and dataset_done(out)


def test_what_cannot_fit_is_refused_before_any_work(disk, tmp_path):
    cfg = write_config(tmp_path / "big.yaml", **TINY,
                       dataset={"n_images": 3000, "shard_size": 50, "n_folds": 2})
    proc = lenshpc("simulate", "--config", cfg, "--out", disk / "ds")
    _one_line_error(proc, "simulate", "3000 images need about", "are free there")
    assert not list((disk / "ds").glob("shards/*")) and not (disk / "ds" / "config.yaml").exists()


def test_a_huge_n_images_is_refused_at_once(debug_config, tmp_path):
    t0 = time.monotonic()
    proc = lenshpc("simulate", "--config", debug_config, "--out", tmp_path / "ds",
                   "--n-images", "1000000000", timeout=60)
    _one_line_error(proc, "simulate", "1000000000 images need about", "TB")
    assert time.monotonic() - t0 < 30
    assert not (tmp_path / "ds" / "shards").exists()


def test_an_index_of_the_old_format_is_refused_and_rebuilt(small, tmp_path):
    """Format 1 kept labels and truth as virtual datasets: never read, rebuilt on request."""
    cfg, src = small
    out = _copy(src, tmp_path / "old")
    with h5py.File(out / "dataset.h5", "r+") as f:
        del f.attrs["format"]
    (out / "dataset.done.json").unlink()
    _one_line_error(lenshpc("dataset", "info", out), "dataset", "format 1", "simulate")
    with pytest.raises(UserError, match="format 1"):
        D.open_dataset(out, load(cfg))
    proc = lenshpc("simulate", "--config", cfg, "--out", out, "--no-progress", check=True)
    assert "already complete" not in proc.stdout
    assert read_index(out).checksum == _checksum(src) and dataset_done(out)
