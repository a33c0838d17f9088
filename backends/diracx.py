"""The dirac backend's DiracX transport: DIRAC jobs through DiracX's REST API, with a token.

Chosen by a profile's ``dirac: {transport: diracx, diracx: {url: ..., token_file: ...}}``
(:class:`DiracXTransport`; the default transport stays the ``dirac-wms-*`` commands of
:class:`backends.dirac.DiracCLITransport`). Every request carries ``Authorization: Bearer
<token>`` and a timeout (``dirac.diracx.timeout``, default :data:`DEFAULT_TIMEOUT` s):

- submit: ``POST {url}/api/jobs/jdl`` with a JSON list of JDL strings; DiracX answers ``201``
  and ``[{"JobID": 1, "Status": "Received", "MinorStatus": "Job accepted", ...}, ...]``;
- state: ``POST {url}/api/jobs/search`` with ``{"parameters": [...], "search": [{"parameter":
  "JobID", "operator": "in", "values": [ids]}]}`` (DiracX's ``SearchParams``), in words as for
  the command line (:func:`backends.dirac.describe_job_status`);
- sandbox: a job's local InputSandbox files (the harness wheel of ``dirac.code: sandbox``) go
  to DiracX's sandbox store first, as DIRAC's client sends them: one reproducible ``tar.bz2``
  of them under their own names (:func:`sandbox_archive`), ``POST {url}/api/jobs/sandbox`` with
  its ``{"checksum_algorithm": "sha256", "checksum", "size", "format": "tar.bz2"}``, and, unless
  the store has it already (no ``url`` in the answer), a form ``POST`` of the archive to the
  presigned ``url`` with its ``fields``, without the token (another server; the system's CAs).
  The JDL's InputSandbox then names the answer's PFN (``SB:SandboxSE|/S3/...``), which DIRAC's
  JobWrapper downloads and unpacks into the job's directory. The same files are uploaded once
  per transport (by checksum);
- kill: ``PATCH {url}/api/jobs/status`` with ``{id: {<UTC time>: {"Status": "Killed",
  "MinorStatus": "Marked for termination", "Source": ...}}}``, the status change DIRAC's own
  job manager makes for a kill (DiracX then queues the ``Kill`` command for the job's pilot).
  DiracX keeps only status changes newer than a job's last one: the time is this machine's
  clock, so one far behind the server's leaves a job unkilled (logged as a warning).

The token is the access token ``dirac login`` stores: DiracX's credentials file,
``$DIRACX_CREDENTIALS_PATH`` or ``~/.cache/diracx/credentials.json`` (JSON with
``access_token``, ``refresh_token`` and ``expires_on``), or ``dirac.diracx.token_file`` (that
format, or a file holding the bare token). It is read again for every request, so a ``dirac
login`` during a run is taken up; it is not refreshed here. The token is never logged, never
in an error message and never in this object's ``repr``: a refused token (HTTP 401/403) gives a
message that names the server and the file and says to run ``dirac login``.

The transport remembers the jobs it submitted and kills those still alive at :meth:`close`
(the cluster's shutdown), also those dask-jobqueue forgot without closing them.
"""

from __future__ import annotations

import asyncio
import fcntl
import hashlib
import io
import json
import logging
import os
import ssl
import tarfile
import threading
from collections.abc import Iterable, Mapping, Sequence
from contextlib import suppress
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx2

from agc.errors import UserError
from backends.dirac import STATUS_TIMEOUT, describe_job_status
from backends.profiles import ProfileError

log = logging.getLogger(__name__)

#: Seconds each request to DiracX may take (connect, send, answer), unless the profile says.
DEFAULT_TIMEOUT = 30.0
#: Where ``dirac login`` stores the credentials (DiracX's ``DiracxPreferences``).
CREDENTIALS_ENV = "DIRACX_CREDENTIALS_PATH"
DEFAULT_CREDENTIALS = Path("~/.cache/diracx/credentials.json")
#: The server and CA of the ``dirac`` command, used where the profile names none.
URL_ENV = "DIRACX_URL"
CA_ENV = "DIRACX_CA_PATH"
#: Job fields a state is made of (and the run's JobGroup, to see whose jobs they are).
STATUS_PARAMETERS = ("JobID", "Status", "MinorStatus", "ApplicationStatus", "Site", "JobGroup")
#: Job ids per search request (DiracX allows up to 10000 results a page).
SEARCH_BATCH = 1000
#: ``Source`` of the status changes this transport makes.
SOURCE = "agc-harness"
#: The archive format of the sandboxes this transport uploads (one DiracX takes; the standard
#: library writes it).
SANDBOX_FORMAT = "tar.bz2"


