"""A real one-node SLURM cluster on localhost for the tests in this folder: munged, slurmctld and
slurmd started from a throwaway configuration under a temporary folder, stopped at the end.

``make slurm-deps`` installs the binaries (Debian: slurm-wlm, munge). The daemons run as the current
user; only root can install the packages, so a non-root machine without them skips these tests.
"""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import pytest

BINARIES = ("munged", "slurmctld", "slurmd", "sbatch", "squeue", "sinfo", "scontrol", "scancel")
TERMINAL_STATES = frozenset({"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY",
                             "PREEMPTED", "DEADLINE", "BOOT_FAIL"})


def require_binaries() -> None:
    """Fail (root: make slurm-deps can install them) or skip (not root) when a binary is missing."""
    missing = [name for name in BINARIES if shutil.which(name) is None]
    if not missing:
        return
    message = f"SLURM test cluster: {missing} not on PATH. Fix: `make slurm-deps` installs slurm-wlm and munge"
    if os.geteuid() == 0:
        pytest.fail(message, pytrace=False)
    pytest.skip(f"{message} (needs root, and this user is not root)")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def node_hardware() -> str:
    """This machine's CPUs, sockets, cores and memory as slurmd sees them (``slurmd -C``), so the
    node's declaration matches the hardware and slurmd does not drain it."""
    out = subprocess.run(["slurmd", "-C"], capture_output=True, text=True, check=True).stdout
    first = out.splitlines()[0].split()
    return " ".join(field for field in first if not field.startswith("NodeName="))


def slurm_conf(*, root: Path, user: str, ctld_port: int, slurmd_port: int) -> str:
    return f"""\
ClusterName=ssodtest
SlurmctldHost=localhost
SlurmUser={user}
SlurmdUser={user}
SlurmctldPort={ctld_port}
SlurmdPort={slurmd_port}
AuthType=auth/munge
CredType=cred/munge
# cred_expire is also how long a requeued job waits before it may start again (default 120 s)
AuthInfo=socket={root}/munge/munge.sock,cred_expire=10
StateSaveLocation={root}/state
SlurmdSpoolDir={root}/spool
SlurmctldPidFile={root}/slurmctld.pid
SlurmdPidFile={root}/slurmd.pid
SlurmctldLogFile={root}/log/slurmctld.log
SlurmdLogFile={root}/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerType=sched/backfill
MpiDefault=none
SwitchType=switch/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
ReturnToService=2
JobRequeue=1
SlurmctldTimeout=10
SlurmdTimeout=10
MessageTimeout=5
InactiveLimit=0
KillWait=10
Waittime=0
MinJobAge=600
NodeName=localhost NodeAddr=127.0.0.1 {node_hardware()} State=UNKNOWN
PartitionName=debug Nodes=localhost Default=YES MaxTime=INFINITE State=UP
"""


@dataclass
class LocalCluster:
    root: Path
    conf: Path
    env: dict[str, str]

    def run(self, *args: str) -> str:
        done = subprocess.run(list(args), env=self.env, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise AssertionError(f"{args} failed ({done.returncode}): {done.stderr.strip()}\n{self.logs()}")
        return done.stdout

    def jobs(self, job_id: str) -> list[dict[str, str]]:
        """``scontrol show job`` records (one per array task) as dicts of their fields."""
        out = subprocess.run(["scontrol", "-o", "show", "job", job_id], env=self.env, capture_output=True,
                             text=True, check=False).stdout
        return [dict(f.split("=", 1) for f in line.split() if "=" in f) for line in out.splitlines() if line]

    def wait_done(self, *job_ids: str, timeout: float) -> list[dict[str, str]]:
        """Wait until every task of the jobs is in a final state; returns their records."""
        deadline = time.monotonic() + timeout
        while True:
            records = [r for job in job_ids for r in self.jobs(job)]
            if records and all(r["JobState"] in TERMINAL_STATES for r in records):
                return records
            if time.monotonic() > deadline:
                states = [(r.get("JobId"), r.get("JobState"), r.get("Reason")) for r in records]
                raise AssertionError(f"jobs {job_ids} not done after {timeout:.0f} s: {states}\n{self.logs()}")
            time.sleep(2)

    def logs(self, lines: int = 15) -> str:
        parts = []
        for path in sorted((self.root / "log").glob("*.log")):
            tail = path.read_text(errors="replace").splitlines()[-lines:]
            parts.append(f"--- {path}\n" + "\n".join(tail))
        return "\n".join(parts)


def _start(cmd: list[str], *, root: Path, name: str, env: dict[str, str]) -> subprocess.Popen:
    # foreground daemons (-F / -D) stay our children, so teardown stops exactly these processes
    with open(root / "log" / f"{name}.stdout", "ab") as log:
        return subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)


