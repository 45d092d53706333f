"""Dataset identity and layout: fingerprints kept across new config keys, byte-sized shards,
every compression option read back by plain h5py."""

from __future__ import annotations

import subprocess
import sys
from io import BytesIO

import numpy as np
import pytest

from lenshpc.config import loads
from lenshpc.config.simulate import Image
from lenshpc.dataset import SHARDS
from lenshpc.dataset.identity import fingerprint
from lenshpc.dataset.index import check_shard, read_index, read_items
from lenshpc.dataset.shards import (
    COMPRESSIONS,
    PLUGIN_COMPRESSIONS,
    SHARD_OVERHEAD,
    h5py_module,
    read_shard,
    write_shard,
)
from lenshpc.simulate import population as pop
from lenshpc.simulate.render import TRUTH_NAMES, Renderer, truth_to_kwargs
from tests.conftest import lenshpc, write_config

#: The fingerprint of the default config before image.supersampling_mode and
#: dataset.shard_mb existed: datasets made then must keep their identity.
DEFAULT_FINGERPRINT = "98a8f2824123f8660c1c08b7ea08e9f761b4b1f425ecb20882bd8f96aad80178"


def test_new_keys_at_their_old_meaning_keep_the_fingerprint():
    assert fingerprint(loads({"dataset": {"shard_size": 200}}), None) == DEFAULT_FINGERPRINT
    full = loads({"dataset": {"shard_size": 200},
                  "image": {"supersampling_mode": "full", "adaptive_threshold": 1e-3}})
    assert fingerprint(full, None) == DEFAULT_FINGERPRINT
    adaptive = loads({"dataset": {"shard_size": 200}, "image": {"supersampling_mode": "adaptive"}})
    assert fingerprint(adaptive, None) != DEFAULT_FINGERPRINT


# --------------------------------------------------------------------------- byte-sized shards


