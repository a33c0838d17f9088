"""Step-level cache: codec, keys, store, and whole runs (hits, misses, crash restart, data lake)."""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

import hist
import numpy as np
import pytest
from conftest import assert_same_histograms

import agc.engines
from agc import RunConfig, run
from agc.cache import CachingEngine, codec, keys
from agc.cache.store import CacheStoreError, ResultStore, parse_age, parse_size
from agc.chunks import ChunkTask, process_chunk
from agc.engines import ChunkedEngine
from agc.errors import UserError
from agc.histograms import new_histogram
from agc.vocabulary import ANALYSIS_BRANCHES

SAMPLES = ("ttbar__nominal", "ttbar__PS_var", "wjets__nominal", "single_top_tW__nominal")
EVENTS_PER_FILE = 1500
CHUNKSIZE = 500  # 3 chunks per file


@pytest.fixture(scope="module")
def catalog(tmp_path_factory) -> str:
    from agc import synth

    out = tmp_path_factory.mktemp("cache-data")
    events = {s: (1, EVENTS_PER_FILE) for s in SAMPLES}
    return str(
        synth.generate(out, events=events, layout="minimal", seed=7, workers=1, progress=False)
    )


def config(catalog, store, **kw) -> RunConfig:
    kw.setdefault("mode", "inprocess")
    return RunConfig(
        catalog=catalog, chunksize=CHUNKSIZE, cache=str(store) if store else None, **kw
    )


@pytest.fixture(scope="module")
def reference(catalog, tmp_path_factory):
    """The histograms of an uncached run: every cached run must reproduce them exactly."""
    return run(config(catalog, None), progress=False, write=False).histograms


def assert_same(a: dict[str, hist.Hist], b: dict[str, hist.Hist], exact: bool = True) -> None:
    """Equal histograms: bit for bit, or (``exact=False``, results merged in completion order
    by a pool) up to the rounding of a different summation order."""
    assert_same_histograms(a, b, rtol=0 if exact else 1e-12)


N_CHUNKS = len(SAMPLES) * EVENTS_PER_FILE // CHUNKSIZE


# -- codec ------------------------------------------------------------------------------
def test_codec_round_trip_is_bit_identical_with_flow():
    h = new_histogram("4j1b")
    rng = np.random.default_rng(1)
    h.fill(rng.uniform(0, 700, 500), weight=rng.uniform(0.1, 2, 500))  # under- and overflow
    d = hist.Hist(hist.axis.Variable([0, 1, 5]), storage=hist.storage.Double()).fill([0.5, 3, 9])
    nevents, out, nbytes = codec.decode(codec.encode(42, {"a": h, "b": d}, bytes_read=123))
    assert (nevents, nbytes) == (42, 123)
    assert out["a"] == h and out["b"] == d
    assert out["a"].view(flow=True).value[-1] > 0  # overflow survived


def test_codec_refuses_pickled_payloads():
    import io
    import pickle

    buffer = io.BytesIO()
    np.savez(buffer, meta=np.array([pickle.dumps("x")], dtype=object))
    with pytest.raises(ValueError):
        codec.decode(buffer.getvalue())


# -- keys -------------------------------------------------------------------------------
def _task(catalog, **kw) -> ChunkTask:
    from agc.catalog import build_fileset, load_catalog, make_chunks

    cat, base = load_catalog(catalog)
    chunk = make_chunks(build_fileset(cat, base, samples=("ttbar__nominal",)), CHUNKSIZE)[0]
    return ChunkTask(
        0,
        chunk,
        ANALYSIS_BRANCHES,
        kw.get("systematics", True),
        kw.get("seed", 1),
        kw.get("io_only", False),
    )


def test_key_is_stable_and_changes_with_physics_config(catalog):
    cache = CachingEngine(ChunkedEngine(), ResultStore(os.devnull + "-unused"))
    base, _ = cache.key(_task(catalog))
    assert base == cache.key(_task(catalog))[0]
    assert (
        len(
            {
                base,
                cache.key(_task(catalog, systematics=False))[0],
                cache.key(_task(catalog, seed=2))[0],
                cache.key(_task(catalog, io_only=True))[0],
            }
        )
        == 4
    )


def test_fingerprint_follows_cut_constants(monkeypatch):
    import agc.analysis.selection as selection

    before = keys.code_fingerprint()
    monkeypatch.setattr(selection, "BTAG_THRESHOLD", 0.6)
    assert keys.code_fingerprint() != before
    monkeypatch.undo()
    assert keys.code_fingerprint() == before


