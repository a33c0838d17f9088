"""The slurm backend on a REAL single-node SLURM (slurmctld + slurmd + munge on 127.0.0.1).

The cluster is brought up by the fixture (tests/slurm_cluster.py) and stopped by PID; the test
is skipped, saying why, where slurm-wlm/munge are not installed or we are not root.
"""

from __future__ import annotations

import os
import socket
import time

import pytest
from conftest import assert_same_histograms
from slurm_cluster import (
    LocalSlurm,
    backend_run,
    missing_slurm,
    reference_histograms,
)

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
