"""``RunConfig``: everything that defines a run, validated when it is made.

One schema, :data:`RUN_SCHEMA`, says what every option may be. It is the only place that does:

* ``RunConfig(...)`` checks its values against it at construction, before any catalog, profile
  or cluster work, and a bad value raises :class:`ConfigError` naming the key and what is
  allowed (``chunksize=-5: -5 is less than the minimum 1``);
* the ``agc run`` options take their choices and help from it (:mod:`agc.cli`);
* the points of ``benchmarks/scenarios.yaml`` are run options, checked the same way
  (:mod:`agc.bench`);
* the run-level keys of site profiles (``workers``, ``local.mode``) use its definitions
  (:mod:`backends.profiles`).

A ``RunConfig`` is frozen and hashable: it can key a dict of results, and
``dataclasses.replace(config, chunksize=...)`` makes a checked variant.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from agc import vocabulary
from agc.constants import DEFAULT_SEED
from agc.errors import UserError, describe_schema_error

#: ``catalog`` values that are not paths: the default synthetic dataset, the real AGC inputs.
SYNTHETIC_CATALOG = "synthetic"
REAL_CATALOG = "agc"

#: Execution engines (:mod:`agc.engines` implements exactly these).
ENGINES: dict[str, str] = {
    "chunked": "one read+analyse task per chunk, on any backend",
    "dask-awkward": "an uproot.dask collection (a partition per chunk) and analysis tasks in one "
    "Dask graph; needs --mode dask or a batch backend",
    "coffea": "coffea's processor.Runner on NanoEvents, the plan's chunks as its work items, "
    "with the executor of the backend: IterativeExecutor (--mode inprocess), FuturesExecutor "
    "(--mode processes), DaskExecutor (--mode dask, batch backends)",
}
#: How the local backend runs (:mod:`backends.local`).
LOCAL_MODES: dict[str, str] = {
    "inprocess": "every chunk in this process, one after the other",
    "processes": "a pool of forked worker processes (default)",
    "dask": "a Dask LocalCluster of worker processes",
}
#: ``device``: where the analysis of each chunk runs (the ``gpu`` backend's device path).
DEVICE_CHOICES: dict[str, str] = {
    "cuda": "a CUDA GPU through cupy (--backend gpu; fails at once without cupy or a GPU)",
    "cpu": "the same device-path code on numpy, for machines without a GPU",
}
#: ``data_lake``: keep run outputs in the cache store too, only there, or not.
DATA_LAKE_MODES: dict[str, str] = {
    "copy": "outputs in the run directory and, with a cache store, in the store too",
    "only": "outputs only in the store (the default store without --cache); fetch with "
    "'agc fetch RUN_ID'",
    "off": "never in the store",
}

#: What each choice of these options means (``agc run --help``).
CHOICE_DESCRIPTIONS: dict[str, dict[str, str]] = {
    "engine": ENGINES,
    "mode": LOCAL_MODES,
    "data_lake": DATA_LAKE_MODES,
    "device": DEVICE_CHOICES,
}

#: Definitions shared with site profiles (``workers`` and ``local.mode`` of a profile).
WORKERS_SCHEMA: dict[str, Any] = {
    "type": "integer",
    "minimum": 1,
    "description": "number of workers (local: processes; batch backends: jobs)",
}
MODE_SCHEMA: dict[str, Any] = {"enum": list(LOCAL_MODES), "description": "local backend mode"}


def _nullable(schema: Mapping[str, Any]) -> dict[str, Any]:
    if "enum" in schema:
        return {**schema, "enum": [*schema["enum"], None]}
    return {**schema, "type": [schema["type"], "null"]}


_PATH = {"type": "string", "minLength": 1}

#: JSON Schema of the run options (one property per :class:`RunConfig` field).
RUN_SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        # physics
        "catalog": {
            **_PATH,
            "description": "'synthetic' (the default dataset, generated once), 'agc' (the real "
            "AGC inputs), or the path of a catalog.json",
        },
        "n_files": {
            "type": "integer",
            "anyOf": [{"const": -1}, {"minimum": 1}],
            "x-expected": "a positive number of files per sample, or -1 for all",
            "description": "first N files per sample (-1: all)",
        },
        "samples": {
            "type": ["array", "null"],
            "items": {
                "type": "string",
                "pattern": r"^\w+__\w+$",
                "x-expected": "a fileset key such as ttbar__nominal",
            },
            "minItems": 1,
            "uniqueItems": True,
            "description": "only these fileset keys, e.g. ttbar__nominal wjets__nominal",
        },
        "systematics": {"type": "boolean", "description": "fill the systematic variations"},
        "seed": {
            "type": "integer",
            "minimum": 0,
            "maximum": 2**64 - 1,
            "description": "seed of the pt_res_up smear",
        },
        "ml": {
            **_nullable(_PATH),
            "description": "run the AGC's ML step (jet-parton assignment BDT) with the XGBoost "
            "models model_even.json and model_odd.json of this directory: 20 feature "
            "histograms per sample and variation in histograms_ml.root",
        },
        # where the inputs are read from
        "eos": {"type": "boolean", "description": "read the real inputs from CERN EOS"},
        "xcache": {
            "type": ["string", "null"],
            "pattern": r"^root://[^/]+",
            "x-expected": "an XRootD URL such as root://host:1094",
            "description": "read every input through this XCache",
        },
        "mirror": {
            **_nullable(_PATH),
            "description": "local directory mirroring the /store/... paths",
        },
        "read_retries": {
            "type": "integer",
            "minimum": 0,
            "maximum": 10,
            "description": "retries of a remote read that lost its connection (back-off 1, "
            "2, 4 ... s)",
        },
        "skip_bad_files": {
            "type": "boolean",
            "description": "finish without chunks whose file cannot be read (a partial result, "
            "marked so) instead of failing",
        },
        # I/O-only mode (spec §9): read, do nothing else
        "io_only": {"type": "boolean", "description": "read the branches and do nothing else"},
        "io_branches": {
            "enum": [vocabulary.ANALYSIS_BRANCH_SET, *vocabulary.IO_BRANCH_SETS],
            "description": "with io_only: 'analysis' or a reference IO_FILE_PERCENT set",
        },
        # execution
        "backend": {**_PATH, "description": "backend name (see 'agc backends')"},
        "workers": {**_nullable(WORKERS_SCHEMA), "description": "workers (default: cores)"},
        "mode": {
            **_nullable(MODE_SCHEMA),
            "description": "how the local backend runs",
        },
        "profile": {
            **_nullable(_PATH),
            "description": "site profile (YAML file or shipped name) for the backend",
        },
        "scheduler_address": {
            "type": ["string", "null"],
            "pattern": r"^[a-z]+://[^/]+",
            "x-expected": "a Dask scheduler address such as tls://localhost:8786",
            "description": "join this existing Dask scheduler (backend dask; e.g. coffea-casa's "
            "tls://localhost:8786)",
        },
        "device": {
            "enum": [None, *DEVICE_CHOICES],
            "description": "the device path of the analysis (histograms filled on the device); "
            "default with --backend gpu: cuda; without it the CPU path",
        },
        "backend_options": {
            "type": "object",
            "description": "further keyword arguments of a site's own backend class",
        },
        "engine": {"enum": list(ENGINES), "description": "how chunks become tasks"},
        "chunksize": {"type": "integer", "minimum": 1, "description": "events per chunk"},
        # caching
        "cache": {
            **_nullable(_PATH),
            "description": "step-level cache store: a directory, root:// or s3:// URL",
        },
        "data_lake": {
            "enum": list(DATA_LAKE_MODES),
            "description": "keep run outputs in the store",
        },
        # outputs
        "fit": {"type": "boolean", "description": "cabinetry/pyhf fit and plots at the end"},
        "output_dir": {
            **_nullable(_PATH),
            "description": "run directory (default agc-output/<run-id>)",
        },
        "label": {"type": "string", "description": "free text kept with the run's records"},
    },
}

#: Fields that name a backend option rather than something of the run; with the backend's own
#: ``backend_options`` they are the backend's keyword arguments.
BACKEND_FIELDS: tuple[str, ...] = ("workers", "mode", "profile", "scheduler_address")


class ConfigError(UserError, ValueError):
    """A run option with a value that is not allowed: ``key``, ``value`` and ``problem``."""

    def __init__(self, key: str, value: Any, problem: str) -> None:
        super().__init__(f"{key}={value!r}: {problem}")
        self.key, self.value, self.problem = key, value, problem


class FrozenOptions(Mapping[str, Any]):
    """A read-only, hashable mapping (the ``backend_options`` of a frozen config)."""

    __slots__ = ("_items",)

    def __init__(self, items: Mapping[str, Any] | None = None) -> None:
        self._items = dict(items or {})

    def __getitem__(self, key: str) -> Any:
        return self._items[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)

    def __hash__(self) -> int:
        return hash(tuple(sorted(self._items.items())))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Mapping) and dict(self) == dict(other)

    def __repr__(self) -> str:
        return repr(self._items)


@dataclass(frozen=True)
class RunConfig:
    """Everything that defines a run (the defaults are those of ``agc run``).

    Physics options first, then inputs, execution, caching and outputs; :data:`RUN_SCHEMA`
    describes each key. Raises :class:`ConfigError` for a bad value.
    """

    catalog: str = SYNTHETIC_CATALOG
    n_files: int = -1
    samples: tuple[str, ...] | None = None
    systematics: bool = True
    seed: int = DEFAULT_SEED
    ml: str | None = None
    eos: bool = False
    xcache: str | None = None
    mirror: str | None = None
    read_retries: int = 3
    skip_bad_files: bool = False
    io_only: bool = False
    io_branches: str = vocabulary.ANALYSIS_BRANCH_SET
    backend: str = "local"
    workers: int | None = None
    mode: str | None = None
    profile: str | None = None
    scheduler_address: str | None = None
    device: str | None = None
    backend_options: Mapping[str, Any] = field(default_factory=FrozenOptions)
    engine: str = "chunked"
    chunksize: int = 100_000
    cache: str | None = None
    data_lake: str = "copy"
    fit: bool = True
    output_dir: str | None = None
    label: str = ""

    def __post_init__(self) -> None:
        for name in ("catalog", "mirror", "cache", "output_dir", "profile", "ml"):
            value = getattr(self, name)
            if isinstance(value, os.PathLike):
                object.__setattr__(self, name, os.fspath(value))
        if self.samples is not None and not isinstance(self.samples, str):
            object.__setattr__(self, "samples", tuple(self.samples))
        if isinstance(self.backend_options, Mapping):
            object.__setattr__(self, "backend_options", FrozenOptions(self.backend_options))
        check({f.name: getattr(self, f.name) for f in dataclasses.fields(self)})
        if self.backend == "gpu" and self.device is None:
            object.__setattr__(self, "device", "cuda")

    @property
    def branches(self) -> tuple[str, ...]:
        """The branches each chunk reads (with the ML step, its extra branches too)."""
        if self.io_only:
            return vocabulary.branch_set(self.io_branches)
        return vocabulary.ML_BRANCHES if self.ml else vocabulary.ANALYSIS_BRANCHES

    def backend_kwargs(self) -> dict[str, Any]:
        """Keyword arguments of the backend class: the backend fields that are set, and
        ``backend_options``."""
        given = {k: getattr(self, k) for k in BACKEND_FIELDS if getattr(self, k) is not None}
        if self.backend == "gpu":  # the gpu backend checks and places the device it runs on
            given["device"] = self.device
        return {**self.backend_options, **given}

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able values (as recorded in ``summary.json``)."""
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        out["backend_options"] = dict(self.backend_options)
        if self.samples is not None:
            out["samples"] = list(self.samples)
        return out


