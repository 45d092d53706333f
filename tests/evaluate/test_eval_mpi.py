"""Results do not depend on the number of ranks: `mpirun -n 2` vs one process."""

from __future__ import annotations

import h5py
import numpy as np
import pytest

from tests.conftest import mpirun, require
from tests.evaluate.conftest import eval_config


def h5_content(path) -> dict:
    """Every dataset (as arrays) and attribute of an HDF5 file, by path."""
    out = {}
    with h5py.File(path, "r") as f:
        out["/attrs"] = dict(f.attrs)

        def visit(name, obj):
            out[f"{name}/attrs"] = dict(obj.attrs)
            if isinstance(obj, h5py.Dataset):
                out[name] = obj[...]
        f.visititems(visit)
    return out


def assert_same_content(a, b):
    ca, cb = h5_content(a), h5_content(b)
    assert sorted(ca) == sorted(cb)
    for key in ca:
        x, y = ca[key], cb[key]
        if isinstance(x, dict):
            assert sorted(x) == sorted(y), key
            for k in x:
                assert np.array_equal(np.asarray(x[k]), np.asarray(y[k])), f"{key} attr {k}"
        else:
            assert x.dtype == y.dtype and x.shape == y.shape, key
            assert np.array_equal(x, y, equal_nan=x.dtype.kind == "f"), key


@pytest.mark.mpi
def test_two_ranks_give_the_same_metrics_and_predictions(eval_root, eval_data, eval_runs, mc_report):
    """MC dropout on: deterministic predictions (model3) and seeded MC passes (models 1, 2)."""
    require("mpirun")
    _, one = mc_report
    cfg = eval_config(eval_root / "eval-nofig.yaml", figures=False)
    two = eval_root / "report-mc-2ranks"
    proc = mpirun(2, "evaluate", "--config", cfg, "--data", eval_data, "--runs", eval_runs,
                  "--out", two, "--mc-samples", "3", timeout=900)
    assert "over 2 rank(s)" in proc.stdout
    for name in ("metrics.csv", "psnr.csv", "table1.csv", "coverage.csv", "calibration.json"):
        assert (two / name).read_text() == (one / name).read_text(), name
    assert_same_content(one / "predictions.h5", two / "predictions.h5")
