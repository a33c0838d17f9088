"""Shared fixtures: hand-built events with known answers, and the reference data folder."""

from __future__ import annotations

from pathlib import Path

import awkward as ak
import numpy as np
import pytest

#: ../shared/data beside the project root (present in CI; absent in a user's clone).
SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
#: Tests against DiracX's own server code (``nox -s diracx``), which needs DiracX installed.
DIRACX_TESTS = Path(__file__).resolve().parent / "diracx"


def pytest_ignore_collect(collection_path, config):
    """Leave tests/diracx out unless it is asked for (``pytest tests/diracx``, as ``nox -s
    diracx`` runs it): its conftest loads DiracX's pytest plugin, which pytest accepts only
    from a conftest it reads before collecting, and the main suite does not need DiracX."""
    if Path(collection_path) != DIRACX_TESTS:
        return None
    for arg in config.args:
        asked = Path(config.invocation_params.dir, arg.split("::")[0]).resolve()
        if asked == DIRACX_TESTS or DIRACX_TESTS in asked.parents:
            return None
    return True


@pytest.fixture
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"reference data not found at {SHARED_DATA} (it sits beside the project in CI)")
    return SHARED_DATA


def electron(pt=40.0, eta=0.5, cutBased=4, sip3d=1.0):
    return {"pt": pt, "eta": eta, "cutBased": cutBased, "sip3d": sip3d}


def muon(pt=40.0, eta=0.5, tightId=True, sip3d=1.0, iso=0.05):
    return {"pt": pt, "eta": eta, "tightId": tightId, "sip3d": sip3d, "pfRelIso04_all": iso}


def jet(pt=50.0, eta=0.0, phi=0.0, mass=5.0, btag=0.1, jetId=6):
    return {"pt": pt, "eta": eta, "phi": phi, "mass": mass, "btagCSVV2": btag, "jetId": jetId}


_DTYPES = {
    "Electron": {"pt": np.float32, "eta": np.float32, "cutBased": np.int32, "sip3d": np.float32},
    "Muon": {
        "pt": np.float32,
        "eta": np.float32,
        "tightId": np.bool_,
        "sip3d": np.float32,
        "pfRelIso04_all": np.float32,
    },
    "Jet": {
        "pt": np.float32,
        "eta": np.float32,
        "phi": np.float32,
        "mass": np.float32,
        "btagCSVV2": np.float32,
        "jetId": np.int32,
    },
}


def make_events(events: list[dict]) -> ak.Array:
    """Flat NanoAOD-like branches (``Jet_pt``...) with NanoAOD dtypes from a list of events.

    Each event is ``{"electrons": [...], "muons": [...], "jets": [...], "event": n}``.
    """
    columns = {
        "run": np.ones(len(events), np.uint32),
        "luminosityBlock": np.ones(len(events), np.uint32),
        "event": np.array([e.get("event", i + 1) for i, e in enumerate(events)], np.uint64),
    }
    for coll, key in (("Electron", "electrons"), ("Muon", "muons"), ("Jet", "jets")):
        counts = np.array([len(e.get(key, [])) for e in events], np.int64)
        for field, dtype in _DTYPES[coll].items():
            flat = np.array([obj[field] for e in events for obj in e.get(key, [])], dtype=dtype)
            columns[f"{coll}_{field}"] = ak.unflatten(flat, counts)
    return ak.Array(columns)


#: A small minimal-layout dataset shared by the end-to-end tests: every sample, two ttbar files.
SMALL_DATASET = {
    "ttbar__nominal": (2, 3000),
    "ttbar__scaledown": (1, 2000),
    "ttbar__scaleup": (1, 2000),
    "ttbar__ME_var": (1, 2000),
    "ttbar__PS_var": (1, 2000),
    "single_top_s_chan__nominal": (1, 2000),
    "single_top_t_chan__nominal": (1, 2000),
    "single_top_tW__nominal": (1, 2000),
    "wjets__nominal": (1, 4000),
}


