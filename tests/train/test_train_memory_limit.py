"""train.input: auto weighs a rank's share against the memory it may use, including the
limit of the process' own nested cgroup (how Slurm limits a job's memory)."""

from __future__ import annotations

import os
import subprocess
import uuid
from pathlib import Path

import pytest

from lenshpc.train.process import cgroup_limit_files
from tests.conftest import PYTHON, env

V1 = Path("/sys/fs/cgroup/memory")


def test_limit_files_follow_the_nested_cgroup_up_to_the_root():
    files = cgroup_limit_files("5:memory:/slurm/uid_1/job_7\n0::/user.slice/a\n3:cpu,cpuacct:/x",
                               root="/cg")
    assert [str(f) for f in files] == [
        "/cg/memory/slurm/uid_1/job_7/memory.limit_in_bytes",
        "/cg/memory/slurm/uid_1/memory.limit_in_bytes",
        "/cg/memory/slurm/memory.limit_in_bytes",
        "/cg/memory/memory.limit_in_bytes",
        "/cg/user.slice/a/memory.max", "/cg/user.slice/memory.max", "/cg/memory.max"]


def test_a_real_nested_cgroup_limit_is_seen():
    group = V1 / f"lenshpc-test-{uuid.uuid4().hex[:8]}" / "job"
    try:
        group.mkdir(parents=True)
        (group.parent / "memory.limit_in_bytes").write_text(str(3 << 30))
        (group / "memory.limit_in_bytes").write_text(str(1 << 30))
    except OSError as exc:
        pytest.skip(f"cannot make a memory cgroup here ({exc.strerror})")
    try:
        code = ("import os, sys; open(sys.argv[1], 'w').write(str(os.getpid()));"
                "from lenshpc.train.process import memory_limit_bytes; print(memory_limit_bytes())")
        # The child moves itself into the cgroup before it asks.
        proc = subprocess.run([PYTHON, "-c", code, str(group / "cgroup.procs")],
                              capture_output=True, text=True, env=env(), timeout=120)
        assert proc.returncode == 0, proc.stderr
        assert int(proc.stdout.strip()) == 1 << 30
    finally:
        for g in (group, group.parent):
            for _ in range(50):
                try:
                    g.rmdir()
                    break
                except OSError:
                    os.sched_yield()
