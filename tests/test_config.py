"""The config tree: defaults, the shipped configs, and one-line refusals of bad values."""

from __future__ import annotations

import pytest

from lenshpc.config import UserError, first_difference, from_yaml_text, load, loads, schema_markdown
from lenshpc.config.train import jobs
from tests.conftest import ROOT


@pytest.mark.parametrize("name", ["debug", "paper", "realistic"])
def test_shipped_configs_load_and_round_trip(name):
    cfg = load(ROOT / "configs" / f"{name}.yaml")
    assert from_yaml_text(cfg.to_yaml_text()) == cfg


def test_paper_config_is_the_study():
    cfg = load(ROOT / "configs" / "paper.yaml")
    assert cfg.dataset.n_images == 76396
    assert cfg.dataset.n_test == 6396
    assert (cfg.dataset.n_images - cfg.dataset.n_test) / cfg.dataset.n_folds == 17500
    assert [(m.name, m.p1, m.p2) for m in cfg.train.models] == [
        ("model1", 0.2, 0.3), ("model2", 0.2, 0.2), ("model3", 0.0, 0.0)]
    grid = jobs(cfg.train, cfg.dataset.n_folds)
    assert [j.index for j in grid] == list(range(12))
    assert (grid[5].model.name, grid[5].fold) == ("model2", 1)
    assert cfg.train.loss_weights == (1.0, 1.0, 3.0, 3.0)
    # The authors' grid: np.linspace(-3, 3, 100) pixel centres (generate_lenses.py).
    assert cfg.image.size == 100
    assert cfg.image.pixel_scale * (cfg.image.size - 1) == pytest.approx(6.0, abs=1e-8)
    t = cfg.train
    assert (t.network.architecture, t.normalize, t.shuffle, t.shuffle_buffer) == (
        "study", "study", "buffer", 1000)
    assert (t.batch_size, t.epochs, t.learning_rate) == (128, 50, 1e-3)
    assert (t.reduce_lr_factor, t.reduce_lr_patience, t.min_lr) == (0.5, 3, 1e-8)
    assert (t.early_stopping_patience, t.keep, t.standardize_targets) == (0, "last", False)
    assert cfg.dataset.split == "ordered"


@pytest.mark.parametrize("data, message", [
    ({"image": {"size": -4}}, "config image.size: -4 is out of range; allowed: >= 8"),
    ({"imgae": {}}, "config imgae: unknown key; allowed keys here:"),
    ({"image": {"size": "big"}}, "config image.size: 'big' is not an integer"),
    ({"image": {"psf": "airy"}}, "config image.psf: 'airy' is not allowed; expected one of"),
    ({"train": {"models": [{"name": "a", "p1": 1.5}]}},
     "config train.models[0].p1: 1.5 is out of range"),
    ({"population": {"lens_mass": {"q": {"dist": "beta", "a": 2}}}},
     "config population.lens_mass.q.b: required for dist beta"),
    ({"population": {"lens_mass": {"q": {"dist": "gamma"}}}},
     "config population.lens_mass.q.dist: 'gamma' is not allowed"),
    ({"population": {"lens_mass": {"theta_E": {"dist": "uniform", "low": -1, "high": 2}}}},
     "config population.lens_mass.theta_E:"),
    ({"dataset": {"n_images": 3, "n_folds": 4}}, "dataset.n_folds: 4 folds need"),
    ({"train": {"models": [{"name": "m"}, {"name": "m"}]}}, "model name 'm' appears twice"),
])
def test_bad_values_are_refused_in_one_line(data, message):
    with pytest.raises(UserError) as err:
        loads(data)
    text = str(err.value)
    assert message in text
    assert "\n" not in text


