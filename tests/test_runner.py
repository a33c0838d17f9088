"""The stages of ``run()`` one by one (plan, execute, merge, fit, publish), and the Python API."""

from __future__ import annotations

import json
import logging
import random
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import assert_same_histograms

from agc import RunConfig, run
from agc.cache import CachingEngine, ResultStore
from agc.engines import ChunkedEngine
from agc.metrics import PhaseClock
from agc.outputs import OutputError
from agc.runner import Plan, execute, fit_and_plot, make_plan, merge_results, resolve_catalog
from backends.base import BaseExecutor, Executor
from backends.local import InProcessExecutor, LocalBackend, ProcessPoolTaskExecutor


def _plan(catalog, tmp_path=None, **kw) -> Plan:
    config = RunConfig(catalog=str(catalog), mode="inprocess", **kw)
    return make_plan(config, resolve_catalog(config.catalog), write=tmp_path is not None)


class CountingBackend:
    """A backend that runs in this process and counts how often it was started."""

    name, description = "counting", "in-process, counts its starts"

    def __init__(self) -> None:
        self.starts = 0

    def start(self) -> Executor:
        self.starts += 1
        return InProcessExecutor()


# -- the Python API ----------------------------------------------------------------------
def test_the_api_is_the_function_and_the_config_and_import_agc_stays_cheap():
    import agc
    import agc.runner

    assert agc.run is agc.runner.run and callable(agc.run)
    assert agc.RunConfig is RunConfig
    code = (
        "import sys; import agc; print('awkward' in sys.modules, 'agc.runner' in sys.modules);"
        "from agc import run, RunConfig; print(callable(run), RunConfig().catalog)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False", "True", "synthetic"]


def test_run_leaves_no_figure_open_and_quiet_cabinetry(small_catalog, tmp_path, caplog):
    """What a notebook needs: no pyplot figure left behind, no flood of cabinetry warnings."""
    import matplotlib.pyplot as plt

    with caplog.at_level(logging.WARNING):
        result = run(
            RunConfig(catalog=str(small_catalog), mode="inprocess", output_dir=str(tmp_path / "r")),
            progress=False,
        )
    assert plt.get_fignums() == []
    assert not [r for r in caplog.records if r.name.startswith("cabinetry")]
    assert result.run_dir == tmp_path / "r"


# -- plan -------------------------------------------------------------------------------
def test_plan_numbers_the_tasks_in_chunk_order(small_catalog):
    plan = _plan(small_catalog, chunksize=1000)
    assert [t.index for t in plan.tasks] == list(range(len(plan.chunks)))
    assert [t.chunk for t in plan.tasks] == plan.chunks
    assert plan.run_dir is None and plan.synthetic
    assert sum(c.nevents for c in plan.chunks) == sum(s.nevts for s in plan.fileset.values())


def test_plan_refuses_an_output_directory_that_is_not_ours_before_any_work(small_catalog, tmp_path):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "thesis.tex").write_text("...")
    (mine / "summary.json").write_text("{}")  # a summary.json alone does not make it ours
    with pytest.raises(OutputError, match="is not a run directory of this harness"):
        _plan(small_catalog, tmp_path, output_dir=str(mine))
    (tmp_path / "a-file").write_text("x")
    with pytest.raises(OutputError, match="is a file"):
        _plan(small_catalog, tmp_path, output_dir=str(tmp_path / "a-file"))
    assert sorted(p.name for p in mine.iterdir()) == ["summary.json", "thesis.tex"]


def test_a_previous_run_directory_is_replaced(small_catalog, tmp_path):
    out = tmp_path / "out"
    config = RunConfig(
        catalog=str(small_catalog),
        mode="inprocess",
        samples=("ttbar__PS_var",),
        fit=False,
        output_dir=str(out),
    )
    first = run(config, progress=False)
    second = run(config, progress=False)
    assert json.loads((out / "summary.json").read_text())["run_id"] == second.run_id
    assert first.run_id != second.run_id
    assert not list(tmp_path.glob(".out.*"))  # no staging directory left


