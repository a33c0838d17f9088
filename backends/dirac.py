"""The ``dirac`` backend: Dask workers as DIRAC grid jobs, one JDL per worker.

:class:`DiracJob` / :class:`DiracCluster` sit on dask-jobqueue's ``Job`` / ``JobQueueCluster``
(the scheduler runs where ``agc run`` runs; each job starts one Dask worker that dials back).
The JDL (:data:`JDL_TEMPLATE`) runs ``/bin/sh -c '<setup> && <python> -m distributed.cli.
dask_worker <scheduler> ...'``; with ``worker.container`` the python is ``apptainer exec --bind
/cvmfs IMAGE python3``. It carries JobName, OwnerGroup, CPUTime, NumberOfProcessors, MinRAM /
MaxRAM (MB), Tags (``GPU`` for GPU stages), Platform, a ``JobGroup`` shared by the jobs of one
backend (``agc-<time>-<random>``: a run's jobs can be found and killed together) and either a
``Site`` list (DIRAC picks one) or, with per-site counts (``dirac.sites: {SITE_A: 3, SITE_B:
4}``), one site per job so that exactly 3 workers go to SITE_A and 4 to SITE_B. Like every
batch backend's, the worker advertises its Dask resources for the profile's ``stages``
(``--resources GPU=n`` for a GPU job, else ``CPU=<threads>`` with stages;
:meth:`backends.jobqueue.JobQueueBackend.worker_resources`).

The worker needs the harness (``agc``, ``backends``: its nanny preloads
:mod:`backends.worker_setup`) before it starts; ``dirac.code`` says how it gets there
(:meth:`DiracBackend.code`):

- ``sandbox`` (the default without ``worker.container``): the harness this process runs is
  packed as a wheel once, when the cluster starts (:mod:`backends.harness_wheel`); every JDL
  lists it in ``InputSandbox`` (a local path: ``dirac-wms-job-submit`` uploads it, the DiracX
  transport puts it in DiracX's sandbox store and names its PFN) and the job, in whose working
  directory DIRAC's JobWrapper puts it, unpacks it onto its ``PYTHONPATH``
  (:func:`harness_steps`) after the setup lines;
- ``{url: WHEEL}``: the job downloads (``https://``) or reads (``/cvmfs/...``) such a wheel and
  unpacks it the same way;
- ``installed`` (the default with a container, whose image of containers/ has the harness):
  nothing is shipped.

DIRAC reads JDLs with its own ClassAd code, which does not carry every character of a quoted
string (:data:`DIRAC_UNSAFE`): a worker command with such characters goes base64-encoded
(:func:`jdl_arguments`), and other attribute values with them are refused.

The scheduler address the workers dial is ``scheduler.contact_address`` from the profile (a
grid worker cannot reach 127.0.0.1); it is never looked up on the internet.

Transports (how a JDL reaches DIRAC) are pluggable (:data:`TRANSPORTS`, ``dirac.transport``);
each has the methods of :class:`DiracTransport`, remembers the jobs it submitted and kills
those still alive when the cluster closes:

- ``cli`` (default, :class:`DiracCLITransport`): the DIRAC client commands
  ``dirac-wms-job-submit FILE.jdl`` (prints ``JobID = N``), ``dirac-wms-job-kill N`` and
  ``dirac-wms-job-status N...`` (prints ``JobID=N Status=Waiting; MinorStatus=Pilot Agent
  Submission; ApplicationStatus=Unknown; Site=ANY;`` per job it knows, which the errors of a
  run whose workers do not connect quote: :func:`parse_job_status`), with a valid proxy
  (``dirac-proxy-init -g GROUP``). The stand-ins in ``backends/standins/bin`` take the same
  arguments and run jobs as local processes.
- ``diracx`` (:class:`backends.diracx.DiracXTransport`): DiracX's REST API with the bearer
  token of ``dirac login`` (``dirac.diracx: {url, token_file, ca_path, timeout}``).
"""

from __future__ import annotations

import base64
import importlib
import logging
import math
import re
import secrets
import shlex
import shutil
import subprocess
import tempfile
import threading
import time
import weakref
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from contextlib import suppress
from functools import cached_property
from pathlib import Path
from typing import Any, Protocol