def test_yaml_syntax_error_names_the_line(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("image:\n  size: [64\n")
    with pytest.raises(UserError, match=r"is not valid YAML at line \d+"):
        load(bad)


def test_missing_file(tmp_path):
    with pytest.raises(UserError, match="config file not found"):
        load(tmp_path / "nope.yaml")


# --------------------------------------------------------------------------- hostile values


@pytest.mark.parametrize("data, message", [
    ({"image": {"pixel_scale": 1e308}},
     "config image.pixel_scale: 1.0e+308 is out of range; allowed: >= 0.0001 and <= 10"),
    ({"image": {"pixel_scale": "1e5"}}, "is not a number (YAML reads it as text"),
    ({"image": {"background_rms": float("nan")}}, "config image.background_rms: .nan is not a finite"),
    ({"image": {"exposure_time": float("inf")}}, "config image.exposure_time: .inf is not a finite"),
    ({"image": {"psf": "gaussian", "psf_fwhm": 9.0}}, "config image.psf_fwhm: 9 arcsec is wider"),
    ({"seed": 2**64}, "config seed: 18446744073709551616 is out of range; allowed: >= 0 and < 2^63"),
    ({"seed": 10**400}, "config seed: an integer of 401 digits is out of range"),
    ({"seed": 2**63}, "config seed: 9223372036854775808 is out of range"),
    ({"seed": 10**5000}, "config seed: an integer of thousands of digits is out of range"),
    ({"dataset": {"n_images": 1.0e308}}, "config dataset.n_images: 1e+308 is not an integer below"),
    ({"dataset": {"n_images": 10**9 + 1}}, "config dataset.n_images: 1000000001 is out of range"),
    ({"dataset": {"shard_size": 1.0e308}}, "config dataset.shard_size: 1e+308 is not an integer"),
    ({"dataset": {"shard_size": 2.5}}, "config dataset.shard_size: 2.5 is not an integer"),
    ({"dataset": {"shard_size": float("nan")}}, "config dataset.shard_size: .nan is not an integer"),
    ({"train": {"models": [{"name": "m" * 300}]}},
     "config train.models[0].name: 'mmmmmmmmmmmmmmmmmmmmmmmmmmmmmmmmmmmmmmmm'... (300 characters)"),
    ({"train": {"models": [{"name": "modèle"}]}}, "must be 1 to 64 ASCII letters"),
    ({"name": "x" * 65}, "config name: 'xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx'... (65 characters) "
                         "must have 1 to 64 characters"),
    ({"name": "a\nb"}, "config name: 'a\\nb' must be printable"),
    ({"evaluate": {"dpi": 100000}}, "config evaluate.dpi: 100000 is out of range; allowed: >= 50 "
                                    "and <= 1200"),
    ({"train": {"batch_size": 10**7}}, "config train.batch_size: 10000000 is out of range"),
    ({"train": {"learning_rate": 1e308}}, "config train.learning_rate: 1.0e+308 is out of range"),
    ({"train": {"loss_weights": [1, 1, 3, float("inf")]}}, "config train.loss_weights[3]: .inf"),
    ({"slurm": {"train": {"time": "9999999999"}}}, "is not a Slurm time"),
    ({"slurm": {"train": {"time": "01:00:00\n"}}}, "is not a Slurm time"),
    ({"population": {"lens_mass": {"center_x": float("nan")}}},
     "config population.lens_mass.center_x: .nan is not a finite number"),
    ({"population": {"lens_mass": {"q": {"dist": "uniform", "low": 0.2, "high": float("inf")}}}},
     "config population.lens_mass.q.high: .inf is not a finite number"),
    ({"population": {"source_light": {"amp": {"dist": "uniform", "low": 1, "high": 1e300}}}},
     "config population.source_light.amp.high: 1.0e+300 is out of range; allowed: magnitude "
     "<= 1e+06"),
    ({"population": {"lens_mass": {"theta_E": {"dist": "lognormal", "median": 1, "sigma": 50,
                                               "low": 0.1, "high": 3}}}},
     "config population.lens_mass.theta_E.sigma: 50 is out of range"),
    ({"population": {"lens_mass": {"theta_E": {"dist": "uniform", "low": 0.1, "high": 500}}}},
     "must have its values within (0, 100] arcsec"),
    ({"population": {"source_light": {"n_sersic": 40}}}, "must have its values within (0, 20]"),
])
def test_values_that_would_fail_later_are_refused_at_load(data, message):
    with pytest.raises(UserError) as err:
        loads(data)
    text = str(err.value)
    assert message in text
    assert "\n" not in text and len(text) < 300


def test_integral_floats_are_integers():
    cfg = loads({"dataset": {"n_images": 7.6396e4, "shard_size": 200.0}, "seed": 2**63 - 1})
    assert cfg.dataset.n_images == 76396 and isinstance(cfg.dataset.n_images, int)
    assert cfg.dataset.shard_size == 200 and isinstance(cfg.dataset.shard_size, int)
    assert cfg.seed == 2**63 - 1


@pytest.mark.parametrize("text, message", [
    ("seed: 1\nimage:\n  size: 64\nseed: 2\n",
     "config seed: given twice in {f}, at lines 1 and 4; give each key once"),
    ("image:\n  size: 64\n  pixel_scale: 0.05\n  size: 32\n",
     "config image.size: given twice in {f}, at lines 2 and 4"),
    ("image: {size: 64}\ndataset: {}\nimage: {size: 32}\n", "config image: given twice in {f}, "
                                                             "at lines 1 and 3"),
    ("train:\n  models:\n    - {name: a}\n    - {name: b, p1: 0.1, p1: 0.2}\n",
     "config train.models[1].p1: given twice in {f}, both on line 4"),
    ("population:\n  lens_mass:\n    q: {dist: beta, a: 2, b: 1, a: 3}\n",
     "config population.lens_mass.q.a: given twice in {f}, both on line 3"),
    ("seed: 1\n0x1: a\n1: b\n", "config 1: given twice in {f}, at lines 2 and 3"),
])
def test_duplicate_keys_are_refused_naming_both_lines(tmp_path, text, message):
    f = tmp_path / "dup.yaml"
    f.write_text(text)
    with pytest.raises(UserError) as err:
        load(f)
    assert message.format(f=f) in str(err.value)
    assert "\n" not in str(err.value)


def test_yaml_merge_keys_may_be_overridden(tmp_path):
    f = tmp_path / "merge.yaml"
    f.write_text("train:\n  models:\n    - &m1 {name: model1, p1: 0.2, p2: 0.3}\n"
                 "    - {<<: *m1, name: model2, p2: 0.2}\n")
    cfg = load(f)
    assert [(m.name, m.p1, m.p2) for m in cfg.train.models] == [("model1", 0.2, 0.3),
                                                                  ("model2", 0.2, 0.2)]


# --------------------------------------------------------------------------- first difference


@pytest.mark.parametrize("old, new, expected", [
    ({"a": 1, "b": {"c": 2}}, {"a": 1, "b": {"c": 2}}, None),
    ({"a": 1, "b": {"c": 2}}, {"a": 1, "b": {"c": 3}}, "b.c: 2 -> 3"),
    ({"a": 1}, {"a": 1.0}, None),
    ({"a": True}, {"a": 1}, "a: true -> 1"),
    ({"a": 1, "b": 2}, {"a": 1}, "b: 2 -> (absent)"),
    ({"a": 1}, {"a": 1, "new": "x"}, "new: (absent) -> 'x'"),
    ({"m": [{"p": 0.2}, {"p": 0.3}]}, {"m": [{"p": 0.2}, {"p": 0.4}]}, "m[1].p: 0.3 -> 0.4"),
    ({"m": [1, 2]}, {"m": [1, 2, 3]}, "m: [1, 2] -> [1, 2, 3]"),
    ({"m": {"x": 1}}, {"m": 5}, "m: {x: 1} -> 5"),
    ({"s": "a"}, {"s": None}, "s: 'a' -> null"),
    ({"x": 1, "y": 1}, {"y": 2, "x": 2}, "x: 1 -> 2"),   # in the old tree's order
    (1, 2, "(top level): 1 -> 2"),
])
def test_first_difference(old, new, expected):
    assert first_difference(old, new) == expected


def test_first_difference_of_two_configs_names_the_dotted_key():
    from lenshpc.config import to_plain
    a = load(ROOT / "configs" / "paper.yaml")
    b = loads({**to_plain(a), "train": {**to_plain(a.train), "epochs": 7}})
    assert first_difference(to_plain(a), to_plain(a)) is None
    assert first_difference(to_plain(a), to_plain(b)) == "train.epochs: 50 -> 7"
    long = first_difference({"k": "x" * 500}, {"k": "y"})
    assert long.startswith("k: 'xxx") and "(500 characters)" in long and len(long) < 120


# --------------------------------------------------------------------------- docs


#: Defaults the study leaves unstated (METHOD.md marks them assumed).
ASSUMED = ["image.size", "image.supersampling", "population.lens_mass.theta_E",
           "population.lens_mass.q", "population.lens_light.amp", "population.lens_light.R_sersic",
           "population.lens_light.n_sersic", "population.lens_light.q",
           "population.lens_light.phi", "population.source_light.amp",
           "population.source_light.R_sersic", "population.source_light.n_sersic",
           "population.source_light.q", "population.source_light.phi",
           "population.source_light.center_x", "population.source_light.center_y",
           "train.standardize_targets", "train.batch_size", "train.epochs",
           "train.warmup_epochs", "train.early_stopping_patience",
           "train.reduce_lr_patience", "train.min_lr", "train.keep", "train.network.conv1_kernel",
           "train.network.conv2_kernel", "train.network.pool_size", "train.network.batch_norm",
           "train.network.batch_norm_momentum"]


def test_docs_mark_every_assumed_default():
    rows = {line.split("|")[1].strip().strip("`"): line
            for line in schema_markdown().splitlines() if line.startswith("| `")}
    missing = [key for key in ASSUMED if "(assumed)" not in rows[key]]
    assert not missing, f"not marked (assumed): {missing}"
    for key in ("image.pixel_scale", "train.loss_weights", "dataset.n_folds",
                "train.network.conv3_kernel", "population.lens_mass.phi",
                "train.learning_rate", "train.reduce_lr_factor"):
        assert "(assumed)" not in rows[key], key   # the study states these
    # Where lenshpc's default differs from the authors', the key names their value's source.
    for key in ("train.batch_size", "train.epochs", "train.early_stopping_patience",
                "train.reduce_lr_patience", "train.min_lr", "train.keep",
                "train.standardize_targets", "train.normalize", "train.shuffle"):
        assert "configs/paper.yaml" in rows[key] and "the authors" in rows[key], key


def test_docs_show_every_numeric_bound():
    text = schema_markdown()
    assert "`seed` | `20240601` |  | integer; >= 0 and < 2^63" in text
    assert "| `image.pixel_scale` | `0.074` | arcsec/pixel | number; >= 0.0001 and <= 10 |" in text
    assert "values within (0, 100] arcsec" in text
    assert "lenshpc/config/*.py" in text and "lenshpc/*/config.py" not in text
    for line in text.splitlines():
        if line.startswith("| `") and ("| integer" in line or "| number" in line):
            assert "<" in line.split("|")[4], f"no upper bound: {line}"


def test_train_gpus_must_match_the_ranks():
    with pytest.raises(UserError, match="2 GPU\\(s\\) per node for 1 rank\\(s\\) per node"):
        loads({"slurm": {"train": {"gpus": 2, "ranks": 1}}})
    with pytest.raises(UserError, match="3 rank\\(s\\) per node"):
        loads({"slurm": {"train": {"gpus": 2, "ranks": 3}}})
    one_each = loads({"slurm": {"train": {"gpus": 4, "ranks": 8, "nodes": 2}}})
    assert one_each.slurm.train.gpu_sharing() is None
    shared = loads({"slurm": {"train": {"gpus": 1, "ranks": 2}}})
    assert shared.slurm.train.gpu_sharing() == "2 ranks share each GPU (by local rank)"
