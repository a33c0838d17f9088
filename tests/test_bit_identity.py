"""Every histogram bit for bit as the harness made it before the Runner restructuring.

The source tree of :data:`BASELINE` (main before ``agc/run.py`` became the row of stages of
``agc/runner.py``) is taken from git and run in a fresh interpreter on the same inputs as the
current code: the default run (the default synthetic dataset, default options) and several
``--catalog`` runs (chunk sizes, sample and file selections, no systematics, a process pool,
Dask, the dask-awkward engine, a warm cache). Values and variances must be equal to the last bit,
flow bins included.
"""

from __future__ import annotations

import json
import os
import pickle
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
from conftest import assert_same_histograms

from agc import RunConfig, run

REPO = Path(__file__).resolve().parents[1]
#: main before the Runner restructuring.
BASELINE = "a3ccb9f"

#: Runs of the baseline's API (``backend_options``) and of the current one, by name.
CATALOG_RUNS: dict[str, dict] = {
    "chunks-100k": {"chunksize": 100_000, "mode": "inprocess"},
    "chunks-700": {"chunksize": 700, "mode": "inprocess"},
    "two-samples": {"samples": ["ttbar__nominal", "wjets__nominal"], "chunksize": 1100},
    "one-file-per-sample": {"n_files": 1, "chunksize": 1500, "mode": "inprocess"},
    "no-systematics": {"systematics": False, "chunksize": 2000, "mode": "inprocess"},
    "process-pool": {"chunksize": 900, "mode": "processes", "workers": 2},
    "dask": {"chunksize": 1500, "mode": "dask", "workers": 2},
    "dask-awkward": {"chunksize": 1500, "mode": "dask", "workers": 2, "engine": "dask-awkward"},
}

_BASELINE_RUNS = """
import json, pickle, sys
from agc.run import RunConfig, run
specs = json.loads(sys.argv[1])
out = {}
for name, spec in specs.items():
    backend = {k: spec.pop(k) for k in ("mode", "workers") if k in spec}
    if "samples" in spec:
        spec["samples"] = tuple(spec["samples"])
    config = RunConfig(backend_options=backend, fit=False, **spec)
    out[name] = run(config, progress=False, write=False).histograms
with open(sys.argv[2], "wb") as f:
    pickle.dump(out, f)
"""


def _baseline_tree(tmp: Path) -> Path:
    if shutil.which("git") is None:
        pytest.skip("git is not installed: the baseline source tree cannot be extracted")
    archive = tmp / "baseline.tar"
    try:
        with open(archive, "wb") as f:
            subprocess.run(
                ["git", "-C", str(REPO), "archive", BASELINE, "agc", "backends"],
                stdout=f,
                stderr=subprocess.PIPE,
                check=True,
            )
    except subprocess.CalledProcessError as err:
        pytest.skip(f"commit {BASELINE} is not in this clone ({err.stderr.decode().strip()})")
    tree = tmp / "baseline"
    with tarfile.open(archive) as t:
        t.extractall(tree, filter="data")
    return tree


def baseline_histograms(tmp: Path, specs: dict[str, dict]) -> dict[str, dict]:
    """The histograms of each run spec, made by the baseline source tree."""
    tree = _baseline_tree(tmp)
    out = tmp / "baseline.pkl"
    done = subprocess.run(
        [sys.executable, "-c", _BASELINE_RUNS, json.dumps(specs), str(out)],
        env={**os.environ, "PYTHONPATH": str(tree)},
        cwd=tmp,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    with open(out, "rb") as f:
        return pickle.load(f)


def _current(spec: dict) -> dict:
    spec = dict(spec)
    if "samples" in spec:
        spec["samples"] = tuple(spec["samples"])
    return run(RunConfig(fit=False, **spec), progress=False, write=False).histograms


@pytest.mark.slow
def test_catalog_runs_are_bit_identical_to_the_baseline(small_catalog, tmp_path):
    specs = {name: {"catalog": str(small_catalog), **s} for name, s in CATALOG_RUNS.items()}
    before = baseline_histograms(tmp_path, {k: dict(v) for k, v in specs.items()})
    for name, spec in specs.items():
        assert_same_histograms(before[name], _current(spec), rtol=0, what=name)
    # a warm cache gives the cached chunks' histograms: still the same bits
    store = str(tmp_path / "store")
    spec = {**specs["chunks-700"], "cache": store}
    _current(spec)
    assert_same_histograms(before["chunks-700"], _current(spec), rtol=0, what="warm cache")


@pytest.mark.slow
def test_the_default_run_is_bit_identical_to_the_baseline(tmp_path):
    """The main job (``agc run``): the default dataset and options (no fit: it reads them)."""
    from agc import synth

    catalog = str(synth.ensure_default_dataset())
    before = baseline_histograms(tmp_path, {"default": {"catalog": catalog}})
    assert len(before["default"]) == 124
    assert_same_histograms(before["default"], _current({}), rtol=0, what="default run")