import dask
from dask.utils import tmpfile
from dask_jobqueue.core import Job, JobQueueCluster
from distributed.deploy.spec import ProcessInterface

from backends.harness_wheel import build_wheel
from backends.jobqueue import (
    DEFAULT_MAX_RESUBMISSIONS,
    DEFAULT_MAX_WAITING,
    DEFAULT_MONITOR_INTERVAL,
    JobQueueBackend,
    RecordsSubmitError,
)
from backends.profiles import ProfileError

# dask-jobqueue reads unset Job options from the ``jobqueue.<config_name>`` config section.
log = logging.getLogger(__name__)

dask.config.update_defaults(
    {"jobqueue": {"dirac": {**dask.config.get("jobqueue.local"), "shebang": None}}}
)

JDL_TEMPLATE = """\
[
  JobName = {job_name};
  Executable = "/bin/sh";
  Arguments = {arguments};
  StdOutput = "std.out";
  StdError = "std.err";
  OutputSandbox = {{"std.out", "std.err"}};
  JobType = "User";
  Priority = 1;
{requirements}
]
"""


def jdl_value(value: Any) -> str:
    """A Python value as JDL (ClassAd) syntax: strings quoted, sequences as ``{...}``."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return str(value)
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, Sequence):
        return "{" + ", ".join(jdl_value(v) for v in value) + "}"
    raise TypeError(f"no JDL form for {value!r}")


#: Characters DIRAC does not pass through a quoted JDL string intact. Its ClassAd reader (in
#: the JobManager, the JobDB and the JobAgent) ends a value at the first ``;`` wherever it is
#: and takes a ``[`` before it for a nested ClassAd; every ``"`` is dropped before the command
#: reaches the worker, ``\\`` escapes are not undone, newlines are removed, and the JobAgent
#: quotes ``{`` and ``}``.
DIRAC_UNSAFE = re.compile(r'["\\;\[\]{}\n]')


#: DIRAC's Watchdog kills a job that used under 5 % CPU over 30 minutes unless its working
#: directory holds this file; a Dask worker idles while it waits for work, so every job makes it.
WATCHDOG_FILE = "DISABLE_WATCHDOG_CPU_WALLCLOCK_CHECK"


def jdl_arguments(command: str) -> str:
    """The ``Arguments`` of ``/bin/sh`` running the shell ``command`` on a DIRAC worker node.

    ``-c '<command>'`` where DIRAC passes that through intact, else the command base64-encoded
    and decoded by the job: ``-c 'echo <base64> | base64 -d | /bin/sh'``.
    """
    arguments = "-c " + shlex.quote(command)
    if DIRAC_UNSAFE.search(arguments):
        encoded = base64.b64encode(command.encode()).decode()
        arguments = f"-c 'echo {encoded} | base64 -d | /bin/sh'"
    return arguments


#: ``dirac.code`` without a URL: the harness goes in each job's InputSandbox, or is already
#: in the worker's Python (its image).
CODE_SANDBOX = "sandbox"
CODE_INSTALLED = "installed"
#: The directory of a job's working directory that the harness wheel is unpacked into.
CODE_DIRECTORY = "agc-harness"
#: The file a job saves the wheel it downloads as (``dirac.code: {url: https://...}``).
FETCHED_WHEEL = "agc-harness.whl"
_FETCH = "import sys, urllib.request as u; u.urlretrieve(sys.argv[1], sys.argv[2])"


def harness_steps(python: str, wheel: str) -> list[str]:
    """The shell steps of a job that put the harness wheel ``wheel`` on its ``PYTHONPATH``
    before the worker starts.

    ``wheel`` is a file in the job's working directory (its InputSandbox), an absolute path
    (``/cvmfs/...``) or an ``https://`` URL, which the job first downloads with ``python``
    (:data:`FETCHED_WHEEL`). The wheel is unpacked into :data:`CODE_DIRECTORY` with the standard
    library's ``zipfile`` (a pure-Python wheel installs by unpacking, PEP 427: no pip, no
    index), and that directory goes first on the ``PYTHONPATH``, which the nanny and its worker
    process inherit: ``agc``, ``backends`` and the distribution's metadata (entry points) are
    found there before any other copy.
    """
    steps = []
    if wheel.startswith(("https://", "http://")):
        steps.append(f"{python} -c {shlex.quote(_FETCH)} {shlex.quote(wheel)} {FETCHED_WHEEL}")
        wheel = FETCHED_WHEEL
    steps.append(f"{python} -m zipfile -e {shlex.quote(wheel)} {CODE_DIRECTORY}")
    steps.append(f"export PYTHONPATH=$PWD/{CODE_DIRECTORY}:$PYTHONPATH")
    return steps


#: Seconds ``dirac-wms-job-status`` may take when the errors ask it for the jobs' states.
STATUS_TIMEOUT = 30.0
#: Values of DIRAC's status fields that say nothing (left out of a job's state).
_NO_VALUE = (None, "", "Unknown", "None", "ANY")
_STATUS_LINE = re.compile(r"^\s*JobID\s*=\s*(?P<job_id>\d+)\s+(?P<fields>.*)$")
_STATUS_FIELD = re.compile(r"(?P<key>\w+)=(?P<value>[^;]*)(?:;|$)")


def describe_job_status(fields: Mapping[str, str]) -> str:
    """One job's DIRAC status fields in words: ``Waiting (Pilot Agent Submission)``,
    ``Failed (Application Finished With Errors; Exited With Status 1) at LCG.RAL-LCG2.uk``."""
    state = fields.get("Status") or "Unknown"
    details = [
        v
        for v in (fields.get("MinorStatus"), fields.get("ApplicationStatus"))
        if v not in _NO_VALUE
    ]
    if details:
        state += f" ({'; '.join(details)})"
    site = fields.get("Site")
    if site not in _NO_VALUE:
        state += f" at {site}"
    return state


def parse_job_status(text: str) -> dict[str, str]:
    """``{job id: state}`` from the output of ``dirac-wms-job-status ID...``: one line per job
    DIRAC knows, ``JobID=N Key=value; Key=value; ...`` (its ``Status``, ``MinorStatus``,
    ``ApplicationStatus`` and ``Site``); ids it does not know are not listed."""
    states = {}
    for line in text.splitlines():
        match = _STATUS_LINE.match(line)
        if match is None:
            continue
        fields = {m["key"]: m["value"].strip() for m in _STATUS_FIELD.finditer(match["fields"])}
        if "Status" in fields:
            states[match["job_id"]] = describe_job_status(fields)
    return states


class DiracTransport(Protocol):
    """What :class:`DiracJob` and :class:`DiracBackend` ask of a transport."""

    async def input_sandbox(self, files: Sequence[str]) -> list[str]:
        """The ``InputSandbox`` entries that bring these local files to a job (into its
        working directory, under their own names)."""
        ...

    async def submit_job(self, jdl: str) -> str:
        """Submit one job of this JDL text; its id."""
        ...

    async def kill_job(self, job_id: str) -> None:
        """Kill the job (one that already ended or is unknown is no error)."""
        ...

    def job_states(
        self, job_ids: Sequence[str], timeout: float = STATUS_TIMEOUT
    ) -> dict[str, str] | None:
        """DIRAC's state of each job it knows, in words; None if it cannot be asked."""
        ...

    async def aclose(self) -> None:
        """Kill the jobs submitted and not killed yet; release what the transport holds."""
        ...


