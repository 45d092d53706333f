"""``lenshpc slurm check``: does this Slurm accept what the config's ``slurm:`` asks for?

Asked of the cluster itself (``scontrol show partition``, ``sinfo``, ``srun --mpi=list``,
``sacctmgr`` where accounting runs) before anything is submitted:

- every job's partition exists (the cluster's default one when the config names none);
- the train tasks' partition has the GPUs (GRES ``gpu``) they ask for;
- every time limit fits its partition's MaxTime;
- the ``srun --mpi=`` plugin is offered, when a job is launched by srun;
- the account and QOS exist (warn when accounting cannot be asked);
- the Python environment and the workdir are not on a node's local disk (``/tmp``);
- HDF5 file locking is off for the jobs (parallel file systems), or set by the user.

Each check gives pass, warn or fail; :func:`run_checks` is pure given the answers of
the Slurm commands (:class:`SlurmFacts`), which :func:`gather` collects.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from lenshpc.config import Config, UserError
from lenshpc.slurm.script import STAGES, job_environment

Verdict = Literal["pass", "warn", "fail"]
#: Folders that are local to one node on most clusters.
NODE_LOCAL = (Path("/tmp"), Path("/var/tmp"), Path("/dev/shm"))


@dataclass(frozen=True)
class Check:
    verdict: Verdict
    what: str
    detail: str


@dataclass(frozen=True)
class Partition:
    name: str
    default: bool
    max_time_min: float | None  # None: no limit
    gpus_per_node: int          # the most GPUs (GRES gpu) any of its nodes has


@dataclass
class SlurmFacts:
    """What the cluster answered; None where a command was not available."""

    partitions: dict[str, Partition] | None
    mpi_plugins: set[str] | None
    accounts: set[str] | None = None
    qos: set[str] | None = None
    notes: list[str] = field(default_factory=list)


def slurm_minutes(text: str) -> float | None:
    """A Slurm time (``M``, ``M:S``, ``H:M:S``, ``D-H``, ``D-H:M``, ``D-H:M:S``) in
    minutes; None for ``UNLIMITED``/``INFINITE``. ValueError when it is none of these."""
    text = text.strip()
    if text.upper() in ("UNLIMITED", "INFINITE"):
        return None
    days, _, rest = text.rpartition("-")
    parts = [float(p) for p in rest.split(":")]
    if days:
        h, m, s = (parts + [0, 0])[:3]
        return float(days) * 1440 + h * 60 + m + s / 60
    if len(parts) == 1:
        return parts[0]
    if len(parts) == 2:
        return parts[0] + parts[1] / 60
    if len(parts) == 3:
        return parts[0] * 60 + parts[1] + parts[2] / 60
    raise ValueError(f"not a Slurm time: {text!r}")


def parse_partitions(show: str, gres: str) -> dict[str, Partition]:
    """Partitions from ``scontrol show partition -o`` and ``sinfo -h -o '%P %G'``."""
    gpus: dict[str, int] = {}
    for line in gres.splitlines():
        if not line.strip():
            continue
        name, _, spec = line.strip().partition(" ")
        name = name.rstrip("*")
        for item in spec.split(","):
            m = re.match(r"gpu(?::[^:(]+)?:(\d+)", item.strip())
            if m:
                gpus[name] = max(gpus.get(name, 0), int(m.group(1)))
    found = {}
    for line in show.splitlines():
        fields = dict(f.split("=", 1) for f in line.split() if "=" in f)
        if "PartitionName" not in fields:
            continue
        name = fields["PartitionName"]
        try:
            max_time = slurm_minutes(fields.get("MaxTime", "UNLIMITED"))
        except ValueError:
            max_time = None
        found[name] = Partition(name, fields.get("Default") == "YES", max_time, gpus.get(name, 0))
    return found


def _run(cmd: list[str]) -> str | None:
    if shutil.which(cmd[0]) is None:
        return None
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return proc.stdout if proc.returncode == 0 else None


def gather() -> SlurmFacts:
    """Ask this machine's Slurm (clients on PATH, ``SLURM_CONF``)."""
    show = _run(["scontrol", "show", "partition", "-o"])
    gres = _run(["sinfo", "-h", "-o", "%P %G"])
    partitions = parse_partitions(show, gres or "") if show is not None else None
    plugins_text = _run(["srun", "--mpi=list"])
    plugins = None
    if plugins_text is not None:
        plugins = {w for line in plugins_text.splitlines() for w in re.findall(r"^\s+(\S+)", line)}
    facts = SlurmFacts(partitions, plugins)
    accounts = _run(["sacctmgr", "-n", "-P", "show", "account", "format=account"])
    qos = _run(["sacctmgr", "-n", "-P", "show", "qos", "format=name"])
    facts.accounts = set(accounts.split()) if accounts else None
    facts.qos = set(qos.split()) if qos else None
    return facts


def _under_node_local(path: Path) -> Path | None:
    path = path.resolve()
    return next((d for d in NODE_LOCAL if path == d or d in path.parents), None)


