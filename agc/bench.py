"""Benchmark scenarios: ``agc bench SCENARIO`` runs one, ``agc report DIR`` publishes them.

A scenario (``benchmarks/scenarios.yaml``) names a synthetic dataset and a list of points (run
options). Each point runs ``warmup`` times (recorded, flagged ``warmup``, left out of every
statistic) and then ``repeats`` times; points are interleaved round-robin so that the drifts of a
shared machine spread over all of them. Every run is one row of the runs table of
:mod:`agc.metrics` (machine, versions and commit included) plus the scenario columns
``scenario``, ``point``, ``repeat``, ``warmup``, ``dataset``, ``code``.

Records go to ``RESULTS_DIR/raw/<scenario>-{runs,phases,tasks}.csv``; nothing is typed by hand.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import importlib.util
import json
import logging
import os
import pickle
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime
from pathlib import Path

from agc.errors import UserError

log = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[1]
#: The scenarios shipped with the package (benchmarks/scenarios.yaml of the source tree).
SCENARIOS_FILE = Path(__file__).resolve().parents[1] / "benchmarks" / "scenarios.yaml"
CACHE_SCENARIOS_FILE = REPO_ROOT / "benchmarks" / "cache_scenarios.py"
#: Point options that say how and whether a point runs, not what it runs.
#: ``requires``: a shell command that must succeed (e.g. ``sinfo`` answering) or the point is
#: skipped and the report says why; ``standins``: run with the named stand-in batch commands
#: of ``backends/standins`` first on PATH (their state in a scratch directory).
POINT_CONTROLS = ("label", "requires", "standins")


class BenchError(UserError, ValueError):
    """A bad scenario file, scenario name or option."""


#: On-disk bytes per generated event, by layout (measured: 1.7 GB for the 1M-event realistic
#: dataset, 4 MB for 18k minimal events), to say what a dataset will take before it is made.
BYTES_PER_EVENT = {"realistic": 1800, "minimal": 250}


def default_data_root() -> Path:
    """Where benchmark datasets are generated: $AGC_BENCH_DATA, else ``bench/`` under the
    harness's one cache root ($XDG_CACHE_HOME or ~/.cache, then ``agc-harness``), beside the
    default dataset of ``agc run``."""
    env = os.environ.get("AGC_BENCH_DATA")
    if env:
        return Path(env)
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return cache / "agc-harness" / "bench"


def dataset_bytes(spec: Mapping) -> int:
    """About how many bytes a dataset of ``spec`` takes on disk."""
    events = sum(int(n) * int(e) for n, e in spec["events"].values())
    return events * BYTES_PER_EVENT.get(str(spec.get("layout")), BYTES_PER_EVENT["realistic"])


def load_scenarios(path: str | os.PathLike | None = None) -> dict:
    """The ``datasets`` and ``scenarios`` of a scenario file (default benchmarks/scenarios.yaml)."""
    import yaml

    path = Path(path or SCENARIOS_FILE)
    if not path.is_file():
        raise BenchError(f"--scenarios {path}: no such file; give a scenario file (YAML)")
    spec = yaml.safe_load(path.read_text())
    if not isinstance(spec, dict) or not {"datasets", "scenarios"} <= set(spec):
        raise BenchError(f"{path}: needs top-level 'datasets' and 'scenarios' mappings")
    for name, sc in spec["scenarios"].items():
        if sc.get("dataset") not in spec["datasets"]:
            raise BenchError(
                f"{path}: scenario {name!r} names dataset {sc.get('dataset')!r}, "
                f"which is not one of {', '.join(spec['datasets'])}"
            )
        for point in points(sc):  # every point is a run: checked against the run schema now
            if point.get("implementation", "harness") != "harness":
                _check_implementation(path, name, point)
                continue
            try:
                run_config("<catalog>", point)
            except BenchError as err:
                raise BenchError(
                    f"{path}: scenario {name!r}, point {point['label']!r}: {err}"
                ) from None
    return spec


def _check_implementation(path: Path, scenario: str, point: Mapping) -> None:
    """A point that runs one of the AGC's own implementations names a known one and its
    checkout (the checkout itself is looked at when the point runs)."""
    from agc.implementations import IMPLEMENTATIONS

    where = f"{path}: scenario {scenario!r}, point {point['label']!r}"
    if point["implementation"] not in IMPLEMENTATIONS:
        raise BenchError(
            f"{where}: implementation {point['implementation']!r}; choose one of "
            f"{', '.join(IMPLEMENTATIONS)}"
        )
    if not point.get("checkout"):
        raise BenchError(f"{where}: give its checkout (a folder of the implementation)")


def points(scenario: Mapping) -> list[dict]:
    """The run options of every point of a scenario (``base`` merged in, ``label`` set)."""
    base = dict(scenario.get("base", {}))
    if "points" in scenario:
        out = [{**base, **p} for p in scenario["points"]]
    elif "vary" in scenario:
        ((key, values),) = scenario["vary"].items()
        out = [{**base, key: v, "label": f"{key}={v}"} for v in values]
    else:
        out = [{**base, "label": "default"}]
    for p in out:
        p.setdefault("label", ", ".join(f"{k}={v}" for k, v in p.items() if k not in base))
    return out


def _synth_source_hash() -> str:
    h = hashlib.sha256()
    for f in sorted((REPO_ROOT / "agc" / "synth").glob("*.py")):
        h.update(f.name.encode() + f.read_bytes())
    return h.hexdigest()


def dataset_key(spec: Mapping) -> str:
    """Content key of a dataset: its spec and the generator's source code."""
    payload = json.dumps({k: spec[k] for k in ("layout", "seed", "events")}, sort_keys=True)
    return hashlib.sha256((payload + _synth_source_hash()).encode()).hexdigest()[:12]


