"""The harness travelling with DIRAC jobs (``dirac.code``): the wheel packed from the code this
process runs (backends/harness_wheel.py), unpacked as a job unpacks it, and the STAND-IN
dirac-wms-job-submit copying a JDL's InputSandbox into the job's directory as DIRAC's
JobWrapper does.
"""

from __future__ import annotations

import base64
import csv
import hashlib
import io
import json
import os
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest

import agc
from backends.harness_wheel import DISTRIBUTION, build_wheel, wheel_name
from backends.standins import bin_dir, localjobs

ROOT = Path(__file__).resolve().parents[1]
WHEEL = wheel_name(agc.__version__)
DIST_INFO = f"agc_harness-{agc.__version__}.dist-info"


def _isolated_python(code: str, *paths: Path) -> subprocess.CompletedProcess:
    """``code`` run by ``python -S`` (no site-packages: not the harness installed in this
    environment) with only ``paths`` on its PYTHONPATH."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    env["PYTHONPATH"] = os.pathsep.join(map(str, paths))
    return subprocess.run(
        [sys.executable, "-S", "-c", code],
        env=env,
        cwd=paths[0].parent,  # not a directory with the harness in it
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    return build_wheel(tmp_path_factory.mktemp("wheel"))


# --- the wheel --------------------------------------------------------------------------------
def test_the_wheel_holds_the_packages_and_the_metadata(wheel):
    assert wheel.name == WHEEL == f"agc_harness-{agc.__version__}-py3-none-any.whl"
    with zipfile.ZipFile(wheel) as zf:
        names = zf.namelist()
        metadata = zf.read(f"{DIST_INFO}/METADATA").decode()
        entry_points = zf.read(f"{DIST_INFO}/entry_points.txt").decode()
        wheel_file = zf.read(f"{DIST_INFO}/WHEEL").decode()
        record = list(csv.reader(io.StringIO(zf.read(f"{DIST_INFO}/RECORD").decode())))
        contents = {n: zf.read(n) for n in names}
        modes = {n: zf.getinfo(n).external_attr >> 16 for n in names}
    tracked = subprocess.run(
        ["git", "ls-files", "agc", "backends"], cwd=ROOT, capture_output=True, text=True
    ).stdout.split()
    if tracked:  # a checkout: every file of the two packages (and package data) goes
        assert set(tracked) <= set(names)
    for name in ("agc/_version.py", "backends/dirac.py", "backends/profiles/dirac-standin.yaml"):
        assert name in names
    assert not [n for n in names if n.endswith(".pyc") or "__pycache__" in n]
    assert not [n for n in names if n.startswith(("benchmarks/", "tests/"))]
    assert f"Name: {DISTRIBUTION}\nVersion: {agc.__version__}\n" in metadata
    assert "Requires-Dist: dask-jobqueue" in metadata
    assert "[console_scripts]\nagc = agc.cli:main\n" in entry_points
    assert (
        "[agc.backends]\n" in entry_points
        and "dirac = backends.dirac:DiracBackend\n" in entry_points
    )
    assert "Root-Is-Purelib: true" in wheel_file and "Tag: py3-none-any" in wheel_file
    # RECORD: every other file with its sha256 and size, as pip checks them
    assert sorted(r[0] for r in record) == sorted(names)
    for name, digest, size in record:
        if name.endswith("/RECORD"):
            continue
        data = contents[name]
        expected = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=")
        assert (digest, int(size)) == (f"sha256={expected.decode()}", len(data)), name
    assert modes["backends/standins/bin/dirac-wms-job-submit"] & 0o111  # the stand-ins run
    assert not modes["agc/_version.py"] & 0o111


def test_the_same_code_packs_to_the_same_bytes(wheel, tmp_path):
    assert build_wheel(tmp_path).read_bytes() == wheel.read_bytes()


def test_unpacked_the_wheel_is_the_harness_with_its_entry_points(wheel, tmp_path):
    # as the job does it: python -m zipfile -e WHEEL DIR, then DIR on PYTHONPATH
    target = tmp_path / "agc-harness"
    subprocess.run([sys.executable, "-m", "zipfile", "-e", str(wheel), str(target)], check=True)
    run = _isolated_python(
        "import json, importlib.metadata as m, importlib.util as u\n"
        "import agc, backends\n"
        f"d = m.distribution({DISTRIBUTION!r})\n"
        "eps = {f'{e.group}:{e.name}': u.find_spec(e.module).origin\n"
        "       for e in d.entry_points}\n"
        "print(json.dumps({'agc': agc.__file__, 'backends': backends.__file__,\n"
        "    'dist': str(d.locate_file('')), 'version': d.version, 'eps': eps,\n"
        "    'found': [e.value for e in m.entry_points(group='agc.backends', name='dirac')]}))",
        target,
    )
    assert run.returncode == 0, run.stderr
    found = json.loads(run.stdout)
    assert found["agc"] == str(target / "agc" / "__init__.py")
    assert found["backends"] == str(target / "backends" / "__init__.py")
    assert Path(found["dist"]) == target and found["version"] == agc.__version__
    assert found["found"] == ["backends.dirac:DiracBackend"]
    # every entry point of the distribution resolves to a module of the unpacked copy
    assert "console_scripts:agc" in found["eps"] and "agc.backends:dirac" in found["eps"]
    assert all(Path(origin).is_relative_to(target) for origin in found["eps"].values())


def test_a_harness_installed_from_the_wheel_packs_the_same_wheel(wheel, tmp_path):
    target = tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-index"]
        + ["--target", str(target), str(wheel)],
        check=True,
    )
    assert not (target / "pyproject.toml").exists()  # its metadata: the installed .dist-info
    out = tmp_path / "out"
    run = _isolated_python(
        f"from backends.harness_wheel import build_wheel; print(build_wheel({str(out)!r}))",
        target,
    )
    assert run.returncode == 0, run.stderr
    assert Path(run.stdout.strip()).read_bytes() == wheel.read_bytes()


def test_packages_without_metadata_say_what_to_do(wheel, tmp_path):
    target = tmp_path / "bare"
    with zipfile.ZipFile(wheel) as zf:
        zf.extractall(target, [n for n in zf.namelist() if ".dist-info/" not in n])
    run = _isolated_python(
        f"from backends.harness_wheel import build_wheel; build_wheel({str(tmp_path / 'o')!r})",
        target,
    )
    assert run.returncode != 0
    assert "HarnessWheelError: cannot pack the harness for the job sandbox" in run.stderr
    assert "pip install ." in run.stderr and "dirac.code: installed" in run.stderr


# --- the stand-in's InputSandbox -------------------------------------------------------------
def _standin_submit(tmp_path: Path, jdl: str) -> subprocess.CompletedProcess:
    path = tmp_path / "job.jdl"
    path.write_text(jdl)
    return subprocess.run(
        [str(bin_dir() / "dirac-wms-job-submit"), str(path)],
        env={**os.environ, "AGC_STANDIN_STATE": str(tmp_path / "state")},
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )


def _wait_for(predicate, seconds: float = 20) -> None:
    deadline = time.monotonic() + seconds
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def test_the_standin_copies_the_sandbox_into_the_job_directory(tmp_path):
    (tmp_path / "code.whl").write_bytes(b"wheel")
    (tmp_path / "conf").mkdir()
    (tmp_path / "conf" / "a.txt").write_text("a")
    run = _standin_submit(
        tmp_path,
        "[\n"
        '  Executable = "/bin/sh";\n'
        "  Arguments = \"-c 'cat code.whl conf/a.txt > seen'\";\n"
        f'  InputSandbox = {{"{tmp_path / "code.whl"}", "conf"}};\n'  # absolute, relative
        "]\n",
    )
    assert run.returncode == 0, run.stdout + run.stderr
    assert run.stdout.strip() == "JobID = 1"
    seen = tmp_path / "state" / "dirac" / "jobs" / "1" / "seen"
    _wait_for(lambda: seen.exists() and seen.read_text() == "wheela")


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ("gone.whl", "Input Sandbox is not valid: gone.whl not found"),
        ("SB:SandboxSE|/S3/x.tar.bz2", "the stand-in cannot fetch InputSandbox entries"),
    ],
)
def test_the_standin_refuses_a_sandbox_it_cannot_bring(tmp_path, entry, message):
    run = _standin_submit(
        tmp_path, f'[ Executable = "/bin/true"; InputSandbox = {{"{entry}"}}; ]\n'
    )
    assert run.returncode == 2
    assert f"ERROR {tmp_path / 'job.jdl'}: {message}" in run.stdout
    assert localjobs.history(tmp_path / "state" / "dirac") == []  # no job