class DiracCLITransport:
    """Submit / kill / status with the DIRAC client commands (or stand-ins of them)."""

    name = "cli"
    job_id_regexp = r"JobID\s*=\s*(?P<job_id>\d+)"

    def __init__(
        self,
        submit_command: str = "dirac-wms-job-submit",
        kill_command: str = "dirac-wms-job-kill",
        status_command: str = "dirac-wms-job-status",
    ):
        self.submit_command = submit_command
        self.kill_command = kill_command
        self.status_command = status_command
        self._lock = threading.Lock()
        self._alive: dict[str, None] = {}  # submitted and not killed, in submission order

    @classmethod
    def from_profile(
        cls, section: Mapping[str, Any], source: str = "<inline>"
    ) -> DiracCLITransport:
        """The commands of a profile's ``dirac`` section (``submit_command``...)."""
        keys = ("submit_command", "kill_command", "status_command")
        return cls(**{k: section[k] for k in keys if section.get(k)})

    async def submit(self, jdl_file: str) -> str:
        out = await Job._call(shlex.split(self.submit_command) + [jdl_file])
        match = re.search(self.job_id_regexp, out)
        if match is None:
            raise RuntimeError(f"no job id in the output of {self.submit_command}: {out!r}")
        return match.group("job_id")

    async def kill(self, job_id: str) -> None:
        with suppress(RuntimeError):  # already finished or gone
            await Job._call(shlex.split(self.kill_command) + [job_id])

    async def status(self, job_id: str) -> str:
        """DIRAC's status line of the job, e.g. ``JobID=12 Status=Running; ...``."""
        return (await Job._call(shlex.split(self.status_command) + [job_id])).strip()

    async def input_sandbox(self, files: Sequence[str]) -> list[str]:
        """The files themselves: ``dirac-wms-job-submit`` uploads the local files a JDL lists
        (and refuses the job when one is missing)."""
        return list(files)

    async def submit_job(self, jdl: str) -> str:
        """Submit the JDL text (written to a temporary ``.jdl`` file); the job's id."""
        with tmpfile(extension="jdl") as fn:
            Path(fn).write_text(jdl)
            job_id = await self.submit(fn)
        with self._lock:
            self._alive[job_id] = None
        return job_id

    async def kill_job(self, job_id: str) -> None:
        await self.kill(job_id)
        with self._lock:
            self._alive.pop(job_id, None)

    def alive(self) -> list[str]:
        """Ids of the jobs this transport submitted and has not killed."""
        with self._lock:
            return list(self._alive)

    async def aclose(self) -> None:
        for job_id in self.alive():
            await self.kill_job(job_id)

    def job_states(
        self, job_ids: Sequence[str], timeout: float = STATUS_TIMEOUT
    ) -> dict[str, str] | None:
        """DIRAC's state of each job (:func:`parse_job_status`), from one call; None when the
        command fails (no proxy, DIRAC unreachable) or takes longer than ``timeout``."""
        try:
            out = subprocess.run(
                [*shlex.split(self.status_command), *job_ids],
                capture_output=True,
                text=True,
                timeout=timeout,
            )
        except (OSError, subprocess.TimeoutExpired):
            return None
        if out.returncode != 0:
            return None
        return parse_job_status(out.stdout)