def _wait_node_idle(cluster: LocalCluster, procs: list[subprocess.Popen], *, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        dead = [p.args[0] for p in procs if p.poll() is not None]
        if dead:
            raise AssertionError(f"SLURM test cluster: {dead} exited at start.\n{cluster.logs()}")
        out = subprocess.run(["sinfo", "-h", "-N", "-o", "%T"], env=cluster.env, capture_output=True, text=True,
                             check=False).stdout.split()
        if out == ["idle"]:
            return
        time.sleep(1)
    raise AssertionError(f"SLURM test cluster: node not idle after {timeout:.0f} s.\n{cluster.logs()}")


def _stop(cluster: LocalCluster, procs: list[subprocess.Popen]) -> None:
    ids = subprocess.run(["squeue", "-h", "-o", "%A"], env=cluster.env, capture_output=True, text=True,
                         check=False).stdout.split()
    if ids:
        subprocess.run(["scancel", *ids], env=cluster.env, check=False)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and subprocess.run(
                ["squeue", "-h", "-o", "%A"], env=cluster.env, capture_output=True, text=True).stdout.strip():
            time.sleep(1)
    for proc in reversed(procs):  # slurmd, slurmctld, then munged
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture(scope="session")
def slurm_cluster(tmp_path_factory) -> Iterator[LocalCluster]:
    require_binaries()
    root = tmp_path_factory.mktemp("slurm")
    for sub in ("munge", "state", "spool", "log"):
        (root / sub).mkdir(mode=0o700)
    key = root / "munge" / "munge.key"
    with open(key, "wb") as f:  # munged accepts a key of random bytes it alone can read
        f.write(os.urandom(1024))
    key.chmod(0o600)
    user = pwd.getpwuid(os.geteuid()).pw_name
    conf = root / "slurm.conf"
    conf.write_text(slurm_conf(root=root, user=user, ctld_port=free_port(), slurmd_port=free_port()))
    env = {**os.environ, "SLURM_CONF": str(conf)}
    cluster = LocalCluster(root=root, conf=conf, env=env)
    munge = root / "munge"
    procs = [_start(["munged", "-F", "--force", f"--socket={munge}/munge.sock", f"--key-file={key}",
                     f"--pid-file={munge}/munged.pid", f"--log-file={root}/log/munged.log",
                     f"--seed-file={munge}/munged.seed"], root=root, name="munged", env=env)]
    previous_conf = os.environ.get("SLURM_CONF")
    try:
        _wait_for(munge / "munge.sock", timeout=20, what="munged socket", cluster=cluster)
        procs.append(_start(["slurmctld", "-D", "-f", str(conf)], root=root, name="slurmctld", env=env))
        procs.append(_start(["slurmd", "-D", "-f", str(conf), "-N", "localhost"], root=root, name="slurmd", env=env))
        _wait_node_idle(cluster, procs)
        # sbatch from the code under test reads the configuration from the environment
        os.environ["SLURM_CONF"] = str(conf)
        yield cluster
    finally:
        _stop(cluster, procs)
        if previous_conf is None:
            os.environ.pop("SLURM_CONF", None)
        else:
            os.environ["SLURM_CONF"] = previous_conf


def _wait_for(path: Path, *, timeout: float, what: str, cluster: LocalCluster) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if time.monotonic() > deadline:
            raise AssertionError(f"SLURM test cluster: no {what} at {path} after {timeout:.0f} s.\n{cluster.logs()}")
        time.sleep(0.2)
