"""The slurm backend on a REAL single-node SLURM (slurmctld + slurmd + munge on 127.0.0.1).

The cluster is brought up by the fixture (tests/slurm_cluster.py) and stopped by PID; the test
is skipped, saying why, where slurm-wlm/munge are not installed or we are not root.
"""

from __future__ import annotations

import os
import socket
import subprocess
import threading
import time
from pathlib import Path

import pytest
from conftest import assert_same_histograms
from slurm_cluster import (
    LocalSlurm,
    backend_run,
    missing_slurm,
    reference_histograms,
)

from backends.base import BackendError
from backends.slurm import SlurmBackend


@pytest.fixture(scope="module")
def slurm(tmp_path_factory):
    reason = missing_slurm()
    if reason:
        pytest.skip(reason)
    cluster = LocalSlurm(tmp_path_factory.mktemp("slurm")).start()
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SLURM_CONF", str(cluster.conf))  # sbatch/scancel of dask-jobqueue
        mp.chdir(cluster.workdir)  # where SLURM writes the jobs' slurm-N.out
        try:
            yield cluster
        finally:
            cluster.stop()


def test_job_script_carries_the_profile():
    script = SlurmBackend(profile="slurm-local", workers=3).job_script()
    assert "#SBATCH -p debug" in script
    assert "#SBATCH -t 00:15:00" in script
    assert "#SBATCH --cpus-per-task=1" in script
    assert "#SBATCH --mem=954M" in script  # 1GB in MiB, rounded up
    assert "--death-timeout 60" in script


def test_container_setup_and_port_range_reach_the_job_script():
    profile = {
        "backend": "slurm",
        "worker": {
            "cores": 4,
            "memory": "8GB",
            "processes": 2,
            "port_range": "10000:10100",
            "gpus": 1,
            "setup": ["source /cvmfs/sft.cern.ch/lcg/views/LCG_105/x86_64-el9-gcc12-opt/setup.sh"],
            "container": {"image": "/cvmfs/unpacked.cern.ch/coffea:latest"},
        },
        "slurm": {"partition": "gpu", "account": "cms", "directives": ["--qos=short"]},
    }
    backend = SlurmBackend(profile=profile)
    script = backend.job_script()
    assert "source /cvmfs/sft.cern.ch/lcg/views/LCG_105" in script
    assert (
        "apptainer exec --nv --bind /cvmfs /cvmfs/unpacked.cern.ch/coffea:latest python3 "
        "-m distributed.cli.dask_worker" in script
    )
    assert "--worker-port 10000:10100 --nanny-port 10000:10100" in script
    assert "--nworkers 2" in script and "--nthreads 2" in script
    for line in ("#SBATCH -p gpu", "#SBATCH -A cms", "#SBATCH --qos=short", "#SBATCH --gpus=1"):
        assert line in script
    assert backend.cores_per_worker == 2


@pytest.mark.slow
def test_run_on_slurm_workers_matches_local(slurm, small_catalog):
    result = backend_run(str(small_catalog), "slurm", profile="slurm-local", workers=2)
    assert_same_histograms(reference_histograms(str(small_catalog)), result.histograms, rtol=0)
    assert result.workers == 2
    assert result.record.phases["first_worker"] > 0
    # the chunks ran in the SLURM jobs' worker processes, not in this process
    assert result.tasks and all(
        t.worker != f"{socket.gethostname()}:{os.getpid()}" for t in result.tasks
    )
    assert "Allocate JobId=" in (slurm.workdir / "log" / "slurmctld.log").read_text()
    # close() scancel-ed every job
    deadline = time.monotonic() + 30
    while slurm.queue() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert slurm.queue() == []


def test_batch_jobs_preload_the_allocator_fix_of_local_workers():
    script = SlurmBackend(profile="slurm-local", workers=1).job_script()
    assert "--preload-nanny backends.worker_setup" in script


@pytest.mark.slow
def test_slurm_workers_start_without_distributeds_malloc_trim_threshold(slurm):
    """Batch workers get the allocator behaviour of local ones: without distributed's
    MALLOC_TRIM_THRESHOLD_=65536 their tasks cost 2-3x less CPU (see backends.worker_setup)."""
    executor = SlurmBackend(profile="slurm-local", workers=1).start()
    try:
        executor.wait_for_workers(1)
        values = executor.client.run(os.getenv, "MALLOC_TRIM_THRESHOLD_")
        pids = executor.client.run(os.getpid)
    finally:
        executor.close()
    assert list(values.values()) == [None]
    assert os.getpid() not in pids.values()  # asked of the SLURM job's worker process


