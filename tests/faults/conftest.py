"""Fixtures the fault tests share with the stage tests: the train tests' tiny dataset."""

from tests.train.conftest import train_cfg, train_data, train_root  # noqa: F401 (fixtures)
