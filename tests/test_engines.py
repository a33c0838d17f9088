"""The dask-awkward engine: same histograms as the chunked engine, its timings, its refusals."""

import math

import pytest
import uproot
from conftest import assert_same_histograms

from agc import RunConfig, run
from agc.config import ConfigError
from agc.engines import EngineError, get_engine
from agc.errors import UserError

DASK = {"mode": "dask", "workers": 2}


@pytest.fixture(scope="module")
def chunked_run(small_catalog):
    return run(
        RunConfig(catalog=str(small_catalog), chunksize=1500, mode="inprocess"),
        progress=False,
        write=False,
    )


@pytest.fixture(scope="module")
def dask_awkward_run(small_catalog):
    return run(
        RunConfig(catalog=str(small_catalog), chunksize=1500, **DASK, engine="dask-awkward"),
        progress=False,
        write=False,
    )


def test_same_histograms_as_the_chunked_engine(chunked_run, dask_awkward_run):
    """One partition per chunk, merged in chunk order: not a bit differs."""
    assert dask_awkward_run.chunks == chunked_run.chunks
    assert dask_awkward_run.events_per_sample == chunked_run.events_per_sample
    assert_same_histograms(chunked_run.histograms, dask_awkward_run.histograms, rtol=0)


def test_records_the_engine_and_read_times_from_the_task_stream(dask_awkward_run):
    record = dask_awkward_run.record
    assert record.engine == "dask-awkward"
    assert record.workers == 2
    tasks = dask_awkward_run.tasks
    assert len(tasks) == record.chunks
    for t in tasks:
        assert t.read_seconds > 0 and not math.isnan(t.read_seconds)
        assert t.analysis_seconds > 0
        # the read task began before the analysis task of its partition (Dask's task stream
        # corrects for worker clock offsets, hence a few ms of slack)
        assert t.started <= t.finished - t.analysis_seconds + 0.05
    assert record.bytes_read == sum(t.bytes_read for t in tasks) > 0


def test_bytes_are_the_baskets_of_each_chunk(small_catalog, dask_awkward_run):
    t = dask_awkward_run.tasks[0]
    tree = uproot.open(t.path)["Events"]
    expected = sum(
        tree[b].basket_compressed_bytes(i)
        for b in RunConfig().branches
        for i in range(tree[b].num_baskets)
        if tree[b].basket_entry_start_stop(i)[0] < t.entry_stop
        and tree[b].basket_entry_start_stop(i)[1] > t.entry_start
    )
    assert t.bytes_read == expected


@pytest.mark.parametrize(
    ("kw", "needle"),
    [
        ({"engine": "graph"}, "engine='graph': 'graph' is not one of chunked, dask-awkward"),
        (
            {"engine": "dask-awkward", "mode": "inprocess"},
            "needs a Dask executor: use --mode dask",
        ),
    ],
)
def test_refused_when_the_config_is_made(small_catalog, kw, needle):
    with pytest.raises(ConfigError, match=needle):
        RunConfig(catalog=str(small_catalog), **kw)


def test_refused_on_an_executor_without_dask_before_any_task():
    from backends.local import InProcessExecutor

    with pytest.raises(EngineError, match="needs a Dask executor"):
        get_engine("dask-awkward").check(InProcessExecutor())


def test_the_result_cache_wraps_the_dask_awkward_engine(small_catalog, chunked_run, tmp_path):
    """Cold: every partition computed in the graph and stored; warm: every chunk from the
    store, no graph at all. Both give the chunked engine's histograms to the last bit."""
    config = RunConfig(
        catalog=str(small_catalog),
        chunksize=1500,
        engine="dask-awkward",
        cache=str(tmp_path / "store"),
        **DASK,
    )
    cold = run(config, progress=False, write=False)
    warm = run(config, progress=False, write=False)
    assert (cold.record.cache_hits, cold.record.cache_misses) == (0, cold.chunks)
    assert (warm.record.cache_hits, warm.record.cache_misses) == (warm.chunks, 0)
    assert "cluster_start" in warm.record.phases and "first_worker" not in warm.record.phases
    assert_same_histograms(chunked_run.histograms, cold.histograms, rtol=0)
    assert_same_histograms(chunked_run.histograms, warm.histograms, rtol=0)


def test_missing_branch_named_before_submission(tmp_path, small_catalog):
    import json

    entry = json.loads(small_catalog.read_text())["wjets"]["nominal"]["files"][0]
    path, nevts = small_catalog.parent / entry["path"], entry["nevts"]
    other = tmp_path / "nojets.root"
    with uproot.open(path) as f, uproot.recreate(other) as g:
        arrays = f["Events"].arrays(filter_name=["Muon_*", "Electron_*", "run", "event"], how="zip")
        data = {field: arrays[field] for field in arrays.fields}
        g.mktree("Events", {k: v.type for k, v in data.items()}).extend(data)
    catalog = tmp_path / "catalog.json"
    catalog.write_text(
        json.dumps(
            {
                "wjets": {
                    "nominal": {
                        "nevts_total": nevts,
                        "files": [{"path": str(other), "nevts": nevts}],
                    }
                }
            }
        )
    )
    with pytest.raises(UserError, match="nojets.root: tree 'Events' lacks branch\\(es\\) Jet_"):
        run(
            RunConfig(catalog=str(catalog), **DASK, engine="dask-awkward"),
            progress=False,
            write=False,
        )
