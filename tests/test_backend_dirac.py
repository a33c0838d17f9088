"""The dirac backend: JDLs read with a ClassAd parser (classad2 from the htcondor wheel;
DIRAC's own reader, which needs a workaround to install, is tested in
test_backend_dirac_native.py by ``nox -s dirac``), per-site worker counts, job-id parsing, and
an AGC run through the STAND-IN dirac-wms-job-submit / -kill / -status (backends/standins/bin),
which run each JDL as a local process. The backend code path is the production one up to the
commands it calls.
"""

from __future__ import annotations

import asyncio
import base64
import os
import re
import shlex
import subprocess
import time
from collections import Counter

import pytest
from conftest import assert_same_histograms
from slurm_cluster import backend_run, reference_histograms

from backends.base import BackendError
from backends.dirac import DiracBackend, DiracCLITransport, jdl_value
from backends.standins import bin_dir, localjobs
from backends.standins.dirac import parse_jdl

classad2 = pytest.importorskip("classad2", reason="pip install htcondor (ClassAd parser)")


def test_multi_site_jdls_carry_sites_and_counts():
    backend = DiracBackend(profile="dirac-gridpp")
    jdls = [classad2.parseOne(text) for text in backend.jdls()]
    assert Counter(ad["Site"] for ad in jdls) == {"LCG.UKI-LT2-IC-HEP.uk": 3, "LCG.RAL-LCG2.uk": 4}
    ad = jdls[0]
    assert ad["OwnerGroup"] == "gridpp_user"
    assert ad["JobName"] == "agc-dask-worker"
    assert ad["CPUTime"] == 86400
    assert ad["NumberOfProcessors"] == 1
    assert ad["MaxRAM"] == 3815  # 4GB in MiB
    assert ad["Executable"] == "/bin/sh"
    assert list(ad["OutputSandbox"]) == ["std.out", "std.err"]
    arguments = ad["Arguments"]
    # the job first makes the file that keeps DIRAC's Watchdog off an idle worker
    assert arguments.startswith("-c 'touch DISABLE_WATCHDOG_CPU_WALLCLOCK_CHECK && export X509_")
    # the worker runs in apptainer with /cvmfs and dials the profile's external address
    assert (
        "apptainer exec --bind /cvmfs /cvmfs/unpacked.cern.ch/registry.example.org/agc/"
        "agc-harness:0.1.0 python3 -m distributed.cli.dask_worker "
        "tcp://agc-scheduler.example.ac.uk:8786"
    ) in arguments
    assert "--worker-port 40000:40100" in arguments
    assert "Tags" not in ad
    # one JobGroup for the jobs of one backend (a run), another for the next, as DIRAC keeps it
    groups = {ad["JobGroup"] for ad in jdls}
    assert len(groups) == 1
    (group,) = groups
    assert re.fullmatch(r"agc-\d{8}-\d{6}-[0-9a-f]{6}", group) and len(group) <= 32
    assert classad2.parseOne(DiracBackend(profile="dirac-gridpp").job_script())["JobGroup"] != group


def test_workers_option_spreads_over_the_profile_sites():
    # the profile's 3:4 kept as well as 3 workers allow (largest remainder; tests/test_locality)
    backend = DiracBackend(profile="dirac-gridpp", workers=3)
    assert backend.site_counts() == {"LCG.UKI-LT2-IC-HEP.uk": 1, "LCG.RAL-LCG2.uk": 2}
    assert len(backend.jdls()) == 3


def test_gpu_stage_jdl():
    ad = classad2.parseOne(DiracBackend(profile="dirac-gridpp-gpu").job_script())
    assert list(ad["Tags"]) == ["GPU"]
    assert list(ad["Site"]) == ["LCG.UKI-LT2-IC-HEP.uk", "LCG.RAL-LCG2.uk"]
    assert ad["NumberOfProcessors"] == 4
    assert "apptainer exec --nv " in ad["Arguments"]


def test_standin_reads_the_jdl_like_classad():
    text = DiracBackend(
        profile={
            "backend": "dirac",
            "worker": {"cores": 1, "memory": "1GB", "setup": ['export A="quoted \\\\ text"']},
            "dirac": {"sites": ["A", "B"], "jdl": {"Priority": 3}},
        }
    ).job_script()
    ours, theirs = parse_jdl(text), classad2.parseOne(text)
    assert ours["Arguments"] == theirs["Arguments"]
    # quotes and backslashes, which DIRAC does not pass on, go base64-encoded
    encoded = re.fullmatch(r"-c 'echo (\S+) \| base64 -d \| /bin/sh'", theirs["Arguments"])
    assert encoded
    decoded = base64.b64decode(encoded[1]).decode()
    assert decoded.startswith(
        'touch DISABLE_WATCHDOG_CPU_WALLCLOCK_CHECK && export A="quoted \\\\ text" && '
    )
    assert ours["Site"] == list(theirs["Site"]) == ["A", "B"]
    assert ours["Priority"] == theirs["Priority"] == 3


