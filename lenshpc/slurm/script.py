"""The sbatch scripts, as text: one pure function of (config, stage, paths).

:func:`render` is the only place that writes sbatch text. Its ``#SBATCH`` lines are
sorted and their values ``shlex.quote``d; logs are named ``%x-%j.out`` (MPI jobs) and
``%x-%A_%a.out`` (train array tasks). Golden files in ``tests/slurm/golden`` and the
examples in ``slurm/`` pin the output.
"""

from __future__ import annotations

import shlex
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Literal, Mapping

from lenshpc.config import Config
from lenshpc.config.slurm import MpiJob, Slurm
from lenshpc.config.train import jobs
from lenshpc.launch import shell_line, stage_argv
from lenshpc.parallel import EXIT_STOPPED

Stage = Literal["simulate", "train", "evaluate"]
STAGES: tuple[Stage, ...] = ("simulate", "train", "evaluate")



@dataclass(frozen=True)
class Paths:
    """Absolute paths the scripts use: the resolved config and the pipeline's folders."""

    workdir: Path
    config: Path
    dataset: Path
    runs: Path
    report: Path
    logs: Path

    @classmethod
    def under(cls, workdir: Path, config: Path, logs: Path) -> "Paths":
        """The standard layout: ``workdir/{dataset,runs,report}``."""
        return cls(workdir, config, workdir / "dataset", workdir / "runs", workdir / "report", logs)


def environment_setup() -> tuple[str, ...]:
    """Shell lines that put this process' Python environment first on PATH.

    Used when ``slurm.setup`` is empty: the jobs run the lenshpc that rendered them."""
    prefix = Path(sys.prefix)
    if prefix != Path(sys.base_prefix) and (prefix / "bin" / "activate").is_file():
        return (f"source {shlex.quote(str(prefix / 'bin' / 'activate'))}",)
    return (f"export PATH={shlex.quote(str(Path(sys.executable).parent))}:\"$PATH\"",)


def array_spec(indices: Iterable[int], max_parallel: int = 0) -> str:
    """``--array`` value for job indices: runs collapsed (``0-3,7,9-11``), ``%N`` throttle."""
    runs: list[list[int]] = []
    for i in sorted(set(indices)):
        if runs and i == runs[-1][1] + 1:
            runs[-1][1] = i
        else:
            runs.append([i, i])
    if not runs:
        raise ValueError("an array needs at least one index")
    parts = [f"{a}" if a == b else f"{a}-{b}" for a, b in runs]
    return ",".join(parts) + (f"%{max_parallel}" if max_parallel else "")


