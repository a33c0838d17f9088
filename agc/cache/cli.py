"""``agc cache ls | stats | clear`` and ``agc fetch RUN_ID``."""

from __future__ import annotations

import argparse
import json
import math
import time
from datetime import datetime

from agc.cache.store import ResultStore, default_url, parse_age, parse_size


def _store(args: argparse.Namespace) -> ResultStore:
    return ResultStore(args.cache)


def _size(n: float) -> str:
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n} B"


def cmd_ls(args: argparse.Namespace) -> int:
    store = _store(args)
    if args.runs:
        for run_id in store.list_runs():
            print(f"{run_id}  {store.run_url(run_id)}")
        return 0
    entries = sorted(store.entries(), key=lambda e: e.last_used, reverse=True)
    print(f"{'key':16s} {'size':>9s} {'last used':19s} {'sample':28s} entries  file")
    for e in entries[: args.limit]:
        try:
            meta = store.read_meta(e.key).get("meta", {})
        except Exception:  # unreadable header: still list the entry
            meta = {}
        used = datetime.fromtimestamp(e.last_used).strftime("%Y-%m-%d %H:%M:%S")
        entries_range = f"{meta.get('entry_start', '?')}-{meta.get('entry_stop', '?')}"
        print(
            f"{e.key[:16]} {_size(e.size):>9s} {used} {meta.get('sample', '?'):28s} "
            f"{entries_range:8s} {meta.get('path', '?')}"
        )
    if len(entries) > args.limit:
        print(f"... {len(entries) - args.limit} more (--limit)")
    return 0


def cmd_stats(args: argparse.Namespace) -> int:
    store = _store(args)
    swept = store.sweep()
    s = store.stats()
    s["leftovers_removed"] = len(swept)
    if args.json:
        print(json.dumps(s, indent=1))
        return 0
    print(f"store      {s['url']}")
    print(f"entries    {s['entries']}")
    print(
        f"size       {_size(s['bytes'])} of {_size(s['max_bytes'] or 0)} "
        f"({100 * s['bytes'] / s['max_bytes'] if s['max_bytes'] else 0:.1f}%; chunks "
        f"{_size(s['chunk_bytes'])}, runs {_size(s['run_bytes'])})"
    )
    print(f"expiry     unused for {s['max_age_seconds'] / 86400:.1f} days")
    print(f"oldest use {s['oldest_use_seconds_ago'] / 3600:.1f} h ago")
    print(f"runs       {s['runs']} stored (agc cache ls --runs; agc fetch RUN_ID)")
    if swept:
        print(
            f"leftovers  removed {len(swept)} temporary file(s) of writers that died "
            f"({_size(sum(size for _, size in swept))})"
        )
    return 0


def cmd_clear(args: argparse.Namespace) -> int:
    store = _store(args)
    swept = store.sweep()
    if swept:
        print(f"removed {len(swept)} leftover temporary file(s) from {store.url}")
    if args.older_than is not None or args.max_size is not None:
        removed = store.evict(
            max_age=parse_age(args.older_than),
            max_bytes=parse_size(args.max_size) if args.max_size is not None else math.inf,
        )
        print(f"removed {len(removed)} entries from {store.url}")
        return 0
    n = store.clear(runs=args.runs)
    print(f"removed {n} entries{' and all stored runs' if args.runs else ''} from {store.url}")
    return 0


def cmd_fetch(args: argparse.Namespace) -> int:
    store = _store(args)
    t0 = time.perf_counter()
    to = store.fetch_run(args.run_id, args.to if args.to else args.run_id)
    print(
        f"run {args.run_id}: fetched from {store.url} to {to}/ in {time.perf_counter() - t0:.1f} s"
    )
    return 0


def _add_store_option(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--cache",
        default=None,
        metavar="URL",
        help=f"store (directory, root:// or s3:// URL; default $AGC_CACHE_DIR or {default_url()})",
    )


def register(subparsers) -> None:
    """Add ``cache`` and ``fetch`` to the ``agc`` command's sub-parsers."""
    p = subparsers.add_parser("cache", help="inspect or clear the step-level result cache")
    sub = p.add_subparsers(dest="cache_command", metavar="ACTION", required=True)

    q = sub.add_parser("ls", help="list cached chunk results (newest use first) or stored runs")
    _add_store_option(q)
    q.add_argument("--runs", action="store_true", help="list the runs kept in the store")
    q.add_argument("--limit", type=int, default=50, help="at most this many rows (default 50)")
    q.set_defaults(func=cmd_ls)

    q = sub.add_parser("stats", help="size, entry count, limits of the store")
    _add_store_option(q)
    q.add_argument("--json", action="store_true", help="machine-readable output")
    q.set_defaults(func=cmd_stats)

    q = sub.add_parser("clear", help="remove cached chunk results (all, or by age/size)")
    _add_store_option(q)
    q.add_argument("--runs", action="store_true", help="also remove the stored runs")
    q.add_argument(
        "--older-than",
        default=None,
        metavar="AGE",
        help="only entries unused for AGE (e.g. 12h, 30d)",
    )
    q.add_argument(
        "--max-size",
        default=None,
        metavar="SIZE",
        help="remove least recently used entries until the store is under SIZE",
    )
    q.set_defaults(func=cmd_clear)

    p = subparsers.add_parser("fetch", help="copy a run's outputs from the store (data lake)")
    p.add_argument("run_id", metavar="RUN_ID", help="see 'agc cache ls --runs'")
    p.add_argument("--to", default=None, metavar="DIR", help="destination (default ./RUN_ID)")
    _add_store_option(p)
    p.set_defaults(func=cmd_fetch)
