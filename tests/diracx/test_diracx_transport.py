"""The dirac backend's DiracX transport (backends/diracx.py) against DiracX's own server code:
the real routers, run in-process by DiracX's pytest plugin on sqlite (``nox -s diracx``).

JDLs of the real dirac backend, made from a profile, are submitted (``POST /api/jobs/jdl``),
searched (``POST /api/jobs/search``) and killed (``PATCH /api/jobs/status``) with the token of
a user the plugin signs, read from a credentials file as ``dirac login`` writes it. DiracX
checks the JDLs with DIRAC's own code as it stores them. The harness wheel of ``dirac.code:
sandbox`` goes to DiracX's sandbox store (moto's S3, run by the plugin) and comes back from
it. Nothing executes the jobs: there is no pilot or matcher here, so they stay Received until
killed. The client unit tests are in tests/test_diracx_client.py.
"""

from __future__ import annotations

import asyncio
import io
import json
import logging
import tarfile
import time
from pathlib import Path

import pytest

pytest.importorskip("diracx.testing", reason="DiracX's server packages: run `nox -s diracx`")

import httpx2  # noqa: E402

from backends.dirac import DiracBackend, DiracJob  # noqa: E402
from backends.diracx import DiracXError, DiracXTransport  # noqa: E402

pytestmark = [
    pytest.mark.enabled_dependencies(
        [
            "AuthSettings",
            "ConfigSource",
            "DevelopmentSettings",
            "JobDB",
            "JobLoggingDB",
            "JobParametersDB",
            "PilotAgentsDB",
            "SandboxMetadataDB",
            "SandboxStoreSettings",
            "TaskQueueDB",
            "WMSAccessPolicy",
            "SandboxAccessPolicy",
        ]
    ),
    # the transport gives every request a timeout; Starlette's TestClient ignores it, and says so
    pytest.mark.filterwarnings("ignore:You should not use the 'timeout' argument"),
]

SITES = {"LCG.SITE-A.uk": 1, "LCG.SITE-B.uk": 1}


@pytest.fixture
def diracx(client_factory, tmp_path):
    """(TestClient of DiracX without a default token, credentials file with a user's token,
    the token)."""
    with client_factory.normal_user() as client:
        token = client.headers.pop("Authorization").removeprefix("Bearer ")
        credentials = tmp_path / "diracx" / "credentials.json"
        credentials.parent.mkdir()
        credentials.write_text(
            json.dumps(
                {
                    "access_token": token,
                    "refresh_token": None,
                    "expires_on": int(time.time()) + 1800,
                }
            )
        )
        yield client, credentials, token


def backend(url: str, credentials: Path) -> DiracBackend:
    return DiracBackend(
        profile={
            "backend": "dirac",
            "worker": {"cores": 1, "memory": "1GB"},
            "scheduler": {"contact_address": "tcp://agc-scheduler.example.ac.uk:8786"},
            "dirac": {
                "owner_group": "test_group",
                "job_name": "agc-dask-worker",
                "cpu_time": 3600,
                "sites": SITES,
                "transport": "diracx",
                "diracx": {"url": url, "token_file": str(credentials)},
            },
        }
    )


def test_jdls_of_the_backend_submitted_searched_and_killed(diracx, caplog):
    caplog.set_level(logging.DEBUG)
    client, credentials, token = diracx
    url = str(client.base_url)
    made = backend(url, credentials)
    jdls = made.jdls()
    assert len(jdls) == 2
    transport = DiracXTransport(url, credentials, client=client)

    ids = transport.submit(jdls)
    assert len(ids) == 2 and all(i.isdigit() for i in ids)
    assert transport.alive() == ids

    rows = {str(r["JobID"]): r for r in transport.search(ids)}
    assert sorted(rows) == sorted(ids)
    for job_id, site in zip(ids, SITES, strict=True):
        row = rows[job_id]
        assert row["JobGroup"] == made.job_group  # the run's group, as DiracX stored it
        assert row["Site"] == site
        assert row["Status"] == "Received"  # no optimiser moves it on here
    states = transport.status([*ids, "999999"])
    assert sorted(states) == sorted(ids)  # an id DiracX does not know is left out
    assert all(state.startswith("Received (Job accepted)") for state in states.values())

    transport.kill(ids[:1])
    assert transport.alive() == ids[1:]
    states = transport.status(ids)
    assert states[ids[0]].startswith("Killed (Marked for termination)")
    assert states[ids[1]].startswith("Received")

    transport.close()  # kills the job still alive
    assert transport.alive() == []
    assert all(s.startswith("Killed") for s in transport.status(ids).values())
    transport.kill(ids)  # killing them again is no error
    assert token not in caplog.text


