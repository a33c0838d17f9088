"""The batch system's state of each job, in the errors of HTCondor and DIRAC runs whose workers
do not connect: ``condor_q`` / ``condor_history`` (``-json``) and ``dirac-wms-job-status``
outputs in their real formats (hand-written samples), the STAND-IN ``condor_q`` and
``dirac-wms-job-status`` of backends/standins/bin on real stand-in jobs, and runs that fail
naming each job's state.
"""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest
import yaml
from slurm_cluster import backend_run

from backends import htcondor
from backends.base import BackendError
from backends.dirac import DiracBackend, DiracCLITransport, parse_job_status
from backends.htcondor import HTCondorBackend, job_states_from_ads
from backends.standins import localjobs

#: ``condor_q 1234.0 1235.0 1236.0 1237.0 1238.0 1239.0 -attributes
#: ClusterId,ProcId,JobStatus,HoldReason -json`` as HTCondor prints it (ads in "[ ... , ... ]",
#: keys sorted, undefined attributes left out); 1240.0 is not in the queue.
CONDOR_Q_JSON = """\
[
{
  "ClusterId": 1234,
  "HoldReason": "Error from slot1_3@wn042.example.org: Failed to execute '/bin/sh' with \
arguments -c 'python -m distributed.cli.dask_worker': (errno=2: 'No such file or directory')",
  "JobStatus": 5,
  "ProcId": 0
}
,
{
  "ClusterId": 1235,
  "JobStatus": 1,
  "ProcId": 0
}
,
{
  "ClusterId": 1236,
  "JobStatus": 2,
  "ProcId": 0
}
,
{
  "ClusterId": 1237,
  "JobStatus": 6,
  "ProcId": 0
}
,
{
  "ClusterId": 1238,
  "JobStatus": 7,
  "ProcId": 0
}
,
{
  "ClusterId": 1239,
  "HoldReason": "via condor_hold (by user cms-jovyan)",
  "JobStatus": 5,
  "ProcId": 1
}
]
"""

#: ``condor_history 1240.0 1241.0 -limit 2 ... -json``: both jobs left the queue.
CONDOR_HISTORY_JSON = """\
[
{
  "ClusterId": 1240,
  "JobStatus": 4,
  "ProcId": 0
}
,
{
  "ClusterId": 1241,
  "JobStatus": 3,
  "ProcId": 0
}
]
"""

#: ``dirac-wms-job-status 101 102 103 104 105 106`` as DIRAC's script prints it ("Key=value; "
#: per field, Status, MinorStatus and ApplicationStatus then Site, a space before the newline);
#: 106 is unknown to DIRAC, so not listed. The last line is the example of the script's help.
DIRAC_STATUS = "".join(
    [
        "JobID=101 Status=Waiting; MinorStatus=Pilot Agent Submission; "
        "ApplicationStatus=Unknown; Site=ANY; \n",
        "JobID=102 Status=Running; MinorStatus=Application; ApplicationStatus=Unknown; "
        "Site=LCG.RAL-LCG2.uk; \n",
        "JobID=103 Status=Failed; MinorStatus=Application Finished With Errors; "
        "ApplicationStatus=Exited With Status 1; Site=LCG.UKI-LT2-IC-HEP.uk; \n",
        "JobID=104 Status=Matched; MinorStatus=Assigned; ApplicationStatus=Unknown; "
        "Site=LCG.RAL-LCG2.uk; \n",
        "JobID=105 Status=Done; MinorStatus=Execution Complete; Site=EELA.UTFSM.cl;\n",
    ]
)


def _command(path: Path, stdout: str = "", rc: int = 0, sleep: float = 0) -> str:
    """A fake command printing ``stdout`` (and recording its arguments in ``path.args``)."""
    out = path.with_suffix(".out")
    out.write_text(stdout)
    path.write_text(
        "#!/bin/sh\n"
        f'echo "$@" > {path}.args\n'
        + (f"sleep {sleep}\n" if sleep else "")
        + f"cat {out}\nexit {rc}\n"
    )
    path.chmod(0o755)
    return str(path)


def _htcondor(**section) -> HTCondorBackend:
    return HTCondorBackend(
        profile={
            "backend": "htcondor",
            "worker": {"cores": 1, "memory": "1GB", "disk": "1GB"},
            "htcondor": section,
        }
    )


def _dirac(**section) -> DiracBackend:
    return DiracBackend(
        profile={"backend": "dirac", "worker": {"cores": 1, "memory": "1GB"}, "dirac": section}
    )


