"""Workers behind a real firewall: a network namespace made by the test (``ip netns``, a veth
pair, addresses from 198.18.0.0/15) whose nftables rules drop new inbound connections and let
established ones and everything outbound through, the firewall of a grid site. The DIRAC
backend's jobs (STAND-IN dirac-wms-* commands, which run each JDL as a local process) start
their Dask workers inside it; the scheduler, the client and the relay broker stay in the main
namespace.

- Without the relay the run fails within its timeouts, naming the worker address the
  scheduler cannot reach (it does not hang on ``Couldn't gather keys``).
- With the relay broker (profile section ``relay``) it completes with histograms identical to
  a local run.

Traffic stays inside the namespace and its veth pair; every wait is bounded; the namespace,
the veth pair and the processes in it are removed at the end. Skipped (with the reason) where
namespaces cannot be made: not root, or ``ip`` / ``nft`` missing (Debian: apt-get install
iproute2 nftables).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass

import pytest
import yaml
from conftest import assert_same_histograms
from slurm_cluster import backend_run, reference_histograms

import backends.dirac  # noqa: F401  (dask_jobqueue sets signal handlers: main thread only)
from backends.base import BackendError

NFT_RULES = """\
table inet agcfw {
  chain input {
    type filter hook input priority 0; policy accept;
    ct state established,related accept
    iif lo accept
    tcp flags syn ct state new drop
  }
}
"""


@dataclass(frozen=True)
class Site:
    namespace: str
    host_ip: str  # this side of the veth pair (main namespace): scheduler, client, broker
    site_ip: str  # the site's side (inside the namespace): the workers

    def python(self) -> str:
        """The worker python, started inside the site's namespace."""
        return f"ip netns exec {self.namespace} {sys.executable}"


def _ip(*args: str, namespace: str | None = None, stdin: str | None = None) -> None:
    command = ["ip", "netns", "exec", namespace, *args] if namespace else list(args)
    subprocess.run(command, check=True, capture_output=True, text=True, input=stdin, timeout=30)


def _why_no_namespaces() -> str | None:
    if os.geteuid() != 0:
        return "making network namespaces and nftables rules needs root"
    for tool in ("ip", "nft"):
        if shutil.which(tool) is None:
            return f"{tool} not installed (Debian: apt-get install iproute2 nftables)"
    return None


@pytest.fixture
def firewalled_site():
    reason = _why_no_namespaces()
    if reason:
        pytest.skip(reason)
    tag = os.getpid() % 100000
    namespace, host_if, site_if = f"agcfw{tag}", f"agcfw{tag}h", f"agcfw{tag}s"
    subnet = f"198.18.{tag % 250 + 1}"
    site = Site(namespace, f"{subnet}.1", f"{subnet}.2")
    try:
        try:
            _ip("ip", "netns", "add", namespace)
            _ip("ip", "link", "add", host_if, "type", "veth", "peer", "name", site_if)
            _ip("ip", "link", "set", site_if, "netns", namespace)
            _ip("ip", "addr", "add", f"{site.host_ip}/24", "dev", host_if)
            _ip("ip", "link", "set", host_if, "up")
            _ip("ip", "addr", "add", f"{site.site_ip}/24", "dev", site_if, namespace=namespace)
            _ip("ip", "link", "set", site_if, "up", namespace=namespace)
            _ip("ip", "link", "set", "lo", "up", namespace=namespace)
            _ip("nft", "-f", "-", namespace=namespace, stdin=NFT_RULES)
        except subprocess.CalledProcessError as err:
            pytest.skip(
                f"cannot make the firewalled site here ({' '.join(err.cmd)}): "
                f"{(err.stderr or '').strip()}"
            )
        yield site
    finally:
        pids = subprocess.run(
            ["ip", "netns", "pids", namespace], capture_output=True, text=True
        ).stdout.split()
        for pid in pids:
            try:
                os.kill(int(pid), 9)
            except (ProcessLookupError, ValueError):
                pass
        subprocess.run(["ip", "netns", "del", namespace], capture_output=True)
        subprocess.run(["ip", "link", "del", host_if], capture_output=True)


