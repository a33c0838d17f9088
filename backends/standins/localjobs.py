"""STAND-IN job store: jobs as detached local processes, one JSON record per live job.

Shared by the stand-in HTCondor and DIRAC commands. A job is started in its own session with
stdin from /dev/null and stdout/stderr to files, so the submitting command returns at once and
the caller's pipes see EOF (dask-jobqueue waits for EOF on them). Removing a job signals its
whole process group: SIGTERM, then SIGKILL after a grace period.
"""

from __future__ import annotations

import fcntl
import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

from agc.processes import alive

__all__ = ["alive", "history", "next_id", "record", "records", "remove", "spawn", "state_dir"]

GRACE_SECONDS = 10.0


def state_dir(system: str) -> Path:
    """``$AGC_STANDIN_STATE/<system>`` (default ``~/.cache/agc-standins/<system>``)."""
    root = os.environ.get("AGC_STANDIN_STATE") or Path.home() / ".cache" / "agc-standins"
    path = Path(root) / system
    (path / "jobs").mkdir(parents=True, exist_ok=True)
    return path


def next_id(state: Path) -> int:
    """A new job (cluster) number, from a locked counter file."""
    with open(state / "counter", "a+") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        f.seek(0)
        n = int(f.read().strip() or 0) + 1
        f.seek(0)
        f.truncate()
        f.write(str(n))
    return n


def spawn(argv: Sequence[str], stdout: Path, stderr: Path, cwd: Path | None = None) -> int:
    """Start ``argv`` fully detached; return its pid (also its process-group id)."""
    stdout.parent.mkdir(parents=True, exist_ok=True)
    stderr.parent.mkdir(parents=True, exist_ok=True)
    with open(stdout, "ab") as out, open(stderr, "ab") as err:
        proc = subprocess.Popen(
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=err,
            cwd=cwd,
            start_new_session=True,
            close_fds=True,
        )
    return proc.pid


def record(state: Path, job_id: str, **fields) -> None:
    """Record a live job, and append it to ``history.jsonl`` (kept after the job ends)."""
    line = json.dumps({"id": job_id, **fields})
    (state / "jobs" / f"{job_id}.json").write_text(line)
    with open(state / "history.jsonl", "a") as f:
        f.write(line + "\n")


def history(state: Path) -> list[dict]:
    """Every job ever submitted to this state directory, in order."""
    path = state / "history.jsonl"
    return [json.loads(x) for x in path.read_text().splitlines()] if path.exists() else []


def records(state: Path) -> Iterator[dict]:
    for path in sorted(state.glob("jobs/*.json")):
        try:
            yield json.loads(path.read_text())
        except (OSError, ValueError):  # removed or being written concurrently
            continue


def group_members(pgid: int) -> list[int]:
    """Live (non-zombie) processes of process group ``pgid`` (Linux /proc)."""
    members = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":  # fields: state, ppid, pgrp, ...
            members.append(int(stat.parent.name))
    return members


def remove(state: Path, job_id: str, grace: float = GRACE_SECONDS) -> bool:
    """Stop job ``job_id`` (its process group) and drop its record; False if unknown."""
    path = state / "jobs" / f"{job_id}.json"
    try:
        pid = int(json.loads(path.read_text())["pid"])
    except (OSError, ValueError, KeyError):
        return False
    _signal_group(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while group_members(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    _signal_group(pid, signal.SIGKILL)
    path.unlink(missing_ok=True)
    return True


def _signal_group(pid: int, sig: int) -> None:
    try:
        os.killpg(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass
