"""The GPU path on the CPU: the device filler, the segment sum, the analysis without awkward
kernels, the ``gpu`` backend's stage placement, and its refusal to run without CUDA.

Everything here runs the device path on numpy (``device="cpu"``); nothing here touches a GPU.
"""

from __future__ import annotations

import importlib.util
import json

import awkward as ak
import awkward._backends.numpy as ak_numpy_backend
import hist
import numpy as np
import pytest
from conftest import assert_same_histograms, electron, jet, make_events
from test_ml import physics_models  # noqa: F401 - a fixture

from agc.analysis import process_events
from agc.analysis.filler import Filler, regular_bins
from agc.analysis.xp import segment_sum
from agc.config import ConfigError, RunConfig
from agc.histograms import new_histogram, new_ml_histogram
from agc.vocabulary import ML_FEATURES
from backends.base import BackendError

HAS_CUDA = importlib.util.find_spec("cupy") is not None


def _boost(values, weight, axis=(25, 50.0, 550.0)) -> hist.Hist:
    h = hist.Hist(hist.axis.Regular(*axis), storage=hist.storage.Weight())
    h.fill(values, weight=weight)
    return h


def _edge_values(low: float, high: float, n: int, dtype) -> np.ndarray:
    """Every bin edge, its float neighbours in ``dtype``, NaN, +-inf and far values."""
    edges = np.linspace(low, high, n + 1).astype(dtype)
    values = [edges, np.nextafter(edges, dtype(-np.inf)), np.nextafter(edges, dtype(np.inf))]
    special = np.array([np.nan, np.inf, -np.inf, -1e30, 1e30, 0.0, -0.0], dtype=dtype)
    return np.concatenate([*values, special])


# -- the filler ------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("axis", [(25, 50.0, 550.0), (25, 0.0, 1.0), (25, -4.0, 4.0)])
def test_filler_puts_every_edge_case_where_boost_does(dtype, axis):
    values = _edge_values(axis[1], axis[2], axis[0], dtype)
    weights = np.linspace(0.5, 1.5, len(values))
    expected = _boost(values, weights, axis)
    h = hist.Hist(hist.axis.Regular(*axis), storage=hist.storage.Weight())
    filler = Filler({"h": h})
    filler.fill("h", values, weights)
    got = filler.result()["h"]
    assert isinstance(got, hist.Hist)
    assert_same_histograms({"h": expected}, {"h": got}, rtol=0)
    # the index formula alone, value by value: boost's bin of each value
    bins = regular_bins(values, axis[1], axis[2], axis[0])
    for v, b in zip(values, bins, strict=True):
        one = _boost(np.array([v]), 1.0, axis).view(flow=True)["value"]
        assert one[b] == 1.0, f"{v!r} ({dtype.__name__}) in flow bin {b}"


def test_filler_equals_hist_fill_on_many_fills_of_a_chunk():
    rng = np.random.default_rng(3)
    x = rng.normal(300, 200, 200_000).astype(np.float32)
    x[::997] = np.nan
    w = rng.uniform(0.2, 2.0, len(x))
    names = ["a", "b", "c", "ml"]
    expected = {n: new_histogram() for n in names[:3]}
    expected["ml"] = new_ml_histogram(ML_FEATURES[0])
    filler = Filler({n: h.copy() for n, h in expected.items()})
    expected["a"].fill(observable=x, weight=0.37)  # a scalar weight
    filler.fill("a", x, 0.37)
    expected["b"].fill(observable=x, weight=w)  # per-value weights
    filler.fill("b", x, w)
    # one histogram filled twice in a chunk: boost's order of additions is kept
    expected["c"].fill(observable=x[:1000], weight=w[:1000])
    expected["c"].fill(observable=x[1000:], weight=w[1000:] * 3)
    filler.fill("c", x[:1000], w[:1000])
    filler.fill("c", x[1000:], w[1000:] * 3)
    ml_values = rng.uniform(-1, 5, len(x))
    expected["ml"].fill(observable=ml_values, weight=w)
    filler.fill("ml", ml_values, w)
    assert_same_histograms(expected, filler.result(), rtol=0)


def test_filler_refuses_what_it_cannot_fill():
    with pytest.raises(TypeError, match="regular"):
        Filler({"v": hist.Hist(hist.axis.Variable([0, 1, 3]), storage=hist.storage.Weight())})
    with pytest.raises(TypeError, match="Weight"):
        Filler({"d": hist.Hist(hist.axis.Regular(3, 0, 1))})