# --- HTCondor: condor_q / condor_history ----------------------------------------------------
def test_condor_job_ads_in_words():
    assert job_states_from_ads(CONDOR_Q_JSON) == {
        "1234.0": "Held (Error from slot1_3@wn042.example.org: Failed to execute '/bin/sh' "
        "with arguments -c 'python -m distributed.cli.dask_worker': (errno=2: 'No such file "
        "or directory'))",
        "1235.0": "Idle",
        "1236.0": "Running",
        "1237.0": "Transferring Output",
        "1238.0": "Suspended",
        "1239.1": "Held (via condor_hold (by user cms-jovyan))",
    }
    assert job_states_from_ads(CONDOR_HISTORY_JSON) == {
        "1240.0": "Completed",
        "1241.0": "Removed",
    }
    assert job_states_from_ads("") == job_states_from_ads("\n") == {}  # no job matched
    assert job_states_from_ads('[{"ClusterId": 1, "ProcId": 0, "JobStatus": 9}]') == {
        "1.0": "JobStatus 9"
    }
    with pytest.raises(ValueError):
        job_states_from_ads("-- Schedd: schedd.example.org : <10.0.0.1:9618?...")


def test_condor_q_then_condor_history_for_the_jobs_that_left_the_queue(tmp_path):
    ids = [f"{c}.0" for c in range(1234, 1239)] + ["1239.1", "1240.0", "1241.0", "1242.0"]
    backend = _htcondor(
        status_command=_command(tmp_path / "condor_q", CONDOR_Q_JSON) + " -name schedd.site",
        history_command=_command(tmp_path / "condor_history", CONDOR_HISTORY_JSON),
    )
    states = backend.job_states(ids)
    assert states["1234.0"].startswith("Held (Error from slot1_3@wn042.example.org: ")
    assert states["1236.0"] == "Running"
    assert states["1240.0"] == "Completed" and states["1241.0"] == "Removed"
    assert "1242.0" not in states  # in neither: left out ("not in the queue" in the error)
    asked = (tmp_path / "condor_q.args").read_text().split()
    attributes = ",".join(htcondor.STATE_ATTRIBUTES)
    assert asked == ["-name", "schedd.site", *ids, "-attributes", attributes, "-json"]
    assert attributes == "ClusterId,ProcId,JobStatus,HoldReason"
    history = (tmp_path / "condor_history.args").read_text().split()
    assert history[:3] == ["1240.0", "1241.0", "1242.0"]  # only those condor_q did not list
    assert history[3:5] == ["-limit", "3"] and "-scanlimit" in history


def test_condor_history_is_not_asked_when_condor_q_lists_every_job(tmp_path):
    backend = _htcondor(
        status_command=_command(tmp_path / "condor_q", CONDOR_Q_JSON),
        history_command=_command(tmp_path / "condor_history", CONDOR_HISTORY_JSON),
    )
    assert backend.job_states(["1235.0"]) == {"1235.0": "Idle"}  # others it listed: kept
    assert not (tmp_path / "condor_history.args").exists()


def test_a_failing_condor_history_keeps_what_condor_q_said(tmp_path):
    backend = _htcondor(
        status_command=_command(tmp_path / "condor_q", CONDOR_Q_JSON),
        history_command=_command(tmp_path / "condor_history", "ERROR: no history\n", rc=1),
    )
    states = backend.job_states(["1236.0", "1240.0"])
    assert states is not None and states["1236.0"] == "Running" and "1240.0" not in states


@pytest.mark.parametrize(
    "kind", ["missing", "fails", "not json", "times out"], ids=lambda k: k.replace(" ", "-")
)
def test_condor_q_failures_give_none(tmp_path, monkeypatch, kind):
    if kind == "missing":
        command = str(tmp_path / "no-such-condor_q")
    elif kind == "fails":
        command = _command(
            tmp_path / "condor_q", "-- Failed to fetch ads from: <10.0.0.1:9618> : schedd\n", rc=1
        )
    elif kind == "not json":
        command = _command(tmp_path / "condor_q", "-- Schedd: schedd.example.org\n 1234.0 R\n")
    else:
        monkeypatch.setattr(htcondor, "STATUS_TIMEOUT", 0.5)
        command = _command(tmp_path / "condor_q", CONDOR_Q_JSON, sleep=10)
    started = time.monotonic()
    assert _htcondor(status_command=command).job_states(["1234.0"]) is None
    assert time.monotonic() - started < 5


# --- DIRAC: dirac-wms-job-status -------------------------------------------------------------
def test_dirac_status_lines_in_words():
    assert parse_job_status(DIRAC_STATUS) == {
        "101": "Waiting (Pilot Agent Submission)",
        "102": "Running (Application) at LCG.RAL-LCG2.uk",
        "103": "Failed (Application Finished With Errors; Exited With Status 1) "
        "at LCG.UKI-LT2-IC-HEP.uk",
        "104": "Matched (Assigned) at LCG.RAL-LCG2.uk",
        "105": "Done (Execution Complete) at EELA.UTFSM.cl",
    }
    assert parse_job_status("") == {}
    assert parse_job_status("ERROR: Failed to connect to JobMonitoring\n") == {}