# -- execute ------------------------------------------------------------------------------
def test_execute_starts_no_backend_when_every_chunk_is_cached(small_catalog, tmp_path):
    plan = _plan(small_catalog, chunksize=3000)
    store = ResultStore(tmp_path / "store")
    backend = CountingBackend()
    cold = execute(
        plan, CachingEngine(ChunkedEngine(), store), backend, PhaseClock(), progress=False
    )
    assert backend.starts == 1 and len(cold.results) == len(plan.tasks)
    clock = PhaseClock()
    warm = execute(plan, CachingEngine(ChunkedEngine(), store), backend, clock, progress=False)
    assert backend.starts == 1  # not started again
    assert all(r.timing.cached for r in warm.results)
    assert "first_worker" not in clock.durations and "processing" in clock.durations
    assert_same_histograms(
        merge_results(plan, cold.results), merge_results(plan, warm.results), rtol=0
    )


def test_execute_records_the_phases_and_closes_the_executor(small_catalog):
    closed = []

    class Pool(InProcessExecutor):
        workers, cores_per_worker = 3, 2

        def time_to_all_workers(self):
            return 0.25

        def close(self):
            closed.append(True)

    class Backend(CountingBackend):
        def start(self):
            return Pool()

    plan, clock = _plan(small_catalog, chunksize=3000), PhaseClock()
    execution = execute(plan, ChunkedEngine(), Backend(), clock, progress=False)
    assert (execution.workers, execution.cores_per_worker) == (3, 2)
    assert closed == [True]
    assert clock.durations["all_workers"] == 0.25
    for phase in ("cluster_start", "first_worker", "processing", "first_result"):
        assert clock.durations[phase] >= 0
    assert clock.durations["first_result"] <= clock.durations["processing"]
    # the milestones share one origin, the run's start, and come in order
    m = clock.milestones
    assert 0 <= m["first_worker"] <= m["first_result"] <= m["processing_end"] <= clock.elapsed()
    # all workers: the executor's 0.25 s counted from the cluster's start, not the run's
    assert m["all_workers"] == pytest.approx(
        m["first_worker"] - clock.durations["first_worker"] - clock.durations["cluster_start"]
        + 0.25, abs=1e-3
    )  # fmt: skip


def test_the_record_has_the_steady_state_and_the_end_to_end_rate(small_catalog):
    result = run(
        RunConfig(catalog=str(small_catalog), mode="inprocess", fit=False),
        progress=False,
        write=False,
    )
    r = result.record
    assert r.processing_events_per_second == r.events / r.phases["processing"]
    assert r.events_per_second == r.events / r.wall_seconds
    assert r.processing_events_per_second > r.events_per_second  # planning etc. left out
    row = r.row()
    assert row["processing_events_per_second"] == r.processing_events_per_second
    assert row["first_result_at_seconds"] <= row["processing_end_at_seconds"] <= r.wall_seconds
    assert result.summary["processing_events_per_second"] == r.processing_events_per_second


def test_every_executor_follows_the_protocol():
    for executor in (InProcessExecutor(), ProcessPoolTaskExecutor(1)):
        try:
            assert isinstance(executor, Executor) and isinstance(executor, BaseExecutor)
            assert executor.client is None and executor.time_to_all_workers() is None
        finally:
            executor.close()
    dask = LocalBackend(mode="dask", workers=1).start()
    try:
        assert isinstance(dask, Executor) and dask.client is not None
        assert dask.cores_per_worker == 1
    finally:
        dask.close()


# -- merge --------------------------------------------------------------------------------
def test_merge_is_in_plan_order_whatever_the_completion_order(small_catalog):
    plan = _plan(small_catalog, chunksize=700)
    results = list(ChunkedEngine().run(plan.tasks, InProcessExecutor()))
    shuffled = results[:]
    random.Random(3).shuffle(shuffled)
    assert [r.index for r in shuffled] != [r.index for r in results]
    assert_same_histograms(merge_results(plan, results), merge_results(plan, shuffled), rtol=0)
    with pytest.raises(RuntimeError, match="1 of .* chunks gave no result"):
        merge_results(plan, results[1:])


# -- fit ----------------------------------------------------------------------------------
@pytest.mark.slow
def test_the_fit_stage_fits_and_draws(shared_data, tmp_path):
    """On the AGC reference histograms (N=1): the published ttbar_norm, its files, the plots."""
    import matplotlib.pyplot as plt

    from agc.inference import load_fit_input

    path = shared_data / "agc" / "reference" / "histos_1_file_per_process.json"
    histograms = load_fit_input(path).histograms
    fit = fit_and_plot(histograms, tmp_path, synthetic=False)
    assert fit.error is None and fit.poi == "ttbar_norm"
    assert fit.bestfit == pytest.approx(0.960, abs=0.001)
    assert fit.uncertainty == pytest.approx(0.104, abs=0.001)
    written = json.loads((tmp_path / "fit_result.json").read_text())
    assert written["bestfit"] == fit.bestfit
    assert {"workspace.json", "pulls.png", "data_mc_4j2b.pdf", "stack_4j1b.png"} <= {
        p.name for p in tmp_path.iterdir()
    }
    assert plt.get_fignums() == []


