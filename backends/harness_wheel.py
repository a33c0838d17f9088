"""The harness as a wheel, packed from the code this process runs: what a grid job ships.

A DIRAC job whose worker node (or image) lacks the harness gets it in its InputSandbox
(``dirac.code: sandbox``, :mod:`backends.dirac`): :func:`build_wheel` packs the packages
``agc`` and ``backends`` from where this process imports them into an ordinary pure-Python
wheel, ``agc_harness-<version>-py3-none-any.whl`` (PEP 427), and the job unpacks it onto its
``PYTHONPATH`` before the Dask worker starts.

The distribution's metadata (``METADATA``, ``entry_points.txt``: the ``agc`` command, the
``agc.backends`` group and any other entry point the project registers) comes from

- ``pyproject.toml`` beside the two packages, where they sit in a checkout of the project
  (installed editable, or on ``PYTHONPATH``): the metadata a build of that checkout has;
- else the installed distribution beside them (``agc_harness-<version>.dist-info``: the
  harness installed from a wheel, also one a job unpacked): its own metadata, so a job's copy
  packs to the same bytes.

Nothing is built: no build backend, no network, nothing written into the checkout (a
``pip wheel`` of the checkout needs setuptools with ``bdist_wheel`` and writes ``build/``
there). The files are those of the two package directories but byte-code caches, in sorted
order with one fixed timestamp, so the same code gives the same wheel, byte for byte (and the
same checksum in a sandbox store). Unpacked onto ``sys.path`` the wheel's ``.dist-info`` makes
``importlib.metadata`` find the distribution and its entry points there.

``python -m backends.harness_wheel DIR`` writes the wheel into DIR (to publish it for
``dirac.code: {url: ...}``). Only the standard library and :mod:`agc._version` /
:mod:`agc.errors` are used.
"""

from __future__ import annotations

import base64
import csv
import hashlib
import io
import logging
import os
import re
import sys
import tomllib
import zipfile
from collections.abc import Iterator, Mapping
from importlib.metadata import Distribution, distributions
from pathlib import Path

from agc.errors import UserError

log = logging.getLogger(__name__)

#: The harness's distribution name (pyproject.toml's ``[project] name``).
DISTRIBUTION = "agc-harness"
#: The packages a worker needs (``benchmarks``, in the project's own wheel too, is not).
PACKAGES = ("agc", "backends")
#: What is left out of the package directories.
SKIPPED_DIRS = frozenset({"__pycache__"})
SKIPPED_SUFFIXES = (".pyc", ".pyo")
#: The one timestamp of every file in the wheel (the earliest a zip file can hold).
TIMESTAMP = (1980, 1, 1, 0, 0, 0)
#: What the wheel's ``WHEEL`` file names as its maker.
GENERATOR = "backends.harness_wheel"


class HarnessWheelError(UserError, RuntimeError):
    """The harness cannot be packed: its packages or its metadata are not to be found."""


def source_root() -> Path:
    """The directory ``agc/`` and ``backends/`` are imported from (a checkout, site-packages, or
    the directory a job unpacked the wheel into)."""
    import agc
    import backends

    files = [m.__file__ for m in (agc, backends)]
    if None in files:  # not imported from files (a zip, a frozen application)
        raise HarnessWheelError(
            "cannot pack the harness: agc and backends are not imported from files; give the "
            "profile dirac.code: installed or {url: ...}"
        )
    roots = {Path(f).resolve().parents[1] for f in files if f}
    if len(roots) != 1:
        raise HarnessWheelError(
            "cannot pack the harness: agc and backends are imported from different places "
            f"({', '.join(sorted(map(str, roots)))}); install the harness as one distribution "
            "(pip install .) or give the profile dirac.code: installed or {url: ...}"
        )
    return roots.pop()


def normalized(name: str) -> str:
    """A distribution name as in wheel and ``.dist-info`` names (``agc_harness``)."""
    return re.sub(r"[-_.]+", "_", name).lower()


def wheel_name(version: str) -> str:
    return f"{normalized(DISTRIBUTION)}-{version}-py3-none-any.whl"


# --- the metadata -----------------------------------------------------------------------------
def _pyproject(root: Path) -> Mapping | None:
    """The root's ``[project]`` table when it is the harness's checkout, else None."""
    path = root / "pyproject.toml"
    if not path.is_file():
        return None
    try:
        project = tomllib.loads(path.read_text()).get("project") or {}
    except (OSError, tomllib.TOMLDecodeError) as err:
        raise HarnessWheelError(f"cannot pack the harness: {path}: {err}") from None
    if normalized(str(project.get("name", ""))) != normalized(DISTRIBUTION):
        return None
    return project


def _with_extra(requirement: str, extra: str) -> str:
    name, sep, marker = requirement.partition(";")
    condition = f'extra == "{extra}"'
    if sep:
        condition = f"({marker.strip()}) and {condition}"
    return f"{name.strip()}; {condition}"


