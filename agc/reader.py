"""Reading one chunk of columns with uproot, with errors that name the file and what to do."""

from __future__ import annotations

import logging
import os
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import TypeVar

import awkward as ak
import uproot

from agc.errors import UserError

log = logging.getLogger(__name__)

T = TypeVar("T")

#: Seconds before the first retry of a remote read; each further retry waits twice as long.
RETRY_BACKOFF = 1.0
#: Deadline of each XRootD / HTTP request of uproot, seconds ($AGC_READ_TIMEOUT).
READ_TIMEOUT = int(os.environ.get("AGC_READ_TIMEOUT", 30))
#: XRootD client settings used unless the environment sets them (``XRD_<NAME>``): the client
#: otherwise waits 120 s between attempts to reconnect to a server that went away, longer
#: than the retries here wait for it to come back.
XROOTD_DEFAULTS = {"ConnectionWindow": 5, "ConnectionRetry": 3, "StreamErrorWindow": 1}
_xrootd_configured = False


def _configure_xrootd() -> None:
    """Apply :data:`XROOTD_DEFAULTS` to this process's XRootD client (once)."""
    global _xrootd_configured
    if _xrootd_configured:
        return
    _xrootd_configured = True
    try:
        from XRootD import client
    except ImportError:
        return
    for name, value in XROOTD_DEFAULTS.items():
        if f"XRD_{name.upper()}" not in os.environ:
            client.EnvPutInt(name, value)


class InputFileError(UserError, RuntimeError):
    """An input file cannot be used: missing, corrupt, wrong tree, missing branch, short."""


#: Open files kept per process. Opening a NanoAOD file deserialises the metadata of every one of
#: its ~1000 branches (about 0.3 s), much more than reading a chunk of a few branches, so a
#: worker that gets several chunks of one file opens it once.
OPEN_FILES_KEPT = 4
_open_trees: OrderedDict[tuple, tuple] = OrderedDict()
_bytes_reported: dict[int, int] = {}  # id(source) -> bytes already attributed to a chunk


def _file_key(path: str, tree: str) -> tuple:
    """Identity of an input: a local file that changed on disk (size, mtime) is opened again."""
    try:
        st = os.stat(path)
        return (path, tree, st.st_size, st.st_mtime_ns)
    except OSError:
        return (path, tree)


def open_tree(path: str, tree: str = "Events"):
    """(file, TTree, opened now?) from this process's open files, opening it if needed."""
    key = _file_key(path, tree)
    if key in _open_trees:
        _open_trees.move_to_end(key)
        return (*_open_trees[key], False)
    f, events_tree = _open_checked(path, tree)
    _open_trees[key] = (f, events_tree)
    while len(_open_trees) > max(OPEN_FILES_KEPT, 1):
        old, _ = _open_trees.popitem(last=False)[1]
        _bytes_reported.pop(id(old.file.source), None)
        old.close()
    return f, events_tree, True


def forget(path: str, tree: str = "Events") -> None:
    """Close and drop this process's open handle of ``path`` (a remote file is then opened
    again, on a new connection, by the next read)."""
    for key in [k for k in _open_trees if k[:2] == (path, tree)]:
        f, _ = _open_trees.pop(key)
        _bytes_reported.pop(id(f.file.source), None)
        try:
            f.close()
        except Exception as err:  # a broken connection may not close cleanly
            log.debug("%s: closing a broken handle: %s", path, err)
    if path.startswith("root://"):  # fsspec keeps the file system and its open handles
        try:
            from fsspec_xrootd import XRootDFileSystem
        except ImportError:
            return
        host = path[len("root://") :].split("/", 1)[0]
        for fs in list(XRootDFileSystem._cache.values()):
            # handles on the lost connection are dropped, not closed: closing them fails,
            # and would fail again (as a traceback) when the file system is finalised
            handles = getattr(getattr(fs, "_readonly_filehandle_cache", None), "_cache", None)
            if getattr(fs, "hostid", None) == host and isinstance(handles, dict):
                handles.clear()
        XRootDFileSystem.clear_instance_cache()


def with_retries(path: str, retries: int, read: Callable[[], T], tree: str = "Events") -> T:
    """``read()``, retried up to ``retries`` times with back-off when ``path`` is remote
    (``://``) and the failure is one of access (a lost connection, a server restarting, a
    timeout); the handle is re-opened for each retry. A local file, or a file that is missing,
    short or lacks a branch, fails at once: trying again cannot change that."""
    attempt = 0
    while True:
        try:
            return read()
        except InputFileError as err:
            if _transient(path, err):
                forget(path, tree)  # the next attempt, or the next chunk, connects again
            if attempt >= retries or not _transient(path, err):
                raise
            delay = RETRY_BACKOFF * 2**attempt
            attempt += 1
            log.warning("%s; retry %d of %d in %g s", err, attempt, retries, delay)
            time.sleep(delay)