def _string_field(text: str, key: str) -> tuple[dict, str | None]:
    """``text`` read as a JSON object, and its non-empty string ``key`` (None if it is not
    one: not JSON, not an object, missing, empty or another type)."""
    try:
        data = json.loads(text)
    except ValueError:
        return {}, None
    if not isinstance(data, dict):
        return {}, None
    value = data.get(key)
    return data, value if isinstance(value, str) and value else None


class DiracXError(UserError, RuntimeError):
    """DiracX refused or did not answer; the message names the server, never the token."""


def default_credentials_path() -> Path:
    """The credentials file of ``dirac login``: ``$DIRACX_CREDENTIALS_PATH``, else
    ``~/.cache/diracx/credentials.json``."""
    return Path(os.environ.get(CREDENTIALS_ENV) or DEFAULT_CREDENTIALS).expanduser()


def _ids(job_ids: Iterable[str | int]) -> list[int]:
    """DiracX job ids as the integers its API takes (duplicates dropped, order kept)."""
    out: dict[int, None] = {}
    for job_id in job_ids:
        try:
            out[int(job_id)] = None
        except (TypeError, ValueError):
            raise ValueError(f"{job_id!r} is not a DiracX job id (an integer)") from None
    return list(out)


def sandbox_archive(files: Sequence[str | os.PathLike[str]]) -> bytes:
    """The files (and directories, recursively) as one ``tar.bz2``, each under its own name as
    DIRAC's client packs an InputSandbox. Reproducible: times, owners and modes are fixed, so
    the same files give the same checksum (and DiracX's sandbox store keeps one copy)."""

    def normalized(info: tarfile.TarInfo) -> tarfile.TarInfo:
        info.mtime, info.uid, info.gid, info.uname, info.gname = 0, 0, 0, "", ""
        info.mode = 0o755 if info.isdir() or info.mode & 0o111 else 0o644
        return info

    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w:bz2") as tf:
        for f in files:
            path = Path(f)
            tf.add(path, arcname=path.name, filter=normalized)
    return out.getvalue()