def test_filler_with_no_fill_returns_the_empty_histograms():
    h = new_histogram()
    assert Filler({"h": h}).result()["h"].sum(flow=True).value == 0


# -- the segment sum -------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_segment_sum_is_ak_sum_bit_for_bit(dtype):
    rng = np.random.default_rng(5)
    counts = rng.poisson(4, 50_000)
    counts[:7] = 0  # empty events, and events of many lengths
    counts[7] = 30
    values = (rng.exponential(60, counts.sum()) + 30).astype(dtype)
    expected = ak.to_numpy(ak.sum(ak.unflatten(values, counts), axis=1))
    got = segment_sum(values, counts)
    assert got.dtype == expected.dtype == dtype
    np.testing.assert_array_equal(got, expected)
    # the order matters in float32: a naive reordering would not give these sums
    assert segment_sum(values[:0], np.zeros(3, dtype=np.int64)).tolist() == [0, 0, 0]


# -- the analysis on the device path ---------------------------------------------------------
@pytest.fixture
def kernel_calls(monkeypatch):
    """Every awkward kernel requested through awkward's CPU backend, by name."""
    calls: list[str] = []
    original = ak_numpy_backend.NumpyBackend.__getitem__

    def spy(self, index):
        calls.append(index[0])
        return original(self, index)

    monkeypatch.setattr(ak_numpy_backend.NumpyBackend, "__getitem__", spy)
    return calls


def _chunk_events(small_catalog):
    import uproot

    from agc.vocabulary import ANALYSIS_BRANCHES

    catalog = json.loads(small_catalog.read_text())
    path = small_catalog.parent / catalog["ttbar"]["nominal"]["files"][0]["path"]
    return uproot.open(path)["Events"].arrays(list(ANALYSIS_BRANCHES))


def test_device_path_requests_no_awkward_kernel(small_catalog, kernel_calls):
    events = _chunk_events(small_catalog)
    ak.materialize(events)
    kernel_calls.clear()
    device = process_events(events, process="ttbar", variation="nominal", weight=0.1, device="cpu")
    assert kernel_calls == []
    # the CPU path's one kernel is ak.sum's (the H_T line): the spy does see kernels
    cpu = process_events(events, process="ttbar", variation="nominal", weight=0.1)
    assert set(kernel_calls) == {"awkward_reduce_sum"}
    assert_same_histograms(cpu, device, rtol=0, what="device path on numpy vs CPU path")


def test_device_path_on_hand_built_events_matches_the_cpu_path():
    # one 4j1b event (HT = 50 + 60 + 70 + 80) and one 4j2b event, one lepton each
    events = make_events(
        [
            {
                "electrons": [electron()],
                "jets": [jet(pt=50, btag=0.9), jet(pt=60), jet(pt=70), jet(pt=80)],
            },
            {
                "electrons": [electron()],
                "jets": [jet(pt=90, btag=0.9), jet(pt=60, btag=0.8), jet(pt=70), jet(pt=80)],
            },
        ]
    )
    for variation in ("nominal", "scaledown"):
        cpu = process_events(events, process="ttbar", variation=variation, weight=2.0)
        dev = process_events(events, process="ttbar", variation=variation, weight=2.0, device="cpu")
        assert_same_histograms(cpu, dev, rtol=0)
    ht = dev["4j1b_ttbar_scaledown"]
    assert ht.values()[ht.axes[0].index(260.0)] == 2.0  # HT 260 GeV, weight 2


def test_device_path_refuses_an_unknown_device():
    with pytest.raises(ValueError, match="device"):
        process_events(
            make_events([]), process="ttbar", variation="nominal", weight=1, device="tpu"
        )


# -- the gpu backend -------------------------------------------------------------------------
@pytest.mark.skipif(HAS_CUDA, reason="cupy is installed: the no-CUDA refusal is not reachable")
def test_gpu_backend_without_cupy_fails_before_any_work(tmp_path):
    from agc.runner import run

    missing = tmp_path / "no-such-catalog.json"  # planning would fail on this: it never gets there
    config = RunConfig(backend="gpu", catalog=str(missing), output_dir=str(tmp_path / "out"))
    with pytest.raises(BackendError) as err:
        run(config, progress=False)
    message = str(err.value)
    assert "cupy is not installed" in message and "gpu-cuda12" in message
    assert "--device cpu" in message
    assert not (tmp_path / "out").exists()


