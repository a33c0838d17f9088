"""Cache keys of chunk results: what the result depends on, and nothing else.

A chunk's partial histograms are a function of

* the **analysis code**: the source of the modules that compute them (:data:`CODE_SOURCES`) and
  the values of their module-level constants (so a cut changed at run time also counts);
* the **physics configuration** of the chunk: sample, process, variation, normalisation weight,
  systematics on/off, the smear seed, I/O-only mode and the branches read;
* the **input**: the ROOT file's UUID and end-of-file offset (or, for other files, size and
  modification time / ETag) plus the entry range and the tree;
* the **libraries** that change results (:data:`RESULT_PACKAGES`).

Backend, worker count, scheduling, output location and plot styling are deliberately absent:
changing them reuses the cached results. A file read directly, through a mirror or through an
XCache has the same UUID, so all three share cache entries.
"""

from __future__ import annotations

import functools
import hashlib
import importlib
import inspect
import json
import logging
import os
import pkgutil
from collections.abc import Mapping
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

#: Bump when the stored entry format or the key recipe changes.
KEY_VERSION = 3

#: What the analysis code fingerprint is made of: ``"module"`` (a package means all its
#: modules) for the whole source and its UPPER_CASE constants, or ``"module:name,name"`` for
#: selected definitions only (histogram binning, not the ROOT/JSON writers).
CODE_SOURCES: tuple[str, ...] = (
    "agc.analysis",
    "agc.constants",
    "agc.vocabulary",
    "agc.reader",
    "agc.chunks:process_chunk,analyse",
    "agc.histograms:new_histogram",
)

#: Libraries whose version can change a histogram; their versions enter every key.
RESULT_PACKAGES: tuple[str, ...] = (
    "numpy",
    "awkward",
    "uproot",
    "hist",
    "boost-histogram",
    "coffea",
)


def _digest(obj: Any) -> str:
    text = json.dumps(obj, sort_keys=True, separators=(",", ":"), default=repr)
    return hashlib.sha256(text.encode()).hexdigest()


@functools.cache
def _file_sha256(path: str, mtime_ns: int, size: int) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _source_digest(obj: Any) -> str:
    """sha256 of a module's file, or of a function's/class's source."""
    file = getattr(obj, "__file__", None) if inspect.ismodule(obj) else None
    if file:
        st = os.stat(file)
        return _file_sha256(file, st.st_mtime_ns, st.st_size)
    return hashlib.sha256(inspect.getsource(obj).encode()).hexdigest()


def _constants(module) -> dict[str, str]:
    """repr of the module's UPPER_CASE plain-data constants (thresholds, binning, tables)."""
    plain = (int, float, str, bool, tuple, list, dict, frozenset)
    return {
        name: repr(value)
        for name, value in sorted(vars(module).items())
        if name.isupper() and isinstance(value, plain)
    }


def _modules(name: str) -> list:
    module = importlib.import_module(name)
    found = [module]
    if hasattr(module, "__path__"):
        for info in sorted(pkgutil.iter_modules(module.__path__), key=lambda i: i.name):
            found += _modules(f"{name}.{info.name}")
    return found


def code_fingerprint(sources: tuple[str, ...] | None = None) -> str:
    """sha256 over the analysis source and constants of ``sources`` (default :data:`CODE_SOURCES`).

    Recomputed on every call (cheap: file hashes are memoised by mtime and size) so that a
    constant patched at run time changes the fingerprint.
    """
    parts: dict[str, Any] = {}
    for spec in CODE_SOURCES if sources is None else sources:
        name, _, selected = spec.partition(":")
        if not selected:
            for module in _modules(name):
                parts[module.__name__] = [_source_digest(module), _constants(module)]
            continue
        module = importlib.import_module(name)
        for attr in selected.split(","):
            value = getattr(module, attr)
            parts[f"{name}.{attr}"] = _source_digest(value) if callable(value) else repr(value)
    return _digest(parts)


@functools.lru_cache(maxsize=1)
def library_versions() -> dict[str, str]:
    """Versions of :data:`RESULT_PACKAGES` (``"absent"`` when not installed)."""
    out = {}
    for name in RESULT_PACKAGES:
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = "absent"
    return out


def input_identity(url: str) -> dict[str, Any] | None:
    """Identity of an input file: the ROOT UUID (+ end offset), else size and mtime / ETag.

    Returns None when nothing stable is known (the chunk is then computed and not cached).
    """
    try:
        import uproot

        with uproot.open(url) as f:
            return {"uuid": str(f.file.uuid), "fEND": int(f.file.fEND)}
    except Exception as err:  # not ROOT, or not reachable: fall back to file metadata
        log.debug("%s: no ROOT UUID (%s); using file metadata", url, err)
    try:
        import fsspec

        fs, path = fsspec.core.url_to_fs(url)
        info = fs.info(path)
    except Exception as err:
        log.warning("%s: cannot identify the input (%s); its chunks are not cached", url, err)
        return None
    ident = {k: info[k] for k in ("size", "ETag", "etag", "checksum") if info.get(k)}
    mtime = info.get("mtime") or info.get("LastModified") or info.get("last_modified")
    if mtime is not None:
        ident["mtime"] = str(mtime)
    if not ident:
        return None
    ident["path"] = url  # metadata alone is weak: tie it to the location too
    return ident


def chunk_key_parts(task, *, code: str, identity: Mapping[str, Any]) -> dict[str, Any]:
    """Everything a chunk result depends on, as a JSON-able dict (also stored with the entry).

    ``task`` is an :class:`agc.chunks.ChunkTask`.
    """
    c = task.chunk
    return {
        "key_version": KEY_VERSION,
        "code": code,
        "physics": {
            "sample": c.sample,
            "process": c.process,
            "variation": c.variation,
            "weight": repr(float(c.weight)),
            "systematics": bool(task.systematics),
            "seed": int(task.seed),
            "io_only": bool(task.io_only),
            "branches": list(task.branches),
            # the ML step's models (their bytes); runs without it keep their earlier keys
            **({"ml_models": task.ml_fingerprint} if task.ml is not None else {}),
            # the device path (and on a GPU, cupy's release); CPU-path runs keep their keys
            **(device_parts(task.device) if getattr(task, "device", None) else {}),
        },
        "input": {
            **dict(identity),
            "tree": c.tree,
            "entry_start": int(c.entry_start),
            "entry_stop": int(c.entry_stop),
        },
        "libraries": library_versions(),
    }


def device_parts(device: str) -> dict[str, str]:
    """What a chunk result of the device path depends on beyond the CPU path's key."""
    if device != "cuda":
        return {"device": device}
    try:
        import cupy  # noqa: PLC0415 - only on GPU machines

        release = str(cupy.__version__)
    except ImportError:
        release = "absent"
    return {"device": device, "cupy": release}


def chunk_key(parts: Mapping[str, Any]) -> str:
    """The store key (64 hex digits) of :func:`chunk_key_parts`."""
    return _digest(parts)
