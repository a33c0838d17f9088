"""The worker image recipe of containers/ (no container runtime here: the image is not built):
the Containerfile and the apptainer definition install the same thing, the constraints writer
pins exactly what this environment has, and every shipped profile with a container names the
image of the recipe, not one without the harness.
"""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from importlib import metadata
from pathlib import Path

import pytest

import agc
from backends import container_constraints as cc
from backends.base import WORKER_PACKAGES
from backends.profiles import load_profile, shipped_profiles

ROOT = Path(__file__).resolve().parents[1]
CONTAINERS = ROOT / "containers"
CONTAINERFILE = (CONTAINERS / "Containerfile").read_text()
DEFINITION = (CONTAINERS / "agc-harness.def").read_text()
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
CONSTRAINTS = "/etc/agc-harness/constraints.txt"


def _logical_lines(text: str) -> str:
    """The recipe with its backslash-continued lines joined and comments dropped."""
    text = re.sub(r"\\\n\s*", " ", text)
    return "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("#"))


def _definition_section(name: str) -> str:
    match = re.search(rf"^%{name}\s*\n(.*?)(?=^%|\Z)", DEFINITION, re.S | re.M)
    assert match, f"no %{name} section"
    return match[1]


def _extras(text: str, pattern: str) -> tuple[str, ...]:
    match = re.search(pattern, text, re.M)
    assert match, pattern
    return tuple(match[1].split(","))


def test_both_recipes_install_the_wheel_with_the_same_extras_and_constraints():
    oci = _logical_lines(CONTAINERFILE)
    post = _logical_lines(_definition_section("post"))
    extras = _extras(oci, r"^ARG EXTRAS=(\S+)$")
    assert extras == _extras(post, r"^\s*EXTRAS=(\S+)$") == cc.DEFAULT_EXTRAS
    assert set(extras) <= set(PYPROJECT["project"]["optional-dependencies"])
    for recipe in (oci, post):
        # the wheel built from this repository, its extras, pinned by the constraints file
        assert "pip wheel --no-cache-dir --no-deps --wheel-dir" in recipe
        install = re.search(r"pip install (.*)", recipe)
        assert install, recipe
        assert f"--constraint {CONSTRAINTS}" in install[1]
        assert '"${wheel}[${EXTRAS}]"' in install[1]
        assert re.search(r'wheel="\$\(ls /tmp/wheels/agc_harness-\*\.whl\)"', recipe)
        # and the build fails when the image is not what the constraints say
        assert f"python -m backends.container_constraints --check {CONSTRAINTS}" in recipe
    # the same constraints file goes to the same place
    assert re.search(rf"^COPY containers/constraints.txt {CONSTRAINTS}$", oci, re.M)
    files = _definition_section("files")
    assert re.search(rf"^\s*containers/constraints.txt {CONSTRAINTS}$", files, re.M)
    assert f"PIP_CONSTRAINT={CONSTRAINTS}" in oci
    assert f"export PIP_CONSTRAINT={CONSTRAINTS}" in _definition_section("environment")


def test_both_recipes_build_from_the_same_sources_on_the_same_python():
    oci = _logical_lines(CONTAINERFILE)
    copied = set()
    for line in re.findall(r"^COPY (?!--from|containers/)(.*)$", oci, re.M):
        copied |= set(line.split()[:-1])
    files = _definition_section("files").split("\n")
    in_def = {line.split()[0] for line in files if line.strip()} - {"containers/constraints.txt"}
    assert copied == in_def
    # everything the wheel is made of: the packages, the metadata and its readme
    packages = PYPROJECT["tool"]["setuptools"]["packages"]["find"]["include"]
    assert {p.rstrip("*") for p in packages} | {
        "pyproject.toml",
        PYPROJECT["project"]["readme"],
    } == (copied)
    assert all((ROOT / path).exists() for path in copied)
    python = re.search(r"^ARG PYTHON_VERSION=(\d+\.\d+)$", oci, re.M)
    base = re.search(r"^From:\s*python:(\d+\.\d+)-slim\s*$", DEFINITION, re.M)
    assert python and base and python[1] == base[1]
    assert "FROM docker.io/library/python:${PYTHON_VERSION}-slim" in oci
    minimum = re.fullmatch(r">=(\d+)\.(\d+)", PYPROJECT["project"]["requires-python"])
    assert minimum
    assert tuple(map(int, python[1].split("."))) >= (int(minimum[1]), int(minimum[2]))
    assert re.search(r"^Bootstrap:\s*docker$", DEFINITION, re.M)


def _pins(text: str) -> dict[str, str]:
    return dict(line.split("==") for line in text.splitlines() if line and line[0] != "#")


