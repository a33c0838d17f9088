"""The harness travelling with DIRAC jobs (``dirac.code``): the wheel packed from the code this
process runs (backends/harness_wheel.py), unpacked as a job unpacks it; the JDL that ships it
in its InputSandbox (read with classad2; DIRAC's own reader: test_backend_dirac_native.py) and
the job command that unpacks it onto the worker's PYTHONPATH; the STAND-IN dirac-wms-job-submit
copying a JDL's InputSandbox into the job's directory as DIRAC's JobWrapper does; and the Dask
worker of a stand-in job running the harness from the shipped wheel. DiracX's sandbox store:
tests/test_diracx_client.py and tests/diracx/.
"""

from __future__ import annotations

import base64
import csv
import hashlib
import io
import json
import os
import re
import shlex
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest

import agc
from backends.base import BackendError
from backends.dirac import DiracBackend, harness_steps
from backends.harness_wheel import DISTRIBUTION, build_wheel, wheel_name
from backends.profiles import ProfileError
from backends.standins import bin_dir, localjobs
from backends.standins.dirac import parse_jdl

classad2 = pytest.importorskip("classad2", reason="pip install htcondor (ClassAd parser)")

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


# --- the backend: profile, JDL, job command ---------------------------------------------------
def _backend(code=None, **worker) -> DiracBackend:
    dirac = {"sites": ["LCG.SITE-A.uk"], "monitor": {"interval": 0}}
    if code is not None:
        dirac["code"] = code
    return DiracBackend(
        profile={
            "backend": "dirac",
            "worker": {"cores": 1, "memory": "1GB", "death_timeout": 30, **worker},
            "scheduler": {"host": "127.0.0.1"},  # stand-in jobs run here
            "dirac": dirac,
        }
    )


def _command(arguments: str) -> str:
    """The shell command of a JDL's Arguments (``-c '...'``, base64-decoded where encoded)."""
    (flag, script) = shlex.split(arguments)
    assert flag == "-c"
    encoded = re.fullmatch(r"echo (\S+) \| base64 -d \| /bin/sh", script)
    return base64.b64decode(encoded[1]).decode() if encoded else script


def test_a_sandbox_jdl_carries_the_wheel_and_a_job_that_unpacks_it():
    backend = _backend("sandbox")
    jdl = backend.job_script()
    ad, ours = classad2.parseOne(jdl), parse_jdl(jdl)
    (wheel,) = list(ad["InputSandbox"])
    assert ours["InputSandbox"] == [wheel]
    assert Path(wheel).is_absolute() and Path(wheel).name == WHEEL  # a local file, for DIRAC
    with zipfile.ZipFile(wheel) as zf:
        assert "agc/__init__.py" in zf.namelist()
    python = sys.executable
    assert _command(ad["Arguments"]).startswith(
        "touch DISABLE_WATCHDOG_CPU_WALLCLOCK_CHECK && "
        f"{python} -m zipfile -e {WHEEL} agc-harness && "
        "export PYTHONPATH=$PWD/agc-harness:$PYTHONPATH && "
        f"{python} -m distributed.cli.dask_worker tcp://<scheduler-address>:8786 "
    )
    assert "base64" not in ad["Arguments"]  # nothing DIRAC alters: readable in the JDL
    assert backend.job_script() == jdl  # packed once per backend


def test_the_harness_steps_come_after_the_setup_lines_with_the_container_s_python():
    backend = _backend(
        "sandbox",
        setup=["source /cvmfs/sft.cern.ch/lcg/views/setup.sh"],
        container={"image": "/cvmfs/unpacked.cern.ch/agc-harness:0.1.0"},
    )
    command = _command(classad2.parseOne(backend.job_script())["Arguments"])
    python = "apptainer exec --bind /cvmfs /cvmfs/unpacked.cern.ch/agc-harness:0.1.0 python3"
    assert (
        "&& source /cvmfs/sft.cern.ch/lcg/views/setup.sh "
        f"&& {python} -m zipfile -e {WHEEL} agc-harness "
        "&& export PYTHONPATH=$PWD/agc-harness:$PYTHONPATH "
        f"&& {python} -m distributed.cli.dask_worker "
    ) in command


def test_defaults_a_container_has_the_harness_else_the_sandbox_brings_it():
    image = {"image": "/cvmfs/unpacked.cern.ch/agc-harness:0.1.0"}
    installed = classad2.parseOne(_backend(container=image).job_script())
    assert "InputSandbox" not in installed
    assert "zipfile" not in installed["Arguments"] and "PYTHONPATH" not in installed["Arguments"]
    assert classad2.parseOne(_backend("installed").job_script()).get("InputSandbox") is None
    assert _backend().code() == "sandbox"
    assert [Path(w).name for w in classad2.parseOne(_backend().job_script())["InputSandbox"]] == [
        WHEEL
    ]
    for name in ("dirac-gridpp", "dirac-gridpp-gpu"):  # the harness image of containers/
        assert DiracBackend(profile=name).code() == "installed"