# -- lost workers, lost jobs, walltime ------------------------------------------------------
TESTS = Path(__file__).resolve().parent


@pytest.fixture
def slow_tasks(monkeypatch, tmp_path, small_catalog):
    """Chunk tasks that sleep ``seconds`` and mark their start (``slow_tasks.markers``), run in
    the SLURM jobs (tests/ on the PYTHONPATH they inherit)."""
    import slow_tasks as module

    import agc.engines

    reference_histograms(str(small_catalog))  # at full speed, before the tasks are slowed
    markers = tmp_path / "markers"
    markers.mkdir()
    monkeypatch.setenv(
        "PYTHONPATH", os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")])
    )
    monkeypatch.setenv("AGC_TEST_TASK_MARKERS", str(markers))
    monkeypatch.setattr(agc.engines, "process_chunk", module.slow_process_chunk)

    def slow(seconds: float) -> Path:
        monkeypatch.setenv("AGC_TEST_TASK_SECONDS", str(seconds))
        return markers

    return slow


def _scancel_when_running(slurm, markers: Path, every: bool = False, timeout: float = 120):
    """In a thread: once a task has started, ``scancel`` the job running it (or every job)."""
    cancelled: list[str] = []

    def cancel() -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            started = sorted(markers.iterdir())
            if started:
                jobs = slurm.queue() if every else [started[0].name.split(".")[0]]
                subprocess.run(["scancel", *jobs], env=slurm.env, check=True)
                cancelled.extend(jobs)
                return
            time.sleep(0.1)

    thread = threading.Thread(target=cancel, daemon=True)
    thread.start()
    return thread, cancelled


def _write(profile: dict, directory: Path) -> str:
    """``profile`` as a file (a run option takes a profile's name or path)."""
    import yaml

    path = directory / "profile.yaml"
    path.write_text(yaml.safe_dump(profile))
    return str(path)


def _profile(**worker) -> dict:
    return {
        "backend": "slurm",
        "workers": 2,
        "worker": {
            "cores": 1,
            "memory": "1GB",
            "death_timeout": 30,
            "start_timeout": 120,
            **worker,
        },
        "scheduler": {"host": "127.0.0.1"},
        "slurm": {"partition": "debug", "walltime": "00:15:00"},
    }


@pytest.mark.slow
@pytest.mark.fault(
    "a SLURM job cancelled mid-run (scancel, 1 of 2)", "survived", histograms="identical"
)
def test_scancel_of_one_job_mid_run_gives_identical_histograms(
    slurm, small_catalog, slow_tasks, fault_details, tmp_path
):
    markers = slow_tasks(3)
    thread, cancelled = _scancel_when_running(slurm, markers)
    result = backend_run(str(small_catalog), "slurm", profile=_write(_profile(), tmp_path))
    thread.join(timeout=5)
    assert cancelled, "no task started"
    assert_same_histograms(reference_histograms(str(small_catalog)), result.histograms, rtol=0)
    assert result.record.worker_restarts >= 1
    assert result.record.tasks_resubmitted >= 1  # the cancelled job was running a task
    fault_details.update(
        worker_restarts=result.record.worker_restarts,
        tasks_resubmitted=result.record.tasks_resubmitted,
    )


@pytest.mark.slow
@pytest.mark.fault(
    "every SLURM job cancelled mid-run (scancel)", "failed clearly", histograms="none written"
)
def test_scancel_of_every_job_fails_naming_the_jobs_within_the_lost_timeout(
    slurm, small_catalog, slow_tasks, fault_details, tmp_path
):
    markers = slow_tasks(5)
    thread, cancelled = _scancel_when_running(slurm, markers, every=True)
    started = time.monotonic()
    with pytest.raises(BackendError, match="no Dask worker connected") as err:
        backend_run(str(small_catalog), "slurm", profile=_write(_profile(lost_timeout=5), tmp_path))
    seconds = time.monotonic() - started
    thread.join(timeout=5)
    assert cancelled
    message = str(err.value)
    assert "--backend slurm" in message and "worker.lost_timeout 5 s" in message
    assert all(job in message for job in cancelled), message
    assert "slurm-<job id>.out in" in message  # where the job logs are
    assert seconds < 60, f"took {seconds:.0f} s"
    fault_details.update(seconds_to_failure=round(seconds, 1))