def _transient(path: str, err: InputFileError) -> bool:
    """A failure of a remote read that another attempt may not have: any error of the
    transfer (a checked property of the file, which has no cause, or a missing file is not)."""
    cause = err.__cause__
    return "://" in path and cause is not None and not isinstance(cause, FileNotFoundError)


def close_open_files() -> None:
    """Close the files :func:`read_chunk` keeps open in this process."""
    while _open_trees:
        _open_trees.popitem()[1][0].close()
    _bytes_reported.clear()


def read_chunk(
    path: str,
    branches: Sequence[str],
    entry_start: int,
    entry_stop: int,
    tree: str = "Events",
    file_entries: int | None = None,
) -> tuple[ak.Array, int]:
    """Read ``branches`` for entries [entry_start, entry_stop) of ``tree`` in ``path``.

    ``file_entries``: the events the catalog says the file has; a file with another number is
    an error (a catalog that undercounts would silently leave events out).

    Returns the events (flat branch fields, e.g. ``Jet_pt``) and the bytes requested from the
    file for them (compressed, as uproot's source counts them; the chunk that opens the file
    also counts the file's metadata).
    """
    f, events_tree, _ = open_tree(path, tree)
    check_tree(path, events_tree, branches, entry_stop, file_entries)
    source = f.file.source
    before = _bytes_reported.get(id(source), 0)  # so the first chunk of a file pays its open
    try:
        events = events_tree.arrays(list(branches), entry_start=entry_start, entry_stop=entry_stop)
    except Exception as err:
        advice = (
            "the server or the connection failed: check them, or read a local copy (--mirror)"
            if "://" in path
            else "the file is probably corrupt: re-generate or re-copy it."
        )
        raise InputFileError(
            f"{path}: reading entries {entry_start}-{entry_stop} failed "
            f"({type(err).__name__}: {err}); {advice}"
        ) from err
    _bytes_reported[id(source)] = source.num_requested_bytes
    return events, source.num_requested_bytes - before


def check_tree(
    path: str,
    tree,
    branches: Sequence[str],
    entry_stop: int,
    file_entries: int | None = None,
) -> None:
    """Refuse a tree without the branches the analysis reads, or with other entries than the
    catalog says (the error names the file and both numbers)."""
    missing = [b for b in branches if b not in tree]
    if missing:
        raise InputFileError(
            f"{path}: tree {tree.name!r} lacks branch(es) {', '.join(missing)} "
            "that the analysis reads; is this NanoAOD?"
        )
    too_short = tree.num_entries < entry_stop
    if too_short or (file_entries is not None and tree.num_entries != file_entries):
        expected = file_entries if file_entries is not None else entry_stop
        hint = (
            "re-copy the file" if too_short
            else 'to read only its first nevts events deliberately, give the entry "partial": true'
        )  # fmt: skip
        raise InputFileError(
            f"{path}: the catalog's 'nevts' is {expected} but the file has "
            f"{tree.num_entries} entries in {tree.name!r}; correct the catalog (or {hint})"
        )


def _open_checked(path: str, tree: str):
    """Open ``path`` and return (file, TTree), with errors that say what is wrong."""
    if path.startswith("root://"):
        _configure_xrootd()
    try:
        f = uproot.open(path, timeout=READ_TIMEOUT) if "://" in path else uproot.open(path)
    except FileNotFoundError as err:
        raise InputFileError(
            f"{path}: no such file. Check the catalog paths, or re-run "
            "'agc generate' for synthetic inputs."
        ) from err
    except Exception as err:
        if "://" in path and isinstance(err, OSError | TimeoutError):
            raise InputFileError(
                f"{path}: cannot be reached ({type(err).__name__}: {err}). Check the network "
                "and the server, or read a local copy (--mirror) or through an XCache (--xcache)."
            ) from err
        raise InputFileError(
            f"{path}: not a readable ROOT file ({type(err).__name__}: {err}). "
            "It may be truncated or corrupt: re-generate or re-copy it."
        ) from err
    try:
        events_tree = f[tree]
    except Exception as err:
        trees = sorted({k.split(";")[0] for k, c in f.classnames().items() if c == "TTree"})
        f.close()
        raise InputFileError(
            f"{path}: no tree {tree!r} in the file (trees: "
            f"{', '.join(trees) or 'none'}). NanoAOD files keep events in "
            "'Events'."
        ) from err
    if not isinstance(events_tree, uproot.behaviors.TTree.TTree):
        f.close()
        raise InputFileError(f"{path}: {tree!r} is a {type(events_tree).__name__}, not a TTree")
    return f, events_tree