def run_checks(cfg: Config, facts: SlurmFacts, workdir: Path | None = None,
               prefix: Path | None = None) -> list[Check]:
    """The checks of the module doc, in order. Pure given ``facts``."""
    if facts.partitions is None:
        return [Check("fail", "slurm", "scontrol did not answer: run this on a Slurm login "
                      "node (or set SLURM_CONF)")]
    s = cfg.slurm
    out = _partition_checks(cfg, facts.partitions)
    out += _srun_checks(cfg, facts)
    out += [c for c in (_known("account", s.account, facts.accounts),
                        _known("qos", s.qos, facts.qos)) if c is not None]
    out += _path_checks(prefix or Path(sys.prefix), workdir)
    out.append(_hdf5_check(cfg))
    return out


def _partition_checks(cfg: Config, partitions: dict) -> list[Check]:
    """Per stage: the partition exists, the time fits its MaxTime, train's GPUs exist."""
    s, out = cfg.slurm, []
    default = next((p for p in partitions.values() if p.default), None)
    for stage in STAGES:
        job = getattr(s, stage)
        name = job.partition or s.partition
        part = partitions.get(name) if name else default
        where = f"slurm.{stage}" + (".partition" if job.partition else "")
        if part is None:
            known = ", ".join(sorted(partitions)) or "none"
            out.append(Check("fail", f"{stage} partition",
                             f"{name or '(default)'} does not exist (partitions: {known}); "
                             f"set {where if name else 'slurm.partition'}"))
            continue
        out.append(Check("pass", f"{stage} partition", part.name))
        limit = slurm_minutes(job.time)
        if part.max_time_min is not None and (limit is None or limit > part.max_time_min):
            out.append(Check("fail", f"{stage} time",
                             f"slurm.{stage}.time {job.time} exceeds MaxTime of partition "
                             f"{part.name} ({part.max_time_min:g} min)"))
        else:
            out.append(Check("pass", f"{stage} time", f"{job.time} within MaxTime of {part.name}"))
        if stage == "train" and s.train.gpus:
            if part.gpus_per_node < s.train.gpus:
                out.append(Check("fail", "train GPUs",
                                 f"slurm.train.gpus {s.train.gpus} per node, but partition "
                                 f"{part.name} has {part.gpus_per_node} GPU(s) (GRES gpu) "
                                 "per node; use a GPU partition (slurm.train.partition)"))
            else:
                out.append(Check("pass", "train GPUs", f"{s.train.gpus} per node on {part.name}"))
    return out


def _srun_checks(cfg: Config, facts: SlurmFacts) -> list[Check]:
    s = cfg.slurm
    if not (s.mpi_launcher == "srun" or s.train.launcher == "srun") or not s.srun_mpi:
        return []
    if facts.mpi_plugins is None:
        return [Check("warn", "srun --mpi", "srun --mpi=list did not answer")]
    if s.srun_mpi not in facts.mpi_plugins:
        return [Check("fail", "srun --mpi",
                      f"slurm.srun_mpi {s.srun_mpi!r} is not offered by this Slurm "
                      f"(srun --mpi=list: {', '.join(sorted(facts.mpi_plugins))})")]
    return [Check("pass", "srun --mpi", s.srun_mpi)]


def _known(what: str, value: str | None, known: set[str] | None) -> Check | None:
    """An account or QOS against what sacctmgr lists (None when not asked for)."""
    if value is None:
        return None
    if known is None:
        return Check("warn", what, f"{value}: not checked (sacctmgr unavailable)")
    if value not in known:
        return Check("fail", what, f"slurm.{what} {value!r} is not known to sacctmgr")
    return Check("pass", what, value)


def _path_checks(prefix: Path, workdir: Path | None) -> list[Check]:
    out = []
    for what, path in (("python environment", prefix), ("workdir", workdir)):
        if path is None:
            continue
        local = _under_node_local(path)
        if local:
            out.append(Check("warn", what, f"{path} is under {local}, which compute nodes "
                             "usually do not share; use a shared file system"))
        else:
            out.append(Check("pass", what, str(path)))
    return out


def _hdf5_check(cfg: Config) -> Check:
    hdf5 = dict(a.split("=", 1) for a in job_environment(cfg.slurm)).get("HDF5_USE_FILE_LOCKING")
    if hdf5 and hdf5.upper() == "FALSE":
        return Check("pass", "HDF5 file locking", "HDF5_USE_FILE_LOCKING=FALSE in every job")
    return Check("warn", "HDF5 file locking",
                 f"HDF5_USE_FILE_LOCKING={hdf5}: Lustre and NFS often refuse HDF5's "
                 "locks; set it FALSE in slurm.environment unless yours supports them")


def table(checks: list[Check]) -> str:
    """The checks as an aligned text table."""
    width = max(len(c.what) for c in checks)
    return "\n".join(f"{c.verdict:<4}  {c.what:<{width}}  {c.detail}" for c in checks)


def check(cfg: Config, workdir: Path | None = None, say=print) -> bool:
    """Gather, check and print the table; True when nothing failed."""
    checks = run_checks(cfg, gather(), workdir)
    say(table(checks))
    return not any(c.verdict == "fail" for c in checks)


def require(cfg: Config, workdir: Path | None = None, say=print) -> None:
    """:func:`check` before a submission: UserError naming the failed checks."""
    if not check(cfg, workdir, say):
        raise UserError("the cluster refuses parts of the config (fail above); fix them, or "
                        "submit with --no-check")