def test_the_backend_cluster_submits_through_diracx_and_kills_on_close(diracx, monkeypatch):
    client, credentials, _ = diracx
    url = str(client.base_url)
    made = backend(url, credentials)
    # the backend's own transport, sending its requests to the in-process DiracX
    monkeypatch.setattr(made.transport(), "_client", client)
    monkeypatch.setattr(made.transport(), "_own_client", False)
    cluster = made.make_cluster()
    try:
        cluster.scale(jobs=2)
        cluster.sync(cluster._correct_state)  # the submissions, as JobQueueBackend.start waits
        ids = sorted(job.job_id for job in cluster.workers.values())
        assert len(ids) == 2
        errors = [getattr(job, "submit_error", None) for job in cluster.workers.values()]
        assert errors == [None, None]
        states = made.job_states(ids)
        assert states is not None and sorted(states) == ids
        assert all(s.startswith("Received") for s in states.values())
    finally:
        cluster.close()
    states = made.job_states(ids)
    assert states is not None
    assert all(s.startswith("Killed") for s in states.values()), states
    groups = {r["JobGroup"] for r in made.transport().search(ids)}  # type: ignore[attr-defined]
    assert groups == {made.job_group}


def test_a_token_diracx_refuses_says_to_run_dirac_login(diracx, tmp_path):
    client, credentials, token = diracx
    url = str(client.base_url)
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"access_token": token[:-8] + "AAAAAAAA", "expires_on": 1}))
    transport = DiracXTransport(url, bad, client=client)
    with pytest.raises(DiracXError) as err:
        transport.submit(backend(url, credentials).jdls()[:1])
    message = str(err.value)
    assert f"DiracX at {url} refused the token of {bad}" in message
    assert "HTTP 401" in message and "run `dirac login`" in message
    assert token[:-8] not in message
    assert transport.job_states(["1"]) is None


def test_the_harness_wheel_goes_to_diracx_s_sandbox_store(diracx):
    """``dirac.code: sandbox`` through DiracX: the wheel is uploaded to the sandbox store (moto's
    S3 here) once, the JDL that DiracX accepts names its PFN, and what the store gives back for
    that PFN (as DIRAC's JobWrapper fetches it) is the wheel."""
    client, credentials, _ = diracx
    url = str(client.base_url)
    made = backend(url, credentials)
    assert made.code() == "sandbox"
    transport = DiracXTransport(url, credentials, client=client)  # uploads with its own client
    job = DiracJob(
        "tcp://agc-scheduler.example.ac.uk:8786",
        name="w-0",
        **{**made.all_job_kwargs(), "transport": transport},
    )
    wheel = made.harness_wheel()
    asyncio.run(job.start())
    assert job.job_id and transport.status([job.job_id])[job.job_id].startswith("Received")
    (pfn,) = asyncio.run(transport.input_sandbox([str(wheel)]))  # the same files: no upload
    assert pfn.startswith("SB:SandboxSE|/S3/") and pfn.endswith(".tar.bz2")
    assert f'InputSandbox = {{"{pfn}"}};' in job.job_script([pfn])

    # the store has it: another transport (another run of this code) gets the PFN, no upload
    def no_upload(request):
        raise AssertionError(f"uploaded again: {request.url}")

    again = DiracXTransport(
        url,
        credentials,
        client=client,
        upload_client=httpx2.Client(transport=httpx2.MockTransport(no_upload)),
    )
    assert again.upload_sandbox([wheel]) == pfn

    # what DIRAC's JobWrapper downloads for the PFN: the wheel, under its own name
    answer = client.get("/api/jobs/sandbox", params={"pfn": pfn}, headers=_auth(credentials))
    assert answer.status_code == 200, answer.text
    archive = httpx2.get(answer.json()["url"]).raise_for_status().content
    with tarfile.open(fileobj=io.BytesIO(archive)) as tf:
        assert tf.getnames() == [wheel.name]
        assert tf.extractfile(wheel.name).read() == wheel.read_bytes()
    transport.close()


def _auth(credentials: Path) -> dict[str, str]:
    token = json.loads(credentials.read_text())["access_token"]
    return {"Authorization": f"Bearer {token}"}