def test_fingerprint_follows_source_edits(tmp_path, monkeypatch):
    pkg = tmp_path / "fp_demo"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "cuts.py").write_text("def cut(x):\n    return x > 30\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    before = keys.code_fingerprint(("fp_demo",))
    time.sleep(0.01)
    (pkg / "cuts.py").write_text("def cut(x):\n    return x > 25\n")
    assert keys.code_fingerprint(("fp_demo",)) != before


def test_input_identity_is_the_root_uuid_and_falls_back_for_other_files(catalog, tmp_path):
    from agc.catalog import build_fileset, load_catalog

    cat, base = load_catalog(catalog)
    path = build_fileset(cat, base)["ttbar__nominal"].files[0].path
    ident = keys.input_identity(path)
    assert set(ident) == {"uuid", "fEND"}
    # a copy is the same input (mirrors, XCache); a regenerated file is not
    copy = tmp_path / "copy.root"
    copy.write_bytes(Path(path).read_bytes())
    assert keys.input_identity(str(copy)) == ident
    text = tmp_path / "x.parquet"
    text.write_bytes(b"not root")
    other = keys.input_identity(str(text))
    assert other["size"] == 8 and "mtime" in other


# -- store ------------------------------------------------------------------------------
KEY = "ab" * 32


def test_store_round_trip_atomic_and_checksummed(tmp_path, caplog):
    store = ResultStore(tmp_path / "s")
    store.put(KEY, b"payload", {"sample": "x"})
    payload, header = store.get(KEY)
    assert payload == b"payload" and header["meta"] == {"sample": "x"}
    assert [p.name for p in (tmp_path / "s").rglob("*") if p.is_file()] == [f"{KEY}.agc"]
    path = tmp_path / "s" / "chunks" / KEY[:2] / f"{KEY}.agc"
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))
    with caplog.at_level(logging.WARNING):
        assert store.get(KEY) is None
    assert "corrupt" in caplog.text and not path.exists()


def test_store_truncated_entry_is_a_miss(tmp_path):
    store = ResultStore(tmp_path)
    store.put(KEY, b"x" * 100)
    path = next(tmp_path.rglob("*.agc"))
    path.write_bytes(path.read_bytes()[:-10])
    assert store.get(KEY) is None


def test_object_store_needs_commit_marker():
    store = ResultStore(f"memory://agc-test-{os.getpid()}")
    assert store.commit_markers
    store.put(KEY, b"data")
    assert store.get(KEY)[0] == b"data" and len(store.entries()) == 1
    store.fs.rm_file(store._path(KEY) + ".ok")  # a writer died before committing
    assert store.get(KEY) is None and store.entries() == []
    store.clear(runs=True)


def test_lru_eviction_and_expiry(tmp_path):
    store = ResultStore(tmp_path, max_bytes=10_000, max_age=3600)
    keys_ = [f"{i:02d}" * 32 for i in range(4)]
    now = time.time()
    for i, k in enumerate(keys_):
        store.put(k, b"x" * 3000)
        os.utime(store._path(k), (now - 100 * (4 - i), now - 100 * (4 - i)))
    os.utime(store._path(keys_[0]), (now - 7200, now - 7200))  # expired
    store.get(keys_[1])  # a hit makes it the most recently used
    removed = store.evict(max_bytes=7000)
    assert keys_[0] in removed and keys_[2] in removed
    assert {e.key for e in store.entries()} == {keys_[1], keys_[3]}


def test_limits_parse():
    assert parse_size("20GB") == 20_000_000_000 and parse_size("1GiB") == 1024**3
    assert parse_age("30d") == 30 * 86400 and parse_age("90m") == 5400
    with pytest.raises(CacheStoreError):
        parse_size("lots")


# -- whole runs -------------------------------------------------------------------------
def test_cold_then_warm_across_backend_modes_is_identical(catalog, reference, tmp_path):
    store = tmp_path / "store"
    cold = run(config(catalog, store, output_dir=str(tmp_path / "a")), progress=False)
    assert (cold.record.cache_hits, cold.record.cache_misses) == (0, N_CHUNKS)
    assert len(ResultStore(store).entries()) == N_CHUNKS
    # other backend mode, worker count, output directory and label: all hits
    warm = run(
        config(
            catalog,
            store,
            mode="processes",
            workers=2,
            label="again",
            output_dir=str(tmp_path / "b"),
        ),
        progress=False,
    )
    assert (warm.record.cache_hits, warm.record.cache_misses) == (N_CHUNKS, 0)
    assert all(t.cached and t.bytes_read == 0 for t in warm.tasks)
    assert warm.events == cold.events == len(SAMPLES) * EVENTS_PER_FILE
    assert_same(warm.histograms, reference)
    assert_same(cold.histograms, reference)


