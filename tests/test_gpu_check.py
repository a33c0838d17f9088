"""``python -m benchmarks.gpu_check``: the device check, run here on numpy (``--device cpu``).

The check's own run on a GPU needs a GPU machine; here it runs the same code with the device
path on numpy, which must equal the CPU path bit for bit, and its comparison is driven with
hand-made differences.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
import sys
import types

import numpy as np
import pytest

from agc.histograms import new_histogram
from benchmarks import gpu_check

HAS_CUPY = importlib.util.find_spec("cupy") is not None


@pytest.fixture(scope="module")
def cpu_check(tmp_path_factory):
    out = tmp_path_factory.mktemp("gpu-check")
    status = gpu_check.main(
        ["--out", str(out), "--device", "cpu", "--events", "20000", "--repeats", "1"]
    )
    return status, out


def test_the_device_path_on_numpy_equals_the_cpu_path_bit_for_bit(cpu_check):
    status, out = cpu_check
    assert status == 0
    result = json.loads((out / "gpu-check.json").read_text())
    assert result["device"] == "cpu" and result["events"] == 20000
    assert result["exit_status"] == 0
    comparison = result["comparison"]
    assert comparison["histograms_compared"] == len(comparison["histograms"]) > 0
    assert {h["class"] for h in comparison["histograms"].values()} == {"exact"}
    assert comparison["counts"]["exact"] == comparison["histograms_compared"]
    assert comparison["counts"]["migrations"] == comparison["counts"]["within 1e-12"] == 0
    assert result["cpu_path_repeatable"] is True
    # machine, versions, commit
    assert result["machine"]["cores"] >= 1 and result["machine"]["hostname"]
    assert "gpu" not in result["machine"]
    assert set(result["versions"]) == {"python", "numpy", "awkward", "uproot", "hist", "cupy"}
    git = result["git"]
    assert git == "unknown" or (len(git["commit"]) == 40 and isinstance(git["dirty"], bool))


def test_the_timings_are_there_and_not_negative(cpu_check):
    _, out = cpu_check
    result = json.loads((out / "gpu-check.json").read_text())
    assert result["data"]["read_seconds"] >= 0 and result["data"]["events"] == 20000
    for key in ("cpu_path", "device_path"):
        path = result["paths"][key]
        assert len(path["repeats"]) == 1
        for repeat in path["repeats"]:
            assert repeat["analysis_seconds"] >= 0 and repeat["cpu_seconds"] >= 0
            assert repeat["transfer_seconds"] is None  # no transfer: cpu path, device cpu
        assert path["summary"]["analysis_events_per_second"] > 0
        # the first call of each path, on a slice, apart from the repeats
        assert result["warmup"][key]["analysis_seconds"] >= 0
    assert result["warmup"]["events"] == gpu_check.WARMUP_EVENTS
    assert result["ratio_device_to_cpu"] > 0
    assert result["device_error"] is None


def test_the_page_says_numpy_and_no_gpu(cpu_check):
    _, out = cpu_check
    page = (out / "README.md").read_text()
    assert "the GPU code path on numpy, no GPU involved" in page
    assert "20,000 synthetic events of ttbar__nominal" in page
    assert "each path ran once on the first 1,000 events (warm-up" in page
    result = json.loads((out / "gpu-check.json").read_text())
    assert f"{result['comparison']['histograms_compared']} histograms" in page
    assert "Exit status 0" in page


def test_a_migration_on_the_device_path_exits_1_and_the_page_lists_it(
    cpu_check, monkeypatch, tmp_path
):
    out = tmp_path / "check"
    shutil.copytree(cpu_check[1] / "data", out / "data")  # the data of the first check
    (data,) = sorted((out / "data").rglob("*.root"))
    made = data.stat().st_mtime_ns
    timed = gpu_check.time_path

    def moved(events, device, weight):
        timing, histograms = timed(events, device, weight)
        if device is not None:  # one entry of the first filled bin moved to the next bin
            name = next(n for n, h in sorted(histograms.items()) if h.sum().value > 0)
            view = histograms[name].view(flow=True)
            first = int(np.flatnonzero(view["value"])[0])
            view["value"][first + 1] += view["value"][first]
            view["value"][first] = 0.0
        return timing, histograms

    monkeypatch.setattr(gpu_check, "time_path", moved)
    status = gpu_check.main(["--out", str(out), "--device", "cpu", "--events", "20000"])
    assert status == 1
    assert data.stat().st_mtime_ns == made  # the rerun reused the generated file
    result = json.loads((out / "gpu-check.json").read_text())
    assert result["exit_status"] == 1 and result["repeats"] == 3
    assert result["comparison"]["counts"]["migrations"] == 1
    page = (out / "README.md").read_text()
    assert "1 with migrations" in page and "migrations in 2 bin(s)" in page
    assert "Exit status 1" in page


def _filled(values, weight=0.5):
    h = new_histogram()  # 25 bins, 50-550 GeV
    h.fill(observable=np.asarray(values, dtype=np.float64), weight=weight)
    return h


def test_the_comparison_finds_migrations_and_rounding():
    values = [60.0, 75.0, 100.0, 130.0, 130.0, 400.0, 10.0, 900.0]
    cpu = {"exact": _filled(values), "moved": _filled(values), "rounded": _filled(values)}
    device = {k: h.copy() for k, h in cpu.items()}
    device["moved"] = _filled([*values[:2], 100.0 + 20.0, *values[3:]])  # 100 -> its next bin
    device["rounded"].view(flow=True)["value"][5] *= 1 + 1e-14
    result = gpu_check.compare_histograms(cpu, device)
    classes = {name: h["class"] for name, h in result["histograms"].items()}
    assert classes == {"exact": "exact", "moved": "migrations", "rounded": "within 1e-12"}
    assert result["counts"] == {"exact": 1, "within 1e-12": 1, "migrations": 1, "missing": 0}
    assert not gpu_check.passed(result)
    assert 0 < result["histograms"]["rounded"]["max_relative"] <= 1e-12
    bins = result["histograms"]["moved"]["bins"]
    # 100 GeV is flow bin 3 ([90, 110)), 120 GeV flow bin 4 ([110, 130)): value and variance
    assert {(b["bin"], b["field"]) for b in bins} == {
        (3, "value"),
        (4, "value"),
        (3, "variance"),
        (4, "variance"),
    }
    by_bin = {(b["bin"], b["field"]): b for b in bins}
    assert by_bin[3, "value"]["edges"] == [90.0, 110.0]
    assert by_bin[3, "value"]["difference"] == -0.5 and by_bin[4, "value"]["difference"] == 0.5
    assert by_bin[4, "variance"]["difference"] == 0.25
    # within the tolerance only: the check passes
    only_rounding = gpu_check.compare_histograms({"r": cpu["rounded"]}, {"r": device["rounded"]})
    assert gpu_check.passed(only_rounding)
    # a histogram one path did not give is never a pass
    missing = gpu_check.compare_histograms(cpu, {"exact": cpu["exact"]})
    assert missing["counts"]["missing"] == 2 and not gpu_check.passed(missing)


def test_a_migration_in_the_flow_bins_is_found():
    cpu = {"h": _filled([20.0, 600.0])}
    device = {"h": _filled([60.0, 600.0])}  # the underflow entry moved into the first bin
    h = gpu_check.compare_histograms(cpu, device)["histograms"]["h"]
    assert h["class"] == "migrations"
    assert {b["bin"] for b in h["bins"]} == {0, 1}
    assert next(b for b in h["bins"] if b["bin"] == 0)["edges"] == [None, 50.0]


@pytest.mark.skipif(HAS_CUPY, reason="cupy is importable here: --device cuda would run")
def test_cuda_without_cupy_exits_2_naming_cupy(tmp_path, capsys):
    status = gpu_check.main(["--out", str(tmp_path), "--device", "cuda", "--events", "100"])
    assert status == 2
    err = capsys.readouterr().err
    assert "cupy" in err and "Traceback" not in err
    assert not (tmp_path / "gpu-check.json").exists() and not (tmp_path / "data").exists()


def test_a_usage_error_exits_2(tmp_path, capsys):
    assert gpu_check.main(["--out", str(tmp_path), "--events", "0"]) == 2
    assert "not positive" in capsys.readouterr().err


def test_a_failure_of_the_device_path_is_recorded_and_exits_3(cpu_check, monkeypatch, tmp_path):
    out = tmp_path / "check"
    shutil.copytree(cpu_check[1] / "data", out / "data")
    timed, calls = gpu_check.time_path, []

    def failing(events, device, weight):
        if device is not None:
            calls.append(device)
            if len(calls) == 3:  # the warm-up, repeat 1, then repeat 2 fails
                raise MemoryError("out of memory allocating 8 GB on the device")
        return timed(events, device, weight)

    monkeypatch.setattr(gpu_check, "time_path", failing)
    status = gpu_check.main(["--out", str(out), "--device", "cpu", "--events", "20000"])
    assert status == gpu_check.DEVICE_FAILED == 3
    assert calls == ["cpu"] * 3  # no device repeat after the failure
    result = json.loads((out / "gpu-check.json").read_text())
    assert result["device_error"]["repeat"] == 2
    assert result["device_error"]["error"].startswith("MemoryError: out of memory")
    assert "Traceback" in result["device_error"]["traceback"]
    assert len(result["paths"]["cpu_path"]["repeats"]) == 3
    assert len(result["paths"]["device_path"]["repeats"]) == 1
    assert result["comparison"]["counts"]["exact"] == result["comparison"]["histograms_compared"]
    page = (out / "README.md").read_text()
    assert "The device path failed in repeat 2: MemoryError" in page
    assert "Exit status 3: the device path failed." in page


class _FakeCupy(types.ModuleType):
    """Just enough of cupy for the check's CUDA bookkeeping (no GPU: numpy underneath)."""

    __version__ = "14.2.0"

    def __init__(self) -> None:
        super().__init__("cupy")
        self.synchronized = 0
        fake = self

        class Device:
            def synchronize(self) -> None:
                fake.synchronized += 1

        runtime = types.SimpleNamespace(
            getDeviceCount=lambda: 1,
            getDeviceProperties=lambda i: {
                "name": b"Fake H200",
                "totalGlobalMem": 141 * 2**30,
                "major": 9,
                "minor": 0,
            },
            runtimeGetVersion=lambda: 12040,
            driverGetVersion=lambda: 12080,
        )
        self.cuda = types.SimpleNamespace(Device=Device, runtime=runtime)
        pool = types.SimpleNamespace(total_bytes=lambda: 1234)
        self.get_default_memory_pool = lambda: pool


