"""Cache benchmarks: what the step-level result cache and an XCache save, measured.

Each function runs the analysis in a documented situation and returns tidy rows (one dict per
measured run: ``scenario``, ``wall_seconds``, ``events``, ``events_per_second``,
``cache_hits``, ``cache_misses``, ``chunks``, ``processing_seconds``, ``speedup_vs_cold``...);
``pandas.DataFrame(rows)`` is the table. Nothing here asserts a timing.

* :func:`result_cache_scenarios` — cold (empty store), warm (everything cached), partial (the
  store holds all samples but one, which is then added), code changed (a cut changed: every
  chunk misses). Targets to compare with: warm >= 20x faster than cold; the partial re-run
  costs about the new sample's chunks plus the merge (``new_chunks_cold_seconds``).
* :func:`xcache_scenarios` — inputs read directly, through a cold XCache, a warm XCache, and
  the warm XCache with its origin stopped (real ``xrootd`` daemons on 127.0.0.1).
"""

from __future__ import annotations

import contextlib
import shutil
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path

from agc.cache import ResultStore
from agc.cache.keys import _modules
from agc.config import RunConfig
from agc.runner import RunResult, run


def row(scenario: str, result: RunResult, **extra) -> dict:
    """One tidy row of a measured run."""
    r = result.record
    return {
        "scenario": scenario,
        "wall_seconds": r.wall_seconds,
        "events": r.events,
        "events_per_second": r.events_per_second,
        "cache_hits": r.cache_hits,
        "cache_misses": r.cache_misses,
        "chunks": r.chunks,
        "bytes_read": r.bytes_read,
        "workers": r.workers,
        "backend": r.backend,
        "engine": r.engine,
        "processing_seconds": r.phases.get("processing", float("nan")),
        "cluster_start_seconds": r.phases.get("cluster_start", float("nan")),
        "merge_seconds": r.phases.get("merge", float("nan")),
        "run_id": r.run_id,
        **extra,
    }


@contextlib.contextmanager
def changed_cut(name: str = "BTAG_THRESHOLD", value: float = 0.6) -> Iterator[None]:
    """Change an analysis constant everywhere it is held, as an edited cut would."""
    saved = [(m, getattr(m, name)) for m in _modules("agc.analysis") if hasattr(m, name)]
    try:
        for module, _ in saved:
            setattr(module, name, value)
        yield
    finally:
        for module, old in saved:
            setattr(module, name, old)


def _config(
    catalog: str, store: str | None, run_options: Mapping, chunksize: int, **kw
) -> RunConfig:
    """The run of a scenario: ``run_options`` (mode, workers...) and ``kw`` are RunConfig's."""
    return RunConfig(
        catalog=str(catalog),
        cache=store,
        chunksize=chunksize,
        label=kw.pop("label", "cache-bench"),
        **{**run_options, **kw},
    )


def result_cache_scenarios(
    catalog: str,
    store_url: str | None = None,
    *,
    run_options: Mapping | None = None,
    chunksize: int = 100_000,
) -> list[dict]:
    """Cold, warm, partial and code-changed runs against a store (default: a fresh temp dir).

    The store is cleared first; with ``store_url`` pointing at a shared store that removes its
    chunk entries (not its stored runs).
    """
    options = run_options or {"mode": "processes"}
    tmp = None
    if store_url is None:
        tmp = tempfile.mkdtemp(prefix="agc-cache-bench-")
        store_url = tmp
    store = ResultStore(store_url)
    rows = []
    try:
        store.clear()
        cfg = _config(catalog, store_url, options, chunksize)
        cold = run(cfg, progress=False, write=False)
        rows.append(row("cold", cold))
        warm = run(cfg, progress=False, write=False)
        rows.append(row("warm", warm))

        samples = list(cold.events_per_sample)
        added = samples[-1]
        new_cold = sum(t.finished - t.started for t in cold.tasks if t.sample == added)
        store.clear()
        run(
            _config(catalog, store_url, options, chunksize, samples=tuple(samples[:-1])),
            progress=False,
            write=False,
        )
        partial = run(cfg, progress=False, write=False)
        rows.append(row("partial", partial, added_sample=added, new_chunks_cold_seconds=new_cold))

        with changed_cut():
            changed = run(cfg, progress=False, write=False)
        rows.append(row("code_changed", changed))
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            store.clear()
    for r in rows:
        r["speedup_vs_cold"] = rows[0]["wall_seconds"] / r["wall_seconds"]
    return rows