def _run_echo_job(tmp_path, **worker) -> subprocess.CompletedProcess:
    """The command a DIRAC worker node runs for this backend's JDL (the worker's python is
    ``echo``), run in ``tmp_path`` as the job's working directory."""
    jdl = parse_jdl(
        DiracBackend(
            profile={
                "backend": "dirac",
                "worker": {"cores": 1, "memory": "1GB", "python": "echo", **worker},
                "scheduler": {"contact_address": "tcp://scheduler.example.org:8786"},
            }
        ).job_script()
    )
    return subprocess.run(
        [jdl["Executable"], *shlex.split(jdl["Arguments"])],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_a_failing_setup_line_stops_the_job(tmp_path):
    run = _run_echo_job(tmp_path, setup=["true", "false"])
    assert (run.returncode, run.stdout) == (1, "")  # the worker (echo here) never ran


def test_the_job_makes_the_watchdog_file_in_its_working_directory(tmp_path):
    run = _run_echo_job(tmp_path)
    assert run.returncode == 0, run.stderr
    assert (tmp_path / "DISABLE_WATCHDOG_CPU_WALLCLOCK_CHECK").exists()
    assert "distributed.cli.dask_worker" in run.stdout  # then the worker command ran (echo)


def test_attributes_dirac_cannot_read_are_refused():
    with pytest.raises(ValueError, match="JobName"):
        DiracBackend(
            profile={
                "backend": "dirac",
                "worker": {"cores": 1, "memory": "1GB"},
                "dirac": {"job_name": "agc; worker"},
            }
        ).job_script()


def test_jdl_values():
    assert jdl_value('say "hi" \\') == '"say \\"hi\\" \\\\"'
    assert jdl_value(["a", 2]) == '{"a", 2}'


def test_cli_transport_parses_job_ids_and_kills(tmp_path):
    submit = tmp_path / "submit"
    submit.write_text("#!/bin/sh\necho 'some banner'\necho 'JobID = 4242'\n")
    kill = tmp_path / "kill"
    kill.write_text(f'#!/bin/sh\necho "$@" > {tmp_path}/killed\nexit 1\n')
    for f in (submit, kill):
        f.chmod(0o755)
    transport = DiracCLITransport(submit_command=str(submit), kill_command=str(kill))
    assert asyncio.run(transport.submit("job.jdl")) == "4242"
    asyncio.run(transport.kill("4242"))  # a failing kill (job already gone) is not an error
    assert (tmp_path / "killed").read_text().strip() == "4242"


def test_cli_transport_kills_what_it_submitted_on_close(tmp_path):
    submit = tmp_path / "submit"
    submit.write_text(f'#!/bin/sh\ncp "$1" {tmp_path}/submitted.jdl\necho "JobID = 7"\n')
    kill = tmp_path / "kill"
    kill.write_text(f'#!/bin/sh\necho "$@" >> {tmp_path}/killed\n')
    for f in (submit, kill):
        f.chmod(0o755)
    transport = DiracCLITransport(submit_command=str(submit), kill_command=str(kill))
    jdl = DiracBackend(profile="dirac-standin").job_script()
    assert asyncio.run(transport.submit_job(jdl)) == "7"
    assert (tmp_path / "submitted.jdl").read_text() == jdl  # the JDL text, as a file
    assert transport.alive() == ["7"]
    asyncio.run(transport.aclose())  # e.g. a job dask-jobqueue forgot: killed at shutdown
    assert (tmp_path / "killed").read_text().split() == ["7"]
    assert transport.alive() == []
    asyncio.run(transport.aclose())  # nothing left: no second kill
    assert (tmp_path / "killed").read_text().split() == ["7"]


def test_a_refused_submission_fails_the_start_with_dirac_s_message(tmp_path):
    submit = tmp_path / "submit"
    submit.write_text("#!/bin/sh\necho 'ERROR: Input Sandbox is not valid' >&2\nexit 1\n")
    submit.chmod(0o755)
    backend = DiracBackend(
        profile={
            "backend": "dirac",
            "worker": {"cores": 1, "memory": "1GB", "start_timeout": 600},
            "dirac": {"submit_command": str(submit)},
        }
    )
    started = time.monotonic()
    with pytest.raises(BackendError, match="job submission failed: .*Input Sandbox is not valid"):
        backend.start()
    assert time.monotonic() - started < 60  # not after worker.start_timeout


@pytest.mark.slow
def test_run_through_standin_dirac_matches_local(tmp_path, monkeypatch, small_catalog):
    monkeypatch.setenv("PATH", f"{bin_dir()}:{os.environ['PATH']}")
    state = tmp_path / "standin-state"
    monkeypatch.setenv("AGC_STANDIN_STATE", str(state))
    result = backend_run(str(small_catalog), "dirac", profile="dirac-standin")
    assert_same_histograms(reference_histograms(str(small_catalog)), result.histograms, rtol=0)
    assert result.workers == 2
    jobs = localjobs.history(state / "dirac")
    # one job per site, as the profile's per-site counts say, each JDL naming its site
    assert sorted(j["site"] for j in jobs) == ["LCG.SITE-A.uk", "LCG.SITE-B.uk"]
    jdls = [parse_jdl((state / "dirac" / "jobs" / f"{j['id']}.jdl").read_text()) for j in jobs]
    assert [jdl["Site"] for jdl in jdls] == [j["site"] for j in jobs]
    assert len({jdl["JobGroup"] for jdl in jdls}) == 1  # the run's jobs, as one group
    # the harness came in each job's InputSandbox and ran from where the job unpacked it
    for j, jdl in zip(jobs, jdls, strict=True):
        (wheel,) = jdl["InputSandbox"]
        unpacked = state / "dirac" / "jobs" / j["id"] / "agc-harness"
        assert (unpacked / "agc" / "__init__.py").is_file(), wheel
    # close() killed every job: no records, no processes left
    assert list((state / "dirac" / "jobs").glob("*.json")) == []
    assert [localjobs.group_members(j["pid"]) for j in jobs] == [[], []]
