"""The ``htcondor`` backend: Dask workers as HTCondor jobs (dask-jobqueue ``HTCondorCluster``).

The profile's ``htcondor`` section maps onto the submit description the way analysis facilities
such as coffea-casa use it:

- ``universe``: ``vanilla`` (default), ``docker`` or ``container``; with ``docker`` /
  ``container`` the worker runs in ``worker.container.image`` (``docker_image`` /
  ``container_image``), otherwise an apptainer-wrapped command when a container is given;
- ``should_transfer_files`` and any ``submit_attributes`` (``+DaskWorker*``, ``requirements``,
  ``transfer_input_files`` for TLS files, ``+MaxRuntime``...) are written as given;
- ``request_cpus`` / ``request_memory`` / ``request_disk`` come from ``worker`` (dask-jobqueue
  writes them as expressions of ``MY.DaskWorkerCores`` / ``Memory`` / ``Disk``);
- firewalled sites: ``worker.port_range`` and ``scheduler.contact_address`` (the address the
  workers can reach), or, where nothing can connect to the workers, the relay broker
  (profile ``relay``, :mod:`backends.relay`); TLS from ``tls``.

``condor_submit`` / ``condor_rm`` are found on ``PATH``; ``submit_command`` / ``cancel_command``
replace them. When no worker connects, the error names each job's state as ``condor_q`` (``-json``
with :data:`STATE_ATTRIBUTES`; ``status_command`` replaces it, e.g. ``condor_q -name
schedd.site``) and, for jobs that left the queue, ``condor_history`` (``history_command``) say:
Idle, Running, Held with its ``HoldReason``, Completed... (:func:`job_states_from_ads`). The
stand-ins in ``backends/standins/bin`` (``condor_submit``, ``condor_rm``, ``condor_q``) run the
jobs as local processes; they are what the tests use (no HTCondor daemons here).
"""

from __future__ import annotations

import json
import shlex
import subprocess
import time
from collections.abc import Iterable, Mapping
from typing import Any

from dask_jobqueue import HTCondorCluster
from dask_jobqueue.htcondor import HTCondorJob

from backends.jobqueue import JobQueueBackend, RecordsSubmitError
from backends.profiles import ProfileError

#: HTCondor's ``JobStatus`` numbers and their names.
JOB_STATUS = {
    1: "Idle",
    2: "Running",
    3: "Removed",
    4: "Completed",
    5: "Held",
    6: "Transferring Output",
    7: "Suspended",
}
#: The job attributes ``condor_q`` / ``condor_history`` are asked for.
STATE_ATTRIBUTES = ("ClusterId", "ProcId", "JobStatus", "HoldReason")
#: Seconds the state queries (``condor_q`` and ``condor_history`` together) may take.
STATUS_TIMEOUT = 30.0
#: Job ads ``condor_history`` reads back from the newest, at most, looking for the jobs.
HISTORY_SCAN_LIMIT = 10_000


class SiteHTCondorJob(RecordsSubmitError, HTCondorJob):
    """``HTCondorJob`` whose ``condor_submit`` / ``condor_rm`` commands a profile may replace."""

    def __init__(
        self, *args, submit_command: str | None = None, cancel_command: str | None = None, **kwargs
    ):
        super().__init__(*args, **kwargs)
        self.submit_command = _replace_program(self.submit_command, submit_command)
        self.cancel_command = _replace_program(self.cancel_command, cancel_command)


def _replace_program(command: str, program: str | None) -> str:
    """``command`` with its first word replaced by ``program`` (which may carry options)."""
    if not program:
        return command
    return shlex.join(shlex.split(program) + shlex.split(command)[1:])


class SiteHTCondorCluster(HTCondorCluster):
    job_cls = SiteHTCondorJob