@pytest.mark.skipif(HAS_CUDA, reason="cupy is installed: the no-CUDA refusal is not reachable")
def test_agc_run_backend_gpu_without_cuda_says_what_is_missing(tmp_path):
    import subprocess
    import sys

    done = subprocess.run(
        [sys.executable, "-m", "agc", "run", "--backend", "gpu", "--catalog", "missing.json"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2, done.stderr
    assert "cupy is not installed" in done.stderr and "Traceback" not in done.stderr
    assert list(tmp_path.iterdir()) == []  # nothing written


def test_device_option_checks():
    assert RunConfig(backend="gpu").device == "cuda"  # the gpu backend's default
    assert RunConfig(backend="gpu", device="cpu").backend_kwargs()["device"] == "cpu"
    assert "device" not in RunConfig(device="cpu").backend_kwargs()  # local takes none
    with pytest.raises(ConfigError, match="io_only"):
        RunConfig(device="cpu", io_only=True)
    with pytest.raises(ConfigError):
        RunConfig(device="tpu")
    from agc.cli import build_parser, config_from_args

    args = build_parser().parse_args(["run", "--device", "cpu"])
    assert config_from_args(args).backend == "gpu"  # --device alone: the gpu backend


def test_gpu_backend_options_are_checked():
    from backends.gpu import GpuBackend

    with pytest.raises(BackendError, match="mode processes"):
        GpuBackend(device="cpu", mode="processes")
    with pytest.raises(BackendError, match="no profile"):
        GpuBackend(device="cpu", profile="slurm-local")


def test_cache_key_tells_the_device_path_apart(small_catalog):
    from agc.cache.keys import chunk_key, chunk_key_parts
    from agc.catalog import Chunk
    from agc.chunks import ChunkTask

    chunk = Chunk("ttbar__nominal", "ttbar", "nominal", "f.root", 0, 10, 1.0)
    keys = {
        device: chunk_key(
            chunk_key_parts(
                ChunkTask(0, chunk, ("Jet_pt",), True, 1, device=device),
                code="c",
                identity={"uuid": "u"},
            )
        )
        for device in (None, "cpu", "cuda")
    }
    assert len(set(keys.values())) == 3
    parts = chunk_key_parts(
        ChunkTask(0, chunk, ("Jet_pt",), True, 1, device="cuda"), code="c", identity={}
    )
    assert parts["physics"]["cupy"] == ("absent" if not HAS_CUDA else parts["physics"]["cupy"])


def _stage_worker(name):
    def stage(value):
        from distributed import get_worker

        return (
            [*value, (name, get_worker().name)]
            if isinstance(value, list)
            else [(name, get_worker().name)]
        )

    return stage


@pytest.fixture(scope="module")
def gpu_dask_executor():
    from backends.gpu import GpuBackend

    executor = GpuBackend(device="cpu", mode="dask", workers=2).start()
    yield executor
    executor.close()


def test_gpu_dask_mode_places_read_on_readers_and_analysis_on_the_device_worker(
    gpu_dask_executor,
):
    ex = gpu_dask_executor
    resources = {w["name"]: w["resources"] for w in ex.client.scheduler_info()["workers"].values()}
    assert resources == {"reader-0": {"CPU": 1}, "reader-1": {"CPU": 1}, "cpu-device-0": {"GPU": 1}}
    stages = [("read", _stage_worker("read")), ("analysis", _stage_worker("analysis"))]
    results = list(ex.map_stages(stages, range(12)))
    assert len(results) == 12
    for placed in results:
        where = dict(placed)
        assert where["read"].startswith("reader-"), placed
        assert where["analysis"] == "cpu-device-0", placed
    assert {dict(p)["read"] for p in results} == {"reader-0", "reader-1"}  # both readers used


def test_stage_without_a_worker_that_has_its_resource_fails_naming_it():
    from distributed import Client, LocalCluster

    from backends.local import DaskExecutor

    with LocalCluster(
        n_workers=1, threads_per_worker=1, dashboard_address=None, resources={"CPU": 1}
    ) as cluster:
        with Client(cluster) as client:
            ex = DaskExecutor(
                client,
                owns_client=False,
                lost_timeout=1.5,
                stage_resources={"read": {"CPU": 1}, "analysis": {"GPU": 1}},
            )
            with pytest.raises(
                BackendError, match=r"analysis stage asks for the Dask resource 'GPU'"
            ):
                list(ex.map_stages([("read", abs), ("analysis", abs)], [1, 2]))


@pytest.mark.parametrize(
    ("mode", "engine"), [("inprocess", "chunked"), ("dask", "chunked"), ("dask", "dask-awkward")]
)
def test_gpu_backend_on_numpy_gives_the_cpu_engines_histograms(small_catalog, mode, engine):
    from agc.runner import run

    cpu = run(RunConfig(catalog=str(small_catalog), mode="inprocess"), progress=False, write=False)
    dev = run(
        RunConfig(
            catalog=str(small_catalog),
            backend="gpu",
            device="cpu",
            mode=mode,
            workers=1,
            engine=engine,
        ),
        progress=False,
        write=False,
    )
    assert_same_histograms(cpu.histograms, dev.histograms, rtol=0, what=f"gpu {mode} {engine}")
    assert dev.summary["device"]["device"] == "cpu"
    assert "numpy" in dev.summary["device"]["what"]
    assert dev.record.device == "cpu" and cpu.record.device == ""
    if engine == "chunked":  # the transfer is timed apart (nothing to move on numpy)
        assert all(t.transfer_seconds >= 0 for t in dev.tasks)


def test_dask_awkward_engine_places_its_read_and_analysis_layers_by_resource(
    small_catalog, gpu_dask_executor
):
    from distributed import get_task_stream

    from agc.engines import DaskAwkwardEngine
    from agc.runner import make_plan, resolve_catalog

    config = RunConfig(catalog=str(small_catalog), backend="gpu", device="cpu", mode="dask")
    plan = make_plan(config, resolve_catalog(config.catalog, progress=False), write=False)
    ex = gpu_dask_executor
    names = {a: w["name"] for a, w in ex.client.scheduler_info()["workers"].items()}
    with get_task_stream(ex.client) as stream:
        results = list(DaskAwkwardEngine().run(plan.tasks, ex))
    assert len(results) == len(plan.tasks)
    placed: dict[str, set[str]] = {"read": set(), "analysis": set()}
    for entry in stream.data:
        key = entry["key"] if isinstance(entry["key"], str) else entry["key"][0]
        if key.startswith("from-uproot"):
            placed["read"].add(names[entry["worker"]])
        elif "-analysis-" in key:
            placed["analysis"].add(names[entry["worker"]])
    assert placed["read"] and placed["read"] <= {"reader-0", "reader-1"}
    assert placed["analysis"] == {"cpu-device-0"}


def test_ml_step_on_the_device_path_gives_the_cpu_paths_histograms(
    small_catalog,
    physics_models,  # noqa: F811 - the fixture imported above
    kernel_calls,
):
    import uproot

    from agc.analysis import load_models
    from agc.vocabulary import ML_BRANCHES

    catalog = json.loads(small_catalog.read_text())
    path = small_catalog.parent / catalog["ttbar"]["nominal"]["files"][0]["path"]
    events = uproot.open(path)["Events"].arrays(list(ML_BRANCHES))
    models = load_models(str(physics_models), n_threads=1)
    cpu = process_events(events, process="ttbar", variation="nominal", weight=0.3, ml=models)
    kernel_calls.clear()
    dev = process_events(
        events, process="ttbar", variation="nominal", weight=0.3, ml=models, device="cpu"
    )
    assert kernel_calls == []  # the ML step's candidates and features too: no awkward kernel
    assert any(name.startswith(ML_FEATURES[0]) for name in dev)
    assert_same_histograms(cpu, dev, rtol=0, what="ML step, device path on numpy")


def test_gpu_backend_on_numpy_gives_the_default_runs_histograms():
    """The main job's run (default dataset and options) on --backend gpu --device cpu."""
    from agc import synth
    from agc.runner import run

    catalog = str(synth.ensure_default_dataset())
    cpu = run(RunConfig(catalog=catalog), progress=False, write=False)
    dev = run(RunConfig(catalog=catalog, backend="gpu", device="cpu"), progress=False, write=False)
    assert len(cpu.histograms) == 124
    assert_same_histograms(cpu.histograms, dev.histograms, rtol=0, what="default run, device cpu")
