"""bench/predict.py runs (a benchmark that cannot run measures nothing): a tiny size, its
three rates and two ratios printed. No timing is asserted."""

from __future__ import annotations

import re
import subprocess

from tests.conftest import PYTHON, ROOT, env


def test_the_predict_benchmark_runs_and_reports_its_ratios():
    proc = subprocess.run([PYTHON, str(ROOT / "bench" / "predict.py"), "--n", "8", "--mc", "2"],
                          capture_output=True, text=True, env=env(), cwd=ROOT, timeout=600)
    assert proc.returncode == 0, proc.stderr
    assert len(re.findall(r"cutouts/s", proc.stdout)) == 3, proc.stdout
    ratios = re.findall(r"wall (\d+\.\d+), CPU time (\d+\.\d+)", proc.stdout)
    assert len(ratios) == 2 and all(float(w) > 0 and float(c) > 0 for w, c in ratios), proc.stdout
