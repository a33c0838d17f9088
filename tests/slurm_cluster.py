"""Fixtures of the batch-backend tests: a real single-node SLURM, and the shared reference run.

:class:`LocalSlurm` brings up munge (unless one already runs), slurmctld and slurmd on
127.0.0.1 from a config in a scratch directory (``SLURM_CONF``), waits until the node is
``idle``, and stops exactly the daemons it started, by PID. Debian: ``apt-get install
slurm-wlm munge``.

:func:`reference_histograms` runs the small test dataset once in-process; every backend's
end-to-end test compares its histograms with that run.
"""

from __future__ import annotations

import functools
import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

from agc.processes import alive

#: The two samples the backend end-to-end runs process (enough chunks for two workers).
BACKEND_SAMPLES = ("ttbar__nominal", "wjets__nominal")
#: Events per chunk in the backend end-to-end runs: 5 chunks on the small dataset.
BACKEND_CHUNKSIZE = 2000

MUNGE_PID = Path("/run/munge/munged.pid")


@functools.cache
def reference_histograms(catalog: str) -> dict:
    """Histograms of the backend test samples, run in-process (computed once per session)."""
    return backend_run(catalog, "local", mode="inprocess").histograms


def backend_run(catalog: str, backend: str, **options):
    """The backend test samples run on ``backend`` (nothing written); ``options`` are run
    options (mode, workers, profile...)."""
    from agc import RunConfig, run

    config = RunConfig(
        catalog=catalog,
        samples=BACKEND_SAMPLES,
        chunksize=BACKEND_CHUNKSIZE,
        backend=backend,
        fit=False,
        **options,
    )
    return run(config, progress=False, write=False)


def missing_slurm() -> str | None:
    """Why a local SLURM cannot be started here (None if it can)."""
    for binary in ("slurmctld", "slurmd", "munged", "sbatch", "squeue", "sinfo"):
        if not shutil.which(binary, path=os.environ.get("PATH", "") + ":/usr/sbin"):
            return (
                f"{binary} not installed (Debian: apt-get install slurm-wlm munge); "
                "the SLURM backend test needs a real slurmctld/slurmd"
            )
    if os.geteuid() != 0:
        return "starting slurmd and munged needs root (SlurmUser=root, munge user switch)"
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


_alive = alive  # one liveness check for stand-in jobs and daemons


class LocalSlurm:
    """A one-node SLURM cluster on 127.0.0.1 in ``workdir``; ``env`` holds its SLURM_CONF."""

    def __init__(self, workdir: Path, cpus: int | None = None, memory_mb: int = 8000):
        self.workdir = Path(workdir)
        self.node = socket.gethostname()
        self.cpus = cpus or os.cpu_count() or 1
        self.memory_mb = memory_mb
        self.conf = self.workdir / "slurm.conf"
        self.env = {
            **os.environ,
            "SLURM_CONF": str(self.conf),
            "PATH": os.environ.get("PATH", "") + ":/usr/sbin",
        }
        self._pids: list[int] = []

    def config_text(self) -> str:
        w = self.workdir
        return f"""\
ClusterName=agctest
SlurmctldHost={self.node}(127.0.0.1)
SlurmUser=root
SlurmctldPort={_free_port()}
SlurmdPort={_free_port()}
AuthType=auth/munge
CredType=cred/munge
StateSaveLocation={w}/state
SlurmdSpoolDir={w}/spool
SlurmctldPidFile={w}/slurmctld.pid
SlurmdPidFile={w}/slurmd.pid
SlurmctldLogFile={w}/log/slurmctld.log
SlurmdLogFile={w}/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
MpiDefault=none
ReturnToService=2
SlurmctldTimeout=30
SlurmdTimeout=30
InactiveLimit=0
MinJobAge=60
KillWait=5
Waittime=0
NodeName={self.node} NodeAddr=127.0.0.1 CPUs={self.cpus} RealMemory={self.memory_mb} State=UNKNOWN
PartitionName=debug Nodes={self.node} Default=YES MaxTime=INFINITE State=UP
"""

    def start(self, timeout: float = 60.0) -> LocalSlurm:
        for sub in ("state", "spool", "log"):
            (self.workdir / sub).mkdir(parents=True, exist_ok=True)
        self.conf.write_text(self.config_text())
        self._start_munge()
        for daemon, pidfile in (("slurmctld", "slurmctld.pid"), ("slurmd", "slurmd.pid")):
            subprocess.run([f"/usr/sbin/{daemon}"], env=self.env, check=True)  # daemonizes
            self._pids.append(self._read_pid(self.workdir / pidfile))
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            state = subprocess.run(
                ["sinfo", "-h", "-o", "%T"], env=self.env, capture_output=True, text=True
            ).stdout.split()
            if "idle" in state:
                return self
            time.sleep(0.2)
        log = (self.workdir / "log" / "slurmctld.log").read_text()[-2000:]
        self.stop()
        raise RuntimeError(f"SLURM node not idle after {timeout} s; slurmctld.log:\n{log}")

    def _start_munge(self) -> None:
        if MUNGE_PID.exists() and _alive(int(MUNGE_PID.read_text().split()[0])):
            return  # a munged already serves this machine; leave it alone
        for d in ("/run/munge", "/var/log/munge", "/var/lib/munge"):
            Path(d).mkdir(parents=True, exist_ok=True)
            shutil.chown(d, "munge", "munge")
        MUNGE_PID.unlink(missing_ok=True)
        subprocess.run(["runuser", "-u", "munge", "--", "/usr/sbin/munged"], check=True)
        self._pids.append(self._read_pid(MUNGE_PID))

    @staticmethod
    def _read_pid(path: Path, timeout: float = 10.0) -> int:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if path.exists() and path.read_text().strip():
                return int(path.read_text().split()[0])
            time.sleep(0.05)
        raise RuntimeError(f"{path} was not written")

    def queue(self) -> list[str]:
        """Job ids in the queue (any state)."""
        out = subprocess.run(
            ["squeue", "-h", "-o", "%i"], env=self.env, capture_output=True, text=True, check=True
        ).stdout
        return out.split()

    def stop(self) -> None:
        """Stop the daemons this object started (slurmd, slurmctld, munged), by PID."""
        for pid in reversed(self._pids):
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                continue
            deadline = time.monotonic() + 10
            while _alive(pid) and time.monotonic() < deadline:
                time.sleep(0.05)
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)
        self._pids.clear()