def _serve_once(ip: str, namespace: str | None = None) -> tuple[subprocess.Popen, int]:
    """A one-connection TCP server (``python -c``) on ``ip``, in ``namespace``; its port."""
    code = (
        "import socket,sys\n"
        f"s=socket.create_server(({ip!r},0)); print(s.getsockname()[1], flush=True)\n"
        "s.settimeout(20)\n"
        "try:\n c,_=s.accept(); c.sendall(b'hello'); c.close()\n"
        "except OSError: pass\n"
    )
    command = [sys.executable, "-c", code]
    if namespace:
        command = ["ip", "netns", "exec", namespace, *command]
    server = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    return server, int(server.stdout.readline())


def test_the_site_firewall_drops_inbound_and_passes_outbound(firewalled_site):
    site = firewalled_site
    # into the site: the SYN is dropped, the connection times out
    server, port = _serve_once(site.site_ip, site.namespace)
    try:
        with pytest.raises(TimeoutError):
            socket.create_connection((site.site_ip, port), timeout=2)
    finally:
        server.kill()
        server.wait()
    # out of the site to this side: allowed, and the answer comes back (established)
    server, port = _serve_once(site.host_ip)
    try:
        probe = (
            "import socket; c=socket.create_connection(("
            f"{site.host_ip!r},{port}),timeout=5); print(c.recv(5).decode())"
        )
        out = subprocess.run(
            ["ip", "netns", "exec", site.namespace, sys.executable, "-c", probe],
            capture_output=True, text=True, timeout=30, check=True,
        ).stdout  # fmt: skip
        assert out.strip() == "hello"
    finally:
        server.kill()
        server.wait()


def _profile(tmp_path, site: Site, relay: bool) -> str:
    profile = {
        "backend": "dirac",
        "worker": {
            "cores": 1,
            "memory": "1GB",
            "death_timeout": 30,
            "start_timeout": 60,
            "lost_timeout": 60,
            "reach_timeout": 5,
            "python": site.python(),
        },
        "scheduler": {"host": site.host_ip},
        "dirac": {"owner_group": "agc_user", "sites": {"LCG.SITE-A.uk": 1, "LCG.SITE-B.uk": 1}},
    }
    if relay:
        profile["relay"] = {"broker": f"{site.host_ip}:0", "listen": f"{site.host_ip}:0"}
    path = tmp_path / ("relay.yaml" if relay else "direct.yaml")
    path.write_text(yaml.safe_dump(profile))
    return str(path)


def _bounded(fn, seconds: float):
    """``fn()`` in a thread, waited for at most ``seconds``: a hang fails the test."""
    box: dict = {}

    def target():
        try:
            box["result"] = fn()
        except BaseException as err:  # noqa: BLE001 - handed to the test
            box["error"] = err

    thread = threading.Thread(target=target, daemon=True)
    started = time.monotonic()
    thread.start()
    thread.join(seconds)
    assert not thread.is_alive(), f"the run did not end within {seconds:g} s"
    if "error" in box:
        raise box["error"]
    return box["result"], time.monotonic() - started


@pytest.mark.slow
def test_firewalled_workers_without_relay_fail_naming_the_worker(
    firewalled_site, tmp_path, standins, small_catalog
):
    site = firewalled_site
    profile = _profile(tmp_path, site, relay=False)
    with pytest.raises(BackendError) as caught:
        _bounded(lambda: backend_run(str(small_catalog), "dirac", profile=profile), 240)
    message = str(caught.value)
    worker = f"tcp://{site.site_ip}:"
    assert f"the scheduler cannot connect to worker {worker}" in message
    assert "relay" in message


@pytest.mark.slow
def test_firewalled_workers_with_relay_match_local(
    firewalled_site, tmp_path, standins, small_catalog
):
    site = firewalled_site
    profile = _profile(tmp_path, site, relay=True)
    result, _ = _bounded(lambda: backend_run(str(small_catalog), "dirac", profile=profile), 240)
    assert_same_histograms(reference_histograms(str(small_catalog)), result.histograms, rtol=0)
    assert result.workers == 2
    assert result.record.relay.startswith(f"{site.host_ip}:")
    assert result.record.relayed_connections >= 2
    assert result.record.relayed_bytes > 0  # the chunks' results came through the broker
