"""Input caching through a REAL XCache in front of a REAL XRootD origin, both on 127.0.0.1."""

from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest

from agc import RunConfig, run, xcache
from agc.cache import keys
from agc.catalog import build_fileset, load_catalog

pytestmark = pytest.mark.skipif(
    xcache.missing_tools() is not None, reason=f"XCache not testable: {xcache.missing_tools()}"
)


@pytest.fixture(scope="module")
def dataset():
    """Synthetic inputs in a directory the ``xrootd`` user can read (pytest's tmp is 0700)."""
    from agc import synth

    root = Path(tempfile.mkdtemp(prefix="agc-xcache-data-"))
    events = {"ttbar__nominal": (1, 2000), "wjets__nominal": (1, 2000)}
    catalog = synth.generate(
        root, events=events, layout="minimal", seed=11, workers=1, progress=False
    )
    xcache.make_readable(root)
    cat, base = load_catalog(catalog)
    paths = [f.path for s in build_fileset(cat, base).values() for f in s.files]
    yield str(catalog), paths
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def servers():
    work = Path(tempfile.mkdtemp(prefix="agc-xcache-work-"))
    with xcache.origin_and_xcache(work) as (origin, cache):
        yield origin, cache
    shutil.rmtree(work, ignore_errors=True)


def wait_for_accesses(cache, path: str, n: int, timeout: float = 15.0) -> dict:
    """The .cinfo once ``n`` accesses are recorded (XCache writes one when a reader closes)."""
    deadline, info = time.monotonic() + timeout, None
    while True:
        try:
            info = xcache.cinfo(cache, path)
            if len(info["accesses"]) >= n:
                return info
        except Exception:
            if time.monotonic() > deadline:
                raise
        if time.monotonic() > deadline:
            raise AssertionError(f"{path}: fewer than {n} accesses recorded: {info}")
        time.sleep(0.1)


def test_second_read_served_from_cache_and_survives_origin_loss(dataset, servers):
    catalog, paths = dataset
    origin, cache = servers
    # process workers exit at the end of each run, closing their files: the XCache records
    # every access in the file's .cinfo
    direct = run(
        RunConfig(catalog=catalog, chunksize=1000, mode="processes", workers=2),
        progress=False,
        write=False,
    )
    cfg = RunConfig(
        catalog=catalog,
        chunksize=1000,
        xcache=cache.url,
        mode="processes",
        workers=2,
    )
    cold = run(cfg, progress=False, write=False)
    for path in paths:
        info = wait_for_accesses(cache, path, 1)
        assert info["bytes_missed"] > 0  # the first read went to the origin
    assert set(xcache.cached_files(cache)) == set(paths)

    warm = run(cfg, progress=False, write=False)
    for path in paths:
        info = wait_for_accesses(cache, path, 2)
        assert info["complete"] and info["n_downloaded"] == info["n_blocks"]
        later = info["accesses"][1:]
        assert sum(a["bytes_missed"] for a in later) == 0
        assert sum(a["bytes_hit"] for a in later) > 0

    origin.stop()
    assert not origin.alive()
    offline = run(cfg, progress=False, write=False)
    for result in (cold, warm, offline):
        assert result.events == direct.events == 4000
        for name, h in direct.histograms.items():
            np.testing.assert_allclose(
                result.histograms[name].values(flow=True),
                h.values(flow=True),
                rtol=1e-12,
                err_msg=name,
            )


def test_input_identity_is_the_same_through_the_cache(dataset, servers):
    """A file read through the XCache keys the same result-cache entries as read directly."""
    _, paths = dataset
    _, cache = servers
    direct = keys.input_identity(paths[0])
    assert direct is not None and "uuid" in direct
    assert keys.input_identity(f"{cache.url}//{paths[0]}") == direct