def check(options: Mapping[str, Any]) -> None:
    """Raise :class:`ConfigError` for the first option that :data:`RUN_SCHEMA` does not allow.

    Also checks what the schema cannot say: the backend is a registered one, ``io_branches``
    only with ``io_only``, the dask-awkward engine only on Dask, backend fields given as fields.
    """
    import jsonschema

    plain = {
        k: list(v) if isinstance(v, tuple) else dict(v) if isinstance(v, Mapping) else v
        for k, v in options.items()
    }
    errors = _validator(jsonschema).iter_errors(plain)
    for error in sorted(errors, key=lambda e: [str(p) for p in e.absolute_path]):
        key = str(error.absolute_path[0]) if error.absolute_path else "RunConfig"
        if error.validator == "additionalProperties":
            unknown = sorted(set(error.instance) - set(RUN_SCHEMA["properties"]))
            allowed = ", ".join(RUN_SCHEMA["properties"])
            raise ConfigError(unknown[0], options[unknown[0]], f"not a run option ({allowed})")
        problem = describe_schema_error(error, RUN_SCHEMA).split(": ", 1)[-1]
        raise ConfigError(key, options.get(key), problem)
    if "backend" in options:
        from backends.base import available_backends

        known = available_backends()
        if options["backend"] not in known:
            raise ConfigError(
                "backend",
                options["backend"],
                f"unknown backend; choose one of {', '.join(sorted(known))} (see 'agc backends')",
            )
    if options.get("io_branches", "analysis") != "analysis" and not options.get("io_only"):
        raise ConfigError(
            "io_branches", options["io_branches"], "only applies with io_only (--io-only)"
        )
    if options.get("scheduler_address") and options.get("backend", "local") != "dask":
        raise ConfigError(
            "scheduler_address",
            options["scheduler_address"],
            "joins an existing Dask cluster: give backend='dask' (--backend dask)",
        )
    if options.get("engine") == "coffea" and (options.get("io_only") or options.get("device")):
        raise ConfigError(
            "engine",
            "coffea",
            "runs the analysis on coffea NanoEvents on the CPU: not with io_only or a device",
        )
    if options.get("device") and options.get("io_only"):
        raise ConfigError("device", options["device"], "places the analysis, and io_only runs none")
    if options.get("ml") and options.get("io_only"):
        raise ConfigError(
            "ml",
            options["ml"],
            "the ML step needs the analysis, not io_only; to read the ML branches only, use "
            f"io_only with io_branches={vocabulary.ML_BRANCH_SET!r}",
        )
    local_without_dask = options.get("backend") == "local" and options.get("mode") != "dask"
    if options.get("engine") == "dask-awkward" and local_without_dask:
        raise ConfigError(
            "engine",
            "dask-awkward",
            "needs a Dask executor: use --mode dask with the local backend, or a batch "
            "backend (slurm, htcondor, dirac)",
        )
    for name in set(BACKEND_FIELDS) & set(options.get("backend_options") or {}):
        raise ConfigError(
            "backend_options",
            dict(options["backend_options"]),
            f"give {name!r} as the run option {name}=..., not in backend_options",
        )


def check_value(key: str, value: Any) -> None:
    """Check one run option alone (e.g. a backend checking the ``mode`` it was given)."""
    check({key: value})


_VALIDATOR: Any = None


def _validator(jsonschema: Any) -> Any:
    global _VALIDATOR
    if _VALIDATOR is None:
        _VALIDATOR = jsonschema.Draft202012Validator(RUN_SCHEMA)
    return _VALIDATOR