def test_dirac_backend_asks_its_status_command(tmp_path):
    backend = _dirac(status_command=_command(tmp_path / "status", DIRAC_STATUS))
    states = backend.job_states(["101", "102", "106"])
    assert states is not None
    assert states["101"] == "Waiting (Pilot Agent Submission)" and "106" not in states
    assert (tmp_path / "status.args").read_text().split() == ["101", "102", "106"]


@pytest.mark.parametrize(
    "kind", ["missing", "fails", "times out"], ids=lambda k: k.replace(" ", "-")
)
def test_dirac_status_failures_give_none(tmp_path, kind):
    if kind == "missing":
        command = str(tmp_path / "no-such-dirac-wms-job-status")
    elif kind == "fails":
        command = _command(
            tmp_path / "status", "ERROR: No valid proxy found (dirac-proxy-init)\n", rc=2
        )
    else:
        command = _command(tmp_path / "status", DIRAC_STATUS, sleep=10)
    started = time.monotonic()
    transport = DiracCLITransport(status_command=command)
    assert transport.job_states(["101"], timeout=0.5) is None
    assert time.monotonic() - started < 5
    if kind != "times out":
        assert _dirac(status_command=command).job_states(["101"]) is None


# --- the stand-ins on real stand-in jobs -------------------------------------------------------
def _wait_for(predicate, seconds: float = 10) -> None:
    deadline = time.monotonic() + seconds
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def _condor_submit(tmp_path: Path, executable: str, arguments: str = "") -> str:
    sub = tmp_path / "job.sub"
    sub.write_text(f'executable = {executable}\narguments = "{arguments}"\nqueue\n')
    out = subprocess.run(
        ["condor_submit", str(sub)], capture_output=True, text=True, check=True, timeout=30
    ).stdout
    cluster = out.strip().rsplit(" ", 1)[-1].rstrip(".")
    return f"{cluster}.0"


