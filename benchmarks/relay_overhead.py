"""What the relay broker (backends/relay) costs: direct vs relayed Dask comms, and the broker's
CPU and memory per connected worker.

``python -m benchmarks.relay_overhead --out DIR [--megabytes 100] [--messages 10000]
[--repeats 5] [--workers 1,10,25,50,100] [--idle 20]`` measures, on this machine:

1. **Transfers** over distributed's own comms (``distributed.comm.connect`` / ``listen``)
   between this process and a server process, for ``tcp://`` and ``relay://`` (through a
   broker process), each plain and with TLS (a throw-away self-signed certificate made with
   ``openssl``; skipped without it):

   - a ``--megabytes`` MB NumPy buffer sent and acknowledged, ``--repeats`` times: seconds
     and MB/s;
   - ``--messages`` small request/reply round trips one after the other: the latency of each
     (median and 99th percentile) and round trips per second.

2. **The broker per connected worker**: for each count of ``--workers``, that many real Dask
   workers (``Worker(protocol="relay")``, in one process of their own) join a scheduler in
   this process through a fresh broker process; the scheduler connects to every worker once
   (``client.run``). Then the broker's resident memory, its CPU while the workers idle for
   ``--idle`` seconds (default 35: longer than the 30 s between two keep-alive frames of a
   link; heartbeats go to the scheduler directly), and its CPU per relayed call while the
   client runs a function on every worker ten times (Dask's broadcast opens a connection to
   each worker per call and closes it: each call is a new relayed connection).

3. **An AGC run through the relay**: the default synthetic dataset (``agc run``'s) on two
   DIRAC stand-in jobs (``backends/standins``: local processes), once with their workers
   reached directly and once only through a relay broker the backend starts: wall time, the
   rate, and the connections and bytes the broker relayed (per chunk), ``--agc-repeats``
   times each, interleaved (``--agc-repeats 0``: left out).

It writes ``DIR/relay-overhead.json`` (machine, versions, commit, every measurement) and
``DIR/README.md`` with the tables and figures, every sentence derived from the JSON. All
processes run on this one machine (loopback): the figures are the relay's own cost, without a
wide-area network.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any
from unittest import mock

import numpy as np

# ------------------------------------------------------------------ the server process


async def _serve(listen: str, security_dir: str | None) -> None:
    from distributed.comm import listen as dask_listen

    from backends.relay.broker import Broker  # noqa: F401  (the relay scheme's module loaded)

    kwargs = _security(security_dir).get_listen_args("worker") if security_dir else {}

    async def handle(comm):
        try:
            while True:
                msg = await comm.read()
                if msg.get("op") == "big":
                    await comm.write({"n": int(msg["data"].nbytes)})
                elif msg.get("op") == "echo":
                    await comm.write({"i": msg["i"]})
                else:
                    break
        except Exception:  # noqa: BLE001 - the client closed
            pass
        finally:
            await comm.close()

    listener = dask_listen(listen, handle, **kwargs)
    await listener.start()
    print(listener.contact_address, flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)  # until closed
    listener.stop()


def _security(directory: str):
    from distributed.security import Security

    cert, key = f"{directory}/cert.pem", f"{directory}/key.pem"
    return Security(
        tls_ca_file=cert,
        **{
            f"tls_{role}_{what}": path
            for role in ("scheduler", "worker", "client")
            for what, path in (("cert", cert), ("key", key))
        },
        require_encryption=True,
    )


def _make_certificate(directory: Path) -> bool:
    if shutil.which("openssl") is None:
        return False
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-subj", "/CN=agc-relay-bench", "-keyout", str(directory / "key.pem"),
         "-out", str(directory / "cert.pem")],
        check=True, capture_output=True,
    )  # fmt: skip
    return True


# ------------------------------------------------------------------ transfers


async def _transfers(address: str, security_dir: str | None, megabytes: int, messages: int,
                     repeats: int) -> dict[str, Any]:  # fmt: skip
    from distributed.comm import connect
    from distributed.protocol import to_serialize

    kwargs = _security(security_dir).get_connection_args("client") if security_dir else {}
    comm = await connect(address, **kwargs)
    data = np.ones(megabytes * 1_000_000 // 8)
    seconds = []
    for _ in range(repeats + 1):  # the first one warms up (buffers, TLS session)
        start = time.perf_counter()
        await comm.write({"op": "big", "data": to_serialize(data)})
        reply = await comm.read()
        seconds.append(time.perf_counter() - start)
        assert reply["n"] == data.nbytes
    seconds = seconds[1:]
    latencies: list[float] = []
    for _ in range(2):  # a warm-up round of 100, then the measured ones
        latencies = []
        for i in range(messages if _ else 100):
            start = time.perf_counter()
            await comm.write({"op": "echo", "i": i})
            assert (await comm.read())["i"] == i
            latencies.append(time.perf_counter() - start)
    await comm.write({"op": "stop"})
    await comm.close()
    lat = np.asarray(latencies)
    median = statistics.median(seconds)
    return {
        "big_seconds": seconds,
        "big_seconds_median": median,
        "big_mb_per_second": megabytes / median,
        "small_latency_median_us": float(np.median(lat) * 1e6),
        "small_latency_p99_us": float(np.percentile(lat, 99) * 1e6),
        "small_round_trips_per_second": float(len(lat) / lat.sum()),
    }


def measure_transfers(megabytes: int, messages: int, repeats: int, tmp: Path) -> list[dict]:
    from backends.relay.broker import BrokerProcess

    tls_dir = str(tmp) if _make_certificate(tmp) else None
    rows = []
    broker = BrokerProcess("127.0.0.1:0")
    broker_address = broker.start()
    try:
        for tls in (False, True):
            if tls and tls_dir is None:
                continue
            for path in ("direct", "relayed"):
                scheme = "tls" if tls else "tcp"
                listen = (
                    f"{scheme}://127.0.0.1:0" if path == "direct" else f"relay://{broker_address}"
                )
                server = subprocess.Popen(
                    [sys.executable, "-m", "benchmarks.relay_overhead", "serve", "--listen",
                     listen, *(["--security", str(tls_dir)] if tls else [])],
                    stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                )  # fmt: skip
                assert server.stdout is not None and server.stdin is not None
                try:
                    address = server.stdout.readline().strip()
                    result = asyncio.run(
                        _transfers(address, tls_dir if tls else None, megabytes, messages, repeats)
                    )
                finally:
                    server.stdin.close()
                    server.wait(timeout=30)
                rows.append({"path": path, "tls": tls, "megabytes": megabytes,
                             "messages": messages, **result})  # fmt: skip
                print(f"{path:8s} tls={tls!s:5s} {result['big_mb_per_second']:8.0f} MB/s  "
                      f"{result['small_latency_median_us']:7.0f} us", flush=True)  # fmt: skip
    finally:
        broker.stop()
    return rows


# ------------------------------------------------------------------ workers on the broker


async def _workers(scheduler: str, broker: str, n: int) -> None:
    from distributed import Worker

    workers = [
        Worker(
            scheduler,
            protocol="relay",
            host=broker,
            nthreads=1,
            dashboard=False,
            memory_limit=0,
            name=f"relayed-{i}",
        )  # fmt: skip
        for i in range(n)
    ]
    await asyncio.gather(*(w.start() for w in workers))
    print("started", flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
    await asyncio.gather(*(w.close() for w in workers), return_exceptions=True)


def measure_broker(counts: list[int], idle: float) -> list[dict]:
    from distributed import Client, LocalCluster

    from backends.relay.broker import BrokerProcess

    rows = []
    for n in counts:
        broker = BrokerProcess("127.0.0.1:0")
        address = broker.start()
        before = broker.stats()
        cluster = LocalCluster(n_workers=0, host="127.0.0.1", dashboard_address=None)
        client = Client(cluster)
        workers = subprocess.Popen(
            [sys.executable, "-m", "benchmarks.relay_overhead", "workers", "--scheduler",
             cluster.scheduler_address, "--broker", address, "--n", str(n)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        )  # fmt: skip
        assert workers.stdin is not None
        try:
            client.wait_for_workers(n, timeout=300)
            assert all(
                w.startswith("relay://") for w in client.scheduler_info(n_workers=-1)["workers"]
            )
            client.run(os.getpid)  # the scheduler connects to every worker once
            joined = broker.stats()
            time.sleep(idle)
            idled = broker.stats()
            start = time.perf_counter()
            for _ in range(10):
                client.run(os.getpid)
            busy_seconds = time.perf_counter() - start
            busy = broker.stats()
        finally:
            workers.stdin.close()  # the workers leave first, then the scheduler
            try:
                workers.wait(timeout=60)
            except subprocess.TimeoutExpired:
                workers.kill()
            client.close()
            cluster.close()
            broker.stop()
        row = {
            "workers": n,
            "rss_mb_before": before["rss_bytes"] / 1e6,
            "rss_mb_joined": joined["rss_bytes"] / 1e6,
            "rss_mb_after_calls": busy["rss_bytes"] / 1e6,
            "idle_seconds": idle,
            "idle_cpu_percent": 100 * (idled["cpu_seconds"] - joined["cpu_seconds"]) / idle,
            "calls": 10 * n,
            "calls_seconds": busy_seconds,
            "cpu_ms_per_relayed_call": 1e3
            * (busy["cpu_seconds"] - idled["cpu_seconds"])
            / (10 * n),
            "streams_open": busy["streams"],
            "relayed_connections": busy["relayed_connections"],
        }
        rows.append(row)
        print(f"{n:4d} workers: RSS {row['rss_mb_joined']:.1f} MB, idle CPU "
              f"{row['idle_cpu_percent']:.2f} %, {row['cpu_ms_per_relayed_call']:.2f} ms/call",
              flush=True)  # fmt: skip
    return rows


# ------------------------------------------------------------------ an AGC run through the relay


def measure_agc(repeats: int, tmp: Path) -> list[dict]:
    """The default synthetic dataset on two DIRAC stand-in jobs, direct and relayed."""
    import yaml

    from agc import RunConfig, run
    from backends.standins import bin_dir

    profile = {
        "backend": "dirac",
        "worker": {"cores": 1, "memory": "2GB", "death_timeout": 60, "start_timeout": 120},
        "scheduler": {"host": "127.0.0.1"},
        "dirac": {"owner_group": "agc_user", "sites": {"LCG.SITE-A.uk": 1, "LCG.SITE-B.uk": 1}},
    }
    paths = {}
    for path in ("direct", "relayed"):
        data = dict(profile)
        if path == "relayed":
            data["relay"] = {"broker": "127.0.0.1:0", "listen": "127.0.0.1:0"}
        paths[path] = tmp / f"{path}.yaml"
        paths[path].write_text(yaml.safe_dump(data))
    env = {"PATH": f"{bin_dir()}:{os.environ['PATH']}", "AGC_STANDIN_STATE": str(tmp / "state")}
    rows = []
    with mock.patch.dict(os.environ, env):
        for repeat in range(repeats):
            for path in ("direct", "relayed"):
                config = RunConfig(backend="dirac", profile=str(paths[path]), fit=False)
                result = run(config, progress=False, write=False)
                r = result.record
                rows.append(
                    {
                        "path": path,
                        "repeat": repeat,
                        "events": r.events,
                        "chunks": r.chunks,
                        "workers": r.workers,
                        "wall_seconds": r.wall_seconds,
                        "events_per_second": r.events_per_second,
                        "relayed_connections": r.relayed_connections,
                        "relayed_bytes": r.relayed_bytes,
                    }
                )
                print(
                    f"AGC {path:8s} {r.events} events, {r.chunks} chunks: {r.wall_seconds:.1f} s,"
                    f" {r.relayed_connections} connections, {r.relayed_bytes / 1e6:.1f} MB relayed",
                    flush=True,
                )
    return rows


# ------------------------------------------------------------------ the record and the page


def per_worker_fit(rows: list[dict]) -> dict[str, float]:
    """Least-squares lines through the broker's memory and idle CPU against workers."""
    n = np.array([r["workers"] for r in rows], dtype=float)
    out = {}
    for key in ("rss_mb_joined", "rss_mb_after_calls", "idle_cpu_percent"):
        slope, intercept = np.polyfit(n, [r[key] for r in rows], 1)
        out[f"{key}_per_worker"] = float(slope)
        out[f"{key}_intercept"] = float(intercept)
        out[f"{key}_at_1000"] = float(intercept + 1000 * slope)
    return out