#: Transport name -> ``module:class`` (imported when a profile picks it with
#: ``dirac.transport``); each class has ``from_profile(dirac section, profile source)``.
TRANSPORTS: dict[str, str] = {
    "cli": "backends.dirac:DiracCLITransport",
    "diracx": "backends.diracx:DiracXTransport",
}


def make_transport(section: Mapping[str, Any], source: str = "<inline>") -> DiracTransport:
    """The transport a profile's ``dirac`` section asks for (``transport``, default cli),
    with its options (``dirac.diracx`` for DiracX, the ``*_command`` keys for the cli)."""
    name = section.get("transport", "cli")
    module, _, attr = TRANSPORTS[name].partition(":")
    cls = getattr(importlib.import_module(module), attr)
    options = (section.get(name) or {}) if name != "cli" else section
    return cls.from_profile(options, source)


def new_job_group() -> str:
    """A JobGroup for the jobs of one run: ``agc-YYYYmmdd-HHMMSS-<6 hex>`` (26 characters;
    DIRAC's JobDB keeps 32)."""
    return f"agc-{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(3)}"


class DiracJob(RecordsSubmitError, Job):
    """One Dask worker as one DIRAC job; :meth:`job_script` is its JDL."""

    config_name = "dirac"  # type: ignore[assignment]  # None in dask-jobqueue's base

    def __init__(
        self,
        scheduler=None,
        name=None,
        *,
        site: str | None = None,
        sites: Sequence[str] = (),
        banned_sites: Sequence[str] = (),
        owner_group: str | None = None,
        job_name: str | None = None,
        job_group: str | None = None,
        cpu_time: int | None = None,
        tags: Sequence[str] = (),
        platform: str | None = None,
        jdl_extra: Mapping[str, Any] | None = None,
        transport: DiracTransport | None = None,
        input_sandbox: Sequence[str] = (),
        harness_setup: Sequence[str] = (),
        **kwargs,
    ):
        if site:
            # the worker says where it runs: its name, and a Dask resource for placement
            if name is not None and not str(name).endswith(f"@{site}"):
                name = f"{name}@{site}"
            extra = kwargs.get("worker_extra_args")
            if extra is None:
                extra = dask.config.get(f"jobqueue.{self.config_name}.worker-extra-args") or []
            kwargs["worker_extra_args"] = with_resource(extra, site_resource(site))
        super().__init__(scheduler=scheduler, name=name, **kwargs)
        # the setup lines, the harness's and the worker are one /bin/sh -c command ('&&': DIRAC
        # cuts at ';')
        self._command_template = " && ".join(
            [*(self._job_script_prologue or []), *harness_setup, self._command_template]
        )
        self.site = site
        self.sites = list(sites)
        self.banned_sites = list(banned_sites)
        self.owner_group = owner_group
        self.dirac_job_name = job_name or f"agc-dask-{name}"
        self.job_group = job_group
        self.cpu_time = cpu_time
        self.tags = list(tags)
        self.platform = platform
        self.jdl_extra = dict(jdl_extra or {})
        self.transport: DiracTransport = transport or DiracCLITransport()
        self.input_sandbox = [str(f) for f in input_sandbox]
        self._check_jdl_strings()

    def _check_jdl_strings(self) -> None:
        """Refuse attribute values that DIRAC would read differently (:data:`DIRAC_UNSAFE`),
        and InputSandbox files whose names DIRAC's client would cut (it splits the list at
        blanks and drops commas)."""
        attributes = [("JobName", self.dirac_job_name), *self.jdl_attributes().items()]
        for key, value in [*attributes, ("InputSandbox", self.input_sandbox)]:
            for v in value if isinstance(value, list | tuple) else [value]:
                if isinstance(v, str) and DIRAC_UNSAFE.search(v):
                    raise ValueError(
                        f"JDL attribute {key} = {v!r}: DIRAC's JDL reader alters "
                        'the characters " ; \\ [ ] { } and newlines'
                    )
        for path in self.input_sandbox:
            if re.search(r"[\s,]", path):
                raise ValueError(
                    f"InputSandbox file {path!r}: DIRAC's client splits the InputSandbox at "
                    "blanks and drops commas; use a path without them (TMPDIR)"
                )

    def jdl_attributes(self) -> dict[str, Any]:
        """The requirement attributes of the JDL, in order."""
        attrs: dict[str, Any] = {}
        if self.job_group:
            attrs["JobGroup"] = self.job_group
        if self.owner_group:
            attrs["OwnerGroup"] = self.owner_group
        if self.cpu_time:
            attrs["CPUTime"] = int(self.cpu_time)
        attrs["NumberOfProcessors"] = int(self.worker_cores)
        ram_mb = math.ceil(self.worker_memory / 2**20)
        attrs["MinRAM"] = ram_mb
        attrs["MaxRAM"] = ram_mb
        if self.site:
            attrs["Site"] = self.site
        elif self.sites:
            attrs["Site"] = self.sites
        if self.banned_sites:
            attrs["BannedSites"] = self.banned_sites
        if self.tags:
            attrs["Tags"] = self.tags
        if self.platform:
            attrs["Platform"] = self.platform
        attrs.update(self.jdl_extra)
        return attrs

    def job_script(self, input_sandbox: Sequence[str] | None = None) -> str:
        """The JDL; its ``InputSandbox`` lists ``input_sandbox`` (default: the job's local
        files, as ``dirac-wms-job-submit`` takes them)."""
        sandbox = list(self.input_sandbox if input_sandbox is None else input_sandbox)
        attributes = {"InputSandbox": sandbox} if sandbox else {}
        attributes.update(self.jdl_attributes())
        requirements = "\n".join(f"  {k} = {jdl_value(v)};" for k, v in attributes.items())
        return JDL_TEMPLATE.format(
            job_name=jdl_value(self.dirac_job_name),
            arguments=jdl_value(
                jdl_arguments(f"touch {WATCHDOG_FILE} && {self._command_template}")
            ),
            requirements=requirements,
        )

    async def submit_and_start(self):
        sandbox = []
        if self.input_sandbox:  # the transport's entries for the local files (DiracX uploads)
            sandbox = await self.transport.input_sandbox(self.input_sandbox)
        self.job_id = await self.transport.submit_job(self.job_script(sandbox))
        await ProcessInterface.start(self)

    async def close(self):
        if self.job_id:
            await self.transport.kill_job(self.job_id)