def test_a_wheel_at_a_url_is_downloaded_by_the_job():
    url = "https://agc.example.org/wheels/agc_harness-0.1.0-py3-none-any.whl"
    ad = classad2.parseOne(_backend({"url": url}).job_script())
    assert "InputSandbox" not in ad
    command = _command(ad["Arguments"])  # base64: the download has a ';'
    python = sys.executable
    download = "import sys, urllib.request as u; u.urlretrieve(sys.argv[1], sys.argv[2])"
    assert (
        f"&& {python} -c '{download}' {url} agc-harness.whl "
        f"&& {python} -m zipfile -e agc-harness.whl agc-harness "
        "&& export PYTHONPATH=$PWD/agc-harness:$PYTHONPATH "
        f"&& {python} -m distributed.cli.dask_worker "
    ) in command


def test_a_wheel_on_cvmfs_is_unpacked_where_it_is():
    path = "/cvmfs/agc.example.org/wheels/agc_harness-0.1.0-py3-none-any.whl"
    ad = classad2.parseOne(_backend({"url": path}).job_script())
    assert "InputSandbox" not in ad
    assert f"-m zipfile -e {path} agc-harness && export PYTHONPATH" in ad["Arguments"]
    assert "urllib" not in ad["Arguments"]


def test_the_url_downloaded_by_the_job_runs_as_written(tmp_path, wheel):
    # the job's fetch and unpack steps, run by a shell (the URL: a file:// one here)
    steps = harness_steps(sys.executable, f"http://127.0.0.1:1/{WHEEL}")
    steps[0] = steps[0].replace(f"http://127.0.0.1:1/{WHEEL}", wheel.as_uri())
    run = subprocess.run(
        " && ".join([*steps, 'python -c "import agc; print(agc.__file__)"']),
        shell=True,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"},
    )
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == str(tmp_path / "agc-harness" / "agc" / "__init__.py")


@pytest.mark.parametrize(
    ("code", "message"),
    [
        ("sandbag", r"dirac\.code: 'sandbag' is not sandbox, installed or \{url: WHEEL\}"),
        ({"url": "ftp://x/agc.whl"}, r"dirac\.code: .* is not sandbox, installed or \{url"),
        ({"wheel": "x.whl"}, r"dirac\.code: .* is not sandbox, installed or \{url"),
    ],
)
def test_a_bad_code_names_the_key_and_the_choices(code, message):
    with pytest.raises(ProfileError, match=message):
        _backend(code)


def test_an_input_sandbox_of_the_profile_s_own_is_refused_with_the_sandbox():
    profile = {
        "backend": "dirac",
        "worker": {"cores": 1, "memory": "1GB"},
        "dirac": {"jdl": {"InputSandbox": "site.cfg"}},
    }
    with pytest.raises(ProfileError, match=r"dirac\.jdl\.InputSandbox: with dirac\.code: sandbox"):
        DiracBackend(profile=profile)
    profile["dirac"]["code"] = "installed"
    assert parse_jdl(DiracBackend(profile=profile).job_script())["InputSandbox"] == "site.cfg"


def test_sandbox_files_dirac_would_cut_are_refused(monkeypatch, tmp_path):
    monkeypatch.setattr(DiracBackend, "harness_wheel", lambda self: tmp_path / "a b" / WHEEL)
    with pytest.raises(ValueError, match="DIRAC's client splits the InputSandbox at blanks"):
        _backend("sandbox").job_script()


# --- jobs through the stand-in -----------------------------------------------------------------
def test_a_standin_job_s_worker_runs_the_harness_from_the_shipped_wheel(dirac_standins):
    backend = _backend("sandbox", start_timeout=60)
    executor = backend.start()
    try:
        wheel = backend.harness_wheel()
        executor.wait_for_workers(1)

        def where() -> dict[str, str]:  # run in the Dask worker (cloudpickle: by value)
            import importlib.metadata
            import os

            import agc
            import backends.worker_setup

            dist = importlib.metadata.distribution("agc-harness")
            return {
                "agc": agc.__file__,
                "preload": backends.worker_setup.__file__,
                "dist": str(dist.locate_file("")),
                "dirac": next(
                    iter(dist.entry_points.select(group="agc.backends", name="dirac"))
                ).value,
                "cwd": os.getcwd(),
            }

        (found,) = executor.client.run(where).values()
    finally:
        executor.close()
    (job,) = localjobs.history(dirac_standins)
    workdir = (dirac_standins / "jobs" / job["id"]).resolve()
    target = workdir / "agc-harness"
    assert Path(found["cwd"]).resolve() == workdir
    assert Path(found["agc"]).resolve() == target / "agc" / "__init__.py"
    assert Path(found["preload"]).resolve() == target / "backends" / "worker_setup.py"
    assert Path(found["dist"]).resolve() == target  # its .dist-info: metadata, entry points
    assert found["dirac"] == "backends.dirac:DiracBackend"
    # the stand-in brought the wheel into the job's directory, as DIRAC's JobWrapper does
    assert (workdir / WHEEL).read_bytes() == build_wheel(workdir.parent / "again").read_bytes()
    assert not wheel.exists() and not wheel.parent.exists()  # gone with the cluster


def test_a_sandbox_file_missing_at_submission_fails_the_start(
    dirac_standins, monkeypatch, tmp_path
):
    monkeypatch.setattr(DiracBackend, "harness_wheel", lambda self: tmp_path / WHEEL)
    with pytest.raises(
        BackendError,
        match=f"job submission failed: .*Input Sandbox is not valid: {tmp_path / WHEEL} not found",
    ):
        _backend("sandbox", start_timeout=600).start()
    assert localjobs.history(dirac_standins) == []
