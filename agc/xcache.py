"""A real XRootD origin and a real XCache on loopback, for tests and benchmarks.

``agc run --xcache root://127.0.0.1:PORT`` sends every input read through an XCache
(:func:`agc.catalog.rewrite_url`). To measure that on one machine, :func:`origin_and_xcache`
starts the Debian ``xrootd`` server twice: an *origin* exporting the local file system and an
*XCache* (``libXrdPss`` + ``libXrdPfc``) in front of it, both bound to 127.0.0.1 on free ports,
and stops them by PID at the end::

    with origin_and_xcache(work_dir) as (origin, xcache):
        run(RunConfig(catalog=..., xcache=xcache.url))
        print(cinfo(xcache, "/abs/path/of/input.root"))   # blocks downloaded / hit

Needs ``apt-get install xrootd-server xrootd-client`` (server and ``xrdpfc_print``) and, for
uproot to open ``root://`` URLs, ``pip install fsspec-xrootd xrootd``. xrootd refuses to run as
root: as root the daemons drop to the ``xrootd`` user (``-R xrootd``), which must be able to
read the exported files (see :func:`make_readable`).
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from agc import processes

log = logging.getLogger(__name__)

XROOTD = "xrootd"
XRDPFC_PRINT = "xrdpfc_print"
RUN_AS = "xrootd"

ORIGIN_CONFIG = """\
xrd.port {port}
xrd.network nodnr
all.export /
{localroot}
all.adminpath {admin}
all.pidpath {admin}
xrootd.trace emsg login
"""

XCACHE_CONFIG = """\
xrd.port {port}
xrd.network nodnr
all.export /
all.adminpath {admin}
all.pidpath {admin}
ofs.osslib libXrdPss.so
pss.cachelib libXrdPfc.so
pss.origin 127.0.0.1:{origin_port}
oss.localroot {cache_dir}
pfc.ram {ram}
pfc.blocksize {blocksize}
pfc.prefetch 0
pfc.diskusage 0.90 0.95
pfc.trace info
"""


def missing_tools() -> str | None:
    """Why an origin + XCache cannot run here (None when they can)."""
    for exe, package in ((XROOTD, "xrootd-server"), (XRDPFC_PRINT, "xrootd-server")):
        if shutil.which(exe) is None:
            return f"'{exe}' not found: apt-get install {package} xrootd-client"
    try:
        import fsspec_xrootd  # noqa: F401
        import XRootD  # noqa: F401
    except ImportError:
        return "uproot cannot read root:// URLs: pip install fsspec-xrootd xrootd"
    if os.geteuid() == 0:
        try:
            import pwd

            pwd.getpwnam(RUN_AS)
        except KeyError:
            return f"running as root but there is no '{RUN_AS}' user to drop to"
    return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_readable(path: str | os.PathLike) -> None:
    """Let the ``xrootd`` user read ``path``: o+rx on it and its parents, o+r on its files."""
    path = Path(path).resolve()
    for p in [path, *path.parents]:
        p.chmod(p.stat().st_mode | 0o005)
    for p in path.rglob("*"):
        if p.is_symlink() or not (p.is_dir() or p.is_file()):
            continue
        with contextlib.suppress(PermissionError):
            p.chmod(p.stat().st_mode | (0o005 if p.is_dir() else 0o004))


@dataclass
class XRootDDaemon:
    """A running ``xrootd`` process (origin or XCache)."""

    name: str
    port: int
    pid: int
    log_file: Path
    cache_dir: Path | None = None

    @property
    def url(self) -> str:
        return f"root://127.0.0.1:{self.port}"

    def alive(self) -> bool:
        return processes.alive(self.pid)

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM, then SIGKILL after ``timeout`` seconds."""
        for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 5.0)):
            if not self.alive():
                return
            os.kill(self.pid, sig)
            deadline = time.monotonic() + wait
            while self.alive() and time.monotonic() < deadline:
                time.sleep(0.05)


def _start(
    name: str, work_dir: Path, config: str, port: int, owned: tuple[Path, ...] = ()
) -> XRootDDaemon:
    admin, logs = work_dir / f"{name}-admin", work_dir / "logs"
    for d in (admin, logs):
        d.mkdir(parents=True, exist_ok=True)
    cfg = work_dir / f"{name}.cfg"
    cfg.write_text(config.format(admin=admin, port=port))
    pid_file = admin / f"{name}.pid"
    as_root = os.geteuid() == 0
    if as_root:  # the daemon drops to RUN_AS: it must own what it writes
        for p in (work_dir, admin, logs, cfg, *owned):
            shutil.chown(p, RUN_AS, RUN_AS)
        make_readable(work_dir)
    cmd = [
        XROOTD,
        *(["-R", RUN_AS] if as_root else []),
        "-c",
        str(cfg),
        "-l",
        str(logs / f"{name}.log"),
        "-b",
        "-s",
        str(pid_file),
        "-n",
        name,
        "-I",
        "v4",
    ]
    subprocess.run(cmd, check=True, capture_output=True, timeout=30)
    log_file = logs / name / f"{name}.log"
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        if pid_file.exists() and pid_file.read_text().strip():
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
                pid = int(pid_file.read_text().split()[0])
                log.info("%s up on 127.0.0.1:%d (pid %d)", name, port, pid)
                return XRootDDaemon(name, port, pid, log_file)
        time.sleep(0.03)
    tail = log_file.read_text()[-2000:] if log_file.exists() else "(no log)"
    raise RuntimeError(f"xrootd {name} did not start on port {port}; log:\n{tail}")


def start_origin(
    work_dir: str | os.PathLike, *, port: int | None = None, export_root: str | None = None
) -> XRootDDaemon:
    """An origin serving the local file system (absolute paths), or ``export_root`` as ``/``."""
    work_dir = Path(work_dir)
    work_dir.mkdir(parents=True, exist_ok=True)
    localroot = f"oss.localroot {export_root}" if export_root else ""
    config = ORIGIN_CONFIG.replace("{localroot}", localroot)
    return _start("origin", work_dir, config, port or free_port())


def start_xcache(
    work_dir: str | os.PathLike,
    *,
    origin_port: int,
    port: int | None = None,
    ram: str = "1g",
    blocksize: str = "128k",
) -> XRootDDaemon:
    """An XCache in front of ``127.0.0.1:origin_port``; ``pfc.ram`` must be at least 1g."""
    work_dir = Path(work_dir)
    cache_dir = work_dir / "xcache-data"
    cache_dir.mkdir(parents=True, exist_ok=True)
    config = (
        XCACHE_CONFIG.replace("{origin_port}", str(origin_port))
        .replace("{cache_dir}", str(cache_dir))
        .replace("{ram}", ram)
        .replace("{blocksize}", blocksize)
    )
    daemon = _start("xcache", work_dir, config, port or free_port(), owned=(cache_dir,))
    daemon.cache_dir = cache_dir
    return daemon


@contextlib.contextmanager
def origin_and_xcache(
    work_dir: str | os.PathLike, export_root: str | None = None
) -> Iterator[tuple[XRootDDaemon, XRootDDaemon]]:
    """Start an origin and an XCache in front of it; stop both (by PID) on exit."""
    work_dir = Path(work_dir)
    origin = start_origin(work_dir, export_root=export_root)
    xcache = None
    try:
        xcache = start_xcache(work_dir, origin_port=origin.port)
        yield origin, xcache
    finally:
        if xcache is not None:
            xcache.stop()
        origin.stop()


def cached_files(xcache: XRootDDaemon) -> dict[str, int]:
    """Files held by the XCache: path (as requested) -> bytes on disk."""
    assert xcache.cache_dir is not None
    out = {}
    for p in xcache.cache_dir.rglob("*"):
        if p.is_file() and not p.name.endswith(".cinfo"):
            out["/" + p.relative_to(xcache.cache_dir).as_posix()] = p.stat().st_size
    return out


def cinfo(xcache: XRootDDaemon, path: str) -> dict[str, object]:
    """What ``xrdpfc_print`` says about a cached file: blocks, state and every access.

    Keys: ``n_blocks``, ``n_downloaded``, ``complete``, ``accesses`` (one dict per closed
    access: ``bytes_hit``, ``bytes_missed``, ``bytes_bypassed``) and their sums. An access is
    recorded when the client closes the file (a reading process exits or closes it).
    """
    assert xcache.cache_dir is not None
    info_file = xcache.cache_dir / (path.lstrip("/") + ".cinfo")
    text = subprocess.run(
        [XRDPFC_PRINT, "-v", str(info_file)], capture_output=True, text=True, check=True, timeout=30
    ).stdout
    return parse_cinfo(text)


_ACCESS = re.compile(
    r"^\s*\d+\s+\d{6}:\d{6}\s+\d{6}:\d{6}\s+\S+\s+\d+\s+\d+"
    r"\s+(\d+)\s+(\d+)\s+(\d+)\s*$",
    re.M,
)


def parse_cinfo(text: str) -> dict[str, object]:
    """Parse ``xrdpfc_print -v`` output (see :func:`cinfo`); sizes in bytes (kB resolution)."""
    out: dict[str, object] = {"complete": "state complete" in text}
    for name in ("n_blocks", "n_downloaded"):
        m = re.search(rf"{name}\s+(\d+)", text)
        out[name] = int(m.group(1)) if m else None
    accesses = [
        {"bytes_hit": int(h) * 1000, "bytes_missed": int(m) * 1000, "bytes_bypassed": int(b) * 1000}
        for h, m, b in _ACCESS.findall(text)
    ]
    out["accesses"] = accesses
    for key in ("bytes_hit", "bytes_missed", "bytes_bypassed"):
        out[key] = sum(a[key] for a in accesses)
    return out
