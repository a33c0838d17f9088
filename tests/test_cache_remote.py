"""The result store on remote file systems: a real XRootD server, and S3 (moto on loopback)."""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pytest

from agc import RunConfig, run, xcache
from agc.cache.store import ResultStore

KEY = "cd" * 32


@pytest.fixture(scope="module")
def small_catalog(tmp_path_factory) -> str:
    from agc import synth

    out = tmp_path_factory.mktemp("remote-data")
    events = {"ttbar__nominal": (1, 1000), "wjets__nominal": (1, 1000)}
    return str(
        synth.generate(out, events=events, layout="minimal", seed=3, workers=1, progress=False)
    )


@pytest.fixture(scope="module")
def xrootd_store():
    """A real xrootd server on 127.0.0.1 exporting an empty directory; yields its store URL."""
    reason = xcache.missing_tools()
    if reason:
        pytest.skip(f"XRootD store not testable: {reason}")
    work = Path(tempfile.mkdtemp(prefix="agc-xrd-store-"))
    export = work / "export"
    export.mkdir()
    server = xcache.start_origin(work, export_root=str(export))
    if os.geteuid() == 0:  # the server runs as the xrootd user and writes here
        shutil.chown(export, xcache.RUN_AS, xcache.RUN_AS)
    try:
        yield f"{server.url}//cache", export
    finally:
        server.stop()
        shutil.rmtree(work, ignore_errors=True)


def test_xrootd_store_entries_runs_and_corruption(xrootd_store, tmp_path, caplog):
    url, export = xrootd_store
    store = ResultStore(url)
    assert not store.commit_markers  # XRootD renames: temp + mv
    store.put(KEY, b"payload", {"sample": "s"})
    assert store.get(KEY)[0] == b"payload"
    assert [e.key for e in store.entries()] == [KEY]
    assert not list(export.rglob("*.tmp"))
    on_disk = next(export.rglob(f"{KEY}.agc"))
    on_disk.write_bytes(on_disk.read_bytes()[:-2] + b"!!")  # corrupt it behind the server
    with caplog.at_level(logging.WARNING):
        assert store.get(KEY) is None
    assert "corrupt" in caplog.text and store.entries() == []
    run_dir = tmp_path / "run"
    (run_dir / "metrics").mkdir(parents=True)
    (run_dir / "summary.json").write_text("{}")
    (run_dir / "metrics" / "runs.csv").write_text("a\n1\n")
    store.put_run("r-1", run_dir)
    assert store.list_runs() == ["r-1"]
    fetched = store.fetch_run("r-1", tmp_path / "back")
    assert (fetched / "metrics" / "runs.csv").read_text() == "a\n1\n"
    store.clear(runs=True)
    assert store.list_runs() == []


def test_run_with_xrootd_store_cold_then_warm(xrootd_store, small_catalog):
    url, _ = xrootd_store
    cfg = RunConfig(
        catalog=small_catalog,
        chunksize=500,
        cache=url,
        mode="processes",
        workers=2,
    )
    cold = run(cfg, progress=False, write=False)
    warm = run(cfg, progress=False, write=False)
    assert (cold.record.cache_misses, warm.record.cache_hits, warm.record.cache_misses) == (4, 4, 0)
    for name, h in cold.histograms.items():
        np.testing.assert_allclose(
            warm.histograms[name].values(flow=True), h.values(flow=True), rtol=1e-12, err_msg=name
        )
    ResultStore(url).clear(runs=True)


@pytest.fixture(scope="module")
def s3_url():
    """A bucket on moto's S3 server (a stand-in for a real object store) on 127.0.0.1."""
    pytest.importorskip("s3fs", reason="s3:// stores need 'pip install s3fs'")
    server_mod = pytest.importorskip("moto.server", reason="S3 stand-in needs 'moto[server]'")
    mp = pytest.MonkeyPatch()
    for k, v in {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
    }.items():
        mp.setenv(k, v)
    server = server_mod.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    mp.setenv("AWS_ENDPOINT_URL", f"http://{host}:{port}")  # how a user points s3fs at a site
    import boto3

    boto3.client("s3").create_bucket(Bucket="agc-results")
    try:
        yield "s3://agc-results/cache"
    finally:
        server.stop()
        mp.undo()


def test_s3_store_commit_markers(s3_url, small_catalog):
    store = ResultStore(s3_url)
    assert store.commit_markers
    store.put(KEY, b"data", {"sample": "s"})
    assert store.get(KEY)[0] == b"data"
    store.fs.rm_file(store._path(KEY) + ".ok")  # as if the writer died before committing
    assert store.get(KEY) is None and store.entries() == []
    cfg = RunConfig(catalog=small_catalog, chunksize=500, cache=s3_url, mode="inprocess")
    cold = run(cfg, progress=False, write=False)
    warm = run(cfg, progress=False, write=False)
    assert (cold.record.cache_misses, warm.record.cache_hits) == (4, 4)
    assert warm.histograms == cold.histograms