def ensure_dataset(
    name: str, spec: Mapping, root: Path | None = None, progress: bool = False
) -> Path:
    """The catalog of a benchmark dataset, generated once per content key."""
    from agc import synth

    directory = Path(root or default_data_root()) / f"{name}-{dataset_key(spec)}"
    catalog = directory / synth.CATALOG_NAME
    if not catalog.exists():
        events = sum(int(n) * int(e) for n, e in spec["events"].values())
        log.warning(
            "generating benchmark dataset %s (%s events, about %.1f GB) into %s (once; set "
            "AGC_BENCH_DATA to put it elsewhere)",
            name,
            f"{events:,}",
            dataset_bytes(spec) / 1e9,
            directory,
        )
        synth.generate(
            directory,
            events={k: tuple(v) for k, v in spec["events"].items()},
            layout=spec["layout"],
            seed=int(spec["seed"]),
            progress=progress,
        )
    return catalog


def run_config(catalog: Path | str, options: Mapping, label: str = ""):
    """The :class:`agc.config.RunConfig` of a point's options (no fit unless asked)."""
    from agc.config import RUN_SCHEMA, ConfigError, RunConfig

    fields = {k: v for k, v in options.items() if k not in POINT_CONTROLS}
    unknown = sorted(set(fields) - set(RUN_SCHEMA["properties"]))
    if unknown:
        raise BenchError(
            f"scenario option(s) {', '.join(unknown)}: not a run option; run options: "
            f"{', '.join(RUN_SCHEMA['properties'])}"
        )
    fields.setdefault("fit", False)
    fields.setdefault("label", label)
    if fields.get("ml") and not os.path.isabs(fields["ml"]):  # models beside the project
        fields["ml"] = str(REPO_ROOT / fields["ml"])
    try:
        return RunConfig(catalog=str(catalog), **fields)
    except ConfigError as err:
        raise BenchError(f"option {err}") from None


