"""The backend registry: built-in backends, third-party backends through entry points, and
clear errors for a bad backend or backend option."""

from __future__ import annotations

import textwrap

import pytest

from agc import RunConfig, run
from agc.errors import UserError
from backends.base import BackendError, available_backends, get_backend


def test_builtin_batch_backends_are_registered():
    backends = available_backends()
    for name in ("local", "slurm", "htcondor", "dirac"):
        cls = get_backend(name)
        assert cls.name == name and cls.description
        assert name in backends


@pytest.fixture
def site_backend_dist(tmp_path, monkeypatch):
    """A separately installed package ``agc-site-backend`` (a dist-info on sys.path) whose
    ``agc.backends`` entry point registers the backend ``mysite``."""
    (tmp_path / "agc_site_backend.py").write_text(
        textwrap.dedent("""
        from backends.local import InProcessExecutor

        class MySiteExecutor(InProcessExecutor):
            cores_per_worker = 1
            calls = 0

            def map_unordered(self, fn, tasks):
                for task in tasks:
                    MySiteExecutor.calls += 1
                    yield fn(task)

        class MySiteBackend:
            name = "mysite"
            description = "a site's own backend, installed as a separate package"

            def __init__(self, workers=None, profile=None):
                self.workers = workers

            def start(self):
                return MySiteExecutor()
    """)
    )
    dist = tmp_path / "agc_site_backend-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: agc-site-backend\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text(
        "[agc.backends]\nmysite = agc_site_backend:MySiteBackend\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    yield
    import sys

    sys.modules.pop("agc_site_backend", None)


def test_third_party_backend_found_through_entry_points(site_backend_dist, small_catalog):
    assert available_backends()["mysite"] == "agc_site_backend:MySiteBackend"
    cls = get_backend("mysite")
    assert cls.__module__ == "agc_site_backend"
    result = run(
        RunConfig(
            catalog=str(small_catalog),
            samples=("wjets__nominal",),
            backend="mysite",
            workers=1,
        ),
        progress=False,
        write=False,
    )
    assert result.events == 4000
    assert cls.__module__ and __import__("agc_site_backend").MySiteExecutor.calls == result.chunks


def test_unknown_backend_lists_the_available_ones():
    with pytest.raises(UserError, match="unknown backend; available: .*dirac.*htcondor.*local"):
        get_backend("nosuch")


@pytest.mark.parametrize(
    ("name", "options", "message"),
    [
        ("slurm", {}, "--backend slurm needs --profile FILE_OR_NAME.*slurm-local"),
        (
            "htcondor",
            {"profile": "htcondor-standin", "mode": "processes"},
            "--mode 'processes': the htcondor backend always runs Dask workers",
        ),
        (
            "dirac",
            {"profile": "dirac-standin", "workers": 0},
            "--workers 0: 0 is less than the minimum of 1",
        ),
    ],
)
def test_bad_batch_backend_options(name, options, message):
    with pytest.raises(BackendError, match=message):
        get_backend(name)(**options)
