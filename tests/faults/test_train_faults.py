"""Faults of the train stage with real processes and real files: a shard whose pixels
were overwritten in place (same size, so only reading it shows it) is one line and exit
2, whether the share is read before training (memory) or during it (stream)."""

from __future__ import annotations

import shutil

import h5py
import numpy as np
import pytest

from tests.conftest import lenshpc
from tests.train.train_util import train_config


@pytest.mark.parametrize("mode", ["memory", "stream"])
def test_non_finite_pixels_in_a_shard_are_one_line(train_data, tmp_path, mode):
    data = tmp_path / "data"
    shutil.copytree(train_data, data)
    # The last shard: in stream mode it is read during training, not before.
    shard = sorted((data / "shards").glob("shard-*.h5"))[-1]
    size = shard.stat().st_size
    with h5py.File(shard, "r+") as f:
        images = f["images"]
        images[1] = np.full(images.shape[1:], np.nan, np.float32)
    assert shard.stat().st_size == size
    cfg = train_config(tmp_path / "c.yaml", epochs=2, tensorboard=False, input=mode,
                       shuffle_buffer=8, stream_shards=1)
    runs = tmp_path / "runs"
    proc = lenshpc("train", "--config", cfg, "--data", data, "--out", runs, "--job", 4)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("lenshpc train: error: ")
    assert "holds pixels that are not finite" in lines[0] or "read as NaN" in lines[0]
    assert "lenshpc dataset verify" in lines[0]
    assert not (runs / "model3/fold-0/train.done.json").exists()
