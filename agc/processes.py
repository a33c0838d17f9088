"""Whether a process runs: one check for locks, stand-in jobs and test daemons."""

from __future__ import annotations

import os
from pathlib import Path


def alive(pid: object) -> bool:
    """True if process ``pid`` runs on this machine (a zombie counts as gone)."""
    if not isinstance(pid, int) or isinstance(pid, bool) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # it runs, as another user
        return True
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return True
    return "\nState:\tZ" not in status
