"""Streaming input (issue 10): a rank's shards read during training through a shuffle
buffer, against the in-memory share on the same data; and the share held on a device
(exercised on the CPU up to the device)."""

from __future__ import annotations

import signal
import subprocess

import numpy as np
import pytest

from lenshpc.dataset.index import read_index, read_items
from lenshpc.train import data, stream
from tests.conftest import PYTHON, env, lenshpc
from tests.train.test_train_run import wait_for
from tests.train.train_util import history_rows, run_json, train_config

SEED, FOLD = 7, 0


@pytest.fixture(scope="module")
def share(train_data):
    """The index and fold 0's training items, as one rank (of 1 or 2) holds them."""
    index = read_index(train_data, truth=False)
    train, _ = data.fold_items(index.split, FOLD)
    return index, train


def _batches(index, items, n_use, first_epoch=0, **kw):
    opts = dict(batch_size=16, seed=SEED, fold=FOLD, buffer=24, shards_at_once=2,
                block_items=8, first_epoch=first_epoch)
    opts.update(kw)
    return stream.StreamBatches(index, items, n_use=n_use, **opts)


@pytest.mark.parametrize("size", [1, 2])
def test_an_epoch_streams_n_use_distinct_items_of_the_share(share, size):
    index, train = share
    n_use = len(train) // size
    for rank in range(size):
        mine = data.rank_share(train, rank, size)
        source = _batches(index, mine, n_use)
        seen = source.epoch_items(3)
        assert len(seen) == n_use == len(np.unique(seen))
        assert np.isin(seen, mine).all()
        # The same (seed, fold, epoch) always gives the same order; another epoch another.
        assert np.array_equal(seen, _batches(index, mine, n_use).epoch_items(3))
        assert not np.array_equal(seen, source.epoch_items(4))
        # A resumed job starts its stream at its first epoch with the same order.
        resumed = _batches(index, mine, n_use, first_epoch=3)
        first = np.concatenate([y for _, y in resumed.epoch(3)])
        assert np.array_equal(first, index.labels[seen])


def test_shard_order_never_depends_on_the_rank():
    order = stream.shard_order(SEED, FOLD, 5, 40)
    assert sorted(order.tolist()) == list(range(40))
    assert np.array_equal(order, stream.shard_order(SEED, FOLD, 5, 40))
    assert not np.array_equal(order, stream.shard_order(SEED, FOLD, 6, 40))


