"""nox sessions: ``nox -s run`` (the main job), ``nox -s tests``, ``nox -s lint``,
``nox -s notebooks``, ``nox -s dirac``, ``nox -s diracx``, ``nox -s faults``, ``nox -s bench``.

Each session installs the project into its own virtualenv; ``nox -R`` reuses them.
"""

from __future__ import annotations

import nox

nox.options.sessions = ["tests"]
nox.options.default_venv_backend = "venv"

PYTHON = "3.11"
#: The linters, pinned so that a new release cannot change what CI accepts.
LINTERS = ("ruff==0.17.6", "mypy==2.4.1")
#: The DIRAC release ``nox -s dirac`` installs.
DIRAC_REQUIREMENT = "DIRAC==9.1.22"
#: DiracX's server side, which ``nox -s diracx`` runs in-process (its own pytest plugin): the
#: routers, their databases on sqlite, and moto for the sandbox store's S3.
DIRACX_REQUIREMENTS = (
    "diracx-routers==0.7.0",
    "diracx-db==0.7.0",
    "diracx-logic==0.7.0",
    "diracx-testing==0.7.0",
    "aiosqlite",
    "uvicorn",
    "moto[server]",
)


@nox.session(python=PYTHON)
def run(session: nox.Session) -> None:
    """The main job: generate the default synthetic dataset (once) and run the analysis locally."""
    session.install("-e", ".")
    session.run("agc", "run", *session.posargs)


@nox.session(python=PYTHON)
def tests(session: nox.Session) -> None:
    """The test suite (tests needing ../shared/data or system daemons skip with a reason)."""
    session.install("-e", ".[test]")
    session.run("pytest", *session.posargs)


@nox.session(python=PYTHON)
def faults(session: nox.Session) -> None:
    """The fault suite: every test marked ``fault`` (most in tests/test_faults.py), each fault
    injected for real (damaged files, full and read-only tmpfs mounts, SIGKILL of the main
    process and of pool workers, xrootd daemons stopped mid-run, a silent store). Tests needing
    root (mounts) or xrootd skip with the reason.

    ``nox -s faults -- RESULTS_DIR`` also records the outcomes in ``RESULTS_DIR/raw/faults.json``
    and builds that folder's report, whose reliability table comes from them.
    """
    session.install("-e", ".[test]")
    args = ["-m", "fault", "tests", "-p", "no:cacheprovider"]
    if session.posargs:
        results = session.posargs[0]
        session.run("pytest", *args, f"--fault-record={results}/raw/faults.json")
        session.run("agc", "report", results)
    else:
        session.run("pytest", *args)


@nox.session(python=PYTHON)
def lint(session: nox.Session) -> None:
    """ruff check, ruff format --check, and mypy on agc/ and backends/ ([tool.mypy])."""
    session.install("-e", ".", *LINTERS)
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")
    session.run("mypy")


@nox.session(python=PYTHON)
def notebooks(session: nox.Session) -> None:
    """Execute every notebook in notebooks/ headlessly (nbclient) on small data, and store
    each with its outputs (a notebook with a failing cell is left as it was)."""
    session.install("-e", ".[test]")
    session.run("python", "-m", "agc.notebooks", "notebooks", "--store", *session.posargs)


@nox.session(python=PYTHON)
def dirac(session: nox.Session) -> None:
    """The dirac backend's JDLs read and validated by DIRAC's own code
    (tests/test_backend_dirac_native.py).

    ``pip install DIRAC`` fails as is: two of its requirements come only as sdists. M2Crypto
    builds once the system packages ``swig`` and ``libssl-dev`` are installed; gfal2-python
    (grid storage transfers, unused here) does not build against Debian's libgfal2. So
    .ci/install-dirac.py installs the DIRAC wheel with all its other requirements.
    """
    session.install("-e", ".[test]")
    session.run_install("python", ".ci/install-dirac.py", DIRAC_REQUIREMENT)
    session.run("pytest", "tests/test_backend_dirac_native.py", *session.posargs)


@nox.session(python=PYTHON)
def diracx(session: nox.Session) -> None:
    """The dirac backend's DiracX transport (backends/diracx.py) against DiracX's own routers,
    run in-process on sqlite by DiracX's pytest plugin (tests/diracx/): JDLs of the real backend
    submitted, searched and killed through the REST API. Nothing executes the jobs there."""
    session.install("-e", ".[test]", *DIRACX_REQUIREMENTS)
    # diracx-testing brings pytest-asyncio, which warns unless its loop scope is set
    options = ["-p", "no:cacheprovider", "-o", "asyncio_default_fixture_loop_scope=function"]
    session.run("pytest", "tests/diracx", *options, *session.posargs)


@nox.session(python=False)
def bench(session: nox.Session) -> None:
    """asv micro-benchmarks (offline, in this environment) and a report page from their results.

    asv's own HTML site loads its JavaScript from CDNs, so its results are shown on our own
    self-contained report page instead.
    """
    commit = session.run("git", "rev-parse", "HEAD", silent=True, external=True).strip()
    session.run("asv", "machine", "--yes", external=True)
    session.run(
        "asv", "run", "--python=same", "--quick", "--set-commit-hash", commit, external=True
    )
    results = session.posargs[0] if session.posargs else "results/asv-latest"
    session.run("agc", "bench", "quick", "--results", results, external=True)
    session.run("agc", "report", results, "--asv-results", ".asv/results", external=True)
