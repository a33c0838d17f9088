"""The DiracX transport's client side (backends/diracx.py) on canned answers (an
``httpx2.MockTransport``): where the token comes from, that it never reaches a log or an error
message, the errors for a refused token, an unreachable or silent server, the request bodies,
the timeouts, the job sandbox uploaded to DiracX's sandbox store, and the dirac backend
submitting and killing through it. Against DiracX's own
server code: tests/diracx/ (``nox -s diracx``)."""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
import logging
import os
import socket
import tarfile
import time
from pathlib import Path

import httpx2
import pytest

from backends.dirac import DiracBackend, DiracJob
from backends.diracx import DEFAULT_TIMEOUT, DiracXError, DiracXTransport, sandbox_archive
from backends.profiles import ProfileError

URL = "https://diracx.example.org"
S3 = "https://s3.example.org"  # DiracX's sandbox store
TOKEN = "eyJhbGciOiJFZERTQSJ9.c2VjcmV0LXRva2VuLWJvZHk.c2lnbmF0dXJl"


def credentials(path: Path, token: str = TOKEN, expires_in: float = 3600) -> Path:
    """A credentials file as ``dirac login`` writes it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        json.dumps(
            {
                "access_token": token,
                "refresh_token": "refresh-" + token,
                "expires_on": int(time.time() + expires_in),
            }
        )
    )
    return path


def diracx_profile(token_file: Path, url: str = URL, **dirac) -> dict:
    """A dirac profile with the DiracX transport (``diracx``: url and token file), plus the
    other ``dirac`` keys given."""
    diracx = {"url": url, "token_file": str(token_file), **dirac.pop("diracx", {})}
    return {
        "backend": "dirac",
        "worker": {"cores": 1, "memory": "1GB"},
        "dirac": {"transport": "diracx", "diracx": diracx, **dirac},
    }


class FakeDiracX:
    """Canned DiracX answers; every request is kept (``requests``)."""

    def __init__(self, status: int | None = None, body=None, error: Exception | None = None):
        self.requests: list[httpx2.Request] = []
        self.status, self.body, self.error = status, body, error
        self.next_id = 100
        self.killed: list[str] = []
        #: checksums of the sandboxes the store has; others get a presigned upload URL
        self.stored: set[str] = set()
        self.pending: set[str] = set()
        self.uploads: list[httpx2.Request] = []  # to the store's presigned URLs

    def __call__(self, request: httpx2.Request) -> httpx2.Response:
        if str(request.url).startswith(S3):  # the sandbox store
            self.uploads.append(request)
            self.stored |= self.pending
            self.pending.clear()
            return httpx2.Response(204)
        self.requests.append(request)
        if self.error is not None:
            raise self.error
        if self.status is not None:
            return httpx2.Response(self.status, json=self.body)
        path, body = request.url.path, json.loads(request.content or b"null")
        if (request.method, path) == ("POST", "/api/jobs/jdl"):
            jobs = []
            for _ in body:
                self.next_id += 1
                jobs.append({"JobID": self.next_id, "Status": "Received", "MinorStatus": "x"})
            return httpx2.Response(201, json=jobs)
        if (request.method, path) == ("POST", "/api/jobs/search"):
            (spec,) = body["search"]
            return httpx2.Response(
                200,
                json=[
                    {
                        "JobID": i,
                        "Status": "Killed" if str(i) in self.killed else "Waiting",
                        "MinorStatus": "Pilot Agent Submission",
                        "ApplicationStatus": "Unknown",
                        "Site": "ANY",
                    }
                    for i in spec["values"]
                    if 100 < i <= self.next_id  # the jobs it gave ids
                ],
            )
        if (request.method, path) == ("POST", "/api/jobs/sandbox"):
            pfn = f"SB:SandboxSE|/S3/sandboxes/vo/group/user/sha256:{body['checksum']}.tar.bz2"
            if body["checksum"] in self.stored:
                return httpx2.Response(200, json={"pfn": pfn})
            self.pending.add(body["checksum"])
            url = f"{S3}/sandboxes?X-Amz-Signature=s3cr3t"
            return httpx2.Response(200, json={"pfn": pfn, "url": url, "fields": {"key": "k1"}})
        if (request.method, path) == ("PATCH", "/api/jobs/status"):
            self.killed += list(body)
            return httpx2.Response(
                200, json={"success": {i: {"Status": "Killed"} for i in body}, "failed": {}}
            )
        return httpx2.Response(404, json={"detail": "Not Found"})

    def client(self) -> httpx2.Client:
        return httpx2.Client(transport=httpx2.MockTransport(self))

    def transport(self, tmp_path: Path, **kwargs) -> DiracXTransport:
        token_file = kwargs.pop("token_file", None) or credentials(tmp_path / "credentials.json")
        return DiracXTransport(
            URL, token_file, client=self.client(), upload_client=self.client(), **kwargs
        )

    def answer(self, transport: DiracXTransport, monkeypatch) -> None:
        """Have this fake answer the requests of a transport made from a profile."""
        monkeypatch.setattr(transport, "_client", self.client())
        monkeypatch.setattr(transport, "_own_client", False)
        monkeypatch.setattr(transport, "_upload_client", self.client())
        monkeypatch.setattr(transport, "_own_upload_client", False)


def bearer(request: httpx2.Request) -> str:
    return request.headers["Authorization"].removeprefix("Bearer ")


# --- the token ------------------------------------------------------------------------------
def test_token_from_the_credentials_file_of_dirac_login(tmp_path, monkeypatch):
    monkeypatch.delenv("DIRACX_CREDENTIALS_PATH", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    credentials(tmp_path / ".cache" / "diracx" / "credentials.json")
    fake = FakeDiracX()
    transport = DiracXTransport(URL, client=httpx2.Client(transport=httpx2.MockTransport(fake)))
    assert transport.credentials_path == tmp_path / ".cache" / "diracx" / "credentials.json"
    assert transport.submit(['[Executable = "/bin/true";]']) == ["101"]
    assert bearer(fake.requests[0]) == TOKEN

    # DIRACX_CREDENTIALS_PATH, as the dirac command honours it; read again for each request
    other = credentials(tmp_path / "elsewhere.json", token="another-token")
    monkeypatch.setenv("DIRACX_CREDENTIALS_PATH", str(other))
    transport.status(["101"])
    assert bearer(fake.requests[-1]) == "another-token"


def test_token_from_the_profile_path(tmp_path, monkeypatch):
    monkeypatch.setenv("DIRACX_CREDENTIALS_PATH", str(tmp_path / "not-this-one.json"))
    token_file = credentials(tmp_path / "site" / "diracx-token.json")
    backend = DiracBackend(
        profile=diracx_profile(token_file, url=URL + "/", diracx={"timeout": 12})
    )
    transport = backend.transport()
    assert isinstance(transport, DiracXTransport)
    assert (transport.url, transport.credentials_path, transport.timeout) == (URL, token_file, 12)
    assert transport.ca_path is None
    assert transport.token() == TOKEN
    # a file holding the bare token (a site's own token file) does too
    token_file.write_text("bare-token\n")
    assert transport.token() == "bare-token"


def test_a_diracx_profile_needs_a_url(monkeypatch):
    monkeypatch.delenv("DIRACX_URL", raising=False)
    profile = {
        "backend": "dirac",
        "worker": {"cores": 1, "memory": "1GB"},
        "dirac": {"transport": "diracx"},
    }
    with pytest.raises(ProfileError, match=r"dirac\.diracx\.url: required .* DIRACX_URL"):
        DiracBackend(profile=profile)
    monkeypatch.setenv("DIRACX_URL", URL)  # as the dirac command takes them
    monkeypatch.setenv("DIRACX_CA_PATH", "/etc/grid-security/certificates")
    transport = DiracBackend(profile=profile).transport()
    assert transport.url == URL
    assert str(transport.ca_path) == "/etc/grid-security/certificates"
    with pytest.raises(
        ProfileError, match=r"dirac\.diracx\.url: 'diracx\.example\.org' is not a URL"
    ):
        DiracBackend(
            profile={
                **profile,
                "dirac": {"transport": "diracx", "diracx": {"url": "diracx.example.org"}},
            }
        )


@pytest.mark.parametrize("content", [None, "", '{"refresh_token": "x"}', "{not json"])
def test_missing_or_bad_credentials_say_to_log_in(tmp_path, content):
    path = tmp_path / "credentials.json"
    if content is not None:
        path.write_text(content)
    fake = FakeDiracX()
    transport = fake.transport(tmp_path, token_file=path)
    with pytest.raises(DiracXError, match=r"dirac login.*" + URL) as err:
        transport.submit(["[]"])
    assert str(path) in str(err.value)
    assert fake.requests == []  # nothing sent without a token


# --- errors ------------------------------------------------------------------------------------
def test_401_says_to_run_dirac_login_naming_the_url(tmp_path):
    fake = FakeDiracX(status=401, body={"detail": "Invalid JWT"})
    token_file = credentials(tmp_path / "credentials.json", expires_in=-60)
    transport = fake.transport(tmp_path, token_file=token_file)
    with pytest.raises(DiracXError) as err:
        transport.submit(["[]"])
    message = str(err.value)
    assert f"DiracX at {URL} refused the token of {token_file}" in message
    assert "HTTP 401 (Invalid JWT)" in message
    assert "expired at" in message
    assert "run `dirac login`" in message
    assert TOKEN not in message


def test_403_says_which_action_and_to_log_in_with_a_group(tmp_path):
    transport = FakeDiracX(status=403, body={"detail": "Forbidden"}).transport(tmp_path)
    with pytest.raises(DiracXError, match=r"does not allow submitting 2 job\(s\).*dirac login"):
        transport.submit(["[]", "[]"])


def test_connection_refused_names_the_url(tmp_path):
    with socket.socket() as s:  # a loopback port with no server behind it
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    transport = DiracXTransport(url, credentials(tmp_path / "c.json"), timeout=5)
    with pytest.raises(DiracXError, match=rf"cannot reach DiracX at {url} \(submitting 1 job"):
        transport.submit(["[]"])
    assert transport.job_states(["1"]) is None  # the run's error report goes on without


def test_a_silent_server_times_out_naming_the_url(tmp_path):
    fake = FakeDiracX(error=httpx2.ReadTimeout("timed out"))
    transport = fake.transport(tmp_path, timeout=7)
    with pytest.raises(DiracXError, match=rf"DiracX at {URL} did not answer within 7 s"):
        transport.status(["1"])


def test_every_request_has_a_timeout(tmp_path):
    fake = FakeDiracX()
    transport = fake.transport(tmp_path)
    transport.submit(["[]"])
    transport.status(["101"])
    transport.kill(["101"])
    transport.job_states(["101"], timeout=5)
    timeouts = [r.extensions["timeout"] for r in fake.requests]
    assert len(timeouts) == 4
    for t in timeouts[:3]:
        assert t == dict.fromkeys(("connect", "read", "write", "pool"), DEFAULT_TIMEOUT)
    assert timeouts[3]["read"] == 5  # the error report's own, shorter limit
    # the client the transport makes for itself has the timeout too
    own = DiracXTransport(URL, tmp_path / "c.json", timeout=9)
    assert own.client.timeout == httpx2.Timeout(9)
    own.close()


def test_the_token_is_never_logged_nor_in_an_error(tmp_path, caplog):
    caplog.set_level(logging.DEBUG)  # httpx2's own request logs too
    fake = FakeDiracX()
    transport = fake.transport(tmp_path)
    ids = transport.submit(["[]", "[]"])
    transport.status(ids)
    transport.kill(ids[:1])
    transport.close()
    messages = [repr(transport)]
    # a server echoing the token in its error, a transport error quoting it
    for fake in (
        FakeDiracX(status=401, body={"detail": f"bad token {TOKEN}"}),
        FakeDiracX(status=403, body={"detail": f"bad token {TOKEN}"}),
        FakeDiracX(status=500, body={"detail": f"crash on {TOKEN}"}),
        FakeDiracX(error=httpx2.ConnectError(f"refused for {TOKEN}")),
    ):
        t = fake.transport(tmp_path)
        with pytest.raises(DiracXError) as err:
            t.submit(["[]"])
        messages += [str(err.value), repr(err.value.__cause__), repr(err.value.__context__)]
        # no chained exception (the request, with its headers) comes along
        assert err.value.__cause__ is None and err.value.__context__ is None
        assert t.job_states(["1"]) is None
        asyncio.run(t.kill_job("1"))  # logged as a warning, not raised
    assert "<token>" in " ".join(messages)  # the server's words kept, the token replaced
    for text in [*messages, caplog.text, *(str(r.args) for r in caplog.records)]:
        assert TOKEN not in text


# --- the API's requests -------------------------------------------------------------------------
def test_request_bodies(tmp_path):
    fake = FakeDiracX()
    transport = fake.transport(tmp_path)
    assert transport.submit(["[A = 1;]", "[A = 2;]"]) == ["101", "102"]
    submit = fake.requests[-1]
    assert (submit.method, str(submit.url)) == ("POST", f"{URL}/api/jobs/jdl")
    assert json.loads(submit.content) == ["[A = 1;]", "[A = 2;]"]

    assert transport.status(["102", "101", "999"]) == {
        "101": "Waiting (Pilot Agent Submission)",
        "102": "Waiting (Pilot Agent Submission)",
    }
    search = fake.requests[-1]
    assert (search.method, search.url.path) == ("POST", "/api/jobs/search")
    body = json.loads(search.content)
    assert body["search"] == [{"parameter": "JobID", "operator": "in", "values": [102, 101, 999]}]
    assert {"JobID", "Status", "MinorStatus", "ApplicationStatus", "Site"} <= set(
        body["parameters"]
    )
    assert search.url.params["per_page"] == "3"

    transport.kill(["101"])
    kill = fake.requests[-1]
    assert (kill.method, kill.url.path) == ("PATCH", "/api/jobs/status")
    ((job_id, changes),) = json.loads(kill.content).items()
    ((when, change),) = changes.items()
    assert job_id == "101" and when.endswith("+00:00")  # a UTC time, as DiracX requires
    assert change["Status"] == "Killed" and change["MinorStatus"] == "Marked for termination"
    assert transport.status(["101"])["101"].startswith("Killed")


def test_close_kills_the_jobs_still_alive_once(tmp_path):
    fake = FakeDiracX()
    transport = fake.transport(tmp_path)
    ids = transport.submit(["[]", "[]", "[]"])
    transport.kill(ids[:1])
    assert transport.alive() == ids[1:]
    transport.close()
    assert fake.killed == ids
    n = len(fake.requests)
    transport.close()
    assert len(fake.requests) == n  # nothing left to kill


def test_kill_of_unknown_jobs_is_no_error(tmp_path):
    transport = FakeDiracX(status=404, body={"detail": {"failed": {"5": "Not found"}}}).transport(
        tmp_path
    )
    transport.kill(["5"])


def test_dirac_backend_submits_and_kills_through_diracx(tmp_path, monkeypatch):
    fake = FakeDiracX()
    backend = DiracBackend(
        profile=diracx_profile(
            credentials(tmp_path / "t.json"), sites={"LCG.SITE-A.uk": 1, "LCG.SITE-B.uk": 1}
        )
    )
    transport = backend.transport()
    fake.answer(transport, monkeypatch)
    job = DiracJob("tcp://127.0.0.1:8786", name="w-0", **backend.all_job_kwargs())
    assert job.transport is transport
    asyncio.run(job.start())
    assert job.job_id == "101"
    sandbox, submit = fake.requests
    assert sandbox.url.path == "/api/jobs/sandbox"  # the harness wheel first (dirac.code)
    (jdl,) = json.loads(submit.content)
    assert f'JobGroup = "{backend.job_group}";' in jdl
    assert 'InputSandbox = {"SB:SandboxSE|/S3/sandboxes/' in jdl
    assert backend.job_states(["101", "7"]) == {"101": "Waiting (Pilot Agent Submission)"}
    asyncio.run(job.close())
    assert fake.killed == ["101"] and transport.alive() == []

    # the cluster's shutdown kills what its jobs left behind (here: one submitted directly)
    cluster = backend.make_cluster()
    try:
        leftover = transport.submit(["[]"])
    finally:
        cluster.close()
    assert fake.killed == ["101", *leftover]


# --- the job sandbox ---------------------------------------------------------------------------
def test_the_sandbox_goes_to_the_store_once_without_the_token(tmp_path):
    wheel = tmp_path / "agc_harness-0.1.0-py3-none-any.whl"
    wheel.write_bytes(b"PK wheel bytes")
    fake = FakeDiracX()
    transport = fake.transport(tmp_path)
    entries = asyncio.run(transport.input_sandbox([str(wheel)]))

    (initiate,) = fake.requests
    assert (initiate.method, str(initiate.url)) == ("POST", f"{URL}/api/jobs/sandbox")
    assert bearer(initiate) == TOKEN
    info = json.loads(initiate.content)
    archive = sandbox_archive([wheel])
    assert info == {
        "checksum_algorithm": "sha256",
        "checksum": hashlib.sha256(archive).hexdigest(),
        "size": len(archive),
        "format": "tar.bz2",
    }
    pfn = f"SB:SandboxSE|/S3/sandboxes/vo/group/user/sha256:{info['checksum']}.tar.bz2"
    assert entries == [pfn]
    # the archive to the presigned URL, as an HTML form with the store's fields, no token
    (upload,) = fake.uploads
    assert upload.method == "POST" and "Authorization" not in upload.headers
    assert upload.headers["Content-Type"].startswith("multipart/form-data")
    body = upload.content
    assert b'name="key"\r\n\r\nk1\r\n' in body and archive in body
    with tarfile.open(fileobj=io.BytesIO(archive)) as tf:
        assert tf.getnames() == [wheel.name]  # under its own name: the job's working directory
        assert tf.extractfile(wheel.name).read() == b"PK wheel bytes"

    # the next jobs of the run name the same PFN, without a request
    assert asyncio.run(transport.input_sandbox([str(wheel)])) == entries
    assert len(fake.requests) == 1 and len(fake.uploads) == 1


def test_a_sandbox_the_store_has_is_not_uploaded_again(tmp_path):
    wheel = tmp_path / "w.whl"
    wheel.write_bytes(b"wheel")
    fake = FakeDiracX()
    fake.stored.add(hashlib.sha256(sandbox_archive([wheel])).hexdigest())
    (pfn,) = asyncio.run(fake.transport(tmp_path).input_sandbox([str(wheel)]))
    assert pfn.startswith("SB:SandboxSE|/S3/") and fake.uploads == []


def test_sandbox_archives_are_reproducible(tmp_path):
    wheel = tmp_path / "w.whl"
    wheel.write_bytes(b"wheel")
    first = sandbox_archive([wheel])
    os.utime(wheel, (1, 1))
    assert sandbox_archive([wheel]) == first


def test_a_store_that_refuses_the_upload_is_named_not_its_signed_url(tmp_path):
    wheel = tmp_path / "w.whl"
    wheel.write_bytes(b"wheel")
    fake = FakeDiracX()
    refusing = httpx2.Client(
        transport=httpx2.MockTransport(lambda r: httpx2.Response(403, text="<Error>Denied</Error>"))
    )
    transport = DiracXTransport(
        URL, credentials(tmp_path / "c.json"), client=fake.client(), upload_client=refusing
    )
    with pytest.raises(DiracXError) as err:
        transport.upload_sandbox([wheel])
    message = str(err.value)
    assert "sandbox store at s3.example.org refused the job sandbox" in message
    assert "HTTP 403" in message and URL in message
    assert "s3cr3t" not in message and TOKEN not in message