def test_the_cuda_bookkeeping_with_a_stand_in_cupy(cpu_check, monkeypatch, tmp_path):
    """The check's CUDA branch (device properties, synchronisation, the transfer clock, the
    page) with a stand-in cupy and the columns left on the host: the analysis is the device
    path's code on numpy, so the histograms are still exact."""
    import agc.analysis

    fake = _FakeCupy()
    monkeypatch.setitem(sys.modules, "cupy", fake)
    moved = []
    monkeypatch.setattr(
        agc.analysis, "to_device", lambda events, device: moved.append(device) or events
    )
    out = tmp_path / "check"
    shutil.copytree(cpu_check[1] / "data", out / "data")
    status = gpu_check.main(["--out", str(out), "--events", "20000", "--repeats", "2"])
    assert status == 0 and moved == ["cuda"] * 3  # the warm-up and two repeats
    assert fake.synchronized == 3 * 3  # before the transfer, after it, after the analysis
    result = json.loads((out / "gpu-check.json").read_text())
    assert result["device"] == "cuda" and result["versions"]["cupy"] == "14.2.0"
    gpu = result["machine"]["gpu"]
    assert gpu == {
        "name": "Fake H200",
        "memory_bytes": 141 * 2**30,
        "compute_capability": "9.0",
        "devices_visible": 1,
        "cuda_runtime": "12.4",
        "cuda_driver": "12.8",
    }
    assert result["cupy_pool_bytes"] == 1234
    assert all(r["transfer_seconds"] >= 0 for r in result["paths"]["device_path"]["repeats"])
    assert result["paths"]["device_path"]["summary"]["transfer_seconds_median"] >= 0
    page = (out / "README.md").read_text()
    assert "Device cuda: Fake H200, 141.0 GiB, compute capability 9.0" in page
    assert "Transfer: the chunk's columns copied to the GPU" in page
    assert "compiles cupy's kernels" in page and "no GPU involved" not in page
