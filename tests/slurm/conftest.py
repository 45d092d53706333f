"""The ``slurm_cluster`` fixture: a real one-node Slurm for the session (tests/slurm/cluster.py).

Where Slurm cannot run (not root, no apt to install it) the tests that use it skip with
the reason — except in CI (``CI`` set), where they fail: CI must run them.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from tests.slurm.cluster import OneNodeSlurm, Unavailable, ensure_installed


@pytest.fixture(scope="session")
def slurm_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OneNodeSlurm]:
    """A running one-node Slurm; ``SLURM_CONF`` points at it for the whole session."""
    try:
        ensure_installed()
        cluster = OneNodeSlurm(tmp_path_factory.mktemp("slurm"))
        cluster.start()
    except Unavailable as exc:
        if os.environ.get("CI"):
            pytest.fail(f"Slurm tests cannot run in CI: {exc}")
        pytest.skip(f"no Slurm: {exc}")
    old = os.environ.get("SLURM_CONF")
    os.environ.update(cluster.env)  # child processes (sbatch, lenshpc) find this cluster
    try:
        yield cluster
    finally:
        cluster.stop()
        if old is None:
            os.environ.pop("SLURM_CONF", None)
        else:
            os.environ["SLURM_CONF"] = old
