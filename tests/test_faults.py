"""Faults injected for real: catalogs that lie or repeat themselves, two runs on one output, a
run killed with SIGKILL while it runs, the permissions of what a run writes."""

from __future__ import annotations

import json
import logging
import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import assert_same_histograms

from agc import RunConfig, run
from agc.catalog import CatalogError
from agc.errors import UserError
from agc.outputs import OutputError, OutputLock


def _catalog(tmp_path: Path, entries: dict) -> Path:
    """A catalog {process: {variation: [(path, nevts), ...]}}."""
    catalog = {
        process: {
            variation: {
                "nevts_total": sum(n for _, n in files if isinstance(n, int)),
                "files": [{"path": str(p), "nevts": n} for p, n in files],
            }
            for variation, files in variations.items()
        }
        for process, variations in entries.items()
    }
    path = tmp_path / "catalog.json"
    path.write_text(json.dumps(catalog))
    return path


def _file(small_catalog: Path, process: str, variation: str = "nominal", i: int = 0):
    entry = json.loads(small_catalog.read_text())[process][variation]["files"][i]
    return small_catalog.parent / entry["path"], entry["nevts"]


def _run(catalog, **kw):
    kw.setdefault("mode", "inprocess")
    kw.setdefault("fit", False)
    return run(RunConfig(catalog=str(catalog), chunksize=1000, **kw), progress=False, write=False)


# -- catalogs ----------------------------------------------------------------------------
@pytest.mark.fault("a file listed twice in one sample", "failed clearly", histograms="none written")
def test_a_file_listed_twice_in_a_sample_is_refused(small_catalog, tmp_path):
    path, n = _file(small_catalog, "ttbar", "PS_var")
    catalog = _catalog(tmp_path, {"ttbar": {"PS_var": [(path, n), (path, n)]}})
    with pytest.raises(CatalogError, match="ttbar__PS_var: .* listed more than once"):
        _run(catalog)


@pytest.mark.fault(
    "two samples sharing a file", "survived", histograms="each sample filled as in a run of its own"
)
def test_samples_sharing_a_file_each_get_their_own_histograms(small_catalog, tmp_path, caplog):
    """ttbar scaleup reusing the nominal file: both samples are filled, as if run apart."""
    path, n = _file(small_catalog, "ttbar")
    shared = _catalog(tmp_path, {"ttbar": {"nominal": [(path, n)], "scaleup": [(path, n)]}})
    with caplog.at_level(logging.WARNING, logger="agc.catalog"):
        both = _run(shared)
    assert f"{path} is an input of ttbar__nominal and ttbar__scaleup" in caplog.text
    assert both.events_per_sample == {"ttbar__nominal": n, "ttbar__scaleup": n}
    alone = {}
    for variation in ("nominal", "scaleup"):
        (tmp_path / variation).mkdir()
        one = _catalog(tmp_path / variation, {"ttbar": {variation: [(path, n)]}})
        alone.update(_run(one).histograms)
    for region in ("4j1b", "4j2b"):  # pseudodata needs samples these catalogs do not have
        alone.pop(f"{region}_pseudodata", None)
    assert both.histograms["4j2b_ttbar"].sum().value > 0
    assert_same_histograms(alone, both.histograms, rtol=0)


@pytest.mark.fault(
    "catalog nevts negative, zero, fractional or text", "failed clearly", histograms="none written"
)
@pytest.mark.parametrize(
    ("nevts", "needle"),
    [
        (-5, "nevts -5 is not a positive whole number"),
        (0, "nevts 0 is not a positive whole number"),
        (2999.7, "nevts 2999.7 is not a positive whole number"),
        ("lots", "nevts 'lots' is not a positive whole number"),
        (True, "nevts True is not a positive whole number"),
    ],
)
def test_bad_event_counts_are_refused_naming_the_file(small_catalog, tmp_path, nevts, needle):
    path, _ = _file(small_catalog, "wjets")
    with pytest.raises(CatalogError, match=needle):
        _run(_catalog(tmp_path, {"wjets": {"nominal": [(path, nevts)]}}))


@pytest.mark.fault("catalog path null", "failed clearly", histograms="none written")
def test_a_missing_path_is_refused(small_catalog, tmp_path):
    catalog = _catalog(tmp_path, {"wjets": {"nominal": [("x", 10)]}})
    data = json.loads(catalog.read_text())
    data["wjets"]["nominal"]["files"][0]["path"] = None
    catalog.write_text(json.dumps(data))
    with pytest.raises(CatalogError, match="wjets__nominal: a file has path None"):
        _run(catalog)