def change_btag_cut(monkeypatch, value: float) -> None:
    """Change the b-tag threshold everywhere the analysis holds it (modules import it)."""
    for module in keys._modules("agc.analysis"):
        if hasattr(module, "BTAG_THRESHOLD"):
            monkeypatch.setattr(module, "BTAG_THRESHOLD", value)


def test_changed_cut_misses_and_changes_results(catalog, reference, tmp_path, monkeypatch):
    store = tmp_path / "store"
    run(config(catalog, store), progress=False, write=False)
    change_btag_cut(monkeypatch, 0.8)
    changed = run(config(catalog, store), progress=False, write=False)
    assert (changed.record.cache_hits, changed.record.cache_misses) == (0, N_CHUNKS)
    assert changed.histograms["4j2b_ttbar"].sum().value < reference["4j2b_ttbar"].sum().value
    monkeypatch.undo()
    back = run(config(catalog, store), progress=False, write=False)
    assert back.record.cache_misses == 0
    assert_same(back.histograms, reference)


def test_physics_options_miss(catalog, tmp_path):
    store = tmp_path / "store"
    run(config(catalog, store), progress=False, write=False)
    for changed in (
        config(catalog, store, systematics=False),
        config(catalog, store, seed=5),
        config(catalog, store, io_only=True),
    ):
        assert run(changed, progress=False, write=False).record.cache_hits == 0


def test_added_sample_computes_only_its_chunks(catalog, reference, tmp_path):
    store = tmp_path / "store"
    run(config(catalog, store, samples=SAMPLES[:-1]), progress=False, write=False)
    full = run(config(catalog, store), progress=False, write=False)
    per_sample = EVENTS_PER_FILE // CHUNKSIZE
    assert (full.record.cache_hits, full.record.cache_misses) == (N_CHUNKS - per_sample, per_sample)
    assert {t.sample for t in full.tasks if not t.cached} == {SAMPLES[-1]}
    assert_same(full.histograms, reference)


def test_corrupted_entry_is_recomputed(catalog, reference, tmp_path, caplog):
    store = tmp_path / "store"
    run(config(catalog, store), progress=False, write=False)
    victim = sorted(store.rglob("*.agc"))[0]
    victim.write_bytes(victim.read_bytes()[:-1] + b"?")
    with caplog.at_level(logging.WARNING, logger="agc.cache"):
        again = run(config(catalog, store), progress=False, write=False)
    assert (again.record.cache_hits, again.record.cache_misses) == (N_CHUNKS - 1, 1)
    assert "corrupt" in caplog.text
    assert_same(again.histograms, reference)


class Interrupted(Exception):
    pass


def test_restart_after_crash_computes_only_missing_chunks(
    catalog, reference, tmp_path, monkeypatch
):
    store, computed = tmp_path / "store", []
    real = process_chunk

    def crash_after_five(task):
        if len(computed) == 5:
            raise Interrupted("node lost")
        computed.append(task)
        return real(task)

    monkeypatch.setattr(agc.engines, "process_chunk", crash_after_five)
    with pytest.raises(Interrupted):
        run(config(catalog, store), progress=False, write=False)
    assert len(ResultStore(store).entries()) == 5
    monkeypatch.setattr(agc.engines, "process_chunk", real)
    again = run(config(catalog, store), progress=False, write=False)
    assert (again.record.cache_hits, again.record.cache_misses) == (5, N_CHUNKS - 5)
    assert_same(again.histograms, reference)


_REAL_PROCESS_CHUNK = process_chunk


def _die_on_fifth_chunk(task):
    """Module level so that the process pool can pickle it; the count is shared via a file."""
    counter = Path(os.environ["AGC_TEST_CRASH_COUNTER"])
    with open(counter, "a") as f:
        f.write("x")
    if counter.stat().st_size == 5:
        os._exit(9)
    return _REAL_PROCESS_CHUNK(task)


