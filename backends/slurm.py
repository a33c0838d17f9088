"""The ``slurm`` backend: Dask workers as SLURM jobs (dask-jobqueue ``SLURMCluster``).

The scheduler runs where ``agc run`` runs; each job is ``sbatch``-ed with the profile's
partition, walltime, account and extra ``#SBATCH`` directives, and starts one Dask worker
(optionally inside an apptainer container) that connects back. ``close()`` ``scancel``-s every
job. Example profile: ``backends/profiles/slurm-local.yaml``.
"""

from __future__ import annotations

import math
import os
import shlex
import subprocess
from typing import Any

from dask_jobqueue import SLURMCluster
from dask_jobqueue.slurm import SLURMJob

from backends.jobqueue import JobQueueBackend, RecordsSubmitError, size_in_bytes


class SiteSLURMJob(RecordsSubmitError, SLURMJob):
    """``SLURMJob`` whose ``sbatch`` / ``scancel`` commands a profile may replace."""

    def __init__(
        self,
        *args,
        submit_command: str | None = None,
        cancel_command: str | None = None,
        gpus: int = 0,
        disk: str | None = None,
        **kwargs,
    ):
        extra = list(kwargs.get("job_extra_directives") or [])
        if gpus:
            extra.append(f"--gpus={gpus}")
        if disk:
            extra.append(f"--tmp={math.ceil(size_in_bytes(disk) / 2**20)}M")
        kwargs["job_extra_directives"] = extra
        super().__init__(*args, **kwargs)
        if submit_command:
            self.submit_command = shlex.join(shlex.split(submit_command))
        if cancel_command:
            self.cancel_command = shlex.join(shlex.split(cancel_command))


class SiteSLURMCluster(SLURMCluster):
    job_cls = SiteSLURMJob


class SlurmBackend(JobQueueBackend):
    """Dask workers submitted with ``sbatch`` (profile section ``slurm``)."""

    name = "slurm"
    description = "SLURM batch jobs running Dask workers (dask-jobqueue SLURMCluster)"
    cluster_cls = SiteSLURMCluster
    example_profile = "slurm-local"

    def job_kwargs(self) -> dict[str, Any]:
        s = self.profile.section("slurm")
        kwargs: dict[str, Any] = {
            "queue": s.get("partition"),
            "walltime": s.get("walltime"),
            "account": s.get("account"),
            "job_extra_directives": self.with_site(
                "job-extra-directives", list(s.get("directives", []))
            ),
            "job_name": "agc-worker",
            "gpus": int(self.profile.worker.get("gpus", 0)),
            "disk": self.profile.worker.get("disk"),
            "submit_command": s.get("submit_command"),
            "cancel_command": s.get("cancel_command"),
        }
        return kwargs

    def walltime_seconds(self) -> float | None:
        walltime = self.profile.section("slurm").get("walltime")
        return None if walltime is None else float(slurm_time_seconds(walltime))

    def job_states(self, job_ids: list[str]) -> dict[str, str] | None:
        """``squeue``'s state and reason of each job still in the queue (None if it fails)."""
        command = self.profile.section("slurm").get("status_command", "squeue")
        try:
            out = subprocess.run(
                [*shlex.split(command), "-h", "-j", ",".join(job_ids), "-o", "%i %T %R"],
                capture_output=True,
                text=True,
                timeout=30,
            )
        except (OSError, subprocess.TimeoutExpired):
            return None
        if out.returncode != 0 and "Invalid job id" not in out.stderr:
            return None
        states = {}
        for line in out.stdout.splitlines():
            job_id, _, state = line.strip().partition(" ")
            if job_id:
                states[job_id] = state.replace(" None", "").strip()
        return states

    def log_locations(self, job_ids: list[str]) -> str:
        log_dir = self.profile.data.get("log_directory")
        if log_dir:
            return f"{os.path.abspath(log_dir)}/agc-worker-<job id>.out and .err"
        return f"slurm-<job id>.out in {os.getcwd()} (sbatch's default)"


def slurm_time_seconds(walltime: str) -> int:
    """SLURM's ``-t`` value in seconds: ``MM``, ``MM:SS``, ``HH:MM:SS``, ``D-HH[:MM[:SS]]``."""
    days, _, rest = walltime.rpartition("-")
    parts = [int(x) for x in rest.split(":")]
    if days:
        h, m, sec = (parts + [0, 0])[:3]
        return ((int(days) * 24 + h) * 60 + m) * 60 + sec
    if len(parts) == 1:
        return parts[0] * 60
    if len(parts) == 2:
        return parts[0] * 60 + parts[1]
    h, m, sec = parts
    return (h * 60 + m) * 60 + sec
