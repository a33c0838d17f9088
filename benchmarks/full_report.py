"""Every benchmark scenario in one session, at one commit, into one report folder.

``python -m benchmarks.full_report RESULTS_DIR [SCENARIO ...]``

Brings up a single-node SLURM on this machine when its daemons are installed (the one the
tests use, ``tests/slurm_cluster.py``; the report labels it single-node), runs ``agc bench`` on
the scenarios (default: all of ``benchmarks/scenarios.yaml``) with ``--report``, and stops the
daemons it started, however it ends. The bench refuses a dirty tree itself.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if not args:
        print(__doc__, file=sys.stderr)
        return 2
    results, scenarios = args[0], args[1:]
    if not scenarios:
        from agc.bench import load_scenarios

        scenarios = list(load_scenarios()["scenarios"])
    env = dict(os.environ)
    slurm = None
    if shutil.which("slurmctld") or Path("/usr/sbin/slurmctld").exists():
        sys.path.insert(0, str(REPO / "tests"))
        from slurm_cluster import LocalSlurm  # the tests' single-node SLURM

        slurm = LocalSlurm(Path(tempfile.mkdtemp(prefix="agc-report-slurm-"))).start()
        env.update(slurm.env)
    try:
        command = [sys.executable, "-m", "agc", "bench", *scenarios, "--results", results]
        return subprocess.run([*command, "--report"], env=env, cwd=REPO).returncode
    finally:
        if slurm is not None:
            slurm.stop()


if __name__ == "__main__":
    raise SystemExit(main())
