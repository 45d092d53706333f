"""Session fixtures of the train tests: one real tiny dataset made by ``lenshpc simulate``
and the config the train tests share (small images, the debug network, small batches)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import simulate_dataset
from tests.train.train_util import train_config


@pytest.fixture(scope="session")
def train_root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("train")


@pytest.fixture(scope="session")
def train_cfg(train_root) -> Path:
    return train_config(train_root / "train.yaml")


@pytest.fixture(scope="session")
def train_data(train_root, train_cfg) -> Path:
    return simulate_dataset(train_cfg, train_root / "data")
