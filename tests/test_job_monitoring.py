"""DIRAC job monitoring (``dirac.monitor``): while a run goes on the executor polls the jobs'
states through the backend's transport, replaces jobs DIRAC reports Failed/Killed/Stalled/
Deleted or that stay queued past ``max_waiting`` (a new job at the same site, at most
``max_resubmissions`` per run), and the run record lists every job with its site and final
status.

The jobs are real stand-in jobs (backends/standins/bin: local processes running real Dask
workers); the stand-in never reports a job Failed or Waiting, so the tests wrap
:meth:`DiracBackend.job_states` to report the states a real DIRAC would for chosen jobs.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml
from conftest import assert_same_histograms
from slurm_cluster import backend_run, reference_histograms

from backends.dirac import DiracBackend
from backends.jobqueue import job_site, job_status
from backends.profiles import ProfileError
from backends.standins import localjobs

SITES = ("LCG.SITE-A.uk", "LCG.SITE-B.uk")


def _profile(tmp_path: Path, **monitor) -> str:
    profile = {
        "backend": "dirac",
        "worker": {"cores": 1, "memory": "1GB", "death_timeout": 30, "start_timeout": 60},
        "scheduler": {"host": "127.0.0.1"},
        "dirac": {"sites": dict.fromkeys(SITES, 1), "monitor": {"interval": 0.5, **monitor}},
    }
    path = tmp_path / "dirac-monitor.yaml"
    path.write_text(yaml.safe_dump(profile))
    return str(path)


def _report(monkeypatch, change: Callable[[str, str], str | None]) -> list[list[str]]:
    """Wrap the backend's job_states: ``change(id, real state)`` gives the state to report
    instead (None: the real one). Returns the id lists asked for, one per poll."""
    real = DiracBackend.job_states
    asked: list[list[str]] = []

    def job_states(self, job_ids):
        asked.append(list(job_ids))
        states = real(self, job_ids)
        if states is None:
            return None
        return {i: change(i, s) or s for i, s in states.items()}

    monkeypatch.setattr(DiracBackend, "job_states", job_states)
    return asked


def _wait_for(predicate: Callable[[], bool], seconds: float = 25) -> None:
    deadline = time.monotonic() + seconds
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.1)


def _sites(dirac_standins: Path) -> dict[str, str]:
    return {j["id"]: j["site"] for j in localjobs.history(dirac_standins)}


def test_states_in_words():
    assert job_status("Failed (Application Finished With Errors) at LCG.RAL-LCG2.uk") == "Failed"
    assert job_site("Failed (Application Finished With Errors) at LCG.RAL-LCG2.uk") == (
        "LCG.RAL-LCG2.uk"
    )
    assert job_site("Waiting (Pilot Agent Submission)") is None
    assert job_site("Running (waiting at the door)") is None
    assert job_site("Stalled (stuck at wn042)") is None


def test_monitor_settings_and_schema():
    base = {"backend": "dirac", "worker": {"cores": 1, "memory": "1GB"}}
    assert DiracBackend(profile={**base, "dirac": {}}).monitor_settings() == {
        "interval": 60.0,
        "max_waiting": 1800.0,
        "max_resubmissions": 3,
    }
    monitor = {"interval": 0, "max_waiting": 5, "max_resubmissions": 0}
    assert DiracBackend(profile={**base, "dirac": {"monitor": monitor}}).monitor_settings() == (
        monitor
    )
    with pytest.raises(ProfileError, match="max_resubmissions"):
        DiracBackend(profile={**base, "dirac": {"monitor": {"max_resubmissions": -1}}})
    with pytest.raises(ProfileError, match="intervall"):
        DiracBackend(profile={**base, "dirac": {"monitor": {"intervall": 5}}})


@pytest.mark.fault("a DIRAC job reported Failed during the run", "survived", histograms="identical")
def test_failed_job_is_replaced_at_its_site_and_the_run_matches_local(
    dirac_standins, tmp_path, monkeypatch, small_catalog, caplog
):
    # job 1 "fails" as soon as DIRAC would see it running (its worker is killed with it)
    _report(
        monkeypatch,
        lambda i, s: (
            s.replace(
                "Running (Application)",
                "Failed (Application Finished With Errors; Exited With Status 1)",
            )
            if i == "1"
            else None
        ),
    )
    caplog.set_level(logging.WARNING, logger="backends.jobqueue")
    result = backend_run(str(small_catalog), "dirac", profile=_profile(tmp_path))
    assert_same_histograms(reference_histograms(str(small_catalog)), result.histograms, rtol=0)
    site = _sites(dirac_standins)
    assert sorted(site) == ["1", "2", "3"]  # one replacement
    assert site["3"] == site["1"]  # at the failed job's site
    assert result.summary["jobs_resubmitted"] == result.record.jobs_resubmitted == 1
    assert "job 1 (DiracCluster-" in caplog.text and "replaced by job 3" in caplog.text
    assert f"at {site['1']} reported Failed (Application Finished With Errors" in caplog.text
    # every job with its site and final status (all killed: the failed one, the others at close)
    jobs = result.summary["jobs"]
    assert sorted(jobs, key=lambda j: j["id"]) == [
        {"id": i, "site": site[i], "status": "Killed"} for i in ("1", "2", "3")
    ]
    assert json.loads(result.record.jobs) == jobs
    assert result.record.row()["jobs"] == result.record.jobs  # the runs.csv column


def test_job_waiting_too_long_is_killed_and_replaced(dirac_standins, tmp_path, monkeypatch, caplog):
    # DIRAC keeps job 1 Waiting (its worker, a local process here, runs all the same)
    _report(
        monkeypatch,
        lambda i, s: "Waiting (Pilot Agent Submission)" if i == "1" and "Running" in s else None,
    )
    caplog.set_level(logging.WARNING, logger="backends.jobqueue")
    executor = DiracBackend(profile=_profile(tmp_path, max_waiting=1)).start()
    try:
        _wait_for(lambda: executor.jobs_resubmitted == 1)
        site = _sites(dirac_standins)
        assert sorted(site) == ["1", "2", "3"] and site["3"] == site["1"]
        pid = {j["id"]: j["pid"] for j in localjobs.history(dirac_standins)}
        assert localjobs.group_members(pid["1"]) == []  # killed before it was replaced
        assert "still Waiting (Pilot Agent Submission) after" in caplog.text
        assert "killed and replaced by job 3" in caplog.text
        executor.wait_for_workers(2)
        time.sleep(1.5)  # more polls: job 1 is not replaced twice, job 3 is not Waiting
        assert executor.jobs_resubmitted == 1
    finally:
        executor.close()
    # every job with its site and final status (killed: the waiting one, the others at close)
    assert sorted(executor.job_list(), key=lambda j: j["id"]) == [
        {"id": i, "site": site[i], "status": "Killed"} for i in ("1", "2", "3")
    ]


def test_resubmissions_stop_at_the_limit(dirac_standins, tmp_path, monkeypatch, caplog):
    # every job at SITE-A fails: the first replacement is allowed, the second is not
    _report(
        monkeypatch,
        lambda i, s: (
            s.replace("Running (Application)", "Stalled (Job stalled: pilot not running)")
            if s.endswith(f"at {SITES[0]}")
            else None
        ),
    )
    caplog.set_level(logging.WARNING, logger="backends.jobqueue")
    executor = DiracBackend(profile=_profile(tmp_path, max_resubmissions=1)).start()
    try:
        _wait_for(lambda: "max_resubmissions 1 reached" in caplog.text)
        assert executor.jobs_resubmitted == 1
        site = _sites(dirac_standins)
        assert sorted(site) == ["1", "2", "3"]  # no fourth job
        third = [r for r in caplog.records if "not replaced" in r.getMessage()]
        assert len(third) == 1 and third[0].levelno == logging.ERROR
        assert "job 3 (" in third[0].getMessage() and SITES[0] in third[0].getMessage()
        assert "the run goes on with the other jobs" in third[0].getMessage()
        time.sleep(1.2)  # told once, not at every poll
        assert len([r for r in caplog.records if "not replaced" in r.getMessage()]) == 1
    finally:
        executor.close()
    assert executor.jobs_resubmitted == 1


def test_failing_status_calls_are_logged_and_retried(dirac_standins, tmp_path, monkeypatch, caplog):
    calls = []

    def job_states(self, job_ids):
        calls.append(job_ids)
        if len(calls) % 2:
            return None  # e.g. dirac-wms-job-status timed out
        raise RuntimeError("DiracX went away")

    monkeypatch.setattr(DiracBackend, "job_states", job_states)
    caplog.set_level(logging.WARNING, logger="backends.jobqueue")
    executor = DiracBackend(profile=_profile(tmp_path)).start()
    try:
        executor.wait_for_workers(2)
        _wait_for(lambda: len(calls) >= 4)
        assert executor._monitor_thread is not None and executor._monitor_thread.is_alive()
        assert "could not be asked for the jobs' states; again in 0.5 s" in caplog.text
        assert "polling the jobs failed" in caplog.text
        assert executor.jobs_resubmitted == 0
    finally:
        executor.close()
    # no state was ever read: the jobs are listed with their planned sites
    assert sorted(j["site"] for j in executor.job_list()) == sorted(SITES)
    assert {j["status"] for j in executor.job_list()} == {None}


def test_interval_zero_polls_only_at_close(dirac_standins, tmp_path, monkeypatch):
    asked = _report(monkeypatch, lambda i, s: None)
    executor = DiracBackend(profile=_profile(tmp_path, interval=0)).start()
    try:
        executor.wait_for_workers(2)
        time.sleep(1)
        assert executor._monitor_thread is None and asked == []
    finally:
        executor.close()
    assert len(asked) == 1  # the final states
    assert sorted((j["site"], j["status"]) for j in executor.job_list()) == [
        (s, "Killed") for s in SITES
    ]


def test_job_killed_by_dirac_is_replaced_after_its_worker_left(dirac_standins, tmp_path, caplog):
    # no fake states: the stand-in reports the job Killed after dirac-wms-job-kill (as DIRAC
    # does for a job a site or an operator killed); dask-jobqueue forgets it once its worker
    # left (lost-worker-timeout) and, without adapt, would not start it again
    import subprocess

    import dask

    caplog.set_level(logging.WARNING, logger="backends.jobqueue")
    with dask.config.set({"distributed.deploy.lost-worker-timeout": "0.2s"}):
        executor = DiracBackend(profile=_profile(tmp_path, interval=1)).start()
        try:
            executor.wait_for_workers(2)
            subprocess.run(["dirac-wms-job-kill", "1"], check=True, capture_output=True, timeout=30)
            _wait_for(lambda: executor.jobs_resubmitted == 1)
            site = _sites(dirac_standins)
            assert sorted(site) == ["1", "2", "3"] and site["3"] == site["1"]
            assert "job 1 (" in caplog.text and "reported Killed" in caplog.text
            executor.wait_for_workers(2)  # the replacement's worker took over
            time.sleep(1.2)
            assert executor.jobs_resubmitted == 1
        finally:
            executor.close()


def test_diracx_transport_jobs_waiting_too_long_are_replaced_up_to_the_limit(
    tmp_path, monkeypatch, caplog
):
    # DiracX (canned answers, tests/test_diracx_client.py) keeps every job Waiting: no worker
    # ever connects; each job is killed and replaced until max_resubmissions
    pytest.importorskip("httpx2")
    from test_diracx_client import FakeDiracX, credentials, diracx_profile

    fake = FakeDiracX()
    profile = diracx_profile(
        credentials(tmp_path / "t.json"),
        sites=dict.fromkeys(SITES, 1),
        monitor={"interval": 0.3, "max_waiting": 0.5, "max_resubmissions": 2},
    )
    backend = DiracBackend(profile=profile)
    fake.answer(backend.transport(), monkeypatch)
    caplog.set_level(logging.WARNING, logger="backends.jobqueue")
    executor = backend.start()
    try:
        _wait_for(lambda: "max_resubmissions 2 reached" in caplog.text, seconds=15)
        assert executor.jobs_resubmitted == 2
        replaced = [
            r.getMessage() for r in caplog.records if "killed and replaced" in r.getMessage()
        ]
        assert len(replaced) == 2 and all(
            "still Waiting (Pilot Agent Submission)" in m for m in replaced
        )
        assert set(fake.killed) >= {"101", "102"}  # the queued jobs killed before the new ones
    finally:
        executor.close()
    jobs = executor.job_list()
    assert sorted(j["id"] for j in jobs) == ["101", "102", "103", "104"]
    assert {j["status"] for j in jobs} == {"Killed"}  # the last two at close
    # the site each job was sent to (DiracX says ANY until a job runs)
    assert sorted(j["site"] for j in jobs) == sorted(SITES * 2)
