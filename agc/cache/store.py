"""A store of chunk results and run outputs behind an fsspec URL.

Layout under the store root::

    chunks/<k[:2]>/<key>.agc       one chunk result: header line (JSON, with sha256) + payload
    chunks/<k[:2]>/<key>.agc.ok    commit marker (object stores only, see below)
    runs/<run_id>/...              a run's output files (the data lake)
    runs/<run_id>/COMPLETE         written last: the run is complete
    runs/<run_id>.partial/         a run being uploaded (file systems that rename), renamed
                                   to runs/<run_id> when complete

Writes are atomic: on file systems that rename (local disk, XRootD) an entry is written to a
temporary name and renamed into place; on object stores (S3, GCS, Azure, memory), where a
rename is a copy, the entry is written first and a small commit marker second, and readers
ignore entries without a marker. Every entry carries the sha256 of its payload, verified on
every read: a corrupted or truncated entry is logged, deleted and reported as a miss, so the
chunk is recomputed and never used.

Size and age limits: :meth:`ResultStore.evict` removes entries not used for ``max_age``
seconds, then the least recently used ones until the store is under ``max_bytes``. "Used" is
the file's modification time, refreshed on every hit on local disk; on remote stores, where
that would cost a write per hit, it is the time the entry was written. Stored runs count
against both limits: a run stored more than ``max_age`` ago is removed, and when the chunk
entries are gone and the store is still over ``max_bytes``, the oldest runs are.

Writers that die (a full store, a killed process) can leave temporary entry files and partly
uploaded runs; :meth:`ResultStore.leftovers` finds those older than :data:`STALE_SECONDS`
(younger ones may be a writer at work) and :meth:`ResultStore.sweep` removes them
(``agc cache stats`` and ``agc cache clear`` do).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agc.errors import UserError

log = logging.getLogger(__name__)

MAGIC = b"AGCCACHE1\n"
SUFFIX = ".agc"
COMMIT_SUFFIX = ".ok"
COMPLETE = "COMPLETE"
#: A temporary file or partial run older than this (seconds) is left over from a writer that
#: died; younger ones may belong to a run writing now and are kept.
STALE_SECONDS = 3600
#: Names this store writes and may sweep: an entry's temporary file, a run being uploaded.
_TMP_ENTRY = re.compile(r".*\.agc\.[0-9a-f]{32}\.tmp$")
_PARTIAL_RUN = ".partial"
#: Protocols whose "rename" is a copy: they get write-then-commit-marker instead.
OBJECT_STORES = {"s3", "s3a", "gs", "gcs", "az", "abfs", "abfss", "memory"}

DEFAULT_MAX_BYTES = 20 * 1024**3
DEFAULT_MAX_AGE = 30 * 86400.0
_UNITS = {
    "": 1,
    "k": 1e3,
    "m": 1e6,
    "g": 1e9,
    "t": 1e12,
    "ki": 1024,
    "mi": 1024**2,
    "gi": 1024**3,
    "ti": 1024**4,
}
_AGE_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def _seconds(variable: str, default: float) -> float:
    """A number of seconds from the environment variable ``variable`` (else ``default``)."""
    value = os.environ.get(variable)
    if value is None:
        return default
    try:
        seconds = float(value)
    except ValueError:
        raise CacheStoreError(f"${variable}={value!r}: not a number of seconds") from None
    if seconds <= 0:
        raise CacheStoreError(f"${variable}={value!r}: must be > 0 seconds")
    return seconds


class CacheStoreError(UserError, RuntimeError):
    """A cache store URL or option is not usable."""


def default_url() -> str:
    """$AGC_CACHE_DIR, else ``~/.cache/agc-harness/results`` (honouring $XDG_CACHE_HOME)."""
    if os.environ.get("AGC_CACHE_DIR"):
        return os.environ["AGC_CACHE_DIR"]
    base = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    return str(base / "agc-harness" / "results")


def parse_size(text: str | int | None) -> int | None:
    """``"20GB"``, ``"500MiB"``, ``"1e9"`` or bytes -> bytes (None stays None)."""
    if text is None or isinstance(text, int):
        return text
    m = re.fullmatch(r"\s*([0-9.eE+]+)\s*([kKmMgGtT]i?)?[bB]?\s*", str(text))
    if not m:
        raise CacheStoreError(f"cache size {text!r}: give bytes or e.g. 500MB, 20GB, 1GiB")
    return int(float(m.group(1)) * _UNITS[(m.group(2) or "").lower()])


def parse_age(text: str | float | None) -> float | None:
    """``"30d"``, ``"12h"``, ``"90m"``, ``"3600"`` (seconds) -> seconds."""
    if text is None or isinstance(text, (int, float)):
        return text
    m = re.fullmatch(r"\s*([0-9.]+)\s*([smhdw]?)\s*", str(text))
    if not m:
        raise CacheStoreError(f"cache age {text!r}: give seconds or e.g. 90m, 12h, 30d, 2w")
    return float(m.group(1)) * _AGE_UNITS[m.group(2) or "s"]


@dataclass(frozen=True)
class Entry:
    """One stored chunk result as listed (sizes in bytes, times in epoch seconds)."""

    key: str
    size: int
    last_used: float
    path: str


class ResultStore:
    """Chunk results (key -> bytes + metadata) and run outputs behind one fsspec URL.

    Args:
        url: a directory, ``file://``, ``root://host:port//path``, ``s3://bucket/prefix``...
            (default :func:`default_url`).
        max_bytes: size limit enforced by :meth:`evict` (default $AGC_CACHE_MAX_SIZE or 20 GiB).
        max_age: seconds an unused entry is kept (default $AGC_CACHE_MAX_AGE or 30 days).
        storage_options: passed to the fsspec file system (e.g. S3 ``endpoint_url``).
    """

    def __init__(
        self,
        url: str | os.PathLike | None = None,
        *,
        max_bytes: int | str | None = None,
        max_age: float | str | None = None,
        **storage_options: Any,
    ) -> None:
        import fsspec

        self.url = str(url) if url is not None else default_url()
        if self.url.startswith("root://"):
            # every XRootD operation gets a deadline (the client's own default is 30 minutes)
            storage_options.setdefault("timeout", int(_seconds("AGC_STORE_TIMEOUT", 30)))
        try:
            self.fs, root = fsspec.core.url_to_fs(os.path.expanduser(self.url), **storage_options)
        except (ImportError, ValueError) as err:
            raise CacheStoreError(
                f"--cache {self.url}: cannot open the store ({err}); root:// "
                "needs 'pip install fsspec-xrootd xrootd', s3:// needs "
                "'pip install s3fs'"
            ) from err
        self.root = root.rstrip("/") or "/"
        protocols = self.fs.protocol if isinstance(self.fs.protocol, tuple) else (self.fs.protocol,)
        self.local = "file" in protocols or "local" in protocols
        self.commit_markers = bool(OBJECT_STORES.intersection(protocols))
        self.max_bytes = parse_size(
            max_bytes
            if max_bytes is not None
            else os.environ.get("AGC_CACHE_MAX_SIZE", DEFAULT_MAX_BYTES)
        )
        self.max_age = parse_age(
            max_age if max_age is not None else os.environ.get("AGC_CACHE_MAX_AGE", DEFAULT_MAX_AGE)
        )

    def __repr__(self) -> str:
        return f"ResultStore({self.url!r})"

    def probe(self, deadline: float | None = None) -> None:
        """Check once, within ``deadline`` seconds ($AGC_STORE_PROBE_TIMEOUT, default 10), that
        a remote store answers: its directory made if needed and listed. A store that does not
        answer or refuses raises :class:`CacheStoreError` (a local directory is not probed:
        its problems are immediate and named where they happen)."""
        if self.local:
            return
        import threading

        deadline = deadline if deadline is not None else _seconds("AGC_STORE_PROBE_TIMEOUT", 10)
        outcome: list[BaseException | None] = []

        def attempt() -> None:
            try:
                self.fs.makedirs(self.root, exist_ok=True)
                self.fs.ls(self.root)
                outcome.append(None)
            except BaseException as err:  # reported by the caller's thread
                outcome.append(err)

        # a daemon thread: a client blocked on a silent server cannot hold the run
        thread = threading.Thread(target=attempt, name="agc-store-probe", daemon=True)
        thread.start()
        thread.join(deadline)
        if not outcome:
            raise CacheStoreError(
                f"--cache {self.url}: the store did not answer within {deadline:g} s; check "
                "that its server is up and reachable from here, or run without --cache"
            )
        if outcome[0] is not None:
            err = outcome[0]
            raise CacheStoreError(
                f"--cache {self.url}: the store cannot be used ({type(err).__name__}: {err})"
            ) from err

    # -- chunk entries -------------------------------------------------------------------
    def _path(self, key: str) -> str:
        if not re.fullmatch(r"[0-9a-f]{16,128}", key):
            raise ValueError(f"not a cache key: {key!r}")
        return f"{self.root}/chunks/{key[:2]}/{key}{SUFFIX}"

    def _refresh(self) -> None:
        if not self.local:
            self.fs.invalidate_cache()

    def _write(self, path: str, data: bytes) -> None:
        with self.fs.open(path, "wb") as f:  # not pipe_file: fsspec-xrootd lacks it
            f.write(data)

    def _read(self, path: str) -> bytes:
        with self.fs.open(path, "rb") as f:
            return f.read()

    def put(self, key: str, payload: bytes, meta: dict | None = None) -> None:
        """Store ``payload`` under ``key`` atomically, with its checksum and ``meta``."""
        path = self._path(key)
        header: dict[str, Any] = {
            "sha256": hashlib.sha256(payload).hexdigest(),
            "size": len(payload),
            "created": time.time(),
            "meta": meta or {},
        }
        data = MAGIC + json.dumps(header, default=str).encode() + b"\n" + payload
        self.fs.makedirs(path.rsplit("/", 1)[0], exist_ok=True)
        if self.commit_markers:
            self._write(path, data)
            self._write(path + COMMIT_SUFFIX, header["sha256"].encode())
        else:
            tmp = f"{path}.{uuid.uuid4().hex}.tmp"
            try:
                self._write(tmp, data)
                self.fs.mv(tmp, path)
            except BaseException:  # a full store must not keep half-written entries
                with contextlib.suppress(Exception):
                    self.fs.rm_file(tmp)
                raise
        self._refresh()

    def get(self, key: str) -> tuple[bytes, dict] | None:
        """``(payload, header)`` for ``key``, or None if absent, uncommitted or corrupt."""
        path = self._path(key)
        try:
            if self.commit_markers and not self.fs.exists(path + COMMIT_SUFFIX):
                return None
            data = self._read(path)
        except (FileNotFoundError, OSError):
            return None
        payload, header = self._verify(key, data)
        if payload is None:
            self.delete(key)
            return None
        if self.local:
            try:
                os.utime(path)  # last used, for LRU eviction
            except OSError:
                pass
        return payload, header

    def _verify(self, key: str, data: bytes) -> tuple[bytes | None, dict]:
        try:
            if not data.startswith(MAGIC):
                raise ValueError("bad magic")
            line_end = data.index(b"\n", len(MAGIC))
            header = json.loads(data[len(MAGIC) : line_end])
            payload = data[line_end + 1 :]
            if len(payload) != header["size"]:
                raise ValueError(f"{len(payload)} payload bytes, header says {header['size']}")
            if hashlib.sha256(payload).hexdigest() != header["sha256"]:
                raise ValueError("sha256 mismatch")
        except (ValueError, KeyError, TypeError) as err:
            log.warning(
                "cache entry %s in %s is corrupt (%s): discarded, the chunk is recomputed",
                key[:12],
                self.url,
                err,
            )
            return None, {}
        return payload, header

    def contains(self, key: str) -> bool:
        path = self._path(key)
        return self.fs.exists(path + COMMIT_SUFFIX if self.commit_markers else path)

    def delete(self, key: str) -> None:
        path = self._path(key)
        for p in (path + COMMIT_SUFFIX, path) if self.commit_markers else (path,):
            try:
                self.fs.rm_file(p)
            except (FileNotFoundError, OSError):
                pass
        self._refresh()

    def entries(self) -> list[Entry]:
        """All committed chunk entries (temporary and uncommitted files are not listed)."""
        self._refresh()
        base = f"{self.root}/chunks"
        try:
            found = self.fs.find(base, detail=True)
        except (FileNotFoundError, OSError):
            return []
        names = set(found)
        out = []
        for path, info in found.items():
            if not path.endswith(SUFFIX):
                continue
            if self.commit_markers and path + COMMIT_SUFFIX not in names:
                continue
            key = path.rsplit("/", 1)[-1][: -len(SUFFIX)]
            out.append(Entry(key, int(info.get("size") or 0), _mtime(info), path))
        return out

    def read_meta(self, key: str) -> dict:
        """The stored header of ``key`` (sha256, size, created, meta), read without the payload."""
        with self.fs.open(self._path(key), "rb") as f:
            head = f.read(65536)
        line_end = head.index(b"\n", len(MAGIC))
        return json.loads(head[len(MAGIC) : line_end])

    def stats(self) -> dict[str, Any]:
        """Entries, stored runs and their bytes (both count against ``max_bytes``), limits,
        and the leftovers of writers that died (:meth:`leftovers`)."""
        entries = self.entries()
        runs = self.run_sizes()
        leftovers = self.leftovers()
        now = time.time()
        chunk_bytes = sum(e.size for e in entries)
        run_bytes = sum(size for size, _ in runs.values())
        return {
            "url": self.url,
            "entries": len(entries),
            "bytes": chunk_bytes + run_bytes,
            "chunk_bytes": chunk_bytes,
            "run_bytes": run_bytes,
            "max_bytes": self.max_bytes,
            "max_age_seconds": self.max_age,
            "oldest_use_seconds_ago": max((now - e.last_used for e in entries), default=0.0),
            "runs": len(runs),
            "leftovers": len(leftovers),
            "leftover_bytes": sum(size for _, size in leftovers),
        }

    def evict(self, *, max_bytes: float | None = None, max_age: float | None = None) -> list[str]:
        """Remove expired entries, then least recently used ones down to the size limit
        (``max_bytes=math.inf``: no size limit, expiry only)."""
        max_bytes = self.max_bytes if max_bytes is None else max_bytes
        max_age = self.max_age if max_age is None else max_age
        entries = sorted(self.entries(), key=lambda e: e.last_used)
        runs = sorted(self.run_sizes().items(), key=lambda item: item[1][1])  # oldest first
        now = time.time()
        total = sum(e.size for e in entries) + sum(size for _, (size, _) in runs)
        removed = []
        for e in entries:
            expired = max_age is not None and now - e.last_used > max_age
            if expired or (max_bytes is not None and total > max_bytes):
                self.delete(e.key)
                total -= e.size
                removed.append(e.key)
        # stored runs count too: expired ones go, then the oldest while still over the size
        for run_id, (size, stored) in runs:
            expired = max_age is not None and now - stored > max_age
            if expired or (max_bytes is not None and total > max_bytes):
                self.delete_run(run_id)
                total -= size
                removed.append(f"run {run_id}")
        if removed:
            log.info("cache %s: evicted %d entries", self.url, len(removed))
        return removed

    def clear(self, *, runs: bool = False) -> int:
        """Remove every chunk entry (and with ``runs``, every stored run). Returns the count."""
        n = len(self.entries())
        targets = [f"{self.root}/chunks"] + ([f"{self.root}/runs"] if runs else [])
        for target in targets:
            if self.fs.exists(target):
                self.fs.rm(target, recursive=True)
        self._refresh()
        return n

    # -- data lake: run outputs ----------------------------------------------------------
    def run_url(self, run_id: str) -> str:
        _check_run_id(run_id)
        return f"{self.url.rstrip('/')}/runs/{run_id}"

    def put_run(self, run_id: str, local_dir: str | os.PathLike) -> str:
        """Upload a run directory; the ``COMPLETE`` marker is written last. Returns its URL.

        A failed upload removes what it had written (readers ignore a run without its
        marker anyway), so a full or read-only store keeps no half run.
        """
        _check_run_id(run_id)
        target = f"{self.root}/runs/{run_id}"
        # a file system renames: upload under runs/<id>.partial, then rename into place;
        # an object store cannot rename a folder: its readers wait for the COMPLETE marker
        staging = target if self.commit_markers else f"{target}{_PARTIAL_RUN}"
        local_dir = Path(local_dir)
        try:
            for path in sorted(p for p in local_dir.rglob("*") if p.is_file()):
                rel = path.relative_to(local_dir).as_posix()
                self.fs.makedirs(f"{staging}/{rel}".rsplit("/", 1)[0], exist_ok=True)
                self._write(f"{staging}/{rel}", path.read_bytes())
            self._write(f"{staging}/{COMPLETE}", json.dumps({"stored": time.time()}).encode())
            if staging != target:
                self.fs.mv(staging, target, recursive=True)
        except BaseException:
            with contextlib.suppress(Exception):
                self.fs.rm(staging, recursive=True)
            raise
        self._refresh()
        return self.run_url(run_id)

    def run_sizes(self) -> dict[str, tuple[int, float]]:
        """Per complete stored run: (bytes, when it was stored)."""
        out = {}
        for run_id in self.list_runs():
            base = f"{self.root}/runs/{run_id}"
            try:
                found = self.fs.find(base, detail=True)
            except (FileNotFoundError, OSError):
                continue
            stored = _mtime(found.get(f"{base}/{COMPLETE}", {})) or time.time()
            out[run_id] = (sum(int(i.get("size") or 0) for i in found.values()), stored)
        return out

    def delete_run(self, run_id: str) -> None:
        _check_run_id(run_id)
        with contextlib.suppress(FileNotFoundError, OSError):
            self.fs.rm(f"{self.root}/runs/{run_id}", recursive=True)
        self._refresh()

    def leftovers(self, older_than: float = STALE_SECONDS) -> list[tuple[str, int]]:
        """What writers that died left behind, older than ``older_than`` seconds: temporary
        entry files, partly uploaded runs (``runs/<id>.partial``, or a run folder without its
        ``COMPLETE`` marker). (path, bytes) each; only names this store writes."""
        self._refresh()
        now, out = time.time(), []
        try:
            found = self.fs.find(f"{self.root}/chunks", detail=True)
        except (FileNotFoundError, OSError):
            found = {}
        for path, info in found.items():
            if _TMP_ENTRY.match(path) and now - _mtime(info) > older_than:
                out.append((path, int(info.get("size") or 0)))
        try:
            runs = self.fs.ls(f"{self.root}/runs", detail=True)
        except (FileNotFoundError, OSError):
            runs = []
        for info in runs:
            path = info["name"].rstrip("/")
            name = path.rsplit("/", 1)[-1]
            partial = name.endswith(_PARTIAL_RUN) or not self.fs.exists(f"{path}/{COMPLETE}")
            if not partial or not _RUN_ID.fullmatch(name.removesuffix(_PARTIAL_RUN)):
                continue
            try:
                files = self.fs.find(path, detail=True)
            except (FileNotFoundError, OSError):
                continue
            newest = max((_mtime(i) for i in files.values()), default=_mtime(info))
            if now - newest > older_than:
                out.append((path, sum(int(i.get("size") or 0) for i in files.values())))
        return out

    def sweep(self, older_than: float = STALE_SECONDS) -> list[tuple[str, int]]:
        """Remove :meth:`leftovers` (returned)."""
        gone = self.leftovers(older_than)
        for path, _ in gone:
            with contextlib.suppress(FileNotFoundError, OSError):
                self.fs.rm(path, recursive=True)
        if gone:
            log.info("cache %s: removed %d leftover temporary file(s)", self.url, len(gone))
            self._refresh()
        return gone

    def list_runs(self) -> list[str]:
        """Ids of the complete runs in the store, oldest first by id."""
        self._refresh()
        base = f"{self.root}/runs"
        try:
            dirs = self.fs.ls(base, detail=False)
        except (FileNotFoundError, OSError):
            return []
        runs = [d.rstrip("/").rsplit("/", 1)[-1] for d in dirs]
        return sorted(r for r in runs if self.fs.exists(f"{base}/{r}/{COMPLETE}"))

    def fetch_run(self, run_id: str, to: str | os.PathLike) -> Path:
        """Copy a stored run into ``to`` (created). Raises CacheStoreError if not there."""
        _check_run_id(run_id)
        source = f"{self.root}/runs/{run_id}"
        if not self.fs.exists(f"{source}/{COMPLETE}"):
            known = self.list_runs()
            raise CacheStoreError(
                f"run {run_id!r}: not in the store {self.url} (complete runs: "
                f"{', '.join(known[-5:]) or 'none'}; see 'agc cache ls')"
            )
        to = Path(to)
        if to.exists() and (not to.is_dir() or any(to.iterdir())):
            raise CacheStoreError(
                f"--to {to}: exists and is not an empty directory; the run would be mixed with "
                "what is there: choose a new directory"
            )
        for path in self.fs.find(source):
            rel = path[len(source) :].lstrip("/")
            if rel == COMPLETE:
                continue
            dest = to / rel
            dest.parent.mkdir(parents=True, exist_ok=True)
            dest.write_bytes(self._read(path))
        return to


_RUN_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]*")


def _check_run_id(run_id: str) -> None:
    if not _RUN_ID.fullmatch(run_id) or run_id.endswith(_PARTIAL_RUN):
        raise CacheStoreError(f"run id {run_id!r}: letters, digits and ._+- only")


def _mtime(info: dict) -> float:
    for k in ("mtime", "LastModified", "last_modified", "created"):
        v = info.get(k)
        if v is None:
            continue
        if hasattr(v, "timestamp"):
            return float(v.timestamp())
        try:
            return float(v)
        except (TypeError, ValueError):
            continue
    return 0.0
