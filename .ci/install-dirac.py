"""Install the DIRAC client into the running Python without gfal2-python.

``pip install DIRAC`` fails because two of its requirements come only as sdists:
M2Crypto, which builds once ``swig`` and ``libssl-dev`` are installed, and gfal2-python,
which does not build against Debian's libgfal2 (and is only needed for grid storage
transfers). So: download the DIRAC wheel, install every requirement it declares outside
its extras except gfal2-python, then install the wheel itself with ``--no-deps``.

Usage: python install-dirac.py [REQUIREMENT]   (default: DIRAC)
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import zipfile
from email.parser import Parser
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

SKIP = {"gfal2-python"}


def pip(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "pip", *args], check=True)


def wheel_requirements(wheel: Path) -> list[str]:
    """The Requires-Dist of ``wheel`` that apply to this Python with no extras selected."""
    with zipfile.ZipFile(wheel) as zf:
        name = next(n for n in zf.namelist() if n.endswith(".dist-info/METADATA"))
        metadata = Parser().parsestr(zf.read(name).decode())
    requirements = []
    for line in metadata.get_all("Requires-Dist", []):
        req = Requirement(line)
        if req.marker and not req.marker.evaluate({"extra": ""}):
            continue  # belongs to an extra, or not for this Python / platform
        if canonicalize_name(req.name) in SKIP:
            continue
        req.marker = None
        requirements.append(str(req))
    return requirements


def main(requirement: str = "DIRAC") -> None:
    with tempfile.TemporaryDirectory() as tmp:
        pip("download", "--quiet", "--no-deps", "--only-binary=:all:", "--dest", tmp, requirement)
        (wheel,) = Path(tmp).glob("*.whl")
        pip("install", *wheel_requirements(wheel))
        pip("install", "--no-deps", str(wheel))


if __name__ == "__main__":
    main(*sys.argv[1:])