class HTCondorBackend(JobQueueBackend):
    """Dask workers submitted with ``condor_submit`` (profile section ``htcondor``)."""

    name = "htcondor"
    description = "HTCondor jobs running Dask workers (dask-jobqueue HTCondorCluster)"
    cluster_cls = SiteHTCondorCluster
    example_profile = "htcondor-coffea-casa"

    def check(self) -> None:
        universe = self.profile.section("htcondor").get("universe", "vanilla")
        container = self.profile.worker.get("container")
        if universe in ("docker", "container") and not container:
            raise ProfileError(
                f"profile {self.profile.source}: htcondor.universe: {universe} "
                "needs worker.container.image"
            )
        if container and container.get("runtime") == "docker" and universe != "docker":
            raise ProfileError(
                f"profile {self.profile.source}: worker.container.runtime: "
                "docker needs htcondor.universe: docker"
            )

    def worker_python(self) -> str:
        universe = self.profile.section("htcondor").get("universe", "vanilla")
        if universe in ("docker", "container"):  # HTCondor starts the container itself
            return self.profile.worker.get("python", "python3")
        return super().worker_python()

    def submit_attributes(self) -> dict[str, Any]:
        """Submit-description lines beyond dask-jobqueue's own, in the order written."""
        h = self.profile.section("htcondor")
        attrs: dict[str, Any] = {}
        universe = h.get("universe", "vanilla")
        attrs["universe"] = universe
        image = (self.profile.worker.get("container") or {}).get("image")
        if universe == "docker":
            attrs["docker_image"] = image
        elif universe == "container":
            attrs["container_image"] = image
        if h.get("should_transfer_files"):
            attrs["should_transfer_files"] = h["should_transfer_files"]
            if h["should_transfer_files"] != "NO":
                attrs["when_to_transfer_output"] = "ON_EXIT_OR_EVICT"
        if self.profile.worker.get("gpus"):
            attrs["request_gpus"] = int(self.profile.worker["gpus"])
        for key, value in h.get("submit_attributes", {}).items():
            attrs[key] = _submit_value(value)
        return attrs

    def job_kwargs(self) -> dict[str, Any]:
        h = self.profile.section("htcondor")
        return {
            "disk": self.profile.worker["disk"],
            "job_extra_directives": self.with_site(
                "job-extra-directives", self.submit_attributes()
            ),
            "submit_command_extra": list(h.get("submit_command_extra", [])),
            "cancel_command_extra": list(h.get("cancel_command_extra", [])),
            "submit_command": h.get("submit_command"),
            "cancel_command": h.get("cancel_command"),
        }

    def job_states(self, job_ids: list[str]) -> dict[str, str] | None:
        """``condor_q``'s state of each job still in the queue (``Held`` with its reason), and
        ``condor_history``'s for those that left it (Completed, Removed) where it answers in
        the time left; ids neither lists are left out. None when ``condor_q`` fails (no schedd,
        a timeout): the error is then told without the states."""
        h = self.profile.section("htcondor")
        deadline = time.monotonic() + STATUS_TIMEOUT
        states = query_job_states(h.get("status_command", "condor_q"), job_ids, STATUS_TIMEOUT)
        if states is None:
            return None
        states = {i: states[i] for i in job_ids if i in states}
        missing = [i for i in job_ids if i not in states]
        left = deadline - time.monotonic()
        if missing and left >= 1:
            # newest first; it stops once it found them all, or after HISTORY_SCAN_LIMIT ads
            extra = ["-limit", str(len(missing)), "-scanlimit", str(HISTORY_SCAN_LIMIT)]
            ended = query_job_states(
                h.get("history_command", "condor_history"), missing, left, extra
            )
            states.update({i: s for i, s in (ended or {}).items() if i in missing})
        return states


def job_state(ad: Mapping[str, Any]) -> str:
    """A job ad's ``JobStatus`` in words: ``Running``, ``Held (<HoldReason>)``..."""
    status: Any = ad.get("JobStatus")
    try:
        state = JOB_STATUS.get(int(status), f"JobStatus {status}")
    except (TypeError, ValueError):
        state = f"JobStatus {status}"
    reason = ad.get("HoldReason")
    if state == "Held" and reason not in (None, "", "undefined"):
        state += f" ({reason})"
    return state


def job_states_from_ads(text: str) -> dict[str, str]:
    """``{"CLUSTER.PROC": state}`` from the output of ``condor_q -json`` or ``condor_history
    -json`` (a JSON list of job ads; nothing at all when no job matched).

    Raises:
        ValueError: the output is not such a list.
    """
    if not text.strip():
        return {}
    ads = json.loads(text)
    if not isinstance(ads, list):
        raise ValueError(f"expected a JSON list of job ads, got {type(ads).__name__}")
    states = {}
    for ad in ads:
        if isinstance(ad, dict) and "ClusterId" in ad and "ProcId" in ad:
            states[f"{ad['ClusterId']}.{ad['ProcId']}"] = job_state(ad)
    return states


def query_job_states(
    command: str, job_ids: Iterable[str], timeout: float, extra: Iterable[str] = ()
) -> dict[str, str] | None:
    """Run ``command IDS... [extra] -attributes STATE_ATTRIBUTES -json`` (``condor_q`` or
    ``condor_history``) and read its job ads; None when it fails, times out or prints
    something else."""
    argv = [
        *shlex.split(command),
        *job_ids,
        *extra,
        "-attributes",
        ",".join(STATE_ATTRIBUTES),
        "-json",
    ]
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if out.returncode != 0:
        return None
    try:
        return job_states_from_ads(out.stdout)
    except ValueError:
        return None


def _submit_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)
