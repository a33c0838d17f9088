"""The pip constraints of a worker image, read from the environment that submits the jobs.

The Dask workers of a batch run must have what this process has (:data:`backends.base.
WORKER_PACKAGES`, compared by distributed's version report before any task: Python major.minor,
agc, numpy, awkward, uproot, hist, distributed), else the run fails, or the harness is shipped
to them (agc only). The image of ``containers/`` is built with the constraints this module
writes from the submit host's environment, so that its workers match it::

    python -m backends.container_constraints > containers/constraints.txt
    python -m backends.container_constraints --extras xrootd,ml > containers/constraints.txt

It pins ``==`` the installed version of every distribution that ``agc-harness`` with those
extras needs, recursively (the compared packages and the analysis libraries under them:
coffea, dask, awkward-cpp, boost-histogram, xgboost...), and heads the file with the Python
version (``# python: 3.11``), which pip cannot pin: the image's base must have it.

In the image, after the install, ``python -m backends.container_constraints --check FILE``
fails (exit 1, naming each package and both versions) when the image's Python or one of the
compared packages is not what the file says, or an installed package has another version.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Iterable, Mapping
from importlib import metadata
from typing import Any

from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from backends.base import WORKER_PACKAGES

#: The distribution of the harness (its import packages are ``agc`` and ``backends``).
HARNESS = "agc-harness"
#: The extras the workers need: XRootD reads (``xrootd``) and the ML step (``ml``).
DEFAULT_EXTRAS = ("xrootd", "ml")
#: The import name of a compared package -> its distribution, where they differ.
_DISTRIBUTIONS = {"agc": HARNESS}
_PYTHON_LINE = re.compile(r"^#\s*python:\s*(?P<version>\S+)\s*$")


class ConstraintsError(RuntimeError):
    """A package the workers compare is not installed here, or the image differs."""


def compared_distributions(packages: Iterable[str] = WORKER_PACKAGES) -> list[str]:
    """The distributions of the import packages distributed's version check compares."""
    return [canonicalize_name(_DISTRIBUTIONS.get(p, p)) for p in packages]


def requirement_closure(
    root: str = HARNESS, extras: Iterable[str] = DEFAULT_EXTRAS
) -> dict[str, str]:
    """``{distribution: installed version}`` of ``root[extras]`` and everything it requires,
    recursively, with the requirement markers evaluated for this interpreter.

    Raises:
        ConstraintsError: a required distribution is not installed here.
    """
    environment: dict[str, Any] = dict(default_environment())
    found: dict[str, str] = {}
    done: set[tuple[str, str]] = set()
    todo: list[tuple[str, frozenset[str], str]] = [(root, frozenset(extras), "")]
    while todo:
        name, wanted, via = todo.pop()
        key = canonicalize_name(name)
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            raise ConstraintsError(
                f"{name} (needed by {via or 'the workers'}) is not installed here: install "
                f"{HARNESS}[{','.join(extras)}] in this environment first"
            ) from None
        found[key] = dist.version
        for extra in ("", *sorted(wanted)):
            if (key, extra) in done:
                continue
            done.add((key, extra))
            for line in dist.requires or []:
                req = Requirement(line)
                marker = req.marker
                if bool(extra) != (marker is not None and "extra" in str(marker)):
                    continue  # the base requirements once, then each extra's own
                if marker is not None and not marker.evaluate({**environment, "extra": extra}):
                    continue
                todo.append((req.name, frozenset(req.extras), key))
    return found


def constraints_text(
    extras: Iterable[str] = DEFAULT_EXTRAS, versions: Mapping[str, str] | None = None
) -> str:
    """The constraints file: a header naming the Python version and the extras, then one
    ``name==version`` line per distribution of :func:`requirement_closure`, sorted."""
    extras = tuple(extras)
    versions = dict(requirement_closure(HARNESS, extras) if versions is None else versions)
    missing = [d for d in compared_distributions() if d not in versions]
    if missing:
        raise ConstraintsError(
            f"{', '.join(missing)}: compared with the workers' but not among what "
            f"{HARNESS}[{','.join(extras)}] requires here"
        )
    python = f"{sys.version_info[0]}.{sys.version_info[1]}"
    lines = [
        "# Constraints of the agc-harness worker image (containers/), written by",
        "#   python -m backends.container_constraints"
        + (f" --extras {','.join(extras)}" if extras != DEFAULT_EXTRAS else ""),
        "# from the environment that submits the jobs: the workers' versions must be these.",
        f"# python: {python}",
        f"# extras: {','.join(extras)}",
        f"# compared by distributed's version check: {', '.join(compared_distributions())}",
    ]
    lines += [f"{name}=={versions[name]}" for name in sorted(versions)]
    return "\n".join(lines) + "\n"


def read_constraints(text: str) -> tuple[str | None, dict[str, str]]:
    """The Python version of the header (None without one) and ``{distribution: version}``."""
    python: str | None = None
    pins: dict[str, str] = {}
    for raw in text.splitlines():
        line = raw.strip()
        match = _PYTHON_LINE.match(line)
        if match:
            python = match["version"]
            continue
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        name, sep, version = line.partition("==")
        if not sep:
            raise ConstraintsError(f"not a 'name==version' constraint: {raw!r}")
        pins[canonicalize_name(name.strip())] = version.strip()
    return python, pins


def differences(text: str) -> list[str]:
    """What in this environment differs from the constraints ``text``: the Python
    major.minor, a compared package missing or of another version, or any other pinned
    package installed with another version (one that is not installed is no difference:
    its requirement marker may not hold here)."""
    python, pins = read_constraints(text)
    problems = []
    here = f"{sys.version_info[0]}.{sys.version_info[1]}"
    if python is not None and python != here:
        problems.append(f"python {here}, the constraints {python}")
    compared = set(compared_distributions())
    for name, pinned in sorted(pins.items()):
        try:
            installed = metadata.version(name)
        except metadata.PackageNotFoundError:
            if name in compared:
                problems.append(f"{name} is not installed, the constraints pin {pinned}")
            continue
        if installed != pinned:
            problems.append(f"{name} {installed}, the constraints {pinned}")
    problems += [f"{name} is not pinned" for name in sorted(compared - set(pins))]
    return problems


def cmd_write(extras: tuple[str, ...]) -> int:
    try:
        text = constraints_text(extras)
    except ConstraintsError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(text, end="")
    return 0


def cmd_check(path: str) -> int:
    try:
        with open(path) as f:
            problems = differences(f.read())
    except (OSError, ConstraintsError) as err:
        print(f"error: {path}: {err}", file=sys.stderr)
        return 2
    for problem in problems:
        print(f"{path}: {problem}", file=sys.stderr)
    if not problems:
        print(f"{path}: this environment matches it")
    return 1 if problems else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m backends.container_constraints",
        description="Write the pip constraints of the worker image from this environment "
        "(stdout), or check an environment against them.",
    )
    parser.add_argument(
        "--extras",
        default=",".join(DEFAULT_EXTRAS),
        help=f"extras of {HARNESS} the workers need (default: %(default)s)",
    )
    parser.add_argument(
        "--check", metavar="FILE", help="compare this environment with FILE instead"
    )
    args = parser.parse_args(argv)
    if args.check:
        return cmd_check(args.check)
    return cmd_write(tuple(e.strip() for e in args.extras.split(",") if e.strip()))


if __name__ == "__main__":
    sys.exit(main())
