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
  workers can reach), TLS from ``tls``.

``condor_submit`` / ``condor_rm`` are found on ``PATH``; ``submit_command`` / ``cancel_command``
replace them. The stand-ins in ``backends/standins/bin`` (``condor_submit``, ``condor_rm``) run
the jobs as local processes; they are what the tests use (no HTCondor daemons here).
"""

from __future__ import annotations

import shlex
from typing import Any

from dask_jobqueue import HTCondorCluster
from dask_jobqueue.htcondor import HTCondorJob

from backends.jobqueue import JobQueueBackend, RecordsSubmitError
from backends.profiles import ProfileError


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


def _submit_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)