class DiracCluster(JobQueueCluster):
    """Dask workers as DIRAC jobs; ``site_counts`` spreads them over sites ({site: n}).

    Closing it kills every job its transport submitted and has not killed (also those that
    dask-jobqueue forgot after their worker left)."""

    job_cls = DiracJob

    def __init__(
        self,
        *args,
        site_counts: Mapping[str, int] | None = None,
        on_close: Callable[[], None] | None = None,
        **kwargs,
    ):
        self.site_counts = dict(site_counts or {})
        self._on_close = on_close
        super().__init__(*args, **kwargs)

    async def _close(self):
        try:
            await super()._close()
        finally:
            try:
                transport = getattr(self, "_job_kwargs", {}).get("transport")
                if transport is not None:
                    await transport.aclose()
            finally:
                if self._on_close is not None:
                    self._on_close()

    def new_worker_spec(self):
        """The next worker, placed at the first site still short of its count and named after
        it (``DiracCluster-3@LCG.RAL-LCG2.uk``: the Dask worker's name, and the key the
        cluster knows it by)."""
        spec = super().new_worker_spec()
        if not self.site_counts:
            return spec
        used = Counter(s["options"].get("site") for s in self.worker_spec.values())
        site = next((s for s, n in self.site_counts.items() if used[s] < n), None)
        if site is None:  # more workers than the plan: DIRAC picks among the sites
            return spec
        taken = {str(n).partition("@")[0] for n in self.worker_spec}
        while (name := self._new_worker_name(self._i)) in taken:
            self._i += 1
        ((_, s),) = spec.items()
        return {f"{name}@{site}": {**s, "options": {**s["options"], "site": site}}}