def test_a_worker_process_that_dies_costs_only_its_chunks(
    catalog, reference, tmp_path, monkeypatch
):
    """A pool worker exits abruptly (as if SIGKILLed) on its 5th chunk: the pool is replaced,
    the lost chunks run again, every chunk is stored once, and a re-run is all hits."""
    store = tmp_path / "store"
    monkeypatch.setenv("AGC_TEST_CRASH_COUNTER", str(tmp_path / "count"))
    monkeypatch.setattr(agc.engines, "process_chunk", _die_on_fifth_chunk)
    first = run(config(catalog, store, mode="processes", workers=2), progress=False, write=False)
    assert first.record.worker_restarts == 1 and first.record.cache_misses == N_CHUNKS
    assert len(ResultStore(store).entries()) == N_CHUNKS
    assert_same(first.histograms, reference)
    monkeypatch.setattr(agc.engines, "process_chunk", _REAL_PROCESS_CHUNK)
    again = run(config(catalog, store, mode="processes", workers=2), progress=False, write=False)
    assert (again.record.cache_hits, again.record.cache_misses) == (N_CHUNKS, 0)
    assert_same(again.histograms, reference)


def test_results_are_stored_as_they_arrive_not_at_the_end(catalog, tmp_path):
    """The wrapper stores each computed result before the next one is asked for."""
    store = ResultStore(tmp_path / "store")
    engine = CachingEngine(ChunkedEngine(), store)
    import dataclasses

    from backends.local import InProcessExecutor

    tasks = [_task(catalog), dataclasses.replace(_task(catalog, seed=3), index=1)]

    results = engine.run(tasks, InProcessExecutor())
    first = next(results)
    assert not first.timing.cached and len(store.entries()) == 1
    next(results)
    assert len(store.entries()) == 2
    again = list(CachingEngine(ChunkedEngine(), store).run(tasks, None))  # no executor needed
    assert [r.timing.cached for r in again] == [True, True]
    assert again[0].histograms == first.histograms


def test_store_cleared_during_a_run(catalog, reference, tmp_path, monkeypatch):
    """Entries vanish while the run runs (``agc cache clear`` or another run's eviction):
    the run still finishes with the right histograms, storing what it computes afterwards."""
    store, computed = tmp_path / "store", []
    run(config(catalog, store, samples=SAMPLES[:2]), progress=False, write=False)

    def clear_on_third(task):
        computed.append(task)
        if len(computed) == 3:
            ResultStore(store).clear()
        return process_chunk(task)

    monkeypatch.setattr(agc.engines, "process_chunk", clear_on_third)
    half = N_CHUNKS // 2
    full = run(config(catalog, store), progress=False, write=False)
    assert (full.record.cache_hits, full.record.cache_misses) == (half, half)
    assert_same(full.histograms, reference)
    assert len(ResultStore(store).entries()) == half - 2  # stored after the clear
    monkeypatch.setattr(agc.engines, "process_chunk", process_chunk)
    again = run(config(catalog, store), progress=False, write=False)
    assert (again.record.cache_hits, again.record.cache_misses) == (half - 2, half + 2)
    assert_same(again.histograms, reference)


def test_eviction_at_the_end_of_a_run_keeps_the_store_under_its_limit(
    catalog, reference, tmp_path, monkeypatch
):
    store = tmp_path / "store"
    cold = run(config(catalog, store), progress=False, write=False)
    sizes = [e.size for e in ResultStore(store).entries()]
    one_entry = max(sizes)
    monkeypatch.setenv("AGC_CACHE_MAX_SIZE", str(3 * one_entry))
    again = run(config(catalog, store), progress=False, write=False)
    assert again.record.cache_hits == N_CHUNKS  # the limit applies after the run's lookups
    kept = ResultStore(store).entries()
    assert 1 <= len(kept) <= 3 and sum(e.size for e in kept) <= 3 * one_entry
    third = run(config(catalog, store), progress=False, write=False)
    assert third.record.cache_hits == len(kept)
    assert_same(third.histograms, reference)
    assert_same(cold.histograms, reference)


def test_dask_run_results_outlive_the_cluster(catalog, reference, tmp_path):
    store = tmp_path / "store"
    cold = run(config(catalog, store, mode="dask", workers=2), progress=False, write=False)
    assert cold.record.cache_misses == N_CHUNKS
    warm = run(config(catalog, store, mode="dask", workers=2), progress=False, write=False)
    assert warm.record.cache_hits == N_CHUNKS
    assert_same(warm.histograms, reference)


# -- data lake and CLI ------------------------------------------------------------------
def cli(argv, monkeypatch) -> int:
    import agc.cli

    monkeypatch.setattr(agc.cli, "COMMAND_MODULES", ("agc.cache.cli",))
    return agc.cli.main(argv)