def test_interleave_reads_shards_in_the_epochs_order_a_few_at_a_time():
    items = np.arange(20)
    blocks = list(stream.interleaved_blocks(items, items // 5, np.array([3, 1, 0, 2]), 2, 2))
    assert [b.tolist() for b in blocks] == [[15, 16], [5, 6], [17, 18], [7, 8], [19], [9],
                                            [0, 1], [10, 11], [2, 3], [12, 13], [4], [14]]


def test_memory_holds_the_buffer_not_the_share(share):
    index, train = share
    state = {"read": 0}

    def read(ids):
        state["read"] += len(ids)
        return read_items(index, ids)[..., None]

    source = _batches(index, train, len(train), read=read, buffer=16, block_items=8)
    emitted = 0
    for x, y in source.epoch(0):
        emitted += len(x)
        # read but not yet trained on: the buffer, one block and the batch being formed
        assert state["read"] - emitted <= 16 + 8 + 16
        # every image is the one the index's label says it is
        ids = [int(np.flatnonzero(np.all(index.labels == row, axis=1))[0]) for row in y[:3]]
        assert np.array_equal(x[:3, ..., 0], read_items(index, ids))
    assert emitted == len(train)


def test_validation_stream_is_the_share_in_file_order(share):
    index, _ = share
    _, val = data.fold_items(index.split, FOLD)
    got = list(stream.StreamEval(index, val, 16, block_bytes=40 * 32 * 32 * 4)())
    x = np.concatenate([b[0] for b in got])
    y = np.concatenate([b[1] for b in got])
    assert np.array_equal(x[..., 0], read_items(index, val))
    assert np.array_equal(y, index.labels[val])
    assert all(len(b[0]) <= 16 for b in got)


def test_share_held_on_a_device_gives_the_same_batches(share):
    import tensorflow as tf
    index, train = share
    x, y = data.read_items(index, train)
    batches = data.TrainBatches(x, y, train, n_use=len(train), batch_size=16, seed=SEED,
                                fold=FOLD, n_items=index.n_items, first_epoch=2)
    host = iter(data.tf_dataset(batches, index.image_shape, 2))
    resident = iter(data.tf_resident_dataset(batches, 2))
    # The GPU's code paths, with the CPU standing in for the device.
    held = iter(data.tf_resident_dataset(batches, 2, hold="/device:CPU:0"))
    copied = iter(data.tf_resident_dataset(batches, 2, to="/cpu:0"))
    prefetched = iter(data.tf_dataset(batches, index.image_shape, 2, device="/cpu:0"))
    for _ in range(2 * batches.steps):
        a, *others = next(host), next(resident), next(held), next(copied), next(prefetched)
        for other in others:
            for u, v in zip(a, other, strict=True):
                assert np.array_equal(u.numpy(), v.numpy())
    assert tf.config.list_physical_devices("GPU") == []


def test_stream_and_memory_train_alike(train_data, tmp_path):
    runs = {}
    for mode in ("memory", "stream"):
        cfg = train_config(tmp_path / f"{mode}.yaml", epochs=3, early_stopping_patience=0,
                           tensorboard=False, input=mode, shuffle_buffer=32, stream_shards=2)
        runs[mode] = tmp_path / mode
        lenshpc("train", "--config", cfg, "--data", train_data, "--out", runs[mode], "--job", 4,
                check=True)
    mem, st = (run_json(runs[m], "model3/fold-0") for m in ("memory", "stream"))
    assert st["devices"][0]["input"] == "stream" and mem["devices"][0]["input"] == "memory"
    assert st["timing"]["images"] == mem["timing"]["images"] == [108, 108, 108]
    rows = {m: [[float(v) for v in r.split(",")] for r in history_rows(runs[m], "model3/fold-0")[1:]]
            for m in runs}
    for a, b in zip(rows["memory"], rows["stream"], strict=True):
        assert b[2] == pytest.approx(a[2], rel=0.15)   # val_loss
        assert b[1] == pytest.approx(a[1], rel=0.35)   # training loss (another order)
    assert rows["memory"] != rows["stream"]


def test_streamed_job_resumes_exactly(train_data, tmp_path):
    epochs = 4
    cfg = train_config(tmp_path / "s.yaml", epochs=epochs, early_stopping_patience=0,
                       tensorboard=False, input="stream", shuffle_buffer=32, stream_shards=2)
    straight, runs = tmp_path / "straight", tmp_path / "runs"
    lenshpc("train", "--config", cfg, "--data", train_data, "--out", straight, "--job", 0,
            check=True)
    cmd = [PYTHON, "-m", "lenshpc", "train", "--config", str(cfg), "--data", str(train_data),
           "--out", str(runs), "--job", "0"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=env())
    wait_for(runs / "model1/fold-0/history.csv", proc)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode in (0, 75), err
    again = subprocess.run(cmd, capture_output=True, text=True, env=env(), timeout=600)
    assert again.returncode == 0, again.stderr
    assert history_rows(runs, "model1/fold-0") == history_rows(straight, "model1/fold-0")
    a, b = run_json(runs, "model1/fold-0"), run_json(straight, "model1/fold-0")
    assert a["weights_sha256"] == b["weights_sha256"]


@pytest.mark.horovod
def test_two_ranks_stream_their_own_shards_to_identical_weights(train_data, tmp_path):
    from tests.train.test_train_horovod import horovodrun
    cfg = train_config(tmp_path / "s.yaml", epochs=2, tensorboard=False, input="stream",
                       shuffle_buffer=16, stream_shards=2)
    runs = tmp_path / "runs"
    horovodrun(2, "train", "--config", cfg, "--data", train_data, "--out", runs, "--job", 4)
    run = run_json(runs, "model3/fold-0")
    assert run["finished"] and run["n_ranks"] == 2
    assert run["weights_sha256"][0] == run["weights_sha256"][1]
    assert [d["input"] for d in run["devices"]] == ["stream", "stream"]
    assert run["timing"]["images"] == [108, 108]   # 2 x 54 items a rank
