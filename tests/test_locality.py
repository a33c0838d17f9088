"""Data locality: DIRAC workers named and tagged with their site (``NAME@SITE``, the Dask
resource ``site-<SITE>=1``), per-site counts that keep their ratio under ``--workers``, the
catalog's replica ``sites`` reaching the chunks (not their cache key), and the placement of a
chunk on its file's site's workers with the fallback after ``locality_wait``
(:class:`backends.local.SitePlacement`): on an in-process Dask cluster, and end to end through
the stand-in DIRAC commands (each job a local process running a real Dask worker).
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest
from conftest import assert_same_histograms
from slurm_cluster import backend_run, reference_histograms

from agc.catalog import CatalogError, build_fileset, make_chunks
from agc.chunks import ChunkTask
from backends.dirac import DiracBackend, apportion, with_resource
from backends.profiles import ProfileError
from backends.standins import bin_dir
from backends.standins.dirac import parse_jdl


def _profile(sites, **dirac):
    return {
        "backend": "dirac",
        "worker": {"cores": 1, "memory": "1GB", "death_timeout": 60, "start_timeout": 120},
        "scheduler": {"host": "127.0.0.1"},
        "dirac": {"owner_group": "agc_user", "sites": sites, **dirac},
    }


# --- per-site counts -----------------------------------------------------------------------
def test_workers_option_keeps_the_ratio_of_the_site_counts():
    backend = DiracBackend(profile=_profile({"LCG.A.uk": 1, "LCG.B.uk": 9}), workers=20)
    assert backend.site_counts() == {"LCG.A.uk": 2, "LCG.B.uk": 18}
    assert len(backend.jdls()) == 20


def test_apportion_largest_remainder_and_one_per_site():
    assert apportion({"A": 1, "B": 9}, 20) == {"A": 2, "B": 18}
    assert apportion({"A": 3, "B": 4}, 3) == {"A": 1, "B": 2}
    assert apportion({"A": 1, "B": 9}, 2) == {"A": 1, "B": 1}  # every site one, if it can
    assert apportion({"A": 1, "B": 1, "C": 100}, 3) == {"A": 1, "B": 1, "C": 1}
    assert apportion({"A": 1, "B": 9}, 1) == {"B": 1}  # fewer workers than sites
    assert apportion({"A": 1, "B": 1, "C": 1}, 7) == {"A": 3, "B": 2, "C": 2}
    for total in range(1, 40):
        assert sum(apportion({"A": 2, "B": 5, "C": 11}, total).values()) == total


# --- names and resources of the workers ----------------------------------------------------
def test_each_site_job_names_its_worker_and_advertises_its_site():
    backend = DiracBackend(profile=_profile({"LCG.A.uk": 1, "LCG.B.uk": 2}))
    jdls = [parse_jdl(text) for text in backend.jdls()]
    assert [j["Site"] for j in jdls] == ["LCG.A.uk", "LCG.B.uk", "LCG.B.uk"]
    for i, jdl in enumerate(jdls):
        site = jdl["Site"]
        assert f"--name DiracCluster-{i}@{site} " in jdl["Arguments"]
        assert jdl["Arguments"].count("--resources") == 1
        assert f"--resources site-{site}=1" in jdl["Arguments"]


def test_site_resource_joins_the_profiles_own_resources():
    profile = _profile({"LCG.A.uk": 1})
    profile["worker"]["extra_args"] = ["--resources", "GPU=1,CPU=4"]
    (jdl,) = [parse_jdl(t) for t in DiracBackend(profile=profile).jdls()]
    assert jdl["Arguments"].count("--resources") == 1
    assert "--resources GPU=1,CPU=4,site-LCG.A.uk=1" in jdl["Arguments"]
    assert with_resource(["--resources=GPU=1"], "site-X") == ["--resources=GPU=1,site-X=1"]
    assert with_resource(["--resources GPU=1 --x $TMP"], "site-X") == [
        "--resources GPU=1,site-X=1 --x $TMP"
    ]
    # a site list (DIRAC picks the site): the worker cannot know it, no site resource
    text = DiracBackend(profile=_profile(["LCG.A.uk", "LCG.B.uk"])).job_script()
    assert "site-" not in parse_jdl(text)["Arguments"]


def test_site_names_that_cannot_be_a_resource_are_refused():
    with pytest.raises(ProfileError, match="not a DIRAC site name"):
        DiracBackend(profile=_profile({"LCG A": 1}))


def test_locality_wait_from_the_profile():
    assert DiracBackend(profile=_profile({"A": 1})).locality_wait() == 60.0
    assert DiracBackend(profile=_profile({"A": 1}, locality_wait=0)).locality_wait() == 0.0
    with pytest.raises(ProfileError):
        DiracBackend(profile=_profile({"A": 1}, locality_wait=-1))


# --- the catalog's sites -------------------------------------------------------------------
def _catalog(sites):
    entry = {"path": "/data/f.root", "nevts": 10}
    if sites is not ...:
        entry["sites"] = sites
    return {"ttbar": {"nominal": {"nevts_total": 10, "files": [entry]}}}


def test_catalog_sites_reach_the_chunks_and_not_the_cache_key():
    from agc.cache.keys import chunk_key, chunk_key_parts

    (sample,) = build_fileset(_catalog(["LCG.A.uk", "LCG.B.uk"])).values()
    assert sample.files[0].sites == ("LCG.A.uk", "LCG.B.uk")
    chunks = make_chunks({"s": sample}, 5)
    assert [c.sites for c in chunks] == [("LCG.A.uk", "LCG.B.uk")] * 2
    (plain,) = build_fileset(_catalog(...)).values()
    assert plain.files[0].sites == ()
    other = make_chunks({"s": plain}, 5)

    def key(chunk):
        task = ChunkTask(0, chunk, ("Jet_pt",), False, 1)
        return chunk_key(chunk_key_parts(task, code="c", identity={"path": chunk.path}))

    assert [key(c) for c in chunks] == [key(c) for c in other]


@pytest.mark.parametrize("bad", ["LCG.A.uk", [1], [""], {"LCG.A.uk": 1}])
def test_catalog_sites_must_be_a_list_of_names(bad):
    with pytest.raises(CatalogError, match=r"/data/f\.root: sites .* must be a list"):
        build_fileset(_catalog(bad))


# --- placement on an in-process Dask cluster -------------------------------------------------
@pytest.fixture
def two_site_cluster():
    """A Dask cluster in this process: worker ``a@A`` at site A, ``b@B`` at site B."""
    from distributed import Client, Scheduler, SpecCluster, Worker

    workers = {
        name: {
            "cls": Worker,
            "options": {"nthreads": 1, "name": name, "resources": {f"site-{site}": 1}},
        }
        for name, site in (("a@A", "A"), ("b@B", "B"))
    }
    scheduler = {"cls": Scheduler, "options": {"dashboard_address": None}}
    with SpecCluster(workers=workers, scheduler=scheduler) as cluster, Client(cluster) as client:
        client.wait_for_workers(2)
        yield client


def _where(task):
    """(Runs on a worker.) The task and the name of the worker it ran on."""
    from distributed import get_worker

    time.sleep(task[2])
    return task[0], get_worker().name


def _executor(client, wait):
    from backends.local import DaskExecutor

    executor = DaskExecutor(client, owns_client=False)
    executor.locality_wait = wait
    executor.poll_seconds = 0.1
    return executor


def _map(executor, tasks):
    return dict(
        executor.map_unordered(_where, tasks, affinity=lambda t: (t[0], 1.0), sites=lambda t: t[1])
    )


def test_tasks_run_at_their_sites(two_site_cluster):
    executor = _executor(two_site_cluster, wait=30)
    tasks = [(f"{s.lower()}{i}", (s,), 0.01) for s in "AB" for i in range(6)]
    tasks += [(f"any{i}", (), 0.01) for i in range(4)]  # no sites: file affinity, anywhere
    ran = _map(executor, tasks)
    assert sorted(ran) == sorted(t[0] for t in tasks)
    assert {ran[f"a{i}"] for i in range(6)} == {"a@A"}
    assert {ran[f"b{i}"] for i in range(6)} == {"b@B"}
    assert executor.tasks_moved_off_site == 0


def test_wait_zero_places_nothing(two_site_cluster):
    executor = _executor(two_site_cluster, wait=0)
    ran = _map(executor, [(f"c{i}", ("C",), 0.0) for i in range(4)])  # no worker at site C
    assert len(ran) == 4 and executor.tasks_moved_off_site == 0


def test_a_site_without_workers_waits_then_runs_anywhere(two_site_cluster):
    executor = _executor(two_site_cluster, wait=1.0)
    started = time.monotonic()
    ran = _map(executor, [(f"c{i}", ("C",), 0.0) for i in range(4)] + [("a0", ("A",), 0.0)])
    assert time.monotonic() - started >= 1.0  # held back for the wait
    assert sorted(ran) == ["a0", "c0", "c1", "c2", "c3"] and ran["a0"] == "a@A"
    assert executor.tasks_moved_off_site == 4


def test_tasks_queued_at_a_busy_site_move_after_the_wait(two_site_cluster):
    executor = _executor(two_site_cluster, wait=0.6)
    tasks = [(f"a{i}", ("A",), 0.3) for i in range(10)]  # 3 s of work for one worker
    ran = _map(executor, tasks)
    assert sorted(ran) == sorted(t[0] for t in tasks)  # each result once
    moved = executor.tasks_moved_off_site
    assert 0 < moved <= 10  # those not started at 0.6 s (fewer unless the machine is slow)
    assert sum(w == "b@B" for w in ran.values()) >= 1  # the idle site's worker took some
    assert sum(w == "a@A" for w in ran.values()) >= 10 - moved


# --- end to end through the stand-in DIRAC commands ------------------------------------------
def _catalog_with_sites(small_catalog: Path, out: Path, sites: list[str]) -> dict[str, str]:
    """A copy of ``small_catalog`` in ``out`` (the same files) whose files are dealt to
    ``sites`` in turn; {absolute path: site}."""
    source = Path(small_catalog)
    source = source / "catalog.json" if source.is_dir() else source
    catalog = json.loads(source.read_text())
    where: dict[str, str] = {}
    i = 0
    for variations in catalog.values():
        for entry in variations.values():
            for f in entry["files"]:
                path = Path(f["path"])
                f["path"] = str(path if path.is_absolute() else (source.parent / path).resolve())
                f["sites"] = [sites[i % len(sites)]]
                where[f["path"]] = sites[i % len(sites)]
                i += 1
    out.mkdir(parents=True, exist_ok=True)
    (out / "catalog.json").write_text(json.dumps(catalog))
    return where


@pytest.mark.slow
@pytest.mark.parametrize("swapped", [False, True], ids=["A-first", "B-first"])
def test_standin_dirac_runs_every_chunk_at_its_files_site(
    tmp_path, monkeypatch, small_catalog, swapped
):
    """Each chunk ran on the Dask worker of its file's site (the worker's name, recorded in
    the chunk's timing, ends in its site; swapping the files' sites swaps the workers)."""
    monkeypatch.setenv("PATH", f"{bin_dir()}:{os.environ['PATH']}")
    monkeypatch.setenv("AGC_STANDIN_STATE", str(tmp_path / "standin-state"))
    sites = ["LCG.SITE-A.uk", "LCG.SITE-B.uk"]
    where = _catalog_with_sites(
        small_catalog, tmp_path / "catalog", sites[::-1] if swapped else sites
    )
    catalog = str(tmp_path / "catalog" / "catalog.json")
    profile = tmp_path / "two-sites.yaml"  # YAML is a superset of JSON
    profile.write_text(json.dumps(_profile(dict.fromkeys(sites, 1), locality_wait=120)))
    result = backend_run(catalog, "dirac", profile=str(profile))
    assert_same_histograms(reference_histograms(catalog), result.histograms, rtol=0)
    assert result.workers == 2
    ran_at = {(t.path, t.entry_start): t.dask_worker.rpartition("@")[2] for t in result.tasks}
    assert len(ran_at) == len(result.tasks) >= 4
    # every chunk ran on the worker of its file's site, and both sites' files were run
    assert ran_at == {key: where[key[0]] for key in ran_at}
    assert set(ran_at.values()) == set(sites)
    # none had to leave its site, and the run's records say so
    assert result.record.tasks_moved_off_site == result.summary["tasks_moved_off_site"] == 0
    assert {t.dask_worker for t in result.tasks} == {
        "DiracCluster-0@LCG.SITE-A.uk",
        "DiracCluster-1@LCG.SITE-B.uk",
    }
