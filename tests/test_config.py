"""The config tree: defaults, the shipped configs, and one-line refusals of bad values."""

from __future__ import annotations

import pytest

from lenshpc.config import UserError, from_yaml_text, load, loads
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
    assert cfg.image.pixel_scale == 0.074


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