def test_standin_condor_q_reports_running_completed_and_removed_jobs(standins, tmp_path):
    backend = _htcondor()  # condor_q from PATH: the stand-in
    sleeper = _condor_submit(tmp_path, "/bin/sleep", "60")
    quick = _condor_submit(tmp_path, "/bin/true")
    pids = {r["id"]: r["pid"] for r in localjobs.history(standins / "condor")}
    _wait_for(lambda: not localjobs.alive(pids[quick]))
    assert backend.job_states([sleeper, quick, "99.0"]) == {
        sleeper: "Running",
        quick: "Completed",
    }
    subprocess.run(["condor_rm", sleeper], check=True, capture_output=True, timeout=30)
    assert not localjobs.alive(pids[sleeper])
    assert backend.job_states([sleeper]) == {sleeper: "Removed"}
    # the other forms real condor_q has
    af = subprocess.run(
        ["condor_q", "-af", "ClusterId", "ProcId", "JobStatus", "HoldReason"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.splitlines()
    assert af == [f"{sleeper.split('.')[0]} 0 3 undefined", f"{quick.split('.')[0]} 0 4 undefined"]
    empty = subprocess.run(["condor_q", "99.0", "-json"], capture_output=True, text=True)
    assert (empty.returncode, empty.stdout) == (0, "")


def _dirac_submit(tmp_path: Path, arguments: str, site: str) -> str:
    jdl = tmp_path / "job.jdl"
    jdl.write_text(
        f'[\n  Executable = "/bin/sh";\n  Arguments = "{arguments}";\n  Site = "{site}";\n]\n'
    )
    out = subprocess.run(
        ["dirac-wms-job-submit", str(jdl)], capture_output=True, text=True, check=True, timeout=30
    ).stdout
    return out.split("=")[1].strip()


def test_standin_dirac_status_reports_running_done_and_killed_jobs(standins, tmp_path):
    backend = _dirac()  # dirac-wms-job-status from PATH: the stand-in
    sleeper = _dirac_submit(tmp_path, "-c 'sleep 60'", "LCG.SITE-A.uk")
    quick = _dirac_submit(tmp_path, "-c 'exit 0'", "LCG.SITE-B.uk")
    pids = {r["id"]: r["pid"] for r in localjobs.history(standins / "dirac")}
    _wait_for(lambda: not localjobs.alive(pids[quick]))
    assert backend.job_states([sleeper, quick, "999"]) == {
        sleeper: "Running (Application) at LCG.SITE-A.uk",
        quick: "Done (Execution Complete) at LCG.SITE-B.uk",
    }
    subprocess.run(["dirac-wms-job-kill", sleeper], check=True, capture_output=True, timeout=30)
    assert not localjobs.alive(pids[sleeper])
    assert backend.job_states([sleeper]) == {
        sleeper: "Killed (Marked for termination) at LCG.SITE-A.uk"
    }
    line = subprocess.run(
        ["dirac-wms-job-status", sleeper], capture_output=True, text=True, check=True
    ).stdout
    assert line == (
        f"JobID={sleeper} Status=Killed; MinorStatus=Marked for termination; "
        "ApplicationStatus=Unknown; Site=LCG.SITE-A.uk; \n"
    )


# --- runs whose workers never connect ---------------------------------------------------------
def _profile(tmp_path: Path, backend: str, setup: str, **section) -> str:
    profile = {
        "backend": backend,
        "workers": 2,
        "worker": {
            "cores": 1,
            "memory": "1GB",
            "death_timeout": 30,
            "start_timeout": 2,  # seconds: the jobs below never start a worker
            "setup": [setup],
        },
        "scheduler": {"host": "127.0.0.1"},
        backend: section,
    }
    if backend == "htcondor":
        profile["worker"]["disk"] = "1GB"
    path = tmp_path / f"{backend}-never.yaml"
    path.write_text(yaml.safe_dump(profile))
    return str(path)


@pytest.mark.fault(
    "HTCondor jobs that run but never start a worker", "failed clearly", histograms="none written"
)
def test_htcondor_run_whose_workers_never_connect_names_each_jobs_state(
    standins, small_catalog, tmp_path, fault_details
):
    started = time.monotonic()
    with pytest.raises(BackendError, match=r"did not connect within 2 s") as err:
        backend_run(
            str(small_catalog),
            "htcondor",
            profile=_profile(tmp_path, "htcondor", "sleep 60", universe="vanilla"),
        )
    seconds = time.monotonic() - started
    message = str(err.value)
    assert "--backend htcondor" in message
    jobs = localjobs.history(standins / "condor")  # submitted at once: in either order
    assert sorted(j["id"] for j in jobs) == ["1.0", "2.0"]
    assert all(f"{j}: Running" in message for j in ("1.0", "2.0")), message
    # close() removed the jobs
    assert _htcondor().job_states(["1.0", "2.0"]) == {"1.0": "Removed", "2.0": "Removed"}
    assert seconds < 30, f"took {seconds:.0f} s"
    fault_details.update(seconds_to_failure=round(seconds, 1))


@pytest.mark.fault(
    "HTCondor jobs that end before their worker starts", "failed clearly", histograms="none written"
)
def test_htcondor_run_whose_jobs_end_at_once_names_them_completed(
    standins, small_catalog, tmp_path, fault_details
):
    started = time.monotonic()
    with pytest.raises(BackendError, match=r"did not connect within 2 s") as err:
        backend_run(
            str(small_catalog), "htcondor", profile=_profile(tmp_path, "htcondor", "exit 3")
        )
    seconds = time.monotonic() - started
    message = str(err.value)
    assert all(f"{j}: Completed" in message for j in ("1.0", "2.0")), message
    assert seconds < 30, f"took {seconds:.0f} s"
    fault_details.update(seconds_to_failure=round(seconds, 1))


@pytest.mark.fault(
    "DIRAC jobs that run but never start a worker", "failed clearly", histograms="none written"
)
def test_dirac_run_whose_workers_never_connect_names_each_jobs_state(
    standins, small_catalog, tmp_path, fault_details
):
    started = time.monotonic()
    profile = _profile(
        tmp_path, "dirac", "sleep 60", sites={"LCG.SITE-A.uk": 1, "LCG.SITE-B.uk": 1}
    )
    with pytest.raises(BackendError, match=r"did not connect within 2 s") as err:
        backend_run(str(small_catalog), "dirac", profile=profile)
    seconds = time.monotonic() - started
    message = str(err.value)
    assert "--backend dirac" in message
    site = {j["id"]: j["site"] for j in localjobs.history(standins / "dirac")}
    assert sorted(site.values()) == ["LCG.SITE-A.uk", "LCG.SITE-B.uk"]  # either job at either
    for job in ("1", "2"):
        assert f"{job}: Running (Application) at {site[job]}" in message, message
    assert _dirac().job_states(["1", "2"]) == {
        job: f"Killed (Marked for termination) at {site[job]}" for job in ("1", "2")
    }
    assert seconds < 30, f"took {seconds:.0f} s"
    fault_details.update(seconds_to_failure=round(seconds, 1))