def metadata_from_pyproject(project: Mapping, version: str) -> tuple[str, str]:
    """``METADATA`` and ``entry_points.txt`` of a ``[project]`` table (core metadata 2.1)."""
    lines = ["Metadata-Version: 2.1", f"Name: {project['name']}", f"Version: {version}"]
    if project.get("description"):
        lines.append(f"Summary: {project['description']}")
    license_ = project.get("license")
    if isinstance(license_, Mapping) and license_.get("text"):
        lines.append(f"License: {license_['text']}")
    if project.get("requires-python"):
        lines.append(f"Requires-Python: {project['requires-python']}")
    lines += [f"Requires-Dist: {r}" for r in project.get("dependencies", [])]
    for extra, requirements in (project.get("optional-dependencies") or {}).items():
        lines.append(f"Provides-Extra: {extra}")
        lines += [f"Requires-Dist: {_with_extra(r, extra)}" for r in requirements]
    groups: dict[str, Mapping[str, str]] = {}
    if project.get("scripts"):
        groups["console_scripts"] = project["scripts"]
    if project.get("gui-scripts"):
        groups["gui_scripts"] = project["gui-scripts"]
    groups.update(project.get("entry-points") or {})
    entry_points = "".join(
        f"[{group}]\n" + "".join(f"{name} = {value}\n" for name, value in items.items()) + "\n"
        for group, items in groups.items()
    )
    return "\n".join(lines) + "\n", entry_points


def installed_distribution(root: Path) -> Distribution | None:
    """The harness's distribution whose ``.dist-info`` is in ``root``, if any."""
    for dist in distributions(path=[str(root)]):
        if normalized(dist.metadata["Name"] or "") == normalized(DISTRIBUTION):
            return dist
    return None


def harness_metadata(root: Path) -> tuple[str, str, str]:
    """``(version, METADATA, entry_points.txt)`` of the harness at ``root``."""
    project = _pyproject(root)
    if project is not None:
        version = project.get("version")
        if not version:  # dynamic: setuptools reads it from agc._version
            from agc._version import __version__ as version
        return str(version), *metadata_from_pyproject(project, str(version))
    dist = installed_distribution(root)
    if dist is None or not dist.read_text("METADATA"):
        raise HarnessWheelError(
            f"cannot pack the harness for the job sandbox: {root} has agc/ and backends/ but "
            f"neither the project's pyproject.toml nor the metadata of an installed "
            f"{DISTRIBUTION} ({normalized(DISTRIBUTION)}-VERSION.dist-info); install the "
            "harness (pip install . in its checkout), or give the profile dirac.code: "
            "installed (the workers have it) or dirac.code: {url: ...} (a wheel the jobs fetch)"
        )
    return dist.version, dist.read_text("METADATA") or "", dist.read_text("entry_points.txt") or ""


# --- the wheel --------------------------------------------------------------------------------
def package_files(root: Path) -> Iterator[tuple[str, Path]]:
    """``(name in the wheel, file)`` of every file of :data:`PACKAGES`, sorted."""
    found = []
    for package in PACKAGES:
        for directory, dirs, files in os.walk(root / package):
            dirs[:] = sorted(d for d in dirs if d not in SKIPPED_DIRS)
            for name in files:
                if name.endswith(SKIPPED_SUFFIXES):
                    continue
                path = Path(directory) / name
                found.append((path.relative_to(root).as_posix(), path))
    yield from sorted(found)


def _digest(data: bytes) -> str:
    return "sha256=" + base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()


def _write(zf: zipfile.ZipFile, name: str, data: bytes, mode: int = 0o644) -> None:
    info = zipfile.ZipInfo(name, date_time=TIMESTAMP)
    info.compress_type = zipfile.ZIP_DEFLATED
    info.external_attr = (0o100000 | mode) << 16  # a regular file and its permissions
    zf.writestr(info, data)


def build_wheel(directory: str | os.PathLike[str]) -> Path:
    """Pack the harness this process runs as a wheel in ``directory`` (made if missing); the
    wheel's path. Raises :class:`HarnessWheelError` where its metadata cannot be found."""
    root = source_root()
    version, metadata, entry_points = harness_metadata(root)
    dist_info = f"{normalized(DISTRIBUTION)}-{version}.dist-info"
    wheel = (
        f"Wheel-Version: 1.0\nGenerator: {GENERATOR}\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
    )
    out = Path(directory) / wheel_name(version)
    out.parent.mkdir(parents=True, exist_ok=True)
    record = io.StringIO()
    rows = csv.writer(record, lineterminator="\n")
    partial = out.with_name(out.name + ".part")
    with zipfile.ZipFile(partial, "w") as zf:
        for name, path in package_files(root):
            data = path.read_bytes()
            _write(zf, name, data, 0o755 if path.stat().st_mode & 0o111 else 0o644)
            rows.writerow([name, _digest(data), len(data)])
        extra = {"METADATA": metadata, "WHEEL": wheel}
        if entry_points.strip():
            extra["entry_points.txt"] = entry_points
        for name, text in extra.items():
            data = text.encode()
            _write(zf, f"{dist_info}/{name}", data)
            rows.writerow([f"{dist_info}/{name}", _digest(data), len(data)])
        rows.writerow([f"{dist_info}/RECORD", "", ""])
        _write(zf, f"{dist_info}/RECORD", record.getvalue().encode())
    partial.replace(out)
    log.info("packed the harness %s from %s: %s (%d bytes)", version, root, out, out.stat().st_size)
    return out


def cmd_build(argv: list[str] | None = None) -> int:
    """``python -m backends.harness_wheel [DIR]``: write the wheel into DIR (default ``.``) and
    print its path, e.g. to publish it for ``dirac.code: {url: ...}``."""
    import argparse

    parser = argparse.ArgumentParser(
        prog="python -m backends.harness_wheel",
        description="pack the harness this Python runs as a wheel (what dirac.code: sandbox "
        "ships), e.g. to publish it on a web server or /cvmfs for dirac.code: {url: ...}",
    )
    parser.add_argument("directory", nargs="?", default=".", help="where to write it")
    args = parser.parse_args(argv)
    try:
        print(build_wheel(args.directory))
    except HarnessWheelError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(cmd_build())