def save_figure(fig, stem: Path) -> Path:
    """``stem``.png (150 dpi) and .svg, as the report's figures are saved."""
    fig.tight_layout()
    fig.savefig(stem.with_suffix(".png"), dpi=150)
    fig.savefig(stem.with_suffix(".svg"))
    import matplotlib.pyplot as plt

    plt.close(fig)
    return stem.with_suffix(".png")


def write_page(record: dict, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t = record["transfers"]
    b = record["broker"]
    fit = record["fit"]
    if t:
        labels = [f"{r['path']}{' TLS' if r['tls'] else ''}" for r in t]
        fig, axes = plt.subplots(1, 2, figsize=(8, 4.5))
        axes[0].bar(labels, [r["big_mb_per_second"] for r in t], color="#4c72b0")
        axes[0].set_ylabel(f"MB/s ({t[0]['megabytes']} MB message)")
        axes[1].bar(labels, [r["small_latency_median_us"] for r in t], color="#dd8452")
        axes[1].set_ylabel("round-trip latency, median (µs)")
        for ax in axes:
            ax.tick_params(axis="x", rotation=30)
        fig.suptitle("Direct vs relayed Dask comms (loopback, one machine)")
        save_figure(fig, out / "relay-transfers")
    if b:
        fig, ax = plt.subplots(figsize=(8, 4.5))
        n = [r["workers"] for r in b]
        ax.plot(n, [r["rss_mb_joined"] for r in b], "o-", label="broker RSS (MB)")
        ax.set_xlabel("connected relayed workers")
        ax.set_ylabel("broker resident memory (MB)")
        ax2 = ax.twinx()
        ax2.plot(
            n, [r["idle_cpu_percent"] for r in b], "s--", color="#c44e52", label="idle CPU (%)"
        )
        ax2.set_ylabel("broker CPU while workers idle (% of a core)")
        fig.legend(loc="lower right", bbox_to_anchor=(0.88, 0.15))
        ax.set_title("Relay broker cost per connected worker (one machine)")
        save_figure(fig, out / "relay-broker")
    m = record["machine"]
    lines = [
        "# Relay broker overhead",
        "",
        f"Recorded {record['finished_utc']} on {m['cpu_model']} ({m['cpu_count']} cores, "
        f"{m['memory_gb']} GB), Python {m['python']}, distributed "
        f"{record['versions'].get('distributed')}, commit `{record['commit']}`, by "
        "`python -m benchmarks.relay_overhead`. **Single machine, loopback**: the scheduler side, "
        "the broker and the workers are processes of this machine, so the figures are the relay's "
        "own cost (CPU, copies, its protocol) without a wide-area network or a real firewall "
        "(tests/test_firewall.py runs the relay through a real nftables firewall).",
        "",
    ]
    if t:
        lines += [
            "## Transfers: direct vs relayed",
            "",
            f"distributed's comms between two processes: one {t[0]['megabytes']} MB NumPy buffer "
            f"(median of {len(t[0]['big_seconds'])}) and {t[0]['messages']} small round trips, "
            "one after the other.",
            "",
            f"| path | TLS | {t[0]['megabytes']} MB: s (median) | MB/s "
            "| round trip median (µs) | p99 (µs) | round trips/s |",
            "|---|---|---|---|---|---|---|",
        ]
        for r in t:
            lines.append(
                f"| {r['path']} | {'yes' if r['tls'] else 'no'} | {r['big_seconds_median']:.3f} | "
                f"{r['big_mb_per_second']:.0f} | {r['small_latency_median_us']:.0f} | "
                f"{r['small_latency_p99_us']:.0f} | {r['small_round_trips_per_second']:.0f} |"
            )
        by = {(r["path"], r["tls"]): r for r in t}
        for tls in (False, True):
            d, rel = by.get(("direct", tls)), by.get(("relayed", tls))
            if d and rel:
                lines += [
                    "",
                    f"{'With TLS' if tls else 'Plain'}: the relayed {t[0]['megabytes']} MB "
                    "transfer takes "
                    f"{rel['big_seconds_median'] / d['big_seconds_median']:.2f}x the direct time "
                    f"({rel['big_mb_per_second']:.0f} vs {d['big_mb_per_second']:.0f} MB/s); "
                    "a small round trip "
                    f"{rel['small_latency_median_us'] / d['small_latency_median_us']:.2f}x "
                    f"({rel['small_latency_median_us']:.0f} vs "
                    f"{d['small_latency_median_us']:.0f} µs).",
                ]
        lines += ["", "![transfers](relay-transfers.png)", ""]
    if b:
        lines += [
            "## The broker per connected worker",
            "",
            "Real Dask workers on `relay://`, in one process, joined to a scheduler through a "
            f"fresh broker; {b[0]['idle_seconds']:g} s idle (a link sends a keep-alive frame "
            "every 30 s), then `client.run` on every worker ten times. Dask's broadcast opens a "
            "connection to each worker per call and closes it, so each call is a new relayed "
            "connection (CONNECT, a stream opened on the link, Dask's handshake, the call).",
            "",
            "| workers | broker RSS joined (MB) | after calls (MB) | idle CPU (% of a core) "
            "| CPU per relayed call (ms) | connections relayed |",
            "|---|---|---|---|---|---|",
        ]
        for r in b:
            lines.append(
                f"| {r['workers']} | {r['rss_mb_joined']:.1f} | {r['rss_mb_after_calls']:.1f} | "
                f"{r['idle_cpu_percent']:.3f} | {r['cpu_ms_per_relayed_call']:.3f} | "
                f"{r['relayed_connections']} |"
            )
        lines += [
            "",
            f"A line through these points: **{1000 * fit['rss_mb_joined_per_worker']:.0f} kB of "
            f"broker memory per connected worker** (intercept {fit['rss_mb_joined_intercept']:.0f} "
            f"MB), idle CPU {fit['idle_cpu_percent_per_worker']:.1e} % of a core per worker. "
            f"Extrapolated to 1000 workers: about {fit['rss_mb_joined_at_1000']:.0f} MB and "
            f"{max(fit['idle_cpu_percent_at_1000'], 0):.2f} % of a core while they idle; the CPU "
            "of the work itself grows with what is relayed (per call above, per byte in the "
            "transfer table), not with the number of workers. This is an extrapolation from "
            f"{b[-1]['workers']} workers on one machine, not a measurement at 1000.",
            "",
            "![broker](relay-broker.png)",
            "",
        ]
    agc = record.get("agc") or []
    if agc:
        by_path: dict[str, list[dict]] = {}
        for r in agc:
            by_path.setdefault(r["path"], []).append(r)
        lines += [
            "## An AGC run through the relay",
            "",
            f"`agc run`'s default synthetic dataset ({agc[0]['events']:,} events, "
            f"{agc[0]['chunks']} chunks) on {agc[0]['workers']} DIRAC **stand-in** jobs (local "
            "processes running the production JDLs' worker commands), with their workers reached "
            "directly or only through the relay broker the backend starts; "
            f"{len(by_path.get('direct', []))} runs each, interleaved (median, min-max).",
            "",
            "| workers reached | wall (s) | events/s | connections relayed | MB relayed | "
            "kB relayed per chunk |",
            "|---|---|---|---|---|---|",
        ]
        for path, rows in by_path.items():
            wall = [r["wall_seconds"] for r in rows]
            rate = statistics.median(r["events_per_second"] for r in rows)
            mb = statistics.median(r["relayed_bytes"] for r in rows) / 1e6
            conns = statistics.median(r["relayed_connections"] for r in rows)
            per_chunk = 1e3 * mb / rows[0]["chunks"] if mb else 0
            lines.append(
                f"| {path} | {statistics.median(wall):.2f} ({min(wall):.2f}-{max(wall):.2f}) | "
                f"{rate:,.0f} | {conns:.0f} | {mb:.2f} | {per_chunk:.0f} |"
            )
        lines.append("")
    (out / "README.md").write_text("\n".join(lines))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.relay_overhead")
    sub = parser.add_subparsers(dest="command")
    serve = sub.add_parser("serve", help="(internal) the comm server")
    serve.add_argument("--listen", required=True)
    serve.add_argument("--security")
    workers = sub.add_parser("workers", help="(internal) relayed workers")
    workers.add_argument("--scheduler", required=True)
    workers.add_argument("--broker", required=True)
    workers.add_argument("--n", type=int, required=True)
    parser.add_argument("--out", type=Path)
    parser.add_argument("--megabytes", type=int, default=100)
    parser.add_argument("--messages", type=int, default=10000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--workers", default="1,10,25,50,100")
    parser.add_argument("--idle", type=float, default=35.0)
    parser.add_argument("--agc-repeats", type=int, default=3)
    parser.add_argument(
        "--rebuild",
        action="store_true",
        help="write DIR/README.md and the figures again from DIR/relay-overhead.json",
    )
    args = parser.parse_args(argv)
    if args.command == "serve":
        asyncio.run(_serve(args.listen, args.security))
        return 0
    if args.command == "workers":
        asyncio.run(_workers(args.scheduler, args.broker, args.n))
        return 0
    if args.out is None:
        parser.error("--out DIR is required")
    if args.rebuild:
        recorded = args.out / "relay-overhead.json"
        if not recorded.is_file():
            parser.error(f"--rebuild: {recorded} does not exist; run without --rebuild first")
        write_page(json.loads(recorded.read_text()), args.out)
        return 0
    try:
        counts = [int(x) for x in args.workers.split(",") if x.strip()]
    except ValueError:
        parser.error(f"--workers {args.workers!r}: give counts such as 1,10,25,50,100")
    from datetime import UTC, datetime

    from agc.metrics import git_commit, load_average, machine_info, package_versions

    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="agc-relay-bench-") as tmp:
        transfers = measure_transfers(args.megabytes, args.messages, args.repeats, Path(tmp))
    broker = measure_broker(counts, args.idle) if counts else []
    with tempfile.TemporaryDirectory(prefix="agc-relay-bench-") as tmp:
        agc = measure_agc(args.agc_repeats, Path(tmp)) if args.agc_repeats > 0 else []
    record = {
        "finished_utc": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine_info(),
        "load_average": load_average(),
        "versions": package_versions(),
        "commit": git_commit(),
        "single_node": True,
        "transfers": transfers,
        "broker": broker,
        "fit": per_worker_fit(broker) if len(broker) >= 2 else {},
        "agc": agc,
    }
    tmp_json = args.out / "relay-overhead.json.tmp"
    tmp_json.write_text(json.dumps(record, indent=1))
    os.replace(tmp_json, args.out / "relay-overhead.json")
    write_page(record, args.out)
    print(f"wrote {args.out}/relay-overhead.json and README.md")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