@pytest.mark.slow
@pytest.mark.fault(
    "a run longer than the SLURM walltime (adapt + lifetime)", "survived", histograms="identical"
)
def test_run_longer_than_the_walltime_completes_with_adapt_and_lifetime(
    slurm, small_catalog, slow_tasks, fault_details, tmp_path
):
    """Walltime 1 min, workers retire after 30 +- 5 s and adapt submits new jobs: 5 chunks
    of 14 s on at most 2 workers take longer than any one job may live."""
    slow_tasks(14)
    profile = _profile(adapt={"minimum": 1, "maximum": 2}, lifetime="30s", lifetime_stagger="5s")
    profile["slurm"]["walltime"] = "00:01:00"
    started = time.monotonic()
    result = backend_run(str(small_catalog), "slurm", profile=_write(profile, tmp_path))
    seconds = time.monotonic() - started
    assert_same_histograms(reference_histograms(str(small_catalog)), result.histograms, rtol=0)
    assert seconds > 60  # longer than the walltime
    executor_jobs = {t.worker for t in result.tasks}
    fault_details.update(seconds=round(seconds, 1), workers_used=len(executor_jobs))
    assert len(executor_jobs) >= 2
    assert result.record.workers_retired >= 1  # retired by their lifetime, not lost
    assert result.summary["workers_retired"] == result.record.workers_retired


def test_lifetime_defaults_to_before_the_walltime_with_adapt():
    profile = _profile(adapt={"minimum": 1, "maximum": 4})
    profile["slurm"]["walltime"] = "01:00:00"
    script = SlurmBackend(profile=profile).job_script()
    assert "--lifetime 3480s --lifetime-stagger 60s" in script  # 2 min margin, 1 min spread
    assert "--lifetime" not in SlurmBackend(profile=_profile()).job_script()  # no adapt


def test_lifetime_from_the_profile_and_one_past_the_walltime_refused():
    profile = _profile(lifetime="30s", lifetime_stagger=5, lifetime_restart=True)
    profile["slurm"]["walltime"] = "1"
    assert "--lifetime 30s --lifetime-stagger 5s --lifetime-restart" in (
        SlurmBackend(profile=profile).job_script()
    )
    profile["worker"]["lifetime"] = "58s"
    with pytest.raises(BackendError, match="does not end before the walltime"):
        SlurmBackend(profile=profile).job_script()


def test_slurm_times_in_seconds():
    from backends.slurm import slurm_time_seconds

    assert [slurm_time_seconds(t) for t in ("15", "1:30", "01:00:00", "1-00", "2-01:00:05")] == [
        900,
        90,
        3600,
        86400,
        2 * 86400 + 3605,
    ]


def test_the_sites_dask_jobqueue_config_applies_where_the_profile_is_silent(tmp_path):
    """A site's jobqueue.yaml (DASK_CONFIG) reaches the job script; a profile adds to its
    lists and overrides only the keys it sets."""
    import subprocess
    import sys

    (tmp_path / "jobqueue.yaml").write_text(
        "jobqueue:\n"
        "  slurm:\n"
        "    worker-extra-args: ['--resources', 'SITE=1']\n"
        "    job-extra-directives: ['--qos=site']\n"
        "    job-script-prologue: ['module load site-python']\n"
        "    death-timeout: 99\n"
        "    python: /site/bin/python3\n"
    )
    show = (
        "from backends.slurm import SlurmBackend\n"
        "import sys\n"
        "profile = {'backend': 'slurm', 'worker': {'cores': 1, 'memory': '1GB', "
        "'setup': ['echo profile']}, 'slurm': {'directives': ['--exclusive']}}\n"
        "if sys.argv[1] == 'own':\n"
        "    profile['worker'].update(death_timeout=30, python='/own/python')\n"
        "print(SlurmBackend(profile=profile, workers=1).job_script())\n"
    )
    env = {**os.environ, "DASK_CONFIG": str(tmp_path)}
    site, own = (
        subprocess.run([sys.executable, "-c", show, which], capture_output=True, text=True,
                       env=env, check=True).stdout
        for which in ("site", "own")
    )  # fmt: skip
    assert "--resources SITE=1" in site and "--preload-nanny backends.worker_setup" in site
    assert "#SBATCH --qos=site" in site and "#SBATCH --exclusive" in site
    assert site.index("module load site-python") < site.index("echo profile")
    assert "--death-timeout 99" in site and "/site/bin/python3 -m distributed" in site
    assert "--death-timeout 30" in own and "/own/python -m distributed" in own
    assert "--resources SITE=1" in own  # the site's lists stay
