"""The study as its authors ran it: their network's layer shapes, their preprocessing and
tf.data order, and variants (train.models entries that override train keys)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from lenshpc.config import UserError, load, loads
from lenshpc.config.train import jobs
from lenshpc.train import data
from lenshpc.train.preprocess import normalize

ROOT = Path(__file__).resolve().parents[2]

#: The authors' draw_cnn_diagram.py, layer by layer: (name, output shape without batch).
DIAGRAM = [
    ("block1_conv", (47, 47, 128)), ("block1_pool", (24, 24, 128)),
    ("block2_conv", (8, 8, 256)), ("block2_pool", (3, 3, 256)),
    ("block3_1_conv", (3, 3, 256)), ("block3_2_conv", (3, 3, 256)),
    ("block3_3_conv", (3, 3, 256)), ("block3_4_conv", (3, 3, 256)),
    ("block3_pool", (1, 1, 256)), ("flatten", (256,)), ("dense1", (512,)),
    ("dropout1", (512,)), ("dense2", (1024,)), ("dropout2", (1024,)), ("standardised", (4,)),
]


def test_paper_config_builds_the_authors_network_at_100_pixels():
    from lenshpc.train.model import build_model
    cfg = load(ROOT / "configs" / "paper.yaml")
    model = build_model(cfg.train.network, cfg.train.models[0], cfg.image.size, [0] * 4, [1] * 4)
    shapes = {layer.name: tuple(layer.output_shape[1:]) for layer in model.layers}
    assert [(name, shapes[name]) for name, _ in DIAGRAM] == DIAGRAM
    kernels = {layer.name: (layer.kernel_size, layer.strides, layer.padding)
               for layer in model.layers if layer.name.endswith("_conv")}
    assert kernels["block1_conv"] == ((7, 7), (2, 2), "valid")
    assert kernels["block2_conv"] == ((5, 5), (3, 3), "same")
    assert kernels["block3_1_conv"][0] == (3, 3)
    assert {kernels[f"block3_{i}_conv"][0] for i in (2, 3, 4)} == {(1, 1)}
    pools = {layer.name: (layer.pool_size, layer.padding) for layer in model.layers
             if layer.name.endswith("_pool")}
    assert pools == {"block1_pool": ((2, 2), "same"), "block2_pool": ((3, 3), "same"),
                     "block3_pool": ((2, 2), "valid")}
    assert model.get_layer("dropout1").rate == 0.2 and model.get_layer("dropout2").rate == 0.3


def test_too_small_images_for_the_study_network_are_refused_in_one_line():
    with pytest.raises(UserError, match="study network needs larger images than image.size 32"):
        loads({"image": {"size": 32}, "train": {"network": {"architecture": "study"}}})
    with pytest.raises(UserError, match="pool_size: 3 applies to the legacy network only"):
        loads({"train": {"network": {"architecture": "study", "pool_size": 3}}})


def test_normalize_study_is_the_authors_formula():
    image = np.array([[2.0, 4.0], [6.0, 10.0]], np.float32)
    # (x - 2) / (10 + 1e-6), written out
    want = np.array([[0.0, 2.0], [4.0, 8.0]]) / 10.000001
    np.testing.assert_allclose(normalize(image[None], "study")[0], want, rtol=1e-6)
    np.testing.assert_allclose(normalize(image[None, ..., None], "max")[0, ..., 0],
                               image / 10.0, rtol=1e-7)
    stack = np.stack([image, 3 * image + 1])
    assert normalize(stack, "study")[1].max() == pytest.approx((31 - 7) / 31.000001, rel=1e-6)


def test_file_order_is_the_other_folds_in_turn():
    split = np.array([0, 1, 2, 0, 1, 2, -1, 0], np.int8)
    np.testing.assert_array_equal(data.file_order(split, 1), [0, 3, 7, 2, 5])


def test_buffer_shuffle_moves_items_forward_by_less_than_the_buffer():
    rng = np.random.default_rng(5)
    seq = np.arange(5000, dtype=np.int64)
    out = data.buffer_shuffle(seq, 100, rng)
    assert sorted(out.tolist()) == seq.tolist()
    position = np.empty_like(out)
    position[out] = np.arange(len(out))
    # An item enters the buffer at its own place (after the first 100): it can leave no
    # sooner than 99 places ahead of it.
    assert (position >= seq - 99).all()
    assert not np.array_equal(out, seq)
    np.testing.assert_array_equal(data.buffer_shuffle(seq, 1, rng), seq)
    # The first item out is uniform over the first buffer of 10 items.
    firsts = [data.buffer_shuffle(seq[:50], 10, np.random.default_rng(s))[0] for s in range(4000)]
    counts = np.bincount(firsts, minlength=50)
    assert counts[10:].sum() == 0 and counts[:10].min() > 300


def test_buffer_order_is_the_same_items_whatever_the_rank_count():
    split = np.arange(400) % 4
    sequence = data.file_order(split, 0)
    train, _ = data.fold_items(split, 0)
    whole = train[data.buffer_epoch_order(7, 0, 3, sequence, 50, train)]
    halves = [data.rank_share(train, r, 2) for r in range(2)]
    parts = [h[data.buffer_epoch_order(7, 0, 3, sequence, 50, h)] for h in halves]
    # Each rank visits its items in the order the single-rank epoch visits them.
    for part in parts:
        np.testing.assert_array_equal(part, whole[np.isin(whole, part)])


def test_variants_override_train_keys_and_refuse_unknown_ones():
    cfg = loads({"train": {"models": [
        {"name": "m3-b64", "p1": 0, "p2": 0, "batch_size": 64, "standardize_targets": True,
         "network": {"architecture": "study"}},
        {"name": "model1", "p1": 0.2, "p2": 0.3}]}})
    variant, plain = cfg.train.models
    eff = cfg.train.for_model(variant)
    assert (eff.batch_size, eff.standardize_targets, eff.network.architecture) == (64, True, "study")
    assert eff.network.conv1_filters == cfg.train.network.conv1_filters   # merged, not replaced
    assert cfg.train.for_model(plain) is cfg.train
    assert variant.describe_overrides() == ("batch_size=64, standardize_targets=true, "
                                            "network.architecture=study")
    with pytest.raises(UserError, match=r"config train.models\[0\].bach_size: unknown key"):
        loads({"train": {"models": [{"name": "x", "bach_size": 64}]}})
    with pytest.raises(UserError, match=r"config train.models\[0\].batch_size: 0 is out of range"):
        loads({"train": {"models": [{"name": "x", "batch_size": 0}]}})
    with pytest.raises(UserError, match=r"train.models\[0\].folds: unknown key"):
        loads({"train": {"models": [{"name": "x", "folds": [0]}]}})
    # The text form round-trips, overrides included.
    from lenshpc.config import from_yaml_text
    assert from_yaml_text(cfg.to_yaml_text()) == cfg


def test_ablation_is_one_fold_of_the_reduced_study_dataset():
    ablation = load(ROOT / "configs" / "ablation.yaml")
    study = load(ROOT / "configs" / "reduced-study.yaml")
    for section in ("seed", "image", "dataset", "population"):
        assert getattr(ablation, section) == getattr(study, section), section
    grid = jobs(ablation.train, ablation.dataset.n_folds)
    assert len(grid) == 16 and {j.fold for j in grid} == {0}
    names = [m.name for m in ablation.train.models]
    assert names[:2] == ["model1", "model3"]
    # The first two entries are the reduced study's jobs of fold 0 (the same settings).
    base = study.train
    for m in ablation.train.models[:2]:
        assert ablation.train.for_model(m).effective() == {**base.effective(), "folds": [0]}
    # Every factor differs from the authors' settings in its own keys only.
    factors = {m.name.split("-", 1)[1]: m for m in ablation.train.models[2:]}
    assert dict(factors["b64"].overrides) == {"batch_size": 64}
    assert dict(factors["std"].overrides) == {"standardize_targets": True}
    assert dict(factors["global"].overrides) == {"shuffle": "global"}
    assert dict(factors["max"].overrides) == {"normalize": "max"}
    assert dict(factors["legacy"].overrides) == {"network": {"architecture": "legacy"}}
    assert dict(factors["best"].overrides) == {"keep": "best", "early_stopping_patience": 6}
