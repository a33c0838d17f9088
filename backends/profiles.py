"""Site profiles: one YAML file per site, validated against a schema before anything is submitted.

A profile says what one worker looks like (cores, memory, disk, container, environment setup),
how many workers to start, where the Dask scheduler listens and how workers reach it (contact
address, port range, TLS), and the batch-system details (SLURM partition and walltime, HTCondor
universe and submit attributes, DIRAC sites with per-site worker counts). ``--profile NAME`` picks
``backends/profiles/NAME.yaml``; ``--profile PATH`` any file. Example::

    backend: slurm
    description: single-node SLURM on this machine (CI)
    workers: 2
    worker: {cores: 1, memory: 1GB}
    scheduler: {host: 127.0.0.1}
    slurm: {partition: debug, walltime: "00:10:00"}

Every key is documented in :data:`PROFILE_SCHEMA` (``agc profiles schema`` prints it). A bad
profile raises :class:`ProfileError` naming the file and the key, e.g.
``profile site.yaml: worker.memory: required (a size such as 2GB)``.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from agc.config import MODE_SCHEMA, WORKERS_SCHEMA
from agc.errors import UserError, describe_schema_error

log = logging.getLogger(__name__)

PROFILE_DIR = Path(__file__).resolve().parent / "profiles"

_SIZE = {
    "type": "string",
    "pattern": r"^\s*\d+(\.\d+)?\s*([kKMGTP]i?B|B)\s*$",
    "x-expected": "a size such as 2GB or 1.5GiB",
}
_PORT_RANGE = {
    "type": "string",
    "pattern": r"^\d{1,5}:\d{1,5}$",
    "x-expected": "a port range LOW:HIGH such as 10000:10100",
}
_STRINGS = {"type": "array", "items": {"type": "string"}}
_DURATION = {
    "type": ["string", "number"],
    "pattern": r"^\s*\d+(\.\d+)?\s*(s|m|h|d)?\s*$",
    "minimum": 1,
    "x-expected": "seconds, or a time such as 30s, 55m or 2h",
}
_STAGE_RESOURCES = {
    "type": "object",
    "minProperties": 1,
    "propertyNames": {
        "pattern": r"^[A-Za-z_][A-Za-z0-9_.-]*$",
        "x-expected": "a Dask resource name such as CPU or GPU",
    },
    "additionalProperties": {
        "type": "number",
        "exclusiveMinimum": 0,
        "x-expected": "a positive amount such as 1",
    },
    "x-expected": "a mapping of Dask resources to amounts such as {CPU: 1}",
}
_COMMAND = {
    "type": "string",
    "minLength": 1,
    "description": "command (with options) to call instead of the batch system's "
    "own; e.g. a stand-in from backends/standins/bin",
}


def _obj(properties: dict, required: tuple[str, ...] = (), description: str = "") -> dict:
    out = {"type": "object", "additionalProperties": False, "properties": properties}
    if required:
        out["required"] = list(required)
    if description:
        out["description"] = description
    return out


#: JSON Schema of a profile. Unknown keys are errors (a typo must not be silently ignored).
PROFILE_SCHEMA: dict = _obj(
    {
        "backend": {
            "type": "string",
            "description": "backend this profile is for: slurm, htcondor, dirac, local or dask",
        },
        "description": {"type": "string", "description": "one line shown by 'agc profiles list'"},
        "workers": {
            **WORKERS_SCHEMA,
            "description": "number of batch jobs (default 1; --workers overrides; DIRAC: the "
            "sum of dirac.sites when per-site counts are given)",
        },
        "worker": _obj(
            {
                "cores": {"type": "integer", "minimum": 1, "description": "cores per job"},
                "memory": {**_SIZE, "description": "memory per job, e.g. 2GB"},
                "disk": {**_SIZE, "description": "scratch disk per job (required by HTCondor)"},
                "processes": {
                    "type": "integer",
                    "minimum": 1,
                    "description": "Dask worker processes per job (default 1); each gets "
                    "cores/processes threads",
                },
                "gpus": {"type": "integer", "minimum": 0, "description": "GPUs per job"},
                "death_timeout": {
                    "type": "number",
                    "minimum": 1,
                    "description": "seconds a worker waits for the scheduler before it "
                    "exits (default 60), so lost jobs end themselves",
                },
                "start_timeout": {
                    "type": "number",
                    "minimum": 1,
                    "description": "seconds to wait for the first worker before giving up "
                    "(default 600)",
                },
                "lost_timeout": {
                    "type": "number",
                    "minimum": 1,
                    "description": "seconds a run waits with no worker connected (all jobs "
                    "gone) before it fails naming the jobs and their logs (default 120)",
                },
                "reach_timeout": {
                    "type": "number",
                    "minimum": 0,
                    "description": "seconds the scheduler's test connection to each new "
                    "worker may take (default 10; 0: no test); a worker it cannot reach (a "
                    "firewall drops connections to it) fails the run at once, naming its "
                    "address, instead of a run that waits for results it can never fetch",
                },
                "adapt": _obj(
                    {
                        "minimum": {
                            "type": "integer",
                            "minimum": 1,
                            "description": "jobs always kept (lost or retired ones are "
                            "replaced; default 1)",
                        },
                        "maximum": {
                            "type": "integer",
                            "minimum": 1,
                            "description": "most jobs at once (default: workers / --workers)",
                        },
                    },
                    description="scale the jobs with the work (dask-jobqueue adapt) instead of "
                    "a fixed number; with a walltime, workers retire before it (lifetime)",
                ),
                "lifetime": {
                    **_DURATION,
                    "description": "a worker retires after this long, handing its work on "
                    "('dask worker --lifetime'); default with adapt and a walltime: the "
                    "walltime less min(2 min, a quarter of it)",
                },
                "lifetime_stagger": {
                    **_DURATION,
                    "description": "random spread of lifetime, so that workers do not all "
                    "retire at once ('--lifetime-stagger'); default: half the margin left "
                    "before the walltime",
                },
                "lifetime_restart": {
                    "type": "boolean",
                    "description": "restart the worker in the same job at the end of its "
                    "lifetime ('--lifetime-restart'; default false: the job ends and adapt "
                    "submits a new one)",
                },
                "port_range": {
                    **_PORT_RANGE,
                    "description": "ports the worker and its nanny listen on "
                    "(firewalled sites), e.g. 10000:10100",
                },
                "python": {
                    "type": "string",
                    "description": "python on the worker (default: this "
                    "interpreter; python3 inside a container)",
                },
                "local_directory": {"type": "string", "description": "worker scratch directory"},
                "setup": {
                    **_STRINGS,
                    "description": "shell lines run before the worker starts "
                    "(source an LCG view, export variables)",
                },
                "extra_args": {**_STRINGS, "description": "extra 'dask worker' arguments"},
                "container": _obj(
                    {
                        "image": {
                            "type": "string",
                            "description": "the worker image, with the harness and the "
                            "client's library versions (containers/), e.g. "
                            "docker://registry.example.org/agc/agc-harness:VERSION or "
                            "/cvmfs/unpacked.cern.ch/registry.example.org/agc/agc-harness:VERSION",
                        },
                        "runtime": {
                            "enum": ["apptainer", "singularity", "docker"],
                            "description": "apptainer (default) or singularity wrap the worker "
                            "command; docker is for the HTCondor docker universe",
                        },
                        "binds": {
                            **_STRINGS,
                            "description": "paths bound into the container (default ['/cvmfs'])",
                        },
                    },
                    required=("image",),
                    description="run the worker in a container",
                ),
            },
            required=("cores", "memory"),
            description="one batch job",
        ),
        "scheduler": _obj(
            {
                "host": {
                    "type": "string",
                    "description": "address the scheduler binds to (default 127.0.0.1)",
                },
                "port": {
                    "type": "integer",
                    "minimum": 0,
                    "maximum": 65535,
                    "description": "scheduler port (default 0: any free port)",
                },
                "interface": {
                    "type": "string",
                    "description": "network interface to bind instead of host",
                },
                "contact_address": {
                    "type": "string",
                    "description": "address the workers are told to "
                    "connect to, e.g. "
                    "tcp://login.site.org:8786 "
                    "(behind NAT or a proxy)",
                },
                "dashboard_address": {
                    "type": ["string", "null"],
                    "description": "e.g. ':8787' (default: no dashboard)",
                },
            },
            description="the Dask scheduler, which runs where 'agc run' runs",
        ),
        "tls": _obj(
            {
                "ca_file": {"type": "string"},
                "cert": {
                    "type": "string",
                    "description": "certificate of the scheduler and client",
                },
                "key": {"type": "string", "description": "key of the scheduler and client"},
                "worker_cert": {
                    "type": "string",
                    "description": "worker certificate (default: cert)",
                },
                "worker_key": {"type": "string", "description": "worker key (default: key)"},
                "temporary": {
                    "type": "boolean",
                    "description": "self-signed credentials made for "
                    "this run (workers must share a "
                    "filesystem with the scheduler)",
                },
            },
            description="TLS between scheduler, workers and client (tls:// protocol)",
        ),
        "relay": _obj(
            {
                "broker": {
                    "type": "string",
                    "pattern": r"^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9._-]+):\d{1,5}$",
                    "x-expected": "HOST:PORT such as agc-scheduler.example.ac.uk:8790",
                    "description": "HOST:PORT of the relay broker, as the workers and the "
                    "scheduler reach it, e.g. agc-scheduler.example.ac.uk:8790 (port 0 with "
                    "start: any free port, for workers on this machine)",
                },
                "start": {
                    "type": "boolean",
                    "description": "start a broker on this host for the run and stop it "
                    "after (default true); false: use a broker the site runs "
                    "('python -m backends.relay --listen 0.0.0.0:8790')",
                },
                "listen": {
                    "type": "string",
                    "pattern": r"^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9._-]*):\d{1,5}$",
                    "x-expected": "HOST:PORT such as 0.0.0.0:8790",
                    "description": "HOST:PORT the started broker listens on (default "
                    "0.0.0.0 and the port of broker)",
                },
            },
            required=("broker",),
            description="workers behind firewalls that drop connections to them: each worker "
            "dials the relay broker once and every connection to it (scheduler, client, "
            "other workers) is relayed over that link (relay:// addresses, "
            "backends/relay); with tls, each relayed connection is TLS end to end",
        ),
        "stages": _obj(
            {
                "read": {
                    **_STAGE_RESOURCES,
                    "description": "Dask resources of the read stage (reading a chunk of a "
                    "ROOT file), e.g. {CPU: 1}",
                },
                "analysis": {
                    **_STAGE_RESOURCES,
                    "description": "Dask resources of the analysis stage (selection and "
                    "histogram filling), e.g. {GPU: 1}",
                },
            },
            required=("read", "analysis"),
            description="Dask resources each stage of a chunk asks for, e.g. "
            "{read: {CPU: 1}, analysis: {GPU: 1}}: a stage runs only on workers that advertise "
            "them. Batch workers (slurm, htcondor, dirac) advertise GPU=worker.gpus/processes "
            "when worker.gpus is set, else CPU=cores/processes (the threads of a worker "
            "process), unless worker.extra_args has its own --resources. A profile has one "
            "kind of job, so its workers advertise one kind of resource: every stage must ask "
            "for what they advertise (a GPU job runs a CPU stage only if extra_args says so, "
            "e.g. [--resources, 'GPU=1,CPU=4']), else the profile is refused. Without stages "
            "each chunk runs all its stages in one task on any worker",
        ),
        "log_directory": {"type": "string", "description": "where job stdout/stderr go"},
        "local": _obj(
            {
                "mode": MODE_SCHEMA,
            },
            description="local backend options",
        ),
        "dask": _obj(
            {
                "scheduler_address": {
                    "type": "string",
                    "minLength": 1,
                    "description": "the running scheduler, e.g. tls://localhost:8786",
                },
                "connect_timeout": {
                    "type": "number",
                    "exclusiveMinimum": 0,
                    "description": "seconds to wait for the scheduler to answer (default 10)",
                },
                "start_timeout": {
                    "type": "number",
                    "exclusiveMinimum": 0,
                    "description": "seconds to wait for the workers (default 600)",
                },
                "tls": _obj(
                    {
                        "ca_file": {"type": "string"},
                        "cert": {"type": "string", "description": "certificate of the client"},
                        "key": {"type": "string", "description": "key of the client"},
                    },
                    description="TLS credentials of the client (tls:// scheduler)",
                ),
            },
            description="dask backend: an existing Dask cluster (no worker is started)",
        ),
        "slurm": _obj(
            {
                "partition": {"type": "string"},
                "walltime": {
                    "type": "string",
                    "pattern": r"^(\d+-)?\d+(:\d\d){0,2}$",
                    "x-expected": "a time such as 01:00:00 or 1-00:00:00",
                    "description": "job time limit",
                },
                "account": {"type": "string"},
                "directives": {
                    **_STRINGS,
                    "description": "extra '#SBATCH' directives, e.g. ['--qos=short']",
                },
                "submit_command": _COMMAND,
                "cancel_command": _COMMAND,
                "status_command": {
                    **_COMMAND,
                    "description": "command asked for the state of the jobs when they do not "
                    "connect or are lost (default squeue; called with -h -j IDS -o FORMAT)",
                },
            },
            description="SLURM (sbatch) settings",
        ),
        "htcondor": _obj(
            {
                "universe": {
                    "enum": ["vanilla", "docker", "container"],
                    "description": "vanilla (default); docker/container run worker.container."
                    "image in HTCondor's own container support",
                },
                "should_transfer_files": {"enum": ["YES", "NO", "IF_NEEDED"]},
                "submit_attributes": {
                    "type": "object",
                    "additionalProperties": {"type": ["string", "number", "boolean"]},
                    "description": "extra submit-file lines, e.g. "
                    "{'+DaskSchedulerAddress': '\"tcp://...\"', "
                    "'requirements': '...'}",
                },
                "submit_command": _COMMAND,
                "cancel_command": _COMMAND,
                "status_command": {
                    **_COMMAND,
                    "description": "command asked for the state of the jobs when they do not "
                    "connect or are lost (default condor_q; called with IDS -attributes LIST "
                    "-json), e.g. 'condor_q -name schedd.site'",
                },
                "history_command": {
                    **_COMMAND,
                    "description": "command asked for the jobs that left the queue (default "
                    "condor_history; called like status_command, with -limit and -scanlimit)",
                },
                "submit_command_extra": {
                    **_STRINGS,
                    "description": "e.g. ['-name', 'schedd.site']",
                },
                "cancel_command_extra": _STRINGS,
            },
            description="HTCondor (condor_submit) settings",
        ),
        "dirac": _obj(
            {
                "owner_group": {"type": "string", "description": "DIRAC group, e.g. gridpp_user"},
                "job_name": {"type": "string"},
                "cpu_time": {
                    "type": "integer",
                    "minimum": 1,
                    "description": "CPU time limit, seconds",
                },
                "sites": {
                    "oneOf": [
                        {"type": "array", "items": {"type": "string"}, "minItems": 1},
                        {
                            "type": "object",
                            "additionalProperties": {"type": "integer", "minimum": 0},
                            "minProperties": 1,
                        },
                    ],
                    "description": "a site list (DIRAC picks) or per-site worker counts "
                    "{site: workers >= 0} (--workers keeps their ratio); a worker of a counted "
                    "site is named NAME@SITE and advertises the Dask resource site-<SITE>=1",
                },
                "banned_sites": _STRINGS,
                "locality_wait": {
                    "type": "number",
                    "minimum": 0,
                    "description": "seconds a chunk whose file has replica sites (catalog "
                    "'sites') waits for a worker at those sites (workers of per-site counts "
                    "advertise the Dask resource site-<SITE>) before it runs on any worker; "
                    "0: chunks are not placed by site (default 60)",
                },
                "monitor": _obj(
                    {
                        "interval": {
                            "type": "number",
                            "minimum": 0,
                            "description": "seconds between polls of the jobs' states while "
                            "a run goes on (through the transport; a failing poll is logged "
                            "and retried at the next one); 0: no polling, no replacement "
                            "(default 60)",
                        },
                        "max_waiting": {
                            "type": "number",
                            "exclusiveMinimum": 0,
                            "description": "seconds a job may stay Waiting/Received/Checking/"
                            "Matched before it is killed and replaced by a new job at the "
                            "same site (default 1800)",
                        },
                        "max_resubmissions": {
                            "type": "integer",
                            "minimum": 0,
                            "description": "jobs replaced per run at most (Failed, Killed, "
                            "Stalled or Deleted without agc closing them, or queued too long); "
                            "past it a job is logged and left, and the run goes on with the "
                            "others (default 3)",
                        },
                    },
                    description="job monitoring: every job's id, site and final status go to "
                    "the run's summary.json and runs.csv ('jobs'), replacements to "
                    "'jobs_resubmitted'",
                ),
                "tags": {**_STRINGS, "description": "e.g. ['GPU'] for GPU stages"},
                "platform": {"type": "string"},
                "jdl": {
                    "type": "object",
                    "additionalProperties": {"type": ["string", "number"]},
                    "description": "extra JDL attributes",
                },
                "transport": {
                    "enum": ["cli", "diracx"],
                    "description": "how jobs are submitted, killed and asked for their state: "
                    "'cli' (the dirac-wms-* commands, with a proxy; default) or 'diracx' "
                    "(DiracX's REST API with the token of `dirac login`; see dirac.diracx)",
                },
                "diracx": _obj(
                    {
                        "url": {
                            "type": "string",
                            "pattern": r"^https?://\S+$",
                            "x-expected": "a URL such as https://diracx.example.org",
                            "description": "the DiracX server (default: $DIRACX_URL, as for "
                            "the dirac command)",
                        },
                        "token_file": {
                            "type": "string",
                            "minLength": 1,
                            "description": "file with the access token: the credentials file "
                            "`dirac login` writes (JSON with access_token; default "
                            "$DIRACX_CREDENTIALS_PATH, else ~/.cache/diracx/credentials.json) "
                            "or a file holding the bare token",
                        },
                        "ca_path": {
                            "type": "string",
                            "minLength": 1,
                            "description": "CA bundle file or directory of CA certificates to "
                            "check the server's certificate with (default: $DIRACX_CA_PATH, "
                            "else the system's)",
                        },
                        "timeout": {
                            "type": "number",
                            "exclusiveMinimum": 0,
                            "description": "seconds each request to DiracX may take (default 30)",
                        },
                    },
                    description="DiracX settings, used with dirac.transport: diracx",
                ),
                "code": {
                    "oneOf": [
                        {"enum": ["sandbox", "installed"]},
                        _obj(
                            {
                                "url": {
                                    "type": "string",
                                    "pattern": r"^(https?://|/)\S+$",
                                    "description": "the harness wheel: an https:// URL the "
                                    "jobs download it from, or an absolute path on the worker "
                                    "nodes (/cvmfs/...)",
                                },
                            },
                            required=("url",),
                        ),
                    ],
                    "x-expected": "sandbox, installed or {url: WHEEL} with WHEEL an https:// "
                    "URL or an absolute path (/cvmfs/...) of the harness wheel",
                    "description": "how the harness (agc, backends) reaches each job's worker. "
                    "'sandbox' (default without worker.container): the harness this process "
                    "runs, packed as a wheel when the cluster starts, goes in the JDL's "
                    "InputSandbox and the job unpacks it onto its PYTHONPATH before the worker "
                    "starts (the worker's Python needs the analysis libraries: a site's LCG view "
                    "through worker.setup, or an image); 'installed' (default with "
                    "worker.container): nothing is shipped, the worker's Python has the harness "
                    "(the image of containers/, or a site installation); {url: WHEEL}: the job "
                    "downloads (https://) or reads (/cvmfs/...) that wheel of the harness, e.g. "
                    "agc_harness-0.1.0-py3-none-any.whl as 'python -m backends.harness_wheel "
                    "DIR' writes it, and unpacks it the same way. With dirac.transport: diracx "
                    "the sandbox is uploaded to DiracX's sandbox store",
                },
                "submit_command": _COMMAND,
                "kill_command": _COMMAND,
                "status_command": {
                    **_COMMAND,
                    "description": "command asked for the state of the jobs when they do not "
                    "connect or are lost (default dirac-wms-job-status; called with the ids)",
                },
            },
            description="DIRAC (JDL) settings",
        ),
    },
    required=("backend",),
)

# Backend-specific requirements that the plain schema above cannot say.
PROFILE_SCHEMA["allOf"] = [
    {  # every backend but dask (an existing cluster) starts workers: what one looks like
        "if": {"properties": {"backend": {"const": "dask"}}, "required": ["backend"]},
        "else": {"required": ["worker"]},
    },
    {
        "if": {"properties": {"backend": {"const": "htcondor"}}},
        "then": {"properties": {"worker": {"required": ["disk"]}}},
    },
]


class ProfileError(UserError, ValueError):
    """The profile file is missing, not YAML, or does not match the schema."""


@dataclass(frozen=True)
class Profile:
    """A validated profile. ``data`` is the YAML content; ``source`` the file it came from."""

    name: str
    source: str
    data: Mapping[str, Any] = field(repr=False)

    @property
    def backend(self) -> str:
        return self.data["backend"]

    @property
    def description(self) -> str:
        return self.data.get("description", "")

    @property
    def workers(self) -> int:
        sites = self.section("dirac").get("sites")
        if isinstance(sites, Mapping) and "workers" not in self.data:
            return max(sum(sites.values()), 1)
        return int(self.data.get("workers", 1))

    @property
    def worker(self) -> Mapping[str, Any]:
        """The ``worker`` section (required but for ``backend: dask``, empty there)."""
        return self.data.get("worker") or {}

    def section(self, key: str) -> Mapping[str, Any]:
        """A top-level mapping (``scheduler``, ``tls``, ``slurm``...), empty when absent."""
        return self.data.get(key) or {}


def shipped_profiles() -> dict[str, Path]:
    """Profile name -> file, for the profiles shipped in ``backends/profiles/``."""
    return {p.stem: p for p in sorted(PROFILE_DIR.glob("*.yaml"))}


def resolve(ref: str | Path) -> Path:
    """The file of ``--profile FILE_OR_NAME``: an existing path, else a shipped profile name."""
    path = Path(ref).expanduser()
    if path.is_file():
        return path
    shipped = shipped_profiles()
    if str(ref) in shipped:
        return shipped[str(ref)]
    raise ProfileError(
        f"--profile {ref}: no such file and no shipped profile of that name; "
        f"shipped: {', '.join(shipped) or '(none)'}"
    )


def load_profile(ref: str | Path | Mapping[str, Any], backend: str | None = None) -> Profile:
    """Read and validate a profile (a file, a shipped name, or an already-loaded mapping).

    Args:
        ref: ``--profile`` value or a mapping with the profile content.
        backend: when given, the profile must be for this backend.

    Returns:
        The validated :class:`Profile`.

    Raises:
        ProfileError: naming the file and the offending key.
    """
    if isinstance(ref, Mapping):
        name, source, data = "<inline>", "<inline>", copy.deepcopy(dict(ref))
    else:
        path = resolve(ref)
        name, source = path.stem, str(path)
        try:
            data = yaml.safe_load(path.read_text())
        except yaml.YAMLError as err:
            raise ProfileError(f"profile {source}: not valid YAML: {err}") from None
    validate(data, source)
    profile = Profile(name, source, data)
    if backend is not None and profile.backend != backend:
        raise ProfileError(
            f"profile {source}: is for backend {profile.backend!r}, not "
            f"{backend!r}; use --backend {profile.backend} or another profile"
        )
    return profile


def validate(data: Any, source: str = "<inline>") -> None:
    """Raise :class:`ProfileError` for the first schema violation, naming its key."""
    import jsonschema

    if not isinstance(data, Mapping):
        raise ProfileError(
            f"profile {source}: expected a mapping of keys, got {type(data).__name__}"
        )
    validator = jsonschema.Draft202012Validator(PROFILE_SCHEMA)
    errors = sorted(
        validator.iter_errors(data),
        key=lambda e: (len(e.absolute_path), [str(p) for p in e.absolute_path]),
    )
    if errors:
        raise ProfileError(f"profile {source}: {describe_schema_error(errors[0], PROFILE_SCHEMA)}")
