"""``lenshpc simulate`` and ``lenshpc dataset`` as a user runs them (one process, real files)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import h5py
import numpy as np
import pytest

from tests.conftest import PYTHON, env, lenshpc, write_config

N = 60


@pytest.fixture(scope="module")
def small(tmp_path_factory) -> tuple[Path, Path]:
    """A small complete dataset (N images, 3 shards) and its config."""
    root = tmp_path_factory.mktemp("sim")
    cfg = write_config(root / "small.yaml", dataset={"n_images": N, "shard_size": 20, "n_folds": 2,
                                                     "test_fraction": 0.1}, image={"size": 32})
    out = root / "ds"
    lenshpc("simulate", "--config", cfg, "--out", out, check=True)
    return cfg, out


def test_dataset_reads_with_plain_h5py_as_one_dataset(small):
    cfg, out = small
    with h5py.File(out / "dataset.h5", "r") as f:
        assert f["images"].shape == (N, 32, 32) and f["images"].dtype == np.float32
        images = f["images"][...]
        assert np.all(images.reshape(N, -1).max(axis=1) == 1.0)
        assert f["labels"].shape == (N, 4) and f["labels"].dtype == np.float32
        assert list(f["labels"].attrs["names"]) == ["theta_E", "q", "e1", "e2"]
        names = list(f["truth"].attrs["names"])
        assert f["truth"].shape == (N, len(names)) and f["truth"].dtype == np.float64
        assert {"lens_mass.theta_E", "lens_mass.e1", "source_light.center_x",
                "lens_light.R_sersic"} <= set(names)
        split = f["split"][...]
        assert split.dtype == np.int8 and np.sum(split == -1) == 6
        assert np.sum(split == 0) == np.sum(split == 1) == 27
        for key in ("image_size", "pixel_scale", "supersampling_factor", "seed", "config",
                    "lenshpc_version", "lenstronomy_version", "n_folds", "n_test", "checksum"):
            assert key in f.attrs, key
        assert f.attrs["image_size"] == 32 and "n_images: 60" in f.attrs["config"]
        # the label theta_E is the truth theta_E
        np.testing.assert_array_equal(f["labels"][:, 0],
                                      f["truth"][:, names.index("lens_mass.theta_E")].astype(np.float32))


def test_dataset_reads_after_moving_the_directory_from_another_cwd(small, tmp_path):
    _, out = small
    moved = tmp_path / "elsewhere" / "moved"
    shutil.copytree(out, moved)
    code = ("import h5py, numpy as np, sys; a = h5py.File(sys.argv[1])['images'][...]; "
            "b = h5py.File(sys.argv[2])['images'][...]; sys.exit(0 if np.array_equal(a, b) "
            "and np.isfinite(a).all() else 1)")
    subprocess.run([PYTHON, "-c", code, str(out / "dataset.h5"), "moved/dataset.h5"],
                   cwd=moved.parent, check=True, env=env())


def test_run_again_says_complete_and_changes_nothing(small):
    cfg, out = small
    before = {p.name: p.stat().st_mtime_ns for p in (out / "shards").iterdir()}
    proc = lenshpc("simulate", "--config", cfg, "--out", out, check=True)
    assert "already complete" in proc.stdout
    assert {p.name: p.stat().st_mtime_ns for p in (out / "shards").iterdir()} == before


def test_info_and_verify(small):
    _, out = small
    proc = lenshpc("dataset", "info", out, "--json", check=True)
    info = json.loads(proc.stdout)
    assert info["complete"] and info["n_images"] == N and info["image_shape"] == [32, 32]
    assert info["fold_sizes"] == {"0": 27, "1": 27} and info["n_test"] == 6
    assert info["labels"] == ["theta_E", "q", "e1", "e2"]
    lo, hi = info["label_ranges"]["theta_E"]
    assert 0 < lo < hi
    text = lenshpc("dataset", "info", out, check=True).stdout
    assert "complete" in text and "2 folds" in text
    proc = lenshpc("dataset", "verify", out)
    assert proc.returncode == 0 and "OK" in proc.stdout


def test_verify_names_a_truncated_altered_or_missing_shard(small, tmp_path):
    _, src = small
    for damage in ("truncate", "alter", "remove"):
        out = tmp_path / damage
        shutil.copytree(src, out)
        shard = out / "shards" / "shard-00001.h5"
        if damage == "truncate":
            os.truncate(shard, shard.stat().st_size // 2)
        elif damage == "alter":
            with h5py.File(shard, "r+") as f:
                f["images"][3, 5, 5] += 0.25
        else:
            shard.unlink()
        proc = lenshpc("dataset", "verify", out)
        assert proc.returncode == 1, (damage, proc.stdout, proc.stderr)
        assert "shard-00001.h5" in proc.stderr and "shard-00000.h5" not in proc.stderr
        assert "Traceback" not in proc.stderr


def test_incomplete_dataset_info_and_verify(small, tmp_path):
    _, src = small
    out = tmp_path / "partial"
    shutil.copytree(src, out)
    (out / "dataset.h5").unlink()
    (out / "shards" / "shard-00002.h5").unlink()
    info = json.loads(lenshpc("dataset", "info", out, "--json", check=True).stdout)
    assert not info["complete"] and info["images_done"] == 40
    proc = lenshpc("dataset", "verify", out)
    assert proc.returncode == 1 and "shard-00002.h5" in proc.stderr


def test_progress_is_logged_without_a_terminal(tmp_path):
    cfg = write_config(tmp_path / "c.yaml", dataset={"n_images": 20, "shard_size": 10},
                       image={"size": 16})
    proc = subprocess.run([PYTHON, "-m", "lenshpc", "simulate", "--config", str(cfg), "--out",
                           str(tmp_path / "ds")], capture_output=True, text=True, timeout=300,
                          env=env(LENSHPC_PROGRESS_INTERVAL="0"))
    assert proc.returncode == 0, proc.stderr
    lines = [x for x in proc.stderr.splitlines() if x.startswith("progress:")]
    assert len(lines) >= 2 and "20/20 images" in lines[-1] and "images/s" in lines[-1]
    assert "ETA" in lines[0] and "\r" not in proc.stderr


def test_simulate_does_not_import_tensorflow(tmp_path):
    cfg = write_config(tmp_path / "c.yaml", dataset={"n_images": 4, "shard_size": 4}, image={"size": 16})
    code = ("import sys; from lenshpc.cli import main; rc = main(sys.argv[1:]); "
            "print('TF' if any(m.split('.')[0] in ('tensorflow', 'keras', 'horovod') "
            "for m in sys.modules) else 'noTF'); sys.exit(rc)")
    proc = subprocess.run([PYTHON, "-c", code, "simulate", "--config", str(cfg), "--out",
                           str(tmp_path / "ds"), "--no-progress"],
                          capture_output=True, text=True, timeout=300, env=env())
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().endswith("noTF")


# --------------------------------------------------------------------------- bad input


def _one_line_error(proc: subprocess.CompletedProcess, *fragments: str) -> None:
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("lenshpc simulate: error:")
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def _unwritable_dir(path: Path) -> Path:
    """A folder nobody (root included) may create files in: immutable as root, 0500 otherwise."""
    path.mkdir()
    if os.geteuid() == 0:
        if shutil.which("chattr") is None or subprocess.run(["chattr", "+i", str(path)]).returncode:
            pytest.skip("cannot make a folder unwritable for root here (chattr +i unavailable)")
    else:
        path.chmod(0o500)
    return path


def _writable_again(path: Path) -> None:
    if os.geteuid() == 0:
        subprocess.run(["chattr", "-i", str(path)])
    else:
        path.chmod(0o700)


def test_bad_input_is_one_line_exit_2_and_loses_nothing(small, tmp_path):
    cfg, out = small
    checksum = h5py.File(out / "dataset.h5", "r").attrs["checksum"]
    # the lock file records its last holder: bookkeeping, not a product
    stamp = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.name != ".lenshpc.lock"}
    bad_yaml = tmp_path / "bad.yaml"
    bad_yaml.write_text("image: {size: 64\ndataset: [")
    unknown = write_config(tmp_path / "unknown.yaml", image={"colour": "red"})
    negative = write_config(tmp_path / "negative.yaml", image={"size": -64})
    folds = write_config(tmp_path / "folds.yaml", dataset={"n_images": 5, "n_folds": 10,
                                                          "test_fraction": 0.0})
    cases = [
        (["--config", tmp_path / "missing.yaml"], ["missing.yaml"]),
        (["--config", bad_yaml], ["not valid YAML"]),
        (["--config", unknown], ["image.colour"]),
        (["--config", negative], ["image.size", "-64"]),
        (["--config", folds], ["n_folds"]),
        (["--config", cfg, "--n-images", "1"], ["n_folds"]),
        (["--config", cfg, "--n-images", "0"], ["--n-images"]),
        (["--config", write_config(tmp_path / "other.yaml", dataset={"n_images": N, "shard_size": 20,
                                                                      "n_folds": 2, "test_fraction": 0.1},
                                   image={"size": 32}, seed=99)], ["different config", "seed"]),
    ]
    for args, fragments in cases:
        _one_line_error(lenshpc("simulate", *args, "--out", out), *fragments)
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.name != ".lenshpc.lock"} == stamp
    assert h5py.File(out / "dataset.h5", "r").attrs["checksum"] == checksum
    assert lenshpc("dataset", "verify", out).returncode == 0

    locked = _unwritable_dir(tmp_path / "locked")
    try:
        _one_line_error(lenshpc("simulate", "--config", cfg, "--out", locked / "ds"),
                        "cannot write", "locked")
        _one_line_error(lenshpc("simulate", "--config", cfg, "--out", locked), "cannot write")
    finally:
        _writable_again(locked)
    not_a_dir = tmp_path / "file.txt"
    not_a_dir.write_text("precious")
    _one_line_error(lenshpc("simulate", "--config", cfg, "--out", not_a_dir), "a file, not a folder")
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("precious")
    _one_line_error(lenshpc("simulate", "--config", cfg, "--out", foreign), "not a lenshpc dataset")
    assert not_a_dir.read_text() == "precious" and (foreign / "notes.txt").read_text() == "precious"
    proc = lenshpc("dataset", "info", tmp_path / "nothing")
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stderr
    assert proc.stderr.startswith("lenshpc dataset: error:") and "nothing: not found" in proc.stderr


def test_overwrite_replaces_a_dataset_from_another_config(small, tmp_path):
    cfg, src = small
    out = tmp_path / "ds"
    shutil.copytree(src, out)
    proc = lenshpc("simulate", "--config", cfg, "--out", out, "--n-images", "40", "--overwrite",
                   check=True)
    assert "complete" in proc.stdout
    with h5py.File(out / "dataset.h5", "r") as f:
        assert f["images"].shape[0] == 40
        with h5py.File(src / "dataset.h5", "r") as g:
            # the same items are the same images: item i depends on (seed, i) only
            np.testing.assert_array_equal(f["images"][:20], g["images"][:20])
    assert sorted(p.name for p in (out / "shards").iterdir()) == ["shard-00000.h5", "shard-00001.h5"]


def test_main_returns_exit_status_in_process(tmp_path):
    from lenshpc.cli import main
    assert main(["simulate", "--config", str(tmp_path / "none.yaml"), "--out", str(tmp_path)]) == 2


def test_resume_redoes_a_shard_whose_data_no_longer_match_its_checksum(small, tmp_path):
    """As after a node crash: a shard file with its final name but damaged data."""
    cfg, src = small
    out = tmp_path / "crashed"
    shutil.copytree(src, out)
    (out / "dataset.h5").unlink()
    (out / "shards" / "shard-00002.h5").unlink()
    with h5py.File(out / "shards" / "shard-00001.h5", "r+") as f:
        f["images"][0] = 0.0
    kept = (out / "shards" / "shard-00000.h5").stat().st_mtime_ns
    proc = lenshpc("simulate", "--config", cfg, "--out", out, check=True)
    assert "redoing 1 damaged shard" in proc.stderr
    assert (out / "shards" / "shard-00000.h5").stat().st_mtime_ns == kept
    with h5py.File(out / "dataset.h5", "r") as f, h5py.File(src / "dataset.h5", "r") as g:
        assert f.attrs["checksum"] == g.attrs["checksum"]


def test_pixel_psf_noise_and_a_catalogue_from_the_command_line(tmp_path):
    kernel = np.outer(*(2 * [np.exp(-0.5 * (np.arange(-3, 4) / 1.2) ** 2)]))
    np.save(tmp_path / "psf.npy", kernel)
    catalogue = tmp_path / "systems.csv"
    catalogue.write_text("lens_mass.theta_E,lens_mass.q\n" + "".join(
        f"{0.6 + 0.05 * i},{0.5 + 0.04 * i}\n" for i in range(12)))
    cfg = write_config(tmp_path / "c.yaml", image={"size": 24, "psf": "pixel",
                                                   "psf_kernel": str(tmp_path / "psf.npy"),
                                                   "background_rms": 0.02, "exposure_time": 100.0},
                       dataset={"n_images": 10, "shard_size": 5, "test_fraction": 0.2},
                       population={"kind": "catalogue", "catalogue": str(catalogue)})
    out = tmp_path / "ds"
    lenshpc("simulate", "--config", cfg, "--out", out, check=True)
    with h5py.File(out / "dataset.h5", "r") as f:
        images, labels = f["images"][...], f["labels"][...]
    assert np.all(np.isfinite(images)) and np.all(images.reshape(10, -1).max(axis=1) == 1.0)
    np.testing.assert_allclose(labels[:, 0], 0.6 + 0.05 * np.arange(10), rtol=1e-6)
    np.testing.assert_allclose(labels[:, 1], 0.5 + 0.04 * np.arange(10), rtol=1e-6)
    # the catalogue is part of the dataset's identity: a changed file is a different dataset
    catalogue.write_text(catalogue.read_text().replace("0.6,", "0.61,"))
    _one_line_error(lenshpc("simulate", "--config", cfg, "--out", out), "different config")

    bad = write_config(tmp_path / "bad.yaml", image={"psf": "pixel", "psf_kernel": str(tmp_path / "no.npy")})
    _one_line_error(lenshpc("simulate", "--config", bad, "--out", tmp_path / "ds2"), "psf_kernel")
    np.save(tmp_path / "even.npy", np.ones((4, 4)))
    bad = write_config(tmp_path / "bad2.yaml", image={"psf": "pixel", "psf_kernel": str(tmp_path / "even.npy")})
    _one_line_error(lenshpc("simulate", "--config", bad, "--out", tmp_path / "ds2"), "odd side")
    assert not (tmp_path / "ds2").exists()