def sbatch_options(cfg: Config, stage: Stage, paths: Paths,
                   array: Iterable[int] | None = None) -> dict[str, str | None]:
    """The ``#SBATCH`` options of ``stage`` as {option: value, or None for a flag}.

    ``array``: the train job indices (default: every job of the grid)."""
    s = cfg.slurm
    job = s.train if stage == "train" else getattr(s, stage)
    opts: dict[str, str | None] = {
        "job-name": f"{cfg.name}-{stage}",
        "chdir": str(paths.workdir),
        "nodes": str(job.nodes),
        "cpus-per-task": str(job.cpus_per_task),
        "time": job.time,
        "account": s.account,
        "partition": job.partition or s.partition,
        "qos": s.qos,
        "mem-per-cpu": job.mem_per_cpu,
    }
    if isinstance(job, MpiJob):
        opts["ntasks"] = str(job.ntasks)
        opts["output"] = str(paths.logs / "%x-%j.out")
    else:
        if array is None:
            array = range(len(jobs(cfg.train, cfg.dataset.n_folds)))
        opts.update({
            "array": array_spec(array, job.max_parallel),
            "ntasks": str(job.ranks),
            "output": str(paths.logs / "%x-%A_%a.out"),
            # Requeued tasks append to their log instead of erasing the first attempt's.
            "open-mode": "append",
            "requeue": None,
            # B: signal the batch shell only; it passes the signal on (see the script body).
            "signal": f"B:USR1@{job.signal_seconds}",
        })
        if job.nodes > 1:
            opts["ntasks-per-node"] = str(job.ranks // job.nodes)
        if job.gpus:
            opts["gres" if job.gpu_option == "gres" else "gpus-per-node"] = (
                f"gpu:{job.gpus}" if job.gpu_option == "gres" else str(job.gpus))
    opts = {k: v for k, v in opts.items() if v is not None or k == "requeue"}
    for extra in (*s.extra, *job.extra):
        key, sep, value = extra[2:].partition("=")
        opts[key] = value if sep else None
    return opts


def _sbatch_lines(opts: Mapping[str, str | None]) -> list[str]:
    return [f"#SBATCH --{k}" if v is None else f"#SBATCH --{k}={shlex.quote(v)}"
            for k, v in sorted(opts.items())]


def _q(path: Path | str) -> str:
    return shlex.quote(str(path))


#: Exported in every job unless ``slurm.environment`` sets it: HDF5's file locks fail or
#: crawl on many Lustre and NFS mounts, and lenshpc never needs them (one writer per file).
HDF5_LOCKING = "HDF5_USE_FILE_LOCKING=FALSE"


def job_environment(s: Slurm) -> tuple[str, ...]:
    """The NAME=VALUE pairs every job exports: ``slurm.environment``, with the HDF5
    locking default merged in (never replaced by a user's list that does not name it)."""
    name = HDF5_LOCKING.split("=")[0]
    named = {a.partition("=")[0] for a in s.environment}
    return s.environment if name in named else (HDF5_LOCKING, *s.environment)


def _prologue(cfg: Config, setup: tuple[str, ...], launcher: str) -> list[str]:
    s = cfg.slurm
    lines = ["set -eo pipefail", ""]
    if s.modules:
        lines.append("module load " + " ".join(shlex.quote(m) for m in s.modules))
    lines.extend(s.setup or setup)
    # After the site's module and activation scripts, which often read unset variables.
    lines.append("set -u")
    for assignment in job_environment(s):
        name, _, value = assignment.partition("=")
        lines.append(f"export {name}={shlex.quote(value)}")
    if launcher in ("mpirun", "horovodrun"):
        lines.extend([
            "# Open MPI refuses to start as root unless told (containers, test clusters).",
            'if [[ $(id -u) == 0 ]]; then export OMPI_ALLOW_RUN_AS_ROOT=1 '
            'OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1; fi',
        ])
    lines.extend(["python -m lenshpc slurm env  # where and what this job is, for the log", ""])
    return lines


def _mpi_launch(cfg: Config, stage: Stage, launcher: str, cpus_per_task: int) -> str:
    """The launch line of an MPI job's ranks: mpirun reads the allocation from Slurm."""
    return shell_line(stage_argv(stage, launcher=launcher, np="$SLURM_NTASKS",
                                 cpus_per_rank=cpus_per_task, srun_mpi=cfg.slurm.srun_mpi))


def _command(words: list[str], args: list[tuple[str, str]], tail: str = "") -> list[str]:
    """A command with one ``--option value`` per continuation line."""
    lines = [" ".join(words) + " \\"]
    for i, (opt, value) in enumerate(args):
        last = i == len(args) - 1
        lines.append(f"  {opt} {value}" + ("" if last else " \\") + (tail if last else ""))
    return lines


def render(cfg: Config, stage: Stage, paths: Paths, setup: tuple[str, ...] = (),
           array: Iterable[int] | None = None) -> str:
    """The sbatch script of ``stage`` for ``cfg`` as text (valid bash).

    ``paths``: absolute paths the job uses; ``setup``: shell lines that activate the
    Python environment when ``cfg.slurm.setup`` is empty; ``array``: train job indices
    (default: the whole grid). Pure: the same inputs give the same text."""
    if stage not in STAGES:
        raise ValueError(f"unknown stage {stage!r}")
    body = {"simulate": _simulate, "train": _train, "evaluate": _evaluate}[stage]
    head = [
        "#!/bin/bash",
        *(f"# {line}" if line else "#" for line in _DESCRIPTION[stage](cfg, paths)),
        "# Rendered by `lenshpc slurm render`: change the config's `slurm:` section, "
        "not this file.",
        *_sbatch_lines(sbatch_options(cfg, stage, paths, array)),
    ]
    return "\n".join(head + body(cfg, paths, setup)) + "\n"


_DESCRIPTION = {
    "simulate": lambda cfg, p: [
        f"lenshpc simulate, study {cfg.name!r}: {cfg.dataset.n_images} lens systems rendered by "
        f"{cfg.slurm.simulate.ntasks} MPI ranks",
        f"into {p.dataset}. Resumable: after a time limit, submit it again.",
    ],
    "train": lambda cfg, p: [
        f"lenshpc train, study {cfg.name!r}: one array task per job (dropout model x fold), "
        f"each with {cfg.slurm.train.ranks} Horovod rank(s).",
        "Before the time limit the task checkpoints and requeues itself; a requeued task resumes.",
        "",
        "task  model   fold  p1    p2",
        *(f"{j.index:<5} {j.model.name:<7} {j.fold:<5} {j.model.p1:<5g} {j.model.p2:g}"
          for j in jobs(cfg.train, cfg.dataset.n_folds)),
        "",
    ],
    "evaluate": lambda cfg, p: [
        f"lenshpc evaluate, study {cfg.name!r}: every finished job under {p.runs}",
        f"evaluated by {cfg.slurm.evaluate.ntasks} MPI ranks into {p.report}.",
    ],
}


def _simulate(cfg: Config, paths: Paths, setup: tuple[str, ...]) -> list[str]:
    launch = _mpi_launch(cfg, "simulate", cfg.slurm.mpi_launcher, cfg.slurm.simulate.cpus_per_task)
    return [*_prologue(cfg, setup, cfg.slurm.mpi_launcher),
            *_command([launch],
                      [("--config", _q(paths.config)), ("--out", _q(paths.dataset))])]


def _evaluate(cfg: Config, paths: Paths, setup: tuple[str, ...]) -> list[str]:
    launch = _mpi_launch(cfg, "evaluate", cfg.slurm.mpi_launcher, cfg.slurm.evaluate.cpus_per_task)
    return [*_prologue(cfg, setup, cfg.slurm.mpi_launcher),
            *_command([launch],
                      [("--config", _q(paths.config)), ("--data", _q(paths.dataset)),
                       ("--runs", _q(paths.runs)), ("--out", _q(paths.report))])]


def _train(cfg: Config, paths: Paths, setup: tuple[str, ...]) -> list[str]:
    t = cfg.slurm.train
    if t.launcher == "horovodrun":
        per_node = t.ranks // t.nodes
        launch = [
            "# horovodrun needs the hosts and their slots: those of this allocation.",
            f'hosts=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | sed "s/\\$/:{per_node}/" '
            "| paste -sd, -)",
        ]
        words = [shell_line(stage_argv("train", launcher="horovodrun", np=t.ranks, hosts="$hosts"))]
        forward = [
            "# horovodrun itself dies of USR1: signal the training processes it started.",
            "descendants() { local c; for c in $(pgrep -P \"$1\"); do echo \"$c\"; "
            "descendants \"$c\"; done; }",
            "forward_to_launcher() {",
            "  local p cmd",
            "  for p in $(descendants \"$launcher\"); do",
            "    cmd=$(tr '\\0' ' ' < \"/proc/$p/cmdline\" 2>/dev/null) || continue",
            "    [[ $cmd == *' -m lenshpc train '* && $cmd != *horovodrun* ]] "
            "&& kill -s \"$1\" \"$p\" 2>/dev/null || true",
            "  done",
            "  return 0",
            "}",
        ]
    else:
        launch = []
        words = [_mpi_launch(cfg, "train", t.launcher, t.cpus_per_task)]
        forward = [
            f"# {t.launcher} passes USR1 and TERM on to every rank.",
            'forward_to_launcher() { kill -s "$1" "$launcher" 2>/dev/null || true; }',
        ] if t.launcher != "mpirun" else [
            "# mpirun passes USR1 on to every rank and waits for them; on TERM it kills them",
            "# 1 s later and exits 1 (docs/cluster.md). Training stops alike on either, so it",
            "# is sent USR1: the ranks checkpoint and mpirun returns their 75.",
            'forward_to_launcher() { kill -s USR1 "$launcher" 2>/dev/null || true; }',
        ]
    sharing = t.gpu_sharing()
    gpu_note = ([f"# {t.gpus} GPU(s) per node, --device gpu: a task given GPUs never trains "
                 "on the CPU; " + (sharing or "one GPU per rank") + "."] if t.gpus else [])
    return [
        *_prologue(cfg, setup, t.launcher),
        *gpu_note,
        'job=${SLURM_ARRAY_TASK_ID:?submit this script as a job array, e.g. sbatch --array=0-3}',
        "",
        f"# Slurm sends USR1 to this shell {t.signal_seconds} s before the time limit "
        "(--signal=B:USR1@...), and",
        "# TERM when it cancels, preempts or requeues the job. Training stops after a checkpoint",
        f"# and exits {EXIT_STOPPED} on either.",
        "launcher='' signal=''",
        *forward,
        "forward() {",
        '  signal=$1',
        '  echo "train.sbatch: SIG$1 received; passing it to the training processes" >&2',
        '  if [[ -n $launcher ]]; then forward_to_launcher "$1"; fi',
        "}",
        "trap 'forward USR1' USR1",
        "trap 'forward TERM' TERM",
        "",
        *launch,
        *_command(words, [("--config", _q(paths.config)), ("--data", _q(paths.dataset)),
                          ("--out", _q(paths.runs)), ("--job", '"$job"'),
                          *([("--device", "gpu")] if t.gpus else [])], tail=" &"),
        "launcher=$!",
        'if [[ -n $signal ]]; then forward_to_launcher "$signal"; fi',
        "# wait returns early when a trapped signal arrives: wait until the launcher has exited.",
        "set +e",
        "while :; do",
        '  wait "$launcher"; status=$?',
        '  kill -0 "$launcher" 2>/dev/null || break',
        "done",
        "",
        "# Requeue only after the time-limit warning: a cancelled job must stay cancelled, and",
        "# Slurm requeues preempted or requeued jobs itself. The ranks exit "
        f"{EXIT_STOPPED} after their checkpoint",
        "# and mpirun and srun pass that on; a launcher that had to kill a slower rank reports",
        "# 128+signal instead, which after the warning means the same. Anything else ends it.",
        f'if [[ $signal == USR1 ]] && (( status == {EXIT_STOPPED} || status > 128 )); then',
        f"  if (( ${{SLURM_RESTART_COUNT:-0}} < {t.max_requeues} )); then",
        '    echo "train.sbatch: job $job stopped at a checkpoint before the time limit; '
        'requeueing it" >&2',
        '    scontrol requeue "${SLURM_ARRAY_JOB_ID}_${SLURM_ARRAY_TASK_ID}"',
        "    exit 0",
        "  fi",
        f'  echo "train.sbatch: job $job was restarted ${{SLURM_RESTART_COUNT:-0}} times already '
        f'(slurm.train.max_requeues={t.max_requeues}); submit again to continue" >&2',
        "fi",
        'exit "$status"',
    ]