@pytest.mark.fault(
    "catalog nevts below the file's entries", "failed clearly", histograms="none written"
)
@pytest.mark.parametrize("engine", ["chunked", "dask-awkward"])
def test_a_catalog_that_undercounts_a_file_is_refused(small_catalog, tmp_path, engine):
    """A catalog giving 2000 events for a 4000-event file would silently drop half of it."""
    path, n = _file(small_catalog, "wjets")
    catalog = _catalog(tmp_path, {"wjets": {"nominal": [(path, n // 2)]}})
    mode = {"engine": engine, "mode": "dask", "workers": 1} if engine != "chunked" else {}
    with pytest.raises(UserError, match=f"nevts' is {n // 2} but the file has {n} entries.*"
                       'give the entry "partial": true'):  # fmt: skip
        _run(catalog, **mode)


def test_a_deliberately_partial_catalog_entry_reads_the_first_events(small_catalog, tmp_path):
    """``"partial": true``: the first nevts events of a longer file, normalised to them."""
    path, n = _file(small_catalog, "wjets")
    catalog = _catalog(tmp_path, {"wjets": {"nominal": [(path, n // 2)]}})
    data = json.loads(catalog.read_text())
    data["wjets"]["nominal"]["files"][0]["partial"] = True
    catalog.write_text(json.dumps(data))
    result = _run(catalog)
    assert result.events_per_sample == {"wjets__nominal": n // 2}
    assert result.record.chunks == 2 and not result.record.partial  # asked for, not lost
    data["wjets"]["nominal"]["files"][0]["nevts"] = n + 1  # longer than the file: still refused
    catalog.write_text(json.dumps(data))
    with pytest.raises(UserError, match=f"nevts' is {n + 1} but the file has {n} entries.*re-copy"):
        _run(catalog)
    data["wjets"]["nominal"]["files"][0]["partial"] = "yes"
    catalog.write_text(json.dumps(data))
    with pytest.raises(CatalogError, match="partial 'yes' must be true or false"):
        _run(catalog)


@pytest.mark.fault("--samples with an unknown key", "failed clearly", histograms="none written")
def test_unknown_samples_list_the_known_ones(small_catalog):
    with pytest.raises(CatalogError, match="ttbar__bogus not in the catalog; known: .*wjets"):
        _run(small_catalog, samples=("ttbar__bogus",))


# -- outputs -----------------------------------------------------------------------------
def _config(small_catalog, out):
    return RunConfig(
        catalog=str(small_catalog),
        mode="inprocess",
        samples=("ttbar__PS_var",),
        fit=False,
        output_dir=str(out),
    )


@pytest.mark.fault(
    "a run on an output another run holds", "failed clearly", histograms="refused before any work"
)
def test_a_second_run_on_a_busy_output_is_refused_before_any_work(small_catalog, tmp_path):
    out = tmp_path / "out"
    with OutputLock(out, "other-run"):  # held by a live process: this one
        with pytest.raises(OutputError, match="run other-run .* is writing it"):
            run(_config(small_catalog, out), progress=False)
    assert not out.exists()
    result = run(_config(small_catalog, out), progress=False)  # released: fine now
    assert result.run_dir == out and not (tmp_path / ".out.lock").exists()


def test_what_a_run_writes_is_readable_by_others(small_catalog, tmp_path):
    """Outputs get the usual permissions (0666 less the umask), not a temporary file's 0600."""
    old = os.umask(0o022)
    try:
        result = run(_config(small_catalog, tmp_path / "out"), progress=False)
    finally:
        os.umask(old)
    for name in ("histograms.root", "histograms.json", "summary.json"):
        assert stat.S_IMODE((result.run_dir / name).stat().st_mode) == 0o644, name


_KILLED_RUN = """
import sys, time
import agc.engines
from agc import RunConfig, run
from agc.chunks import process_chunk

def slow(task):
    time.sleep(0.5)
    return process_chunk(task)

agc.engines.process_chunk = slow
run(RunConfig(catalog=sys.argv[1], mode="inprocess", chunksize=500, fit=False,
              output_dir=sys.argv[2]), progress=False)
"""


def _start_slow_run(small_catalog, out: Path) -> subprocess.Popen:
    """A run in another process, slowed down, once it holds its output (its staging exists)."""
    child = subprocess.Popen([sys.executable, "-c", _KILLED_RUN, str(small_catalog), str(out)])
    try:
        deadline = time.monotonic() + 60
        while not list(out.parent.glob(f".{out.name}.*.partial")) and time.monotonic() < deadline:
            assert child.poll() is None, "the run ended before it held its output"
            time.sleep(0.05)
        assert list(out.parent.glob(f".{out.name}.*.partial")), "no staging directory appeared"
    except BaseException:
        child.kill()
        child.wait(timeout=30)
        raise
    return child


@pytest.mark.fault(
    "two concurrent runs on one output (processes)",
    "failed clearly",
    histograms="the first run keeps its output",
)
def test_two_runs_on_one_output_the_second_is_refused(small_catalog, tmp_path):
    out = tmp_path / "out"
    first = _start_slow_run(small_catalog, out)
    try:
        with pytest.raises(
            OutputError, match=f"run .*-{first.pid} \\(pid {first.pid} .* is writing it"
        ):
            run(_config(small_catalog, out), progress=False)
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=30)


@pytest.mark.fault(
    "SIGKILL of the main process while processing",
    "failed clearly",
    histograms="nothing that looks complete; the next run completes",
)
def test_a_run_killed_mid_run_leaves_nothing_that_stops_the_next(small_catalog, tmp_path):
    """SIGKILL while processing: no result directory, and the next run takes over the stale
    lock, removes the staging directory left behind and completes."""
    out = tmp_path / "out"
    child = _start_slow_run(small_catalog, out)
    child.send_signal(signal.SIGKILL)
    child.wait(timeout=30)
    assert (tmp_path / ".out.lock").exists() and not out.exists()
    result = run(_config(small_catalog, out), progress=False)
    assert result.run_dir == out and (out / "histograms.root").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


_KILLED_WHILE_WRITING = """
import sys, time
from pathlib import Path
import agc.runner
from agc import RunConfig, run

def stuck(directory, *args):
    Path(sys.argv[3]).write_text(str(directory))  # histograms.root is written by now
    time.sleep(120)

agc.runner.write_record = stuck
run(RunConfig(catalog=sys.argv[1], mode="inprocess", samples=["ttbar__PS_var"], fit=False,
              output_dir=sys.argv[2]), progress=False)
"""


@pytest.mark.fault(
    "SIGKILL of the main process while writing",
    "failed clearly",
    histograms="nothing that looks complete; the next run completes",
)
def test_a_run_killed_while_writing_leaves_nothing_that_looks_complete(small_catalog, tmp_path):
    out, marker = tmp_path / "out", tmp_path / "writing"
    child = subprocess.Popen(
        [sys.executable, "-c", _KILLED_WHILE_WRITING, str(small_catalog), str(out), str(marker)]
    )
    try:
        deadline = time.monotonic() + 120
        while not marker.exists() and time.monotonic() < deadline:
            assert child.poll() is None, "the run ended before it wrote"
            time.sleep(0.05)
        staging = Path(marker.read_text())
        assert (staging / "histograms.root").exists() and staging.name.endswith(".partial")
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=30)
    assert not out.exists()  # half-written outputs stay hidden in the staging directory
    result = run(_config(small_catalog, out), progress=False)
    assert (out / "summary.json").exists() and result.run_dir == out
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "writing"]


# -- small ones ----------------------------------------------------------------------------
@pytest.mark.fault("input server unreachable", "failed clearly", histograms="none written")
def test_an_unreachable_input_is_not_called_corrupt():
    """Nothing listens on loopback port 1: the error says the server cannot be reached."""
    from agc.reader import InputFileError, open_tree

    with pytest.raises(InputFileError, match="cannot be reached .* Check the network"):
        open_tree("http://127.0.0.1:1/inputs/file.root")


@pytest.mark.fault(
    "agc fetch --to a non-empty directory",
    "failed clearly",
    histograms="the user's files untouched",
)
def test_fetch_into_a_non_empty_directory_is_refused(small_catalog, tmp_path):
    from agc.cache import CacheStoreError, ResultStore

    store = tmp_path / "store"
    result = run(
        RunConfig(
            catalog=str(small_catalog),
            mode="inprocess",
            samples=("ttbar__PS_var",),
            fit=False,
            cache=str(store),
            data_lake="only",
        ),
        progress=False,
    )
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "notes.txt").write_text("mine")
    with pytest.raises(CacheStoreError, match="--to .*busy: exists and is not an empty"):
        ResultStore(store).fetch_run(result.run_id, busy)
    assert sorted(p.name for p in busy.iterdir()) == ["notes.txt"]
    fetched = ResultStore(store).fetch_run(result.run_id, tmp_path / "new")
    assert (fetched / "histograms.root").exists()


def test_local_backend_says_which_profile_keys_it_does_not_use(tmp_path, caplog):
    import yaml

    from backends.local import LocalBackend

    profile = tmp_path / "site.yaml"
    profile.write_text(
        yaml.safe_dump(
            {
                "backend": "local",
                "workers": 1,
                "worker": {"cores": 1, "memory": "1GB", "setup": ["source /x"]},
                "local": {"mode": "dask"},
                "log_directory": "logs",
            }
        )
    )
    with caplog.at_level(logging.WARNING, logger="backends.local"):
        backend = LocalBackend(profile=str(profile))
    assert "does not use log_directory, worker.setup" in caplog.text
    assert (backend.mode, backend.workers, backend.memory) == ("dask", 1, "1GB")
    executor = backend.start()
    try:
        (limit,) = {w["memory_limit"] for w in executor.client.scheduler_info()["workers"].values()}
    finally:
        executor.close()
    assert limit == 10**9


# -- full and read-only file systems (a real tmpfs, mounted by the test) -------------------
@pytest.fixture
def tmpfs(tmp_path):
    """``mount(options)``: a tmpfs mounted under tmp_path; every mount is removed afterwards."""
    import shutil

    if shutil.which("mount") is None or os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root and mount(8)")
    mounted = []

    def mount(options: str) -> Path:
        point = tmp_path / f"tmpfs{len(mounted)}"
        point.mkdir()
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(point)],
                              capture_output=True, text=True)  # fmt: skip
        if done.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
        mounted.append(point)
        return point

    yield mount
    for point in mounted:
        subprocess.run(["umount", "-l", str(point)], check=False)


def _full_run(small_catalog, **kw):
    return RunConfig(catalog=str(small_catalog), mode="inprocess", fit=False, **kw)


@pytest.mark.fault(
    "full file system (tmpfs) for the outputs", "failed clearly", histograms="nothing left on it"
)
def test_a_full_disk_for_the_outputs_fails_clearly_and_leaves_nothing(
    small_catalog, tmpfs, monkeypatch
):
    import agc.engines
    import agc.outputs

    disk = tmpfs("size=64k")
    out = disk / "run"
    processed = []
    monkeypatch.setattr(agc.engines, "process_chunk", lambda t: processed.append(t))
    # too little room for what a run writes: refused while planning, before any chunk
    with pytest.raises(OutputError, match="has 0.1 MiB free, a run writes about 8 MiB"):
        run(_full_run(small_catalog, output_dir=str(out)), progress=False)
    assert processed == [] and list(disk.iterdir()) == []
    # room that runs out while writing (the estimate was wrong): the same clean failure
    monkeypatch.undo()
    monkeypatch.setattr(agc.outputs, "EXPECTED_OUTPUT_BYTES", 0)
    with pytest.raises(OutputError, match="writing failed: No space left on device"):
        run(_full_run(small_catalog, output_dir=str(out)), progress=False)
    assert list(disk.iterdir()) == []  # no run directory, no staging, no lock


@pytest.mark.fault(
    "read-only file system (tmpfs) for the outputs",
    "failed clearly",
    histograms="refused before any work",
)
def test_a_read_only_output_is_refused_before_any_work(small_catalog, tmpfs, monkeypatch):
    import agc.engines

    read_only = tmpfs("ro,size=1m")

    def never(task):
        raise AssertionError("a chunk was processed")

    monkeypatch.setattr(agc.engines, "process_chunk", never)
    with pytest.raises(OutputError, match="is not a directory this user can write"):
        run(_full_run(small_catalog, output_dir=str(read_only / "run")), progress=False)


@pytest.mark.fault(
    "full file system (tmpfs) for the cache and data lake",
    "survived",
    histograms="identical (hits + recomputed); no half entries",
)
def test_a_full_cache_store_keeps_the_run_and_no_half_entries(small_catalog, tmpfs, tmp_path):
    """Chunks that do not fit are logged and computed; the data-lake copy is best effort; no
    temporary file or half run stays in the store."""
    from agc.cache import ResultStore

    store = tmpfs("size=96k")
    result = run(
        _full_run(small_catalog, cache=str(store), output_dir=str(tmp_path / "out")),
        progress=False,
    )
    assert result.run_dir == tmp_path / "out" and result.stored_run is None
    assert (result.run_dir / "histograms.root").exists()
    left = [p for p in store.rglob("*") if p.is_file()]
    assert not [p for p in left if p.name.endswith(".tmp")]
    assert not (store / "runs").exists() or not any((store / "runs").iterdir())
    kept = ResultStore(store).entries()
    assert 0 < len(kept) < result.chunks  # some chunks fitted, the rest did not
    again = run(_full_run(small_catalog, cache=str(store), data_lake="off"), progress=False,
                write=False)  # fmt: skip
    assert again.record.cache_hits == len(kept)
    assert_same_histograms(result.histograms, again.histograms, rtol=0)


# -- bad files: fail fast by default, or a partial result with --skip-bad-files ------------
@pytest.fixture
def own_dataset(small_catalog, tmp_path):
    """A private copy of the small dataset (catalog and files) that a test may damage."""
    import shutil

    copy = tmp_path / "dataset"
    shutil.copytree(small_catalog.parent, copy)
    return copy / small_catalog.name


def _truncate(path: Path, size: int = 1024) -> None:
    """Cut the file to its first ``size`` bytes (an interrupted copy)."""
    with open(path, "r+b") as f:
        f.truncate(size)


def _without(catalog: Path, tmp_path: Path, sample: str, i: int) -> Path:
    """The catalog with file ``i`` of ``sample`` left out (what a partial run should equal)."""
    data = json.loads(catalog.read_text())
    process, variation = sample.split("__")
    entry = data[process][variation]
    gone = entry["files"].pop(i)
    entry["nevts_total"] -= gone["nevts"]
    for files in (v["files"] for p in data.values() for v in p.values()):
        for f in files:
            f["path"] = str(catalog.parent / f["path"])
    out = tmp_path / "without.json"
    out.write_text(json.dumps(data))
    return out


@pytest.mark.fault("truncated input file", "failed clearly", histograms="none written")
def test_a_truncated_file_fails_the_run_naming_it(own_dataset):
    path, _ = _file(own_dataset, "ttbar", "nominal", 1)
    for size in (path.stat().st_size // 2, 1024):  # baskets cut off, or the metadata too
        _truncate(path, size)
        with pytest.raises(UserError, match=f"(?s){path}: .*(truncated or|probably) corrupt"):
            _run(own_dataset)


@pytest.mark.fault(
    "truncated input file, --skip-bad-files",
    "partial",
    histograms="flagged; equal to a run without the file",
)
@pytest.mark.parametrize(
    "engine", ["chunked", pytest.param("dask-awkward", marks=pytest.mark.slow)]
)
def test_skip_bad_files_leaves_out_a_truncated_file_and_renormalises(
    own_dataset, tmp_path, engine, fault_details
):
    """The partial result equals a run whose catalog never had the file (the sample normalised
    to the events it processed), and says what it lost."""
    path, nevts = _file(own_dataset, "ttbar", "nominal", 1)
    _truncate(path)
    mode = "dask" if engine == "dask-awkward" else "inprocess"
    partial = _run(own_dataset, skip_bad_files=True, engine=engine, mode=mode, workers=1)
    clean = _run(_without(own_dataset, tmp_path, "ttbar__nominal", 1))
    assert_same_histograms(partial.histograms, clean.histograms, rtol=1e-12)
    assert partial.weights == clean.weights
    assert partial.record.partial and not clean.record.partial
    assert partial.record.events_lost == nevts == 3000
    fault_details.update(
        events_lost=partial.record.events_lost, events=partial.record.events + 3000
    )
    assert partial.summary["events_lost_per_sample"] == {"ttbar__nominal": nevts}
    assert {c["path"] for c in partial.summary["skipped_chunks"]} == {str(path)}
    assert all("truncated or corrupt" in c["reason"] for c in partial.summary["skipped_chunks"])
    assert partial.events_per_sample["ttbar__nominal"] == clean.events_per_sample["ttbar__nominal"]


def _rewrite(path: Path, *, drop: str | None = None, basket: int | None = None) -> None:
    """Write the file again with uproot, in NanoAOD's layout (``Jet_pt`` counted by ``nJet``),
    without the branch ``drop``, with baskets of ``basket`` entries."""
    import awkward as ak
    import uproot

    with uproot.open(path) as f:
        events = f["Events"].arrays()
    columns: dict = {}
    for name in events.fields:
        collection, _, field = name.partition("_")
        if name == drop or name in {"nJet", "nElectron", "nMuon"}:
            continue
        if collection in {"Jet", "Electron", "Muon"}:
            columns.setdefault(collection, {})[field] = events[name]
        else:
            columns[name] = events[name]
    size = basket or len(events)
    path.unlink()
    with uproot.recreate(path) as f:
        for start in range(0, len(events), size):
            part = {
                k: ak.zip({n: c[start : start + size] for n, c in v.items()})
                if isinstance(v, dict) else v[start : start + size]
                for k, v in columns.items()
            }  # fmt: skip
            if start == 0:
                f.mktree("Events", {k: ak.type(v).content for k, v in part.items()})
            f["Events"].extend(part)


def _corrupt_basket(path: Path, branch: str, i: int) -> None:
    """Overwrite the middle of basket ``i`` of ``branch`` (the file still opens)."""
    import uproot

    with uproot.open(path) as f:
        b = f["Events"][branch]
        seek, size = int(b.member("fBasketSeek")[i]), int(b.member("fBasketBytes")[i])
    with open(path, "r+b") as f:
        f.seek(seek + size // 2)
        f.write(b"\xff" * 16)


@pytest.mark.fault(
    "corrupt basket, --skip-bad-files",
    "partial",
    histograms="flagged; equal to the file's other chunks",
)
def test_skip_bad_files_leaves_out_only_the_corrupt_chunks(
    own_dataset, small_catalog, fault_details
):
    """Chunks whose baskets are damaged are left out, the others of the file kept: the result
    is the clean file's surviving chunks, scaled to the events processed."""
    from agc.chunks import process_chunk
    from agc.constants import sample_weight
    from agc.histograms import add_pseudodata, merge
    from agc.runner import make_plan

    path, nevts = _file(own_dataset, "ttbar", "nominal", 1)
    _rewrite(path, basket=1000)
    _corrupt_basket(path, "Jet_pt", 1)
    partial = _run(own_dataset, skip_bad_files=True)
    skipped = partial.summary["skipped_chunks"]
    assert [(c["path"], c["entry_start"], c["entry_stop"]) for c in skipped] == [
        (str(path), 1000, 2000)
    ]
    assert "Jet_pt" in skipped[0]["reason"] or "decompress" in skipped[0]["reason"]
    assert partial.record.events_lost == 1000
    fault_details.update(events_lost=1000, events=partial.record.events + 1000)
    lost = {(1000, 2000)}

    # the expected histograms, from the undamaged copy, chunk by chunk
    config = RunConfig(catalog=str(small_catalog), chunksize=1000)
    plan = make_plan(config, str(small_catalog), write=False)
    kept = [
        t for t in plan.tasks
        if not (t.chunk.sample == "ttbar__nominal" and t.chunk.path.endswith(path.name)
                and (t.chunk.entry_start, t.chunk.entry_stop) in lost)
    ]  # fmt: skip
    processed = sum(t.chunk.nevents for t in kept if t.chunk.sample == "ttbar__nominal")
    factor = sample_weight("ttbar", processed) / plan.fileset["ttbar__nominal"].weight
    parts = []
    for t in kept:
        h = process_chunk(t).histograms
        parts.append({k: v * factor for k, v in h.items()} if t.chunk.sample == "ttbar__nominal"
                     else h)  # fmt: skip
    assert_same_histograms(partial.histograms, add_pseudodata(merge(parts)), rtol=0)


@pytest.mark.fault(
    "input file lacking a branch (fails; partial with --skip-bad-files)",
    "partial",
    histograms="flagged; the sample empty",
)
def test_skip_bad_files_leaves_out_a_file_without_a_branch(own_dataset, tmp_path, fault_details):
    path, nevts = _file(own_dataset, "wjets")
    _rewrite(path, drop="Jet_btagCSVV2")
    with pytest.raises(UserError, match=f"{path}: tree 'Events' lacks branch.*Jet_btagCSVV2"):
        _run(own_dataset)
    partial = _run(own_dataset, skip_bad_files=True)
    assert partial.events_per_sample["wjets__nominal"] == 0
    assert partial.record.events_lost == nevts
    fault_details.update(events_lost=nevts, events=partial.record.events + nevts)
    assert "wjets__nominal" not in partial.weights  # no events, no weight
    assert not any(h.sum().value for k, h in partial.histograms.items() if "_wjets" in k)
    assert not any(k.endswith("_pseudodata") for k in partial.histograms)  # needs W+jets


@pytest.mark.fault(
    "partial result as shown: CLI, summary.json, runs.csv, tasks.csv",
    "partial",
    histograms="flagged",
)
def test_a_partial_run_is_marked_in_every_output(own_dataset, tmp_path):
    import pandas as pd

    path, nevts = _file(own_dataset, "ttbar", "nominal", 1)
    _truncate(path)
    out = tmp_path / "out"
    done = subprocess.run(
        [sys.executable, "-m", "agc", "run", "--catalog", str(own_dataset), "--skip-bad-files",
         "--mode", "inprocess", "--no-fit", "--chunksize", "1000", "--output", str(out),
         "--quiet"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "PARTIAL RESULT: 3 of" in done.stderr
    assert f"{path} (ttbar__nominal, 3,000 events): " in done.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert summary["partial"] is True and summary["events_lost"] == nevts
    runs = pd.read_csv(out / "metrics" / "runs.csv")
    assert bool(runs["partial"].iloc[0]) and int(runs["events_lost"].iloc[0]) == nevts
    tasks = pd.read_csv(out / "metrics" / "tasks.csv")
    assert sorted(tasks.loc[tasks["skipped"], "path"].unique()) == [str(path)]


@pytest.mark.fault(
    "bad file skipped with a cache, then repaired",
    "survived",
    histograms="identical to a clean run",
)
def test_skipped_chunks_are_not_cached_and_are_read_once_the_file_is_back(own_dataset, tmp_path):
    import shutil

    path, _ = _file(own_dataset, "ttbar", "nominal", 1)
    good = tmp_path / "good.root"
    shutil.copy(path, good)
    _truncate(path)
    store = str(tmp_path / "store")
    first = _run(own_dataset, skip_bad_files=True, cache=store)
    shutil.copy(good, path)  # the file is repaired
    second = _run(own_dataset, skip_bad_files=True, cache=store)
    assert first.record.partial and not second.record.partial
    assert second.record.cache_hits == second.chunks - first.record.chunks_skipped
    assert_same_histograms(second.histograms, _run(own_dataset).histograms, rtol=0)


@pytest.mark.fault(
    "read-only file system (tmpfs) for the cache and data lake",
    "survived",
    histograms="identical; the run kept locally, the copy refused with a warning",
)
def test_a_read_only_cache_store_keeps_the_run(small_catalog, tmpfs, tmp_path, caplog):
    from agc.cache import ResultStore

    store = tmpfs("size=1m")
    first = run(_full_run(small_catalog, cache=str(store), data_lake="off"), progress=False,
                write=False)  # fmt: skip
    subprocess.run(["mount", "-o", "remount,ro", str(store)], check=True)
    with caplog.at_level(logging.WARNING):
        result = run(
            _full_run(small_catalog, cache=str(store), output_dir=str(tmp_path / "out")),
            progress=False,
        )
    assert result.run_dir == tmp_path / "out" and result.stored_run is None
    assert (result.run_dir / "summary.json").exists()
    assert "could not be stored" in caplog.text or "read-only" in caplog.text.lower()
    assert result.record.cache_hits == result.chunks == len(ResultStore(store).entries())
    assert_same_histograms(result.histograms, first.histograms, rtol=0)


@pytest.mark.fault("--workers 1000 for one chunk", "survived", histograms="one worker started")
@pytest.mark.parametrize("mode", ["processes", "dask"])
def test_more_workers_than_chunks_starts_one_per_chunk(small_catalog, caplog, mode):
    with caplog.at_level(logging.WARNING, logger="backends.base"):
        result = run(
            RunConfig(
                catalog=str(small_catalog),
                samples=("ttbar__PS_var",),
                mode=mode,
                workers=1000,
                fit=False,
            ),
            progress=False,
            write=False,
        )
    assert result.chunks == 1 and result.workers == 1
    assert "1000 workers requested for 1 task(s): starting 1" in caplog.text


def test_a_site_backend_without_the_tasks_argument_still_starts():
    from backends.base import BaseExecutor, start_backend

    class OldStyle:
        name, description = "old", "a site backend written before start(tasks=)"

        def start(self):
            return BaseExecutor()

    assert isinstance(start_backend(OldStyle(), 5), BaseExecutor)


# -- remote inputs and stores (real xrootd daemons on loopback) ----------------------------
@pytest.fixture
def origin(tmp_path):
    """A real xrootd origin on 127.0.0.1 serving the local file system; stopped afterwards."""
    from agc import xcache

    reason = xcache.missing_tools()
    if reason:
        pytest.skip(f"XRootD not testable: {reason}")
    servers = [xcache.start_origin(tmp_path / "xrootd")]
    yield servers
    for server in servers:
        server.stop()


def _remote_catalog(small_catalog, tmp_path, origin, sample=("ttbar", "PS_var")) -> Path:
    """One sample's files, copied to tmp_path and listed as root:// URLs of the origin."""
    import shutil

    from agc import xcache

    files = []
    for i, f in enumerate(json.loads(small_catalog.read_text())[sample[0]][sample[1]]["files"]):
        copy = tmp_path / "served" / f"{i}.root"
        copy.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(small_catalog.parent / f["path"], copy)
        _rewrite(copy, basket=500)  # each chunk reads baskets of its own, over the network
        files.append((f"{origin.url}/{copy}", f["nevts"]))
    xcache.make_readable(tmp_path / "served")
    return _catalog(tmp_path / "served", {sample[0]: {sample[1]: files}})


def _after_first_chunk(monkeypatch, action) -> None:
    """Call ``action()`` once, when the first chunk has been analysed (in-process runs)."""
    import agc.chunks

    analyse, done = agc.chunks.analyse, []

    def hooked(*args, **kwargs):
        result = analyse(*args, **kwargs)
        if not done:
            done.append(True)
            action()
        return result

    monkeypatch.setattr(agc.chunks, "analyse", hooked)


@pytest.mark.fault(
    "XRootD origin stopped mid-run, back after 20 s",
    "survived",
    histograms="bit-identical to a local run",
)
@pytest.mark.slow
def test_an_xrootd_origin_restarted_mid_run_is_retried(
    small_catalog, tmp_path, origin, monkeypatch, caplog
):
    """The origin stops after the first chunk and is back 20 s later, longer than the XRootD
    client bridges by reconnecting (3 attempts 5 s apart, :data:`agc.reader.XROOTD_DEFAULTS`):
    the next read fails, is retried on a new connection, and the histograms are those of a
    local run."""
    import threading

    from agc import xcache

    catalog = _remote_catalog(small_catalog, tmp_path, origin[0])

    def restart():
        origin[0].stop()
        work, port = tmp_path / "xrootd", origin[0].port
        threading.Timer(20.0, lambda: origin.append(xcache.start_origin(work, port=port))).start()

    _after_first_chunk(monkeypatch, restart)
    with caplog.at_level(logging.WARNING, logger="agc.reader"):
        remote = _run(catalog)
    assert len(origin) == 2 and "retry 1 of 3" in caplog.text
    local = _run(small_catalog, samples=("ttbar__PS_var",))
    assert not remote.record.partial
    assert_same_histograms(remote.histograms, local.histograms, rtol=0)


@pytest.mark.fault(
    "XRootD origin stopped mid-run for good (fails; partial with --skip-bad-files)",
    "partial",
    histograms="flagged; the lost chunk counted",
)
@pytest.mark.slow
def test_an_xrootd_origin_gone_mid_run_fails_clearly_or_gives_a_partial_result(
    small_catalog, tmp_path, origin, monkeypatch, fault_details
):
    from agc.reader import InputFileError

    catalog = _remote_catalog(small_catalog, tmp_path, origin[0])
    _after_first_chunk(monkeypatch, origin[0].stop)
    with pytest.raises(InputFileError, match=f"{origin[0].url}/.*0.root: .*(failed|reached)"):
        _run(catalog, read_retries=0)
    origin.append(__import__("agc.xcache").xcache.start_origin(tmp_path / "xrootd2"))
    catalog = _remote_catalog(small_catalog, tmp_path / "again", origin[-1])
    _after_first_chunk(monkeypatch, origin[-1].stop)
    partial = _run(catalog, read_retries=0, skip_bad_files=True)
    assert partial.record.partial and partial.record.events_lost == 1000
    assert partial.events_per_sample == {"ttbar__PS_var": 1000}
    fault_details.update(events_lost=partial.record.events_lost, events=2000)


@pytest.mark.fault(
    "root:// cache store that never answers",
    "failed clearly",
    histograms="refused within the probe deadline",
)
def test_an_unreachable_cache_store_fails_the_run_before_any_work(
    small_catalog, tmp_path, monkeypatch
):
    """A server that accepts connections and never answers (a hung XRootD store): the probe
    gives up after its deadline and the run stops with a message naming the store."""
    import socket

    import agc.engines
    from agc import xcache
    from agc.cache import CacheStoreError

    if xcache.missing_tools():
        pytest.skip(f"root:// stores not testable: {xcache.missing_tools()}")

    def never(task):
        raise AssertionError("a chunk was processed")

    monkeypatch.setattr(agc.engines, "process_chunk", never)
    monkeypatch.setenv("AGC_STORE_PROBE_TIMEOUT", "2")
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)  # connections complete in the kernel; nobody ever answers
        url = f"root://127.0.0.1:{silent.getsockname()[1]}//cache"
        started = time.monotonic()
        with pytest.raises(CacheStoreError, match=f"--cache {url}: .*did not answer within 2 s"):
            run(_full_run(small_catalog, cache=url, output_dir=str(tmp_path / "o")), progress=False)
        assert time.monotonic() - started < 60  # bounded: the run did not hang
    assert not (tmp_path / "o").exists()


@pytest.mark.fault(
    "a store left with temporary files and a half-uploaded run by writers that died",
    "survived",
    histograms="unaffected; stale leftovers swept, young ones and foreign files kept",
)
def test_cache_stats_sweeps_what_dead_writers_left_and_nothing_else(tmp_path):
    from agc.cache.store import ResultStore
    from agc.cli import main

    root = tmp_path / "store"
    store = ResultStore(root)
    store.put("ab" * 32, b"payload", {"sample": "s"})
    shard = root / "chunks" / "ab"
    stale_tmp = shard / f"{'ab' * 32}.agc.{'0' * 32}.tmp"
    young_tmp = shard / f"{'ab' * 32}.agc.{'1' * 32}.tmp"
    foreign = shard / "notes.tmp"  # not a name the store writes
    half_run = root / "runs" / "20261201-r-1.partial"
    for path in (stale_tmp, young_tmp, foreign, half_run / "summary.json"):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"x" * 100)
    old = time.time() - 2 * 3600
    for path in (stale_tmp, foreign, half_run / "summary.json", half_run):
        os.utime(path, (old, old))
    assert sorted(Path(p).name for p, _ in store.leftovers()) == [
        "20261201-r-1.partial",
        stale_tmp.name,
    ]
    assert store.list_runs() == []  # a half run is never listed or fetched
    assert main(["cache", "stats", "--cache", str(root)]) == 0
    assert not stale_tmp.exists() and not half_run.exists()
    assert young_tmp.exists() and foreign.exists()  # a live writer's file; not ours
    assert store.get("ab" * 32)[0] == b"payload"