def test_outputs_only_in_the_store_then_fetched(catalog, tmp_path, monkeypatch, capsys):
    store = tmp_path / "store"
    result = run(
        config(catalog, store, data_lake="only", output_dir=str(tmp_path / "never")), progress=False
    )
    assert result.run_dir is None and not (tmp_path / "never").exists()
    assert ResultStore(store).list_runs() == [result.run_id]
    assert cli(["cache", "ls", "--runs", "--cache", str(store)], monkeypatch) == 0
    assert result.run_id in capsys.readouterr().out
    dest = tmp_path / "fetched"
    assert cli(["fetch", result.run_id, "--to", str(dest), "--cache", str(store)], monkeypatch) == 0
    from agc.histograms import read_histograms

    fetched = read_histograms(dest / "histograms.root")
    assert fetched and set(fetched) <= set(result.histograms)
    for name, h in fetched.items():
        np.testing.assert_allclose(h.values(), result.histograms[name].values(), err_msg=name)
    assert (dest / "summary.json").exists() and (dest / "metrics" / "runs.csv").exists()
    assert cli(["fetch", "no-such-run", "--cache", str(store)], monkeypatch) == 2


def test_copy_mode_keeps_both_and_bad_mode_is_a_user_error(catalog, tmp_path):
    store = tmp_path / "store"
    result = run(config(catalog, store, output_dir=str(tmp_path / "out")), progress=False)
    assert (tmp_path / "out" / "histograms.root").exists()
    assert ResultStore(store).list_runs() == [result.run_id]
    with pytest.raises(UserError, match="data_lake='sometimes': 'sometimes' is not one of copy"):
        run(config(catalog, store, data_lake="sometimes"), progress=False)


def test_cli_ls_stats_clear(catalog, tmp_path, monkeypatch, capsys):
    store = tmp_path / "store"
    run(config(catalog, store, samples=SAMPLES[:1]), progress=False, write=False)
    assert cli(["cache", "ls", "--cache", str(store)], monkeypatch) == 0
    out = capsys.readouterr().out
    rows = [line for line in out.splitlines() if line.endswith(".root")]
    assert len(rows) == EVENTS_PER_FILE // CHUNKSIZE
    assert all(" ttbar__nominal " in row for row in rows)
    assert cli(["cache", "stats", "--json", "--cache", str(store)], monkeypatch) == 0
    assert '"entries": 3' in capsys.readouterr().out
    assert cli(["cache", "clear", "--cache", str(store)], monkeypatch) == 0
    assert ResultStore(store).entries() == []


def test_default_store_location(monkeypatch, tmp_path):
    monkeypatch.setenv("AGC_CACHE_DIR", str(tmp_path / "c"))
    assert ResultStore().url == str(tmp_path / "c")
    monkeypatch.delenv("AGC_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert ResultStore().url == str(tmp_path / "agc-harness" / "results")


def _stored_run(store, tmp_path, run_id: str, size: int) -> None:
    run_dir = tmp_path / run_id
    run_dir.mkdir()
    (run_dir / "summary.json").write_text("{}")
    (run_dir / "histograms.root").write_bytes(b"x" * size)
    store.put_run(run_id, run_dir)


def test_stored_runs_count_against_the_size_and_age_limits(tmp_path):
    import os
    import time

    from agc.cache.store import ResultStore

    store = ResultStore(tmp_path / "store")
    for run_id in ("r-old", "r-mid", "r-new"):
        _stored_run(store, tmp_path, run_id, 10_000)
        time.sleep(0.01)
    assert store.list_runs() == ["r-mid", "r-new", "r-old"]
    assert not list((tmp_path / "store" / "runs").glob("*.partial"))  # renamed into place
    stats = store.stats()
    assert (stats["runs"], stats["chunk_bytes"]) == (3, 0)
    assert stats["bytes"] == stats["run_bytes"] > 30_000
    long_ago = time.time() - 10 * 86400
    os.utime(tmp_path / "store" / "runs" / "r-old" / "COMPLETE", (long_ago, long_ago))
    assert store.evict(max_age=86400, max_bytes=float("inf")) == ["run r-old"]
    one_run = store.run_sizes()["r-new"][0]
    assert store.evict(max_bytes=one_run + 100) == ["run r-mid"]  # the oldest goes first
    assert store.list_runs() == ["r-new"]