@pytest.fixture(scope="session")
def small_catalog(tmp_path_factory) -> Path:
    """catalog.json of a small synthetic dataset (minimal layout), generated once per session."""
    from agc import synth

    return synth.generate(
        tmp_path_factory.mktemp("synthetic-small"), events=SMALL_DATASET, layout="minimal", seed=7
    )


def assert_same_histograms(a: dict, b: dict, rtol: float = 1e-12, what: str = "") -> None:
    """Same names, same contents and variances (flow included): to the last bit with
    ``rtol=0``, else up to ``rtol`` (a different summation order)."""
    assert sorted(a) == sorted(b), what
    for name in a:
        for field in ("value", "variance"):
            x, y = (getattr(h[name].view(flow=True), field) for h in (a, b))
            message = f"{what}: {name} ({field})"
            if rtol == 0:
                np.testing.assert_array_equal(x, y, err_msg=message)
            else:
                np.testing.assert_allclose(x, y, rtol=rtol, atol=0, err_msg=message)


# -- the fault suite's record (nox -s faults; the report's reliability table) ---------------
#: Outcomes a fault test can assert: the run's histograms are unaffected, it stops with a
#: message that names the problem and leaves nothing half-written, or it finishes partial
#: with what it lost counted.
FAULT_OUTCOMES = ("survived", "failed clearly", "partial")


def pytest_addoption(parser):
    parser.addoption(
        "--fault-record",
        metavar="PATH",
        help="write the outcome of every test marked 'fault' to this JSON file",
    )


def pytest_configure(config):
    config._fault_rows = []


@pytest.fixture
def fault_details(request):
    """A dict a fault test fills with what it measured (``events_lost``...), kept in the
    record with the test's outcome."""
    details: dict = {}
    request.node._fault_details = details
    return details


def pytest_runtest_makereport(item, call):
    marker = item.get_closest_marker("fault")
    if marker is None or call.when != "call":
        return
    fault, outcome = marker.args
    if outcome not in FAULT_OUTCOMES:
        raise ValueError(f"{item.nodeid}: fault outcome {outcome!r} not in {FAULT_OUTCOMES}")
    item.config._fault_rows.append(
        {
            "fault": fault,
            "outcome": outcome,
            "histograms": marker.kwargs.get("histograms", ""),
            "test": item.nodeid,
            "passed": call.excinfo is None,
            "seconds": round(call.stop - call.start, 2),
            **getattr(item, "_fault_details", {}),
        }
    )


def pytest_sessionfinish(session):
    import json
    import platform
    import subprocess
    from datetime import UTC, datetime

    path = session.config.getoption("--fault-record")
    if not path:
        return
    root = Path(__file__).resolve().parents[1]
    commit = subprocess.run(
        ["git", "-C", str(root), "describe", "--always", "--dirty"],
        capture_output=True,
        text=True,
    ).stdout.strip()
    record = {
        "finished_utc": datetime.now(UTC).isoformat(timespec="seconds"),
        "commit": commit or "unknown",
        "machine": platform.node(),
        "python": platform.python_version(),
        "faults": session.config._fault_rows,
    }
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(record, indent=1))


@pytest.fixture
def standins(tmp_path, monkeypatch) -> Path:
    """The stand-in batch and grid commands (backends/standins/bin) first on PATH, with their
    state in a fresh directory (returned)."""
    import os

    from backends.standins import bin_dir

    monkeypatch.setenv("PATH", f"{bin_dir()}:{os.environ['PATH']}")
    state = tmp_path / "standin-state"
    monkeypatch.setenv("AGC_STANDIN_STATE", str(state))
    return state


@pytest.fixture
def dirac_standins(standins) -> Path:
    """:func:`standins`; the DIRAC stand-in's own state directory."""
    return standins / "dirac"


@pytest.fixture
def drawn(monkeypatch) -> list:
    """The figures the report's plot functions hand to ``agc.report_figures._render``
    (complete after it saved them)."""
    from agc import report_figures

    figures = []
    real = report_figures._render

    def keep(fig, *args, **kwargs):
        figures.append(fig)
        return real(fig, *args, **kwargs)

    monkeypatch.setattr(report_figures, "_render", keep)
    return figures