def _schedule(pts: list[dict], repeats: int, warmup: int) -> list[tuple[dict, int, bool]]:
    """(point, repeat, warmup?) in round-robin order: warm-ups first, then the repeats."""
    order = [(p, i, True) for i in range(warmup) for p in pts]
    return order + [(p, i, False) for i in range(repeats) for p in pts]


def run_scenario(
    name: str,
    results_dir: str | os.PathLike,
    *,
    scenarios_file=None,
    repeats: int | None = None,
    warmup: int | None = None,
    data_root: Path | None = None,
    progress: bool = True,
    checkouts: Mapping[str, str] | None = None,
) -> Path:
    """Run one scenario and write its records into ``results_dir/raw``; return that folder.

    ``checkouts``: implementation -> the checkout to run it from (``implementations``
    scenario; default: each point's ``checkout``)."""
    spec = load_scenarios(scenarios_file)
    if name not in spec["scenarios"]:
        raise BenchError(
            f"scenario {name!r}: unknown; choose one of {', '.join(spec['scenarios'])}"
        )
    scenario = spec["scenarios"][name]
    dataset = scenario["dataset"]
    catalog = ensure_dataset(dataset, spec["datasets"][dataset], data_root, progress)
    repeats = int(scenario.get("repeats", 3) if repeats is None else repeats)
    warmup = int(scenario.get("warmup", 1) if warmup is None else warmup)
    kind = scenario.get("kind", "runs")
    raw = Path(results_dir) / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    skipped: dict[str, str] = {}
    if kind == "cache":
        frames = _cache_scenario(catalog, scenario, repeats, skipped)
    elif kind == "before-after":
        frames = _before_after(catalog, scenario, repeats, warmup, progress)
    elif kind == "implementations":
        frames, checks, skipped = _implementations(
            catalog, scenario, repeats, warmup, progress, checkouts or {}
        )
    else:
        frames, skipped = _runs(catalog, points(scenario), repeats, warmup, progress)
    for table, df in frames.items():
        if df is not None and len(df):
            df.insert(0, "scenario", name)
            df["dataset"] = f"{dataset}-{dataset_key(spec['datasets'][dataset])}"
            df.to_csv(raw / f"{name}-{table}.csv", index=False)
    meta = {
        "scenario": name,
        "description": " ".join(str(scenario.get("description", "")).split()),
        "dataset": dataset,
        "dataset_spec": spec["datasets"][dataset],
        "dataset_events": sum(n * e for n, e in spec["datasets"][dataset]["events"].values()),
        "repeats": repeats,
        "warmup": warmup,
        "skipped": skipped,
        "finished_utc": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    if kind == "implementations":
        meta["checks"] = checks
    (raw / f"{name}-meta.json").write_text(json.dumps(meta, indent=1))
    return raw


def _runs(
    catalog: Path, pts: list[dict], repeats: int, warmup: int, progress: bool
) -> tuple[dict, dict[str, str]]:
    """The records of every point, and the points that could not run here (with why)."""
    import pandas as pd

    from agc.metrics import phases_frame, runs_frame, tasks_frame
    from agc.reader import close_open_files
    from agc.runner import run

    runs, phases, tasks = [], [], []
    skipped = {p["label"]: reason for p in pts if (reason := unavailable(p))}
    for label, reason in skipped.items():
        log.warning("point %r not measured: %s", label, reason)
    schedule = _schedule([p for p in pts if p["label"] not in skipped], repeats, warmup)
    for n, (point, repeat, is_warmup) in enumerate(schedule, 1):
        if progress:
            log.info("[%d/%d] %s%s", n, len(schedule), point["label"], " (warm-up)" * is_warmup)
        # every run starts with no input file open in this process (forked workers would
        # inherit them and skip the open an in-process run before them has paid)
        close_open_files()
        with _standins(bool(point.get("standins"))):
            result = run(run_config(catalog, point, point["label"]), progress=False, write=False)
        extra = {"point": point["label"], "repeat": repeat, "warmup": is_warmup, "code": "current"}
        runs.append(runs_frame([result.record]).assign(**extra))
        phases.append(phases_frame([result.record]).assign(**extra))
        tasks.append(tasks_frame(result.run_id, result.tasks).assign(**extra))
    frames = {
        "runs": pd.concat(runs, ignore_index=True) if runs else None,
        "phases": pd.concat(phases, ignore_index=True) if phases else None,
        "tasks": pd.concat(tasks, ignore_index=True) if tasks else None,
    }
    return frames, skipped


def unavailable(point: Mapping) -> str | None:
    """Why ``point`` cannot run here (its ``requires`` command fails), or None."""
    command = point.get("requires")
    if not command:
        return None
    try:
        done = subprocess.run(
            command, shell=True, capture_output=True, text=True, timeout=30, cwd=REPO_ROOT
        )
    except subprocess.TimeoutExpired:
        return f"'{command}' did not answer within 30 s"
    if done.returncode != 0:
        detail = (done.stderr or done.stdout).strip().splitlines()
        return f"'{command}' failed" + (f" ({detail[-1]})" if detail else "")
    return None


@contextlib.contextmanager
def _standins(enabled: bool):
    """The stand-in batch commands first on PATH, with their state in a scratch directory."""
    if not enabled:
        yield
        return
    from backends.standins import bin_dir

    saved = {k: os.environ.get(k) for k in ("PATH", "AGC_STANDIN_STATE")}
    with tempfile.TemporaryDirectory(prefix="agc-bench-standins-") as state:
        os.environ["PATH"] = f"{bin_dir()}{os.pathsep}{saved['PATH'] or ''}"
        os.environ["AGC_STANDIN_STATE"] = state
        try:
            yield
        finally:
            for key, value in saved.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value


#: Runs one configuration in a fresh interpreter whose ``agc`` comes from PYTHONPATH; works
#: with older source trees (it passes only the RunConfig fields that tree knows, and the
#: backend options as ``backend_options`` where workers/mode/profile were not fields yet).
_SUBPROCESS_RUN = """
import dataclasses, json, sys
try:
    from agc.runner import RunConfig, run
except ImportError:
    from agc.run import RunConfig, run
opts = json.loads(sys.argv[1])
names = {f.name for f in dataclasses.fields(RunConfig)}
backend = {k: opts.pop(k) for k in ("workers", "mode", "profile") if k not in names and k in opts}
if backend:
    opts["backend_options"] = {**opts.get("backend_options", {}),
                               **{k: v for k, v in backend.items() if v is not None}}
result = run(RunConfig(**{k: v for k, v in opts.items() if k in names}), progress=False,
             write=False)
row = result.record.row()
row["phases"] = result.record.phases
print("AGC-BENCH-ROW " + json.dumps(row, default=str))
"""


def source_tree(ref: str, root: Path | None = None) -> Path:
    """``agc/`` and ``backends/`` of git ``ref`` extracted into a folder (once per commit)."""
    try:
        commit = subprocess.run(
            ["git", "-C", str(REPO_ROOT), "rev-parse", ref],
            check=True,
            capture_output=True,
            text=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError) as err:
        raise BenchError(f"baseline {ref!r}: not a commit of {REPO_ROOT} ({err})") from err
    target = Path(root or default_data_root()) / f"src-{commit[:12]}"
    if not (target / "agc" / "__init__.py").exists():
        target.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile() as tar:
            subprocess.run(
                ["git", "-C", str(REPO_ROOT), "archive", commit, "agc", "backends"],
                stdout=tar,
                check=True,
            )
            tar.seek(0)
            with tarfile.open(fileobj=tar) as t:
                t.extractall(target, filter="data")
    return target


def run_in_subprocess(tree: Path, catalog: Path, options: Mapping) -> dict:
    """One run with the source tree ``tree``, in a fresh interpreter; its runs-table row."""
    opts = run_config(catalog, options, options.get("label", "")).to_dict()
    env = {**os.environ, "PYTHONPATH": str(tree)}
    out = subprocess.run(
        [sys.executable, "-c", _SUBPROCESS_RUN, json.dumps(opts)],
        env=env,
        capture_output=True,
        text=True,
        cwd=tempfile.gettempdir(),
    )
    for line in out.stdout.splitlines():
        if line.startswith("AGC-BENCH-ROW "):
            return json.loads(line[len("AGC-BENCH-ROW ") :])
    raise BenchError(f"run with the source tree {tree} failed:\n{out.stderr[-2000:]}")


def _before_after(
    catalog: Path, scenario: Mapping, repeats: int, warmup: int, progress: bool
) -> dict:
    import pandas as pd

    from agc.metrics import PHASES, git_commit

    baseline = str(scenario.get("baseline", "HEAD"))
    commit = git_commit()
    current = f"current {commit[:12]}{'-dirty' if commit.endswith('-dirty') else ''}"
    trees = {f"baseline {baseline}": source_tree(baseline), current: REPO_ROOT}
    point = points(scenario)[0]
    rows, phases = [], []
    schedule = [(code, i, True) for i in range(warmup) for code in trees]
    schedule += [(code, i, False) for i in range(repeats) for code in trees]
    for n, (code, repeat, is_warmup) in enumerate(schedule, 1):
        if progress:
            log.info("[%d/%d] %s%s", n, len(schedule), code, " (warm-up)" * is_warmup)
        row = run_in_subprocess(trees[code], catalog, {**point, "label": code})
        measured = row.pop("phases")
        extra = {"point": code, "repeat": repeat, "warmup": is_warmup, "code": code}
        rows.append({**row, **extra})
        phases += [
            {
                "run_id": row["run_id"],
                "label": code,
                "backend": row["backend"],
                "workers": row["workers"],
                "phase": p,
                "seconds": measured[p],
                **extra,
            }
            for p in PHASES
            if p in measured
        ]
    return {"runs": pd.DataFrame(rows), "phases": pd.DataFrame(phases)}


def _implementations(
    catalog: Path,
    scenario: Mapping,
    repeats: int,
    warmup: int,
    progress: bool,
    checkouts: Mapping[str, str],
) -> tuple[dict, dict[str, dict], dict[str, str]]:
    """The harness's engines and the AGC's own implementations (:mod:`agc.implementations`),
    each run in a fresh process, interleaved; their histograms checked against the first
    harness point's. Returns the records, the checks per point and the points not run."""
    import pandas as pd

    from agc.implementations import compare, run_point
    from agc.metrics import environment

    pts = []
    for point in points(scenario):
        point = dict(point)
        kind = point.get("implementation", "harness")
        if kind in checkouts:
            point["checkout"] = checkouts[kind]
        if point.get("checkout") and not os.path.isabs(point["checkout"]):
            point["checkout"] = str(REPO_ROOT / point["checkout"])
        pts.append(point)
    skipped = {p["label"]: reason for p in pts if (reason := unavailable(p))}
    for label, reason in skipped.items():
        log.warning("point %r not measured: %s", label, reason)
    schedule = _schedule([p for p in pts if p["label"] not in skipped], repeats, warmup)
    rows, histograms = [], {}
    with tempfile.TemporaryDirectory(prefix="agc-implementations-") as scratch:
        for n, (point, repeat, is_warmup) in enumerate(schedule, 1):
            if progress:
                log.info("[%d/%d] %s%s", n, len(schedule), point["label"], " (warm-up)" * is_warmup)
            out = Path(scratch) / f"{n}"
            result = run_point(
                {k: v for k, v in point.items() if k not in POINT_CONTROLS or k == "label"},
                str(catalog),
                out,
            )
            if not is_warmup and point["label"] not in histograms:
                with open(out / "histograms.pkl", "rb") as f:
                    histograms[point["label"]] = pickle.load(f)
            loop, whole = result.event_loop_seconds, result.whole_process_seconds
            rows.append(
                {
                    "run_id": f"{point['label']}-{n}",
                    "point": point["label"],
                    "implementation": result.implementation,
                    "backend": point.get("backend", result.implementation),
                    "engine": point.get("engine", result.implementation),
                    "workers": result.workers,
                    "cores_per_worker": 1,
                    "events": result.events,
                    "wall_seconds": whole,
                    "processing_seconds": loop,
                    "events_per_second": result.events / whole,
                    "events_per_second_per_core": result.events / whole / max(result.workers, 1),
                    "processing_events_per_second": result.events / loop,
                    "processing_events_per_second_per_core": result.events
                    / loop
                    / max(result.workers, 1),
                    "versions": json.dumps(result.versions),
                    "repeat": repeat,
                    "warmup": is_warmup,
                    "code": "current",
                }
            )
    harness = [p["label"] for p in pts if p.get("implementation", "harness") == "harness"]
    checks: dict[str, dict] = {}
    if harness and harness[0] in histograms:
        base = histograms[harness[0]]
        checks = {
            label: {"against": harness[0], **compare(base, other)}
            for label, other in histograms.items()
            if label != harness[0]
        }
    df = pd.DataFrame(rows).assign(**environment()) if rows else None
    return {"runs": df}, checks, skipped


def _cache_scenario(
    catalog: Path, scenario: Mapping, repeats: int, skipped: dict[str, str]
) -> dict:
    """Cold / warm / partial / code-changed runs from benchmarks/cache_scenarios.py."""
    import pandas as pd

    if not CACHE_SCENARIOS_FILE.exists():
        raise BenchError(
            f"scenario 'cache': {CACHE_SCENARIOS_FILE} is not there yet, so the "
            "cache cannot be measured; run the other scenarios"
        )
    spec = importlib.util.spec_from_file_location("agc_cache_scenarios", CACHE_SCENARIOS_FILE)
    if spec is None or spec.loader is None:
        raise BenchError(f"{CACHE_SCENARIOS_FILE}: cannot be loaded as a Python module")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    base = dict(scenario.get("base", {}))
    chunksize = int(base.pop("chunksize", 100_000))
    options = {k: v for k, v in base.items() if k not in POINT_CONTROLS}
    kinds = [module.result_cache_scenarios]
    # input caching: direct reads vs a real XRootD origin + XCache on loopback
    from agc import xcache

    missing = xcache.missing_tools()
    if missing:
        log.warning("scenario 'cache': XCache rows not measured (%s)", missing)
        skipped["xcache"] = missing
    else:
        kinds.append(module.xcache_scenarios)
    rows = [
        {**row, "point": row["scenario"], "repeat": repeat, "warmup": False, "code": "current"}
        for measure in kinds
        for repeat in range(repeats)
        for row in measure(str(catalog), run_options=options, chunksize=chunksize)
    ]
    df = pd.DataFrame(rows).rename(columns={"scenario": "cache_scenario"})
    from agc.metrics import environment

    return {"runs": df.assign(**environment())}


def check_clean_tree() -> str:
    """The commit of the harness source tree; a BenchError when it has uncommitted changes or
    is unknown: records of such a tree cannot be traced back to the code that made them."""
    from agc.metrics import git_commit

    commit = git_commit()
    if commit == "unknown":
        problem = (
            "the commit of the harness source tree is unknown (not a git checkout, or git failed)"
        )
    elif commit.endswith("-dirty"):
        problem = (
            f"the harness source tree at commit {commit.removesuffix('-dirty')} has "
            f"uncommitted changes ({commit})"
        )
    else:
        return commit
    raise BenchError(
        f"{problem}: benchmark records would not name the code that made them. Commit "
        "the changes first, or pass --allow-dirty to run anyway (the report then labels "
        f"every figure with the commit, {commit})."
    )


def cmd_bench(args: argparse.Namespace) -> int:
    spec = load_scenarios(args.scenarios)
    if args.scenario == ["list"]:
        for name, sc in spec["scenarios"].items():
            print(f"{name:14s} {' '.join(str(sc.get('description', '')).split())}")
        return 0
    for name in args.scenario:  # a bad name is named first, whatever the tree
        if name not in spec["scenarios"]:
            raise BenchError(
                f"scenario {name!r}: unknown; choose one of {', '.join(spec['scenarios'])}"
            )
    if not args.allow_dirty:
        check_clean_tree()
    with _progress_lines() if not args.quiet else contextlib.nullcontext():
        for name in args.scenario:
            raw = run_scenario(
                name,
                args.results,
                scenarios_file=args.scenarios,
                repeats=args.repeats,
                warmup=args.warmup,
                progress=not args.quiet,
                checkouts={
                    kind: path
                    for kind, path in (
                        ("coffea-reference", args.coffea_reference),
                        ("rdf-reference", args.rdf_reference),
                    )
                    if path
                },
            )
            print(f"{name}: records in {raw}")
    if args.report:
        from agc.report import build_report

        print(f"report: {build_report(args.results)}")
    return 0


@contextlib.contextmanager
def _progress_lines() -> Iterator[None]:
    """The bench's progress lines ([3/12] point label) on stderr while it runs."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(message)s"))
    saved = log.level, log.propagate
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    log.propagate = False
    try:
        yield
    finally:
        log.removeHandler(handler)
        log.setLevel(saved[0])
        log.propagate = saved[1]


def cmd_report(args: argparse.Namespace) -> int:
    from agc.report import build_report

    page = build_report(args.results_dir, title=args.title, asv_results=args.asv_results)
    print(f"report: {page}")
    print(f"summary: {page.with_name('README.md')}")
    return 0


def register(subparsers) -> None:
    """Add ``agc bench`` and ``agc report`` to the ``agc`` command."""
    p = subparsers.add_parser("bench", help="run benchmark scenarios (see 'agc bench list')")
    p.add_argument("scenario", nargs="+", help="scenario name(s) of the scenario file, or 'list'")
    p.add_argument(
        "--results",
        default="results/latest",
        metavar="DIR",
        help="report folder the records go to (default %(default)s)",
    )
    p.add_argument(
        "--scenarios",
        default=None,
        metavar="FILE",
        help="scenario file (default benchmarks/scenarios.yaml)",
    )
    p.add_argument("--repeats", type=int, default=None, help="override the scenario's repeats")
    p.add_argument("--warmup", type=int, default=None, help="override the scenario's warm-ups")
    p.add_argument("--report", action="store_true", help="rebuild the report afterwards")
    p.add_argument("--quiet", action="store_true", help="no progress lines")
    p.add_argument(
        "--allow-dirty",
        action="store_true",
        help="run even when the source tree has uncommitted changes or no known commit "
        "(refused otherwise); the records carry the commit with -dirty and the report labels "
        "every figure with it",
    )
    p.add_argument(
        "--coffea-reference",
        metavar="CHECKOUT",
        default=None,
        help="scenario implementations: the AGC coffea reference to run (a folder with "
        "ttbar_analysis_pipeline.py; default ../shared/reference-implementations/coffea)",
    )
    p.add_argument(
        "--rdf-reference",
        metavar="CHECKOUT",
        default=None,
        help="scenario implementations: the AGC RDataFrame implementation to run (a folder "
        "with analysis.py; needs ROOT, pip install '.[rdf]')",
    )
    p.set_defaults(func=cmd_bench)

    p = subparsers.add_parser("report", help="build the HTML/markdown report of a results folder")
    p.add_argument("results_dir", metavar="RESULTS_DIR", help="folder with raw/*-runs.csv")
    p.add_argument("--title", default=None, help="page title (default: the folder name)")
    p.add_argument(
        "--asv-results",
        default=None,
        metavar="DIR",
        help="also show asv results (asv's results_dir, e.g. .asv/results)",
    )
    p.set_defaults(func=cmd_report)