def test_items_per_shard_from_bytes_and_min_shards():
    paper = {"image": {"size": 112}}
    # 112 x 112 float32 + labels + truth = 50,344 bytes per item
    assert loads({**paper, "dataset": {"n_images": 10**7}}).dataset.items_per_shard(50_344) == 5085
    assert -(-10**7 // 5085) == 1967  # files for 10^7 paper images (50,000 at 200 per shard)
    # the study's 76,396 images: 64 shards of 1,194 (about 60 MB) balance 64 ranks
    assert loads({**paper, "dataset": {"n_images": 76396}}).dataset.items_per_shard(50_344) == 1194
    assert loads({"dataset": {"n_images": 76396, "shard_mb": 1.0, "min_shards": 1}}
                 ).dataset.items_per_shard(50_344) == 19
    assert loads({"dataset": {"n_images": 10, "shard_mb": 0.001}}).dataset.items_per_shard(50_344) == 1
    # min_shards stops at shards of 4 MB: the default 1,000 images of 64x64 make 5 shards
    assert loads(None).dataset.items_per_shard(64 * 64 * 4 + 4 * 4 + 19 * 8) == 241
    # the older key, where given, decides alone
    assert loads({"dataset": {"n_images": 76396, "shard_size": 200}}).dataset.items_per_shard(50_344) == 200


def test_shards_sized_in_bytes(tmp_path):
    """16 x 16 items of 1,192 bytes, shard_mb 0.01: 8 items (9.5 kB) per shard file."""
    item = 16 * 16 * 4 + 4 * 4 + len(TRUTH_NAMES) * 8
    assert item == 1192
    cfg = write_config(tmp_path / "c.yaml", image={"size": 16},
                       dataset={"n_images": 30, "shard_size": None, "shard_mb": 0.01,
                                "min_shards": 1, "n_folds": 2, "test_fraction": 0.2})
    out = tmp_path / "ds"
    lenshpc("simulate", "--config", cfg, "--out", out, check=True)
    files = sorted((out / SHARDS).glob("shard-*.h5"))
    assert len(files) == 4
    index = read_index(out)
    assert list(index.shards.n) == [8, 8, 8, 6] and index.attrs["shard_size"] == 8
    for k, path in enumerate(files):
        assert path.stat().st_size <= 0.01e6 + SHARD_OVERHEAD
        assert check_shard(index, k) is None
    result = lenshpc("dataset", "verify", out)
    assert result.returncode == 0, result.stdout + result.stderr
    # a second run finds it complete: the layout is a function of the config alone
    again = lenshpc("simulate", "--config", cfg, "--out", out)
    assert again.returncode == 0 and "already complete" in (again.stdout + again.stderr)


# --------------------------------------------------------------------------- compression


#: HDF5 filter ids of each option, in pipeline order: shuffle 2, deflate (gzip) 1, lzf
#: 32000, zstd 32015, blosc 32001 (which shuffles inside).
FILTERS = {"none": [], "gzip": [2, 1], "lzf": [2, 32000], "zstd": [2, 32015], "blosc": [32001]}

READ_BACK = r"""
import sys, h5py, numpy as np
if sys.argv[2] == "plugin":
    import hdf5plugin
with h5py.File(sys.argv[1], "r") as f:
    np.save(sys.stdout.buffer, f["images"][...])
"""


def require_hdf5plugin() -> None:
    """Skip (never in CI) when the hdf5plugin package is missing."""
    import importlib.util
    import os
    if importlib.util.find_spec("hdf5plugin") is None:
        if os.environ.get("CI"):
            pytest.fail("hdf5plugin is not installed; bin/setup must install it in CI")
        pytest.skip("hdf5plugin is not installed")


@pytest.mark.parametrize("compression", COMPRESSIONS)
def test_every_compression_reads_back_with_plain_h5py(compression, tmp_path):
    """Noise-free and noisy images written with each option read back bit for bit by a
    fresh Python with only h5py (zstd and blosc: with hdf5plugin imported, and refused
    without it); images compressed with the shuffle filter where it applies."""
    import h5py
    if compression in PLUGIN_COMPRESSIONS:
        require_hdf5plugin()
    renderer = Renderer(Image(size=32, supersampling=2, background_rms=0.02))
    rng = np.random.default_rng(3)
    images = np.stack([renderer.render(*truth_to_kwargs(TRUTH_NAMES, row), rng=rng if i % 2 else None)
                       for i, row in enumerate(pop.sample(loads(None).population, 3, range(6))[0])])
    path = tmp_path / "shard.h5"
    write_shard(path, 0, images, np.zeros((6, 4), np.float32), np.zeros((6, len(TRUTH_NAMES))),
                label_names=("a", "b", "c", "d"), truth_names=TRUTH_NAMES, attrs={},
                compression=compression)
    h5py_module()
    with h5py.File(path, "r") as f:
        dset = f["images"]
        plist = dset.id.get_create_plist()
        filters = [plist.get_filter(i)[0] for i in range(plist.get_nfilters())]
        assert filters == FILTERS[compression]
        if compression != "none":
            assert dset.chunks == (1, 32, 32)
    for mode in ("plain", "plugin"):
        proc = subprocess.run([sys.executable, "-c", READ_BACK, str(path), mode], capture_output=True)
        if compression in PLUGIN_COMPRESSIONS and mode == "plain":
            assert proc.returncode != 0  # the filter is not registered without hdf5plugin
            continue
        assert proc.returncode == 0, proc.stderr.decode()
        np.testing.assert_array_equal(np.load(BytesIO(proc.stdout)), images)
    np.testing.assert_array_equal(read_shard(path)[0], images)


def test_compressed_dataset_end_to_end(tmp_path):
    require_hdf5plugin()
    cfg = write_config(tmp_path / "c.yaml", image={"size": 16},
                       dataset={"n_images": 12, "shard_size": 5, "compression": "zstd",
                                "n_folds": 2, "test_fraction": 0.2})
    out = tmp_path / "ds"
    lenshpc("simulate", "--config", cfg, "--out", out, check=True)
    result = lenshpc("dataset", "verify", out)
    assert result.returncode == 0, result.stdout + result.stderr
    index = read_index(out)
    images = read_items(index, np.arange(12))
    assert np.all(images.reshape(12, -1).max(axis=1) == 1.0)


def test_adaptive_dataset_says_so(tmp_path):
    cfg = write_config(tmp_path / "c.yaml", image={"size": 16, "supersampling": 3,
                                                   "supersampling_mode": "adaptive"},
                       dataset={"n_images": 6, "shard_size": 3, "n_folds": 2, "test_fraction": 0.2})
    out = tmp_path / "ds"
    lenshpc("simulate", "--config", cfg, "--out", out, check=True)
    assert read_index(out).attrs["supersampling_mode"] == "adaptive"
    info = lenshpc("dataset", "info", out, check=True).stdout
    assert "supersampling 3 (adaptive)" in info