def test_the_constraints_pin_exactly_the_installed_versions():
    text = cc.constraints_text()
    pins = _pins(text)
    # the packages distributed's version check compares, at their versions here
    compared = {"agc-harness", "numpy", "awkward", "uproot", "hist", "distributed"}
    assert set(cc.compared_distributions(WORKER_PACKAGES)) == compared
    for name in compared:
        assert pins[name] == metadata.version(name), name
    assert pins["agc-harness"] == agc.__version__  # what the workers' report says for agc
    assert f"# python: {sys.version_info[0]}.{sys.version_info[1]}\n" in text
    # every pin is the installed version, and the file reads back as written
    assert all(metadata.version(name) == version for name, version in pins.items())
    assert cc.read_constraints(text) == (f"{sys.version_info[0]}.{sys.version_info[1]}", pins)
    assert list(pins) == sorted(pins)


def test_the_constraints_cover_the_analysis_libraries_and_the_extras():
    pins = _pins(cc.constraints_text())
    # under the compared packages: the analysis stack; from the extras: XRootD and XGBoost
    for name in ("coffea", "dask", "awkward-cpp", "boost-histogram", "pyhf", "dask-jobqueue"):
        assert name in pins, name
    assert {"xgboost-cpu", "fsspec-xrootd", "xrootd"} <= set(pins)
    assert "pytest" not in pins  # the test extra is not the workers'
    without = _pins(cc.constraints_text(extras=()))
    assert "xgboost-cpu" not in without and "fsspec-xrootd" not in without
    assert "# extras: \n" in cc.constraints_text(extras=())


def test_a_compared_package_missing_here_is_an_error():
    versions = {"agc-harness": "0.1.0", "awkward": "2.6.0"}
    with pytest.raises(cc.ConstraintsError, match="numpy, uproot, hist, distributed"):
        cc.constraints_text(versions=versions)


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "backends.container_constraints", *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
    )


def test_the_command_writes_them_and_checks_an_environment_against_them(tmp_path):
    written = _run()
    assert written.returncode == 0, written.stderr
    assert written.stdout == cc.constraints_text()
    good = tmp_path / "constraints.txt"
    good.write_text(written.stdout)
    check = _run("--check", str(good))
    assert check.returncode == 0 and "matches" in check.stdout, check.stderr
    # another Python, another numpy: both named, exit 1 (the image build stops)
    numpy = metadata.version("numpy")
    other = tmp_path / "other.txt"
    other.write_text(
        re.sub(r"# python: \S+", "# python: 3.99", written.stdout).replace(
            f"\nnumpy=={numpy}\n", "\nnumpy==1.0.0\n"
        )
    )
    check = _run("--check", str(other))
    assert check.returncode == 1
    assert f"numpy {numpy}, the constraints 1.0.0" in check.stderr
    here = f"{sys.version_info[0]}.{sys.version_info[1]}"
    assert f"python {here}, the constraints 3.99" in check.stderr
    # a pinned package that is not installed is no difference unless the workers compare it
    absent = tmp_path / "absent.txt"
    absent.write_text(written.stdout + "no-such-distribution==1.0\n")
    assert _run("--check", str(absent)).returncode == 0
    assert cc.differences("numpy==1.0\n") == [
        f"numpy {numpy}, the constraints 1.0",
        *(f"{n} is not pinned" for n in sorted(set(cc.compared_distributions()) - {"numpy"})),
    ]


#: The image the recipe builds, under any registry or /cvmfs prefix: ``.../agc-harness:VERSION``.
HARNESS_IMAGE = re.compile(r"^(?:docker://)?(?:[^\s:]+/)?agc-harness:(?P<tag>[^\s/:]+)$")


def test_every_shipped_profile_with_a_container_names_the_harness_image():
    images = {}
    for name, path in shipped_profiles().items():
        container = load_profile(path).worker.get("container")
        if container:
            images[name] = container["image"]
    # the site profiles run their workers in a container: the test is not vacuous
    assert {"htcondor-coffea-casa", "dirac-gridpp", "dirac-gridpp-gpu"} <= set(images)
    for name, image in images.items():
        match = HARNESS_IMAGE.match(image)
        assert match, f"{name}: {image} is not the agc-harness image of containers/"
        # the recipe tags its build with the harness version (containers/README.md)
        assert match["tag"] == agc.__version__, f"{name}: {image}"
        assert "coffea" not in image
    dirac = images["dirac-gridpp"]
    assert dirac.startswith("/cvmfs/unpacked.cern.ch/")  # published there by the site
    assert images["dirac-gridpp-gpu"] == dirac