class DiracXTransport:
    """Submit / kill / ask the state of DIRAC jobs through DiracX's REST API.

    Args:
        url: the DiracX server, e.g. ``https://diracx.example.org``.
        token_file: the file of the access token (default :func:`default_credentials_path`).
        ca_path: a CA bundle file or a directory of CA certificates to check the server's
            certificate with (default: the system's).
        timeout: seconds each request may take.
        client: an ``httpx2.Client`` to send the requests with (a test's client of an
            in-process DiracX); it is not closed here. Without one the transport makes its own
            when it first needs it.
        upload_client: the ``httpx2.Client`` that uploads sandboxes to the presigned URLs of
            DiracX's sandbox store (another server: no token, the system's CAs); likewise.
    """

    name = "diracx"

    def __init__(
        self,
        url: str,
        token_file: str | os.PathLike[str] | None = None,
        *,
        ca_path: str | os.PathLike[str] | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        client: httpx2.Client | None = None,
        upload_client: httpx2.Client | None = None,
    ):
        self.url = str(url).rstrip("/")
        self.token_file = Path(token_file).expanduser() if token_file else None
        self.ca_path = Path(ca_path).expanduser() if ca_path else None
        self.timeout = float(timeout)
        self._client = client
        self._own_client = client is None
        self._lock = threading.Lock()
        self._alive: dict[str, None] = {}  # submitted and not killed, in submission order
        self._upload_client = upload_client
        self._own_upload_client = upload_client is None
        self._sandbox_lock = threading.Lock()  # one upload at a time: the others wait for it
        self._sandboxes: dict[str, str] = {}  # archive checksum -> PFN

    @classmethod
    def from_profile(cls, section: Mapping[str, Any], source: str = "<inline>") -> DiracXTransport:
        """The transport of a profile's ``dirac.diracx`` section (``url`` else ``$DIRACX_URL``,
        ``token_file``, ``ca_path`` else ``$DIRACX_CA_PATH``, ``timeout``)."""
        url = section.get("url") or os.environ.get(URL_ENV)
        if not url:
            raise ProfileError(
                f"profile {source}: dirac.diracx.url: required with dirac.transport: diracx "
                f"(the DiracX server, e.g. https://diracx.example.org; or set {URL_ENV})"
            )
        return cls(
            url,
            section.get("token_file"),
            ca_path=section.get("ca_path") or os.environ.get(CA_ENV),
            timeout=float(section.get("timeout", DEFAULT_TIMEOUT)),
        )

    def __repr__(self) -> str:
        return f"DiracXTransport({self.url!r}, token_file={str(self.credentials_path)!r})"

    # --- the token -------------------------------------------------------------------------
    @property
    def credentials_path(self) -> Path:
        return self.token_file or default_credentials_path()

    def _login_hint(self) -> str:
        return f"run `dirac login` (with DIRACX_URL={self.url})"

    def _read_token_file(self) -> tuple[str, int | None]:
        """The access token and its expiry (epoch seconds, when the file says)."""
        path = self.credentials_path
        try:
            with open(path) as f:
                # as DiracX's own reader: not while `dirac login` writes it (where the file
                # system has locks; the lock goes with the file's closing)
                with suppress(OSError):
                    fcntl.flock(f, fcntl.LOCK_SH)
                text = f.read()
        except FileNotFoundError:
            raise DiracXError(
                f"no DiracX token: {path} does not exist; {self._login_hint()}, or name the "
                f"file in the profile's dirac.diracx.token_file (or {CREDENTIALS_ENV})"
            ) from None
        except OSError as err:
            raise DiracXError(
                f"cannot read the DiracX token file {path}: {err.strerror or err}"
            ) from None
        text = text.strip()
        if not text.startswith("{"):  # a file holding the bare token
            if not text or len(text.split()) != 1:
                raise DiracXError(
                    f"{path} holds no DiracX token (neither the JSON credentials of `dirac "
                    f"login` nor a bare token); {self._login_hint()}"
                )
            return text, None
        data, token = _string_field(text, "access_token")
        if token is None:
            raise DiracXError(
                f"{path} is not a DiracX credentials file (JSON with an access_token); "
                f"{self._login_hint()}"
            ) from None
        expires = data.get("expires_on")
        return token, int(expires) if isinstance(expires, int | float) else None

    def token(self) -> str:
        """The access token (read from :attr:`credentials_path` now)."""
        return self._read_token_file()[0]

    # --- HTTP --------------------------------------------------------------------------------
    @property
    def client(self) -> httpx2.Client:
        with self._lock:
            if self._client is None:
                verify: bool | ssl.SSLContext = True
                if self.ca_path is not None:
                    verify = (
                        ssl.create_default_context(capath=str(self.ca_path))
                        if self.ca_path.is_dir()
                        else ssl.create_default_context(cafile=str(self.ca_path))
                    )
                self._client = httpx2.Client(timeout=self.timeout, verify=verify)
                self._own_client = True
            return self._client

    def _request(
        self,
        method: str,
        path: str,
        what: str,
        *,
        json_body: Any,
        params: Mapping[str, Any] | None = None,
        timeout: float | None = None,
        allowed: Sequence[int] = (),
    ) -> httpx2.Response:
        """One request with the token and a timeout; :class:`DiracXError` for anything but
        a success (or a status in ``allowed``)."""
        token, expires = self._read_token_file()
        seconds = self.timeout if timeout is None else timeout

        def scrub(text: str) -> str:
            return text.replace(token, "<token>") if token else text

        failure = None
        try:
            response = self.client.request(
                method,
                f"{self.url}{path}",
                json=json_body,
                params=dict(params or {}),
                headers={"Authorization": f"Bearer {token}"},
                timeout=seconds,
            )
        except httpx2.TimeoutException:
            failure = (
                f"DiracX at {self.url} did not answer within {seconds:g} s ({what}: "
                f"{method} {path}; dirac.diracx.timeout)"
            )
        except httpx2.TransportError as err:  # refused, no route, DNS, TLS
            failure = (
                f"cannot reach DiracX at {self.url} ({what}: {method} {path}): "
                f"{type(err).__name__}: {scrub(str(err))}"
            )
        if failure is not None:  # raised here, without the request (and its headers) attached
            raise DiracXError(failure)
        code = response.status_code
        if code in allowed or response.is_success:
            return response
        detail = scrub(_detail(response))
        if code == 401:
            expired = ""
            if expires is not None and expires <= datetime.now(UTC).timestamp():
                when = datetime.fromtimestamp(expires, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
                expired = f"; the token of {self.credentials_path} expired at {when}"
            raise DiracXError(
                f"DiracX at {self.url} refused the token of {self.credentials_path} ({what}: "
                f"HTTP 401 {detail}{expired}): {self._login_hint()}"
            )
        if code == 403:
            raise DiracXError(
                f"DiracX at {self.url} does not allow {what} with the token of "
                f"{self.credentials_path} (HTTP 403 {detail}): {self._login_hint()} with a "
                "group that may submit jobs (dirac login --group GROUP)"
            )
        raise DiracXError(
            f"DiracX at {self.url}: {what} failed ({method} {path}: HTTP {code} {detail})"
        )

    # --- the API ----------------------------------------------------------------------------
    def submit(self, jdls: Sequence[str]) -> list[str]:
        """Submit JDLs (one request); the ids DiracX gave the jobs, in order."""
        if not jdls:
            return []
        what = f"submitting {len(jdls)} job(s)"
        response = self._request("POST", "/api/jobs/jdl", what, json_body=list(jdls))
        try:
            ids = [str(int(job["JobID"])) for job in response.json()]
        except (ValueError, KeyError, TypeError):
            raise DiracXError(
                f"DiracX at {self.url}: no job ids in the answer to {what}: {response.text[:200]!r}"
            ) from None
        with self._lock:
            self._alive.update(dict.fromkeys(ids))
        log.debug("DiracX at %s: submitted jobs %s", self.url, ", ".join(ids))
        return ids

    def search(
        self,
        job_ids: Iterable[str | int],
        parameters: Sequence[str] = STATUS_PARAMETERS,
        timeout: float | None = None,
    ) -> list[dict[str, Any]]:
        """DiracX's records of the jobs it knows among ``job_ids`` (``parameters`` of each)."""
        ids = _ids(job_ids)
        rows: list[dict[str, Any]] = []
        for start in range(0, len(ids), SEARCH_BATCH):
            batch = ids[start : start + SEARCH_BATCH]
            body = {
                "parameters": list(parameters),
                "search": [{"parameter": "JobID", "operator": "in", "values": batch}],
                "sort": [{"parameter": "JobID", "direction": "asc"}],
            }
            response = self._request(
                "POST",
                "/api/jobs/search",
                f"asking the state of {len(batch)} job(s)",
                json_body=body,
                params={"page": 1, "per_page": len(batch)},
                timeout=timeout,
            )
            rows += response.json()
        return rows

    @property
    def upload_client(self) -> httpx2.Client:
        with self._lock:
            if self._upload_client is None:
                self._upload_client = httpx2.Client(timeout=self.timeout)
                self._own_upload_client = True
            return self._upload_client

    def upload_sandbox(self, files: Sequence[str | os.PathLike[str]]) -> str:
        """Put the files in DiracX's sandbox store (:func:`sandbox_archive`, once per
        checksum); the PFN a JDL's InputSandbox names them by (``SB:SandboxSE|/S3/...``)."""
        try:
            archive = sandbox_archive(files)
        except OSError as err:
            raise DiracXError(
                f"cannot pack the job sandbox for DiracX at {self.url}: {err.strerror or err} "
                f"({err.filename})"
            ) from None
        checksum = hashlib.sha256(archive).hexdigest()
        what = f"uploading the job sandbox of {len(archive)} bytes"
        with self._sandbox_lock:
            if checksum in self._sandboxes:
                return self._sandboxes[checksum]
            info = {
                "checksum_algorithm": "sha256",
                "checksum": checksum,
                "size": len(archive),
                "format": SANDBOX_FORMAT,
            }
            response = self._request("POST", "/api/jobs/sandbox", what, json_body=info)
            answer, pfn = _string_field(response.text, "pfn")
            if pfn is None:
                raise DiracXError(
                    f"DiracX at {self.url}: no PFN in the answer to {what}: {response.text[:200]!r}"
                )
            if answer.get("url"):  # not in the store yet
                self._post_archive(answer["url"], answer.get("fields") or {}, archive, what)
            log.debug("DiracX at %s: job sandbox %s", self.url, pfn)
            self._sandboxes[checksum] = pfn
            return pfn

    def _post_archive(self, url: str, fields: Mapping[str, str], archive: bytes, what: str) -> None:
        """The archive to the sandbox store's presigned ``url`` (an HTML form POST, as DiracX's
        own client sends it). Errors name the store's host, not the URL (it is signed)."""
        host = httpx2.URL(url).host
        failure = None
        try:
            response = self.upload_client.post(
                url, data=dict(fields), files={"file": ("file", archive)}, timeout=self.timeout
            )
        except httpx2.TimeoutException:
            failure = (
                f"DiracX's sandbox store at {host} did not answer within {self.timeout:g} s "
                f"({what} for DiracX at {self.url}; dirac.diracx.timeout)"
            )
        except httpx2.TransportError as err:
            failure = (
                f"cannot reach DiracX's sandbox store at {host} ({what} for DiracX at "
                f"{self.url}): {type(err).__name__}"
            )
        if failure is not None:
            raise DiracXError(failure)
        if not response.is_success:
            text = " ".join(response.text.split())[:300]
            raise DiracXError(
                f"DiracX's sandbox store at {host} refused the job sandbox ({what} for DiracX "
                f"at {self.url}: HTTP {response.status_code} {text})"
            )

    def status(self, job_ids: Iterable[str | int], timeout: float | None = None) -> dict[str, str]:
        """``{job id: state in words}`` for the jobs DiracX knows, e.g. ``Received (Job
        accepted)`` or ``Killed (Marked for termination) at LCG.RAL-LCG2.uk``."""
        return {
            str(row["JobID"]): describe_job_status(
                {k: str(v) for k, v in row.items() if v is not None}
            )
            for row in self.search(job_ids, timeout=timeout)
        }

    def kill(self, job_ids: Iterable[str | int]) -> None:
        """Kill the jobs (one request). Jobs DiracX does not know, or that already ended,
        are no error; a refused token or an unreachable server is."""
        ids = _ids(job_ids)
        if not ids:
            return
        now = datetime.now(UTC).isoformat()
        change = {"Status": "Killed", "MinorStatus": "Marked for termination", "Source": SOURCE}
        response = self._request(
            "PATCH",
            "/api/jobs/status",
            f"killing {len(ids)} job(s)",
            json_body={str(i): {now: change} for i in ids},
            allowed=(404,),  # none of them known: nothing to kill
        )
        with self._lock:
            for i in ids:
                self._alive.pop(str(i), None)
        if response.status_code == 404:
            return
        try:
            success = response.json().get("success", {})
        except (ValueError, AttributeError):
            return
        kept = [
            str(i)
            for i in ids
            if str(i) in success and (success[str(i)] or {}).get("Status") != "Killed"
        ]
        if kept:
            log.warning(
                "DiracX at %s did not mark job(s) %s Killed: they had ended already, or this "
                "machine's clock is behind the server's",
                self.url,
                ", ".join(kept),
            )

    def alive(self) -> list[str]:
        """Ids of the jobs this transport submitted and has not killed."""
        with self._lock:
            return list(self._alive)

    def close(self) -> None:
        """Kill every job still alive (one request; a failure is logged with the ids, which
        are then left to the user) and close the client this transport made."""
        alive = self.alive()
        try:
            if alive:
                self.kill(alive)
        except DiracXError as err:
            log.warning("DiracX jobs %s may still be queued or running: %s", ", ".join(alive), err)
        finally:
            with self._lock:
                clients = []
                if self._own_client and self._client is not None:
                    clients.append(self._client)
                    self._client = None  # made anew if the transport is used again
                if self._own_upload_client and self._upload_client is not None:
                    clients.append(self._upload_client)
                    self._upload_client = None
            for client in clients:
                client.close()

    def __enter__(self) -> DiracXTransport:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- what backends.dirac.DiracJob / DiracBackend call -------------------------------------
    async def input_sandbox(self, files: Sequence[str]) -> list[str]:
        """The PFN of the files in DiracX's sandbox store (:meth:`upload_sandbox`)."""
        return [await asyncio.to_thread(self.upload_sandbox, files)]

    async def submit_job(self, jdl: str) -> str:
        ids = await asyncio.to_thread(self.submit, [jdl])
        if len(ids) != 1:
            raise DiracXError(f"DiracX at {self.url} made {len(ids)} jobs of one JDL: {ids}")
        return ids[0]

    async def kill_job(self, job_id: str) -> None:
        try:
            await asyncio.to_thread(self.kill, [job_id])
        except DiracXError as err:
            log.warning("DiracX job %s may still be queued or running: %s", job_id, err)

    def job_states(
        self, job_ids: Sequence[str], timeout: float = STATUS_TIMEOUT
    ) -> dict[str, str] | None:
        """:meth:`status`, or None when DiracX cannot be asked (the reason is logged)."""
        try:
            return self.status([i for i in job_ids if str(i).isdigit()], min(timeout, self.timeout))
        except DiracXError as err:
            log.info("could not ask DiracX for the jobs' states: %s", err)
            return None

    async def aclose(self) -> None:
        await asyncio.to_thread(self.close)


def _detail(response: httpx2.Response) -> str:
    """DiracX's reason for an error (FastAPI's ``{"detail": ...}``), short."""
    try:
        detail = response.json().get("detail", "")
    except (ValueError, AttributeError):
        detail = response.text
    text = detail if isinstance(detail, str) else json.dumps(detail)
    text = " ".join(text.split())
    return f"({text[:300]})" if text else ""
