"""The htcondor backend: the submit description read by HTCondor's own parser, and an AGC run
through the STAND-IN condor_submit / condor_rm (backends/standins/bin; no HTCondor daemons can
be installed here). The backend code path is the production one up to the command it calls.
"""

from __future__ import annotations

import pytest
from conftest import assert_same_histograms
from slurm_cluster import backend_run, reference_histograms

from agc.errors import UserError
from backends.htcondor import HTCondorBackend
from backends.profiles import ProfileError
from backends.standins import localjobs
from backends.standins.condor import condor_args, expand, parse_submit

htcondor2 = pytest.importorskip("htcondor2", reason="pip install htcondor (HTCondor's parser)")
classad2 = pytest.importorskip("classad2", reason="pip install htcondor (HTCondor's parser)")


def _evaluate(submit, key: str):
    """Evaluate a submit expression such as ``floor(MY.DaskWorkerMemory / 1048576)``."""
    ad = classad2.ClassAd()
    for k, v in submit.items():
        if k.startswith("MY.") and "$" not in v:
            ad[k[3:]] = classad2.ExprTree(v)
    ad[key] = classad2.ExprTree(submit[key].replace("MY.", ""))
    return ad.eval(key)


def test_site_submit_description_parsed_by_htcondor():
    script = HTCondorBackend(profile="htcondor-coffea-casa").job_script()
    sub = htcondor2.Submit(script)
    assert sub["universe"] == "docker"
    assert sub["docker_image"] == "registry.example.org/agc/agc-harness:0.1.0"  # containers/
    assert sub["should_transfer_files"] == "YES"
    assert sub["MY.DaskWorkerType"] == '"agc-benchmark"'  # +DaskWorkerType
    assert sub["MY.DaskSchedulerAddress"] == '"tls://analysis.example.org:8786"'
    assert sub["MY.MaxRuntime"] == "7200"
    assert sub["requirements"] == "(OpSysMajorVer == 8)"
    assert _evaluate(sub, "RequestCpus") == 2
    assert _evaluate(sub, "RequestMemory") == 6_000_000_000 // 2**20  # MiB
    assert _evaluate(sub, "RequestDisk") == 5_000_000_000 // 1024  # KiB
    argv = condor_args(sub["Arguments"])
    assert argv[0] == "-c" and len(argv) == 2
    worker = argv[1].split()
    assert worker[:3] == ["python", "-m", "distributed.cli.dask_worker"]
    # firewalled site: the external (contact) address, the open port range, TLS
    assert worker[3] == "tls://analysis.example.org:8786"
    assert worker[worker.index("--worker-port") + 1] == "8788:8850"
    assert worker[worker.index("--nanny-port") + 1] == "8788:8850"
    assert worker[worker.index("--tls-ca-file") + 1] == "/etc/cmsaf-secrets/ca.pem"
    assert sub.getQArgs() == ""  # a plain "Queue": one job per submission


def test_standin_parses_what_htcondor_parses():
    """The stand-in's reading of Arguments/Output equals HTCondor's own macro expansion."""
    script = HTCondorBackend(
        profile={
            "backend": "htcondor",
            "log_directory": "/tmp/agc-logs",
            "worker": {
                "cores": 1,
                "memory": "1GB",
                "disk": "1GB",
                "setup": ["export A='x y'", 'export B="z"'],
            },
        }
    ).job_script()
    attrs, count = parse_submit(script)
    assert count == 1
    job = dict(attrs, clusterid="7", procid="0")
    assert expand(job["output"], job) == "/tmp/agc-logs/worker-7.0.out"
    argv = condor_args(expand(job["arguments"], job))
    assert argv[0] == "-c"
    assert argv[1].startswith("export A='x y'; export B=\"z\"; ")
    sub = htcondor2.Submit(script)
    assert condor_args(sub["Arguments"]) == argv


def test_container_universe_needs_an_image():
    with pytest.raises(ProfileError, match="htcondor.universe: docker needs worker.container"):
        HTCondorBackend(
            profile={
                "backend": "htcondor",
                "worker": {"cores": 1, "memory": "1GB", "disk": "1GB"},
                "htcondor": {"universe": "docker"},
            }
        )


@pytest.mark.slow
def test_run_through_standin_condor_matches_local(standins, small_catalog):
    result = backend_run(str(small_catalog), "htcondor", profile="htcondor-standin", workers=2)
    assert_same_histograms(reference_histograms(str(small_catalog)), result.histograms, rtol=0)
    assert result.workers == 2
    jobs = localjobs.history(standins / "condor")
    assert sorted(j["id"] for j in jobs) == ["1.0", "2.0"]
    # shutdown ran condor_rm on every job: no records, no processes left
    assert list((standins / "condor" / "jobs").glob("*.json")) == []
    assert [localjobs.group_members(j["pid"]) for j in jobs] == [[], []]


def test_refused_submission_fails_at_start_with_the_batch_systems_message(tmp_path):
    refuse = tmp_path / "condor_submit"
    refuse.write_text(
        "#!/bin/sh\necho 'ERROR: Failed to connect to local queue manager' >&2\nexit 1\n"
    )
    refuse.chmod(0o755)
    backend = HTCondorBackend(
        profile={
            "backend": "htcondor",
            "worker": {"cores": 1, "memory": "1GB", "disk": "1GB"},
            "htcondor": {"submit_command": str(refuse)},
        }
    )
    with pytest.raises(
        UserError, match="job submission failed: .*Failed to connect to local queue manager"
    ):
        backend.start()


@pytest.mark.slow
def test_executor_latency_hooks(standins):
    executor = HTCondorBackend(profile="htcondor-standin", workers=1).start()
    try:
        executor.wait_for_workers(1)
        assert executor.cores_per_worker == 1
        assert executor.job_ids() == ["1.0"]
        arrivals = executor.worker_arrival_seconds()
        assert len(arrivals) == 1 and arrivals[0] > 0
        assert executor.time_to_all_workers() == arrivals[0]
    finally:
        executor.close()
    assert list((standins / "condor" / "jobs").glob("*.json")) == []