def cold(catalog: str, store_url: str, **kw) -> dict:
    """One run against ``store_url`` after clearing it."""
    ResultStore(store_url).clear()
    return _measured("cold", catalog, store_url, **kw)


def warm(catalog: str, store_url: str, **kw) -> dict:
    """One run against ``store_url`` as it is (after :func:`cold`: everything cached)."""
    return _measured("warm", catalog, store_url, **kw)


def _measured(scenario: str, catalog: str, store_url: str, **kw) -> dict:
    config = _config(catalog, store_url, kw.get("run_options") or {}, kw.get("chunksize", 100_000))
    return row(scenario, run(config, progress=False, write=False))


def _readable_copy(catalog: str, into: Path) -> str:
    """Copy a synthetic catalog and its files where the ``xrootd`` user can read them."""
    from agc import xcache

    source = Path(catalog)
    source_dir = source if source.is_dir() else source.parent
    target = into / "inputs"
    shutil.copytree(source_dir, target)
    xcache.make_readable(target)
    return str(target / (source.name if source.is_file() else "catalog.json"))


def xcache_scenarios(
    catalog: str,
    *,
    run_options: Mapping | None = None,
    chunksize: int = 100_000,
    work_dir: str | None = None,
) -> list[dict]:
    """Direct read, cold XCache, warm XCache, warm XCache with the origin stopped.

    Starts a real origin and XCache on 127.0.0.1 (see :mod:`agc.xcache`); a synthetic catalog
    is copied into the work directory first so that the ``xrootd`` user can read it. Rows add
    ``xcache_bytes_hit`` / ``xcache_bytes_missed`` summed from the ``.cinfo`` files (recorded
    when readers close their files, i.e. when process-pool workers exit).
    """
    from agc import xcache

    reason = xcache.missing_tools()
    if reason:
        raise RuntimeError(f"XCache benchmark cannot run: {reason}")
    options = dict(run_options or {"mode": "processes"})
    work = Path(work_dir or tempfile.mkdtemp(prefix="agc-xcache-bench-"))
    rows = []
    try:
        local_catalog = _readable_copy(catalog, work)
        direct = run(_config(local_catalog, None, options, chunksize), progress=False, write=False)
        rows.append(row("direct", direct))
        with xcache.origin_and_xcache(work / "xrd") as (origin, cache):
            cfg = _config(local_catalog, None, options, chunksize, xcache=cache.url)
            for scenario in ("xcache_cold", "xcache_warm"):
                result = run(cfg, progress=False, write=False)
                rows.append(row(scenario, result, **_cinfo_totals(cache)))
            origin.stop()
            result = run(cfg, progress=False, write=False)
            rows.append(row("xcache_origin_down", result, **_cinfo_totals(cache)))
    finally:
        if work_dir is None:
            shutil.rmtree(work, ignore_errors=True)
    return rows


def _cinfo_totals(cache) -> dict:
    """Bytes hit / missed over all accesses of all cached files so far."""
    from agc import xcache

    hit = missed = 0
    for path in xcache.cached_files(cache):
        try:
            info = xcache.cinfo(cache, path)
        except Exception:
            continue
        hit += info["bytes_hit"]
        missed += info["bytes_missed"]
    return {"xcache_bytes_hit": hit, "xcache_bytes_missed": missed}


if __name__ == "__main__":  # python benchmarks/cache_scenarios.py CATALOG [CHUNKSIZE]
    import sys

    import pandas as pd

    cat = sys.argv[1]
    size = int(sys.argv[2]) if len(sys.argv) > 2 else 100_000
    table = pd.DataFrame(
        result_cache_scenarios(cat, chunksize=size) + xcache_scenarios(cat, chunksize=size)
    )
    print(
        table[
            [
                "scenario",
                "wall_seconds",
                "events_per_second",
                "cache_hits",
                "cache_misses",
                "speedup_vs_cold",
            ]
        ].to_string(index=False)
    )