def test_the_fit_stage_reports_a_fit_that_cannot_run(small_catalog, tmp_path):
    """The small dataset has no W+jets event in 4j1b: no fit, said why, histograms kept."""
    started = time.perf_counter()
    result = run(
        RunConfig(catalog=str(small_catalog), mode="inprocess", output_dir=str(tmp_path / "r")),
        progress=False,
    )
    elapsed = time.perf_counter() - started
    # events/s count the processing, end to end: not the writing and the fit after it
    phases = result.record.phases
    assert result.record.wall_seconds + phases["write"] + phases["fit"] <= elapsed
    assert result.record.wall_seconds >= phases["processing"] + phases["merge"]
    assert result.fit is not None and "4j1b_wjets" in result.fit.error
    summary = json.loads((tmp_path / "r" / "summary.json").read_text())
    assert summary["fit"] == {"error": result.fit.error}
    assert "fit" in summary["phases_seconds"]
    assert not (tmp_path / "r" / "workspace.json").exists()
    assert (tmp_path / "r" / "histograms.root").exists()


def test_the_fit_stage_reports_a_fit_that_does_not_converge(monkeypatch, tmp_path, shared_data):
    from agc import inference

    def no_convergence(workspace, **kw):
        raise inference.FitError("the fit did not converge with Minuit strategies default, 2")

    monkeypatch.setattr(inference, "fit", no_convergence)
    path = shared_data / "agc" / "reference" / "histos_1_file_per_process.json"
    fit = fit_and_plot(inference.load_fit_input(path).histograms, tmp_path, synthetic=True)
    assert fit.error.startswith("the fit did not converge")
    assert not list(tmp_path.glob("*.png"))


@pytest.mark.slow
def test_the_default_run_fits_in_memory(tmp_path):
    """The main job: the fit of the in-memory histograms equals a fit of the written files."""
    from agc.inference import fit_run

    result = run(RunConfig(output_dir=str(tmp_path / "run")), progress=False)
    assert result.fit is not None and result.fit.error is None
    assert 0.5 < result.fit.bestfit < 1.5 and result.fit.uncertainty > 0
    again = fit_run(result.run_dir, output_dir=tmp_path / "again")
    assert again.bestfit == pytest.approx(result.fit.bestfit, rel=1e-9)
    assert json.loads((result.run_dir / "summary.json").read_text())["fit"]["bestfit"] == (
        result.fit.bestfit
    )


# -- publish ------------------------------------------------------------------------------
@pytest.fixture
def full_lake(small_catalog, tmp_path, monkeypatch):
    """A data lake that refuses every run (no space left), and the options of a small run."""

    def full(self, run_id, local_dir):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(ResultStore, "put_run", full)
    return {
        "catalog": str(small_catalog),
        "mode": "inprocess",
        "samples": ("ttbar__PS_var",),
        "fit": False,
        "cache": str(tmp_path / "store"),
    }


def test_a_data_lake_that_fails_keeps_the_local_outputs(full_lake, tmp_path, caplog):
    config = RunConfig(**full_lake, output_dir=str(tmp_path / "out"))
    with caplog.at_level(logging.WARNING, logger="agc.cache"):
        result = run(config, progress=False)
    assert result.stored_run is None and result.run_dir == tmp_path / "out"
    assert (tmp_path / "out" / "histograms.root").exists()
    assert "not copied to the data lake" in caplog.text


def test_data_lake_only_that_fails_says_where_the_outputs_are(full_lake):
    from agc.cache import CacheStoreError

    with pytest.raises(CacheStoreError, match="its outputs are in ") as caught:
        run(RunConfig(**full_lake, data_lake="only"), progress=False)
    where = Path(str(caught.value).rsplit("its outputs are in ", 1)[1])
    assert (where / "histograms.root").exists() and (where / "summary.json").exists()
    edges = json.loads((where / "histograms.json").read_text())["4j1b_ttbar_PS_var"]["edges"]
    np.testing.assert_allclose(edges, np.linspace(50, 550, 26))
