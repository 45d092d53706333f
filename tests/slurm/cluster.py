"""A private one-node Slurm for the tests: munged, slurmctld and slurmd of Debian's
``slurm-wlm`` and ``munge``, started as root with everything in one folder.

Nothing global is touched: its own munge key and socket, its own ``slurm.conf``
(clients find it through ``SLURM_CONF``), free TCP ports, state and spool folders
under the given folder. ``python -m tests.slurm.cluster DIR`` starts one by hand
(Ctrl-C stops it) for debugging.
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

#: Debian packages providing the daemons and clients.
PACKAGES = ("slurm-wlm", "munge")
TOOLS = ("munged", "mungekey", "slurmctld", "slurmd", "sbatch", "squeue", "sinfo", "scontrol")


class Unavailable(Exception):
    """Slurm cannot run here (the reason is the message)."""


def ensure_installed() -> None:
    """Install slurm-wlm and munge with apt when missing; raise Unavailable if impossible."""
    if all(shutil.which(t, path=os.environ.get("PATH", "") + ":/usr/sbin:/sbin") for t in TOOLS):
        return
    if os.getuid() != 0:
        raise Unavailable("Slurm is not installed and installing it needs root")
    if shutil.which("apt-get") is None:
        raise Unavailable("Slurm is not installed and there is no apt-get to install it")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    for cmd in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", *PACKAGES]):
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=900)
        if proc.returncode != 0:
            raise Unavailable(f"{' '.join(cmd)} failed: {proc.stderr.strip()[-300:]}")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _sbin(tool: str) -> str:
    return shutil.which(tool, path=os.environ.get("PATH", "") + ":/usr/sbin:/sbin") or tool


class OneNodeSlurm:
    """munged + slurmctld + slurmd for this machine, configured under ``base``."""

    def __init__(self, base: Path, kill_wait: int = 5):
        self.base = Path(base)
        self.node = socket.gethostname().split(".")[0]
        self.cpus = os.cpu_count() or 1
        pages = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") // 2**20
        self.memory_mb = min(20000, int(pages * 0.8))
        self.kill_wait = kill_wait
        self.conf = self.base / "slurm.conf"
        self.munge_socket = self.base / "munge" / "munge.socket"
        self._procs: list[subprocess.Popen] = []

    @property
    def env(self) -> dict[str, str]:
        """What clients (sbatch, squeue, ...) need to find this cluster."""
        return {"SLURM_CONF": str(self.conf)}

    def _write_config(self) -> None:
        b = self.base
        for d in ("munge", "state", "spool", "log"):
            (b / d).mkdir(parents=True, exist_ok=True)
        (b / "munge").chmod(0o711)
        lines = [
            "# One-node Slurm of the lenshpc tests (tests/slurm/cluster.py).",
            "ClusterName=lenshpctest",
            f"SlurmctldHost={self.node}(127.0.0.1)",
            f"SlurmctldPort={_free_port()}",
            f"SlurmdPort={_free_port()}",
            "SlurmUser=root",
            "SlurmdUser=root",
            "AuthType=auth/munge",
            "CredType=cred/munge",
            # A requeued job may start again only when its old credential has expired
            # (default 120 s): keep that short so the requeue test is quick.
            f"AuthInfo=socket={self.munge_socket},cred_expire=10",
            f"StateSaveLocation={b / 'state'}",
            f"SlurmdSpoolDir={b / 'spool'}",
            f"SlurmctldPidFile={b / 'slurmctld.pid'}",
            f"SlurmdPidFile={b / 'slurmd.pid'}",
            f"SlurmctldLogFile={b / 'log' / 'slurmctld.log'}",
            f"SlurmdLogFile={b / 'log' / 'slurmd.log'}",
            "ProctrackType=proctrack/linuxproc",
            "TaskPlugin=task/none",
            "SelectType=select/cons_tres",
            "SelectTypeParameters=CR_Core_Memory",
            "DefMemPerCPU=2000",
            "SchedulerType=sched/backfill",
            "MpiDefault=none",
            "SwitchType=switch/none",
            "JobCompType=jobcomp/none",
            "AccountingStorageType=accounting_storage/none",
            "JobAcctGatherType=jobacct_gather/none",
            "JobRequeue=1",
            "ReturnToService=2",
            f"KillWait={self.kill_wait}",
            "MinJobAge=600",
            "MaxArraySize=1001",
            "SlurmdTimeout=60",
            "InactiveLimit=0",
            f"NodeName={self.node} NodeAddr=127.0.0.1 NodeHostname={self.node} "
            f"CPUs={self.cpus} RealMemory={self.memory_mb} State=UNKNOWN",
            "PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP",
            # A partition with a time limit (the pre-flight check's MaxTime case).
            "PartitionName=short Nodes=ALL Default=NO MaxTime=00:10:00 State=UP",
        ]
        self.conf.write_text("\n".join(lines) + "\n")
        key = b / "munge" / "munge.key"
        if not key.exists():
            subprocess.run([_sbin("mungekey"), "--create", f"--keyfile={key}"], check=True,
                           capture_output=True)
        key.chmod(0o600)

    def _daemon(self, name: str, cmd: list[str]) -> None:
        log = open(self.base / "log" / f"{name}.out", "ab")
        env = dict(os.environ, **self.env)
        self._procs.append(subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env,
                                            start_new_session=True))
        log.close()

    def start(self, timeout: float = 90) -> None:
        """Start the daemons and wait until the node is idle; raise Unavailable on failure."""
        if os.getuid() != 0:
            raise Unavailable("the test Slurm runs its daemons as root")
        self._write_config()
        m = self.base / "munge"
        subprocess.run([_sbin("munged"), "--force", f"--socket={self.munge_socket}",
                        f"--key-file={m / 'munge.key'}", f"--log-file={m / 'munged.log'}",
                        f"--pid-file={m / 'munged.pid'}", f"--seed-file={m / 'munged.seed'}"],
                       check=True, capture_output=True, timeout=30)
        self._daemon("slurmctld", [_sbin("slurmctld"), "-D", "-i", "-f", str(self.conf)])
        self._daemon("slurmd", [_sbin("slurmd"), "-D", "-N", self.node, "-f", str(self.conf)])
        deadline = time.monotonic() + timeout
        state = ""
        while time.monotonic() < deadline:
            if any(p.poll() is not None for p in self._procs):
                break
            proc = subprocess.run(["sinfo", "-h", "-N", "-o", "%T"], capture_output=True, text=True,
                                  env=dict(os.environ, **self.env))
            state = proc.stdout.strip()
            # One line per partition of the node.
            if state and set(state.split()) == {"idle"}:
                return
            time.sleep(1)
        logs = "\n".join(f"--- {p.name}\n{p.read_text()[-1500:]}"
                         for p in sorted((self.base / "log").glob("*")) if p.is_file())
        self.stop()
        raise Unavailable(f"the test Slurm did not come up (node state {state!r}):\n{logs}")

    def run(self, *cmd: str, check: bool = True) -> subprocess.CompletedProcess:
        """Run a Slurm client command against this cluster."""
        return subprocess.run(list(cmd), capture_output=True, text=True, check=check,
                              env=dict(os.environ, **self.env), timeout=60)

    def queue(self) -> list[str]:
        """Job ids (``123`` or ``123_4``) in the queue, pending or running."""
        return self.run("squeue", "-h", "-o", "%i").stdout.split()

    def wait_empty(self, timeout: float) -> bool:
        """Wait until no job is pending or running; False on timeout."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.queue():
                return True
            time.sleep(2)
        return False

    def stop(self) -> None:
        """Cancel every job of this cluster, then stop the daemons this object started."""
        if self._procs and all(p.poll() is None for p in self._procs):
            self.run("scancel", f"--user={pwd.getpwuid(os.getuid()).pw_name}", check=False)
            self.wait_empty(timeout=self.kill_wait + 30)
        for p in reversed(self._procs):
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
                try:
                    p.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait()
        self._procs.clear()
        pid_file = self.base / "munge" / "munged.pid"
        if pid_file.is_file():
            try:
                os.kill(int(pid_file.read_text().split()[0]), signal.SIGTERM)
            except (ValueError, ProcessLookupError):
                pass


if __name__ == "__main__":
    base = Path(sys.argv[1] if len(sys.argv) > 1 else "/tmp/lenshpc-slurm").resolve()
    ensure_installed()
    cluster = OneNodeSlurm(base)
    cluster.start()
    print(f"export SLURM_CONF={cluster.conf}   # Ctrl-C or SIGTERM stops the cluster", flush=True)

    def _interrupt(signum, frame):
        raise KeyboardInterrupt

    # Started in the background, a process inherits SIGINT ignored: take TERM as well.
    signal.signal(signal.SIGINT, _interrupt)
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        signal.pause()
    except KeyboardInterrupt:
        pass
    finally:
        cluster.stop()