def apportion(weights: Mapping[str, int], total: int) -> dict[str, int]:
    """``total`` workers split over the sites in the ratio of ``weights`` (largest remainder:
    each site its whole share, the workers left one each to the largest fractions, ties in the
    given order). With at least as many workers as sites, every site gets one (taken from the
    site with the most); sites left with none are left out. ``{A: 1, B: 9}`` for 20 workers:
    ``{A: 2, B: 18}``."""
    if total <= 0 or not weights:
        return {}
    whole = sum(weights.values())
    quotas = {s: total * n / whole for s, n in weights.items()}
    counts = {s: math.floor(q) for s, q in quotas.items()}
    left = total - sum(counts.values())
    for s in sorted(quotas, key=lambda s: -(quotas[s] - counts[s]))[:left]:
        counts[s] += 1
    if total >= len(weights):
        for s in [s for s, n in counts.items() if n == 0]:
            donor = max(counts, key=lambda d: (counts[d], -list(counts).index(d)))
            counts[donor] -= 1
            counts[s] = 1
    return {s: n for s, n in counts.items() if n > 0}


#: Default ``dirac.locality_wait``: seconds a chunk waits for a worker at its file's sites.
DEFAULT_LOCALITY_WAIT = 60.0

#: What a DIRAC site name may hold (it becomes a Dask resource ``site-<name>`` and part of
#: the worker's name on its command line).
SITE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


def site_resource(site: str) -> str:
    """The Dask resource a worker at ``site`` advertises (``site-LCG.RAL-LCG2.uk``)."""
    return f"site-{site}"


