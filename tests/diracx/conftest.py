"""DiracX's own pytest plugin (``diracx.testing``): the real DiracX routers in-process, on
sqlite databases, a sqlite stand-in of OpenSearch and moto's S3 (for the sandbox store).

``nox -s diracx`` installs DiracX's server packages and runs ``pytest tests/diracx``; the main
test run leaves this folder out (tests/conftest.py). Without DiracX the tests here skip.
"""

from __future__ import annotations

import importlib.util

import pytest

if importlib.util.find_spec("diracx.testing") is not None:
    pytest_plugins = ["diracx.testing"]


@pytest.fixture(scope="session", autouse=True)
def verify_entry_points():
    """DiracX's check that its source tree and installed entry points agree: not ours to do."""


def pytest_configure(config):
    config.addinivalue_line(
        "markers",
        "enabled_dependencies(names): the DiracX dependencies (databases, settings, access "
        "policies) the test's in-process DiracX may use (diracx.testing)",
    )
