"""Throughput of the synthetic NanoAOD generator, per core (single process).

Plain script (``python benchmarks/bench_synth.py [--events N] [--layout L] ...``; pin it to
one core with ``taskset -c 0`` on a busy machine) and an asv-style class
(``SynthSuite.time_generate``).  For each layout it reports, in events/s on one core:

* the physics model alone, and physics plus building all branches (filler included);
* the full write of one file (generation, uproot serialization, compression, disk), in
  the steady state of a worker process, best of ``--repeat`` runs;
* the one-off cost of the first file of a process (uproot serializes the empty tree's
  metadata, quadratic in the number of branches; later files of the layout reuse it);
* the compression ceiling: the rate at which the compressor alone gets through the
  block's uncompressed basket payloads (standard-library zlib and the one used).
"""

from __future__ import annotations

import argparse
import tempfile
import time
import zlib
from pathlib import Path

import numpy as np

from agc import synth
from agc.synth import physics, schema, writer


def _rate(n, dt):
    return n / dt if dt > 0 else float("inf")


def _payloads(block: dict[str, np.ndarray], names: list[str]) -> list[bytes]:
    """Uncompressed basket payloads of a block like uproot builds them (big-endian data,
    then the entry offsets of jagged branches)."""
    out = []
    for name in names:
        spec = schema.BRANCHES[name]
        data = np.asarray(block[name]).astype(schema.numpy_dtype(spec).newbyteorder(">"))
        coll = schema.collection_of(spec)
        if coll is not None:
            counts = np.asarray(block["n" + coll], dtype=np.int64)
            offsets = np.zeros(len(counts) + 1, dtype=">i4")
            np.cumsum(counts * data.itemsize, out=offsets[1:])
            out.append(data.tobytes() + offsets.tobytes())
        else:
            out.append(data.tobytes())
    return out


def _compress_time(payloads: list[bytes], compress) -> float:
    t0 = time.perf_counter()
    for p in payloads:
        compress(p)
    return time.perf_counter() - t0


def bench(events: int = 100_000, sample: str = "ttbar__nominal", layout: str = "realistic",
          compression: str = "ZLIB:1", repeat: int = 2) -> dict[str, float | str]:  # fmt: skip
    process = sample.split("__")[0]
    tune = physics.TUNES[sample]
    nblocks = -(-events // writer.BLOCK_SIZE)
    events = nblocks * writer.BLOCK_SIZE
    physics.simulate(writer.block_rng(1, sample, 0, 0), process, tune, 100)  # warm-up
    t0 = time.perf_counter()
    for b in range(nblocks):
        physics.simulate(writer.block_rng(0, sample, 0, b), process, tune, writer.BLOCK_SIZE)
    t_phys = time.perf_counter() - t0

    with tempfile.TemporaryDirectory() as tmp:
        opts = {"layout": layout, "compression": compression}
        task = synth.file_tasks(tmp, {sample: (1, events)}, **opts)[0]
        tiny = synth.file_tasks(tmp, {sample: (1, 10)}, **opts)[0]
        Path(task.path).parent.mkdir(parents=True, exist_ok=True)
        t0 = time.perf_counter()
        for b in range(nblocks):
            block = writer.generate_block(task, b, writer.BLOCK_SIZE)
        t_branches = time.perf_counter() - t0

        first = []
        for _ in range(2):  # first file of the process, then the same file again
            t0 = time.perf_counter()
            writer.write_file(tiny)
            first.append(time.perf_counter() - t0)
        t_write = float("inf")
        for _ in range(max(1, repeat)):
            t0 = time.perf_counter()
            writer.write_file(task)
            t_write = min(t_write, time.perf_counter() - t0)
        size = Path(task.path).stat().st_size

    payloads = _payloads(block, schema.branch_names(layout))
    raw = sum(len(p) for p in payloads)
    used = writer.parse_compression(compression)
    t_zlib = _compress_time(payloads, lambda p: zlib.compress(p, 1))
    t_used = _compress_time(payloads, used.compress) if used is not None else 0.0
    return {
        "physics_ev_per_s": _rate(events, t_phys),
        "branches_ev_per_s": _rate(events, t_branches),
        "write_ev_per_s": _rate(events, t_write),
        "first_file_extra_s": first[0] - first[1],
        "bytes_per_event": size / events,
        "raw_bytes_per_event": raw / writer.BLOCK_SIZE,
        "zlib1_mb_per_s": raw / t_zlib / 1e6,
        "zlib1_ceiling_ev_per_s": _rate(writer.BLOCK_SIZE, t_zlib),
        "compressor": type(used).__name__ if used is not None else "none",
        "compressor_mb_per_s": raw / t_used / 1e6 if t_used > 0 else float("inf"),
        "compressor_ceiling_ev_per_s": _rate(writer.BLOCK_SIZE, t_used),
    }


class SynthSuite:
    """asv-style benchmark."""

    params = (["realistic", "minimal"],)
    param_names = ["layout"]
    timeout = 600

    def setup(self, layout):
        self.tmp = tempfile.TemporaryDirectory()

    def teardown(self, layout):
        self.tmp.cleanup()

    def time_generate(self, layout):
        events = {"ttbar__nominal": (1, 50_000)}
        synth.generate(self.tmp.name, events=events, layout=layout, workers=1)


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--events", type=int, default=100_000)
    ap.add_argument("--sample", default="ttbar__nominal", choices=synth.SAMPLES)
    ap.add_argument("--layout", default=None, choices=synth.LAYOUTS)
    ap.add_argument("--compression", default="ZLIB:1")
    ap.add_argument("--repeat", type=int, default=2, help="full writes to time (best is reported)")
    args = ap.parse_args()
    for layout in [args.layout] if args.layout else list(synth.LAYOUTS):
        r = bench(args.events, args.sample, layout, args.compression, args.repeat)
        rate = "{:>10,.0f} ev/s".format
        print(
            f"{args.sample} layout={layout} compression={args.compression} ({r['compressor']}), "
            "single process (per core):\n"
            f"  physics                {rate(r['physics_ev_per_s'])}\n"
            f"  physics + branches     {rate(r['branches_ev_per_s'])}\n"
            f"  full write             {rate(r['write_ev_per_s'])}   "
            f"({r['bytes_per_event']:,.0f} B/event on disk, "
            f"{r['raw_bytes_per_event']:,.0f} B/event raw)\n"
            f"  first file of a process  +{r['first_file_extra_s']:.2f} s "
            "(tree declaration, once per process)\n"
            f"  compression ceiling    {rate(r['zlib1_ceiling_ev_per_s'])}   "
            f"(standard zlib level 1: {r['zlib1_mb_per_s']:,.0f} MB/s)\n"
            f"                         {rate(r['compressor_ceiling_ev_per_s'])}   "
            f"({r['compressor']}: {r['compressor_mb_per_s']:,.0f} MB/s)"
        )


if __name__ == "__main__":
    main()