def with_resource(args: Sequence[Any], name: str, amount: float = 1) -> list[str]:
    """``dask worker`` arguments with the resource ``name=amount`` added to what they
    advertise: joined to their (last, the one ``dask worker`` reads) ``--resources``, or as a
    ``--resources`` of its own where they have none."""
    args = [str(a) for a in args]
    pair = f"{name}={amount:g}"
    for i in reversed(range(len(args))):
        if args[i] == "--resources" and i + 1 < len(args):
            return [*args[: i + 1], f"{args[i + 1]},{pair}", *args[i + 2 :]]
        if args[i].startswith("--resources=") and len(args[i].split()) == 1:
            return [*args[:i], f"{args[i]},{pair}", *args[i + 1 :]]
        found = list(re.finditer(r"--resources(?:=|\s+)(\S+)", args[i]))
        if found:  # several words in one argument (the shell splits them)
            at = found[-1].end(1)
            return [*args[:i], f"{args[i][:at]},{pair}{args[i][at:]}", *args[i + 1 :]]
    return [*args, "--resources", pair]


class DiracBackend(JobQueueBackend):
    """Dask workers as DIRAC jobs (profile section ``dirac``)."""

    name = "dirac"
    description = "DIRAC grid jobs running Dask workers (JDL; multi-site worker counts)"
    cluster_cls = DiracCluster
    example_profile = "dirac-gridpp"

    _transport: DiracTransport | None = None
    _wheel_dir: weakref.finalize | None = None  # removes the wheel's directory
    _wheel: Path | None = None

    def check(self) -> None:
        self.transport()  # a transport's own options (dirac.diracx.url) checked here
        if self.code() == CODE_SANDBOX and "InputSandbox" in (
            self.profile.section("dirac").get("jdl") or {}
        ):
            raise ProfileError(
                f"profile {self.profile.source}: dirac.jdl.InputSandbox: with dirac.code: "
                "sandbox the InputSandbox carries the harness wheel; leave InputSandbox out of "
                "dirac.jdl, or set dirac.code to installed or {url: ...}"
            )
        for site in self.profile.section("dirac").get("sites") or []:
            if not SITE_NAME.match(str(site)):
                raise ProfileError(
                    f"profile {self.profile.source}: dirac.sites: {site!r} is not a DIRAC site "
                    "name such as LCG.RAL-LCG2.uk (letters, digits, '.', '-', '_')"
                )
        s = self.profile.section("scheduler")
        if not s.get("contact_address") and s.get("host", "127.0.0.1") in (
            "127.0.0.1",
            "localhost",
        ):
            log.warning(
                "profile %s: the scheduler listens on 127.0.0.1 with no "
                "scheduler.contact_address: only jobs on this machine (stand-ins) "
                "can reach it",
                self.profile.source,
            )

    def site_counts(self) -> dict[str, int]:
        """Workers per site for ``jobs`` workers: the profile's counts, or, for another number
        of workers (``--workers``), the profile's ratio kept (:func:`apportion`)."""
        sites = self.profile.section("dirac").get("sites")
        if not isinstance(sites, Mapping):
            return {}
        planned = {s: n for s, n in sites.items() if n > 0}
        if self.jobs == sum(planned.values()):
            return planned
        return apportion(planned or dict.fromkeys(sites, 1), self.jobs)

    def locality_wait(self) -> float:
        """Seconds a chunk whose file has replica sites waits for a worker of those sites
        before it may run anywhere (``dirac.locality_wait``; 0: no placement by site)."""
        return float(self.profile.section("dirac").get("locality_wait", DEFAULT_LOCALITY_WAIT))

    def start(self, tasks: int | None = None):
        executor = super().start(tasks)
        executor.locality_wait = self.locality_wait()
        return executor

    def code(self) -> str | Mapping[str, str]:
        """``dirac.code``: how the harness reaches the workers of the jobs. ``sandbox`` (the
        default without ``worker.container``): :meth:`harness_wheel` in each job's
        InputSandbox; ``installed`` (the default with a container: the image of containers/
        has it): nothing; ``{url: ...}``: a wheel the jobs fetch (https) or find (/cvmfs)."""
        code = self.profile.section("dirac").get("code")
        if code is None:
            return CODE_INSTALLED if self.profile.worker.get("container") else CODE_SANDBOX
        return code

    def harness_wheel(self) -> Path:
        """The wheel of the harness this process runs (:func:`backends.harness_wheel.
        build_wheel`), packed once for the backend's jobs into a temporary directory, which
        goes when the cluster closes (or this process ends)."""
        if self._wheel is None or not self._wheel.exists():
            self.remove_harness_wheel()
            directory = tempfile.mkdtemp(prefix="agc-sandbox-")
            # also when the backend is dropped (a preview of the JDLs) or this process ends
            self._wheel_dir = weakref.finalize(self, shutil.rmtree, directory, ignore_errors=True)
            self._wheel = build_wheel(directory)
        return self._wheel

    def remove_harness_wheel(self) -> None:
        if self._wheel_dir is not None:
            self._wheel_dir()
        self._wheel_dir = self._wheel = None

    def code_kwargs(self) -> dict[str, Any]:
        """The jobs' InputSandbox and the steps that put the harness on the worker's path
        (:func:`harness_steps`), for :meth:`code`."""
        code = self.code()
        if code == CODE_INSTALLED:
            return {}
        python = self.worker_python()
        if code == CODE_SANDBOX:
            wheel = self.harness_wheel()
            return {
                "input_sandbox": [str(wheel)],
                "harness_setup": harness_steps(python, wheel.name),
            }
        assert isinstance(code, Mapping)
        return {"harness_setup": harness_steps(python, code["url"])}

    def transport(self) -> DiracTransport:
        """The profile's transport (:func:`make_transport`), one for the backend's jobs."""
        if self._transport is None:
            self._transport = make_transport(self.profile.section("dirac"), self.profile.source)
        return self._transport

    @cached_property
    def job_group(self) -> str:
        """The ``JobGroup`` of this backend's jobs (:func:`new_job_group`)."""
        return new_job_group()

    def job_states(self, job_ids: list[str]) -> dict[str, str] | None:
        """DIRAC's status of each job it knows, e.g. ``Waiting (Pilot Agent Submission)``,
        asked through the profile's transport (``dirac.status_command``, or DiracX's job
        search); None if that fails."""
        return self.transport().job_states(job_ids)

    def monitor_settings(self) -> dict[str, float]:
        """``dirac.monitor``: poll the jobs' states every ``interval`` seconds (default 60; 0:
        off), replace failed jobs and those queued over ``max_waiting`` seconds (default
        1800), at most ``max_resubmissions`` (default 3) per run."""
        m = self.profile.section("dirac").get("monitor") or {}
        return {
            "interval": float(m.get("interval", DEFAULT_MONITOR_INTERVAL)),
            "max_waiting": float(m.get("max_waiting", DEFAULT_MAX_WAITING)),
            "max_resubmissions": int(m.get("max_resubmissions", DEFAULT_MAX_RESUBMISSIONS)),
        }

    def job_kwargs(self) -> dict[str, Any]:
        d = self.profile.section("dirac")
        sites = d.get("sites") or []
        tags = list(d.get("tags", []))
        if self.profile.worker.get("gpus") and "GPU" not in tags:
            tags.append("GPU")
        return {
            "sites": list(sites),
            "banned_sites": list(d.get("banned_sites", [])),
            "owner_group": d.get("owner_group"),
            "job_name": d.get("job_name"),
            "job_group": self.job_group,
            "cpu_time": d.get("cpu_time"),
            "tags": tags,
            "platform": d.get("platform"),
            "jdl_extra": dict(d.get("jdl", {})),
            "transport": self.transport(),
            **self.code_kwargs(),
        }

    def make_cluster(self):
        return self.cluster_cls(
            scheduler_options=self.scheduler_options(),
            security=self.security(),
            site_counts=self.site_counts(),
            on_close=self.remove_harness_wheel,
            **self.protocol_kwargs(),
            **self.all_job_kwargs(),
        )

    def jdls(self) -> list[str]:
        """The JDL of every job ``start()`` would submit (per-site counts applied)."""
        plan: list[str | None] = [s for s, n in self.site_counts().items() for _ in range(n)]
        plan += [None] * (self.jobs - len(plan))
        return [self.job_script(name=f"DiracCluster-{i}", site=site) for i, site in enumerate(plan)]
