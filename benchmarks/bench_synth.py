"""Throughput of the synthetic NanoAOD generator (events/s per core).

Plain script (``python benchmarks/bench_synth.py [--events N] [--layout L] ...``) and an
asv-style class (``SynthSuite.time_generate``).  It separates the physics model, the
branch building (filler) and the full write (compression + uproot), single process, so
the numbers are per core.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

from agc import synth
from agc.synth import physics, writer


def _rate(n, dt):
    return n / dt if dt > 0 else float("inf")


def bench(events: int = 100_000, sample: str = "ttbar__nominal", layout: str = "realistic",
          compression: str = "ZLIB:1") -> dict[str, float]:  # fmt: skip
    process = sample.split("__")[0]
    rng = np.random.default_rng(0)
    t0 = time.perf_counter()
    n_done = 0
    while n_done < events:
        physics.simulate(rng, process, physics.TUNES[sample], writer.BLOCK_SIZE)
        n_done += writer.BLOCK_SIZE
    t_phys = time.perf_counter() - t0

    with tempfile.TemporaryDirectory() as tmp:
        task = synth.file_tasks(tmp, {sample: (1, events)}, layout=layout, compression=compression)[0]
        Path(task.path).parent.mkdir(parents=True, exist_ok=True)
        t0 = time.perf_counter()
        for b in range(-(-events // writer.BLOCK_SIZE)):
            writer.generate_block(task, b, writer.BLOCK_SIZE)
        t_branches = time.perf_counter() - t0
        t0 = time.perf_counter()
        writer.write_file(task)
        t_write = time.perf_counter() - t0
        size = Path(task.path).stat().st_size
    return {
        "physics_ev_per_s": _rate(n_done, t_phys),
        "branches_ev_per_s": _rate(events, t_branches),
        "write_ev_per_s": _rate(events, t_write),
        "bytes_per_event": size / events,
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
        synth.generate(self.tmp.name, events={"ttbar__nominal": (1, 50_000)}, layout=layout, workers=1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--events", type=int, default=100_000)
    ap.add_argument("--sample", default="ttbar__nominal", choices=synth.SAMPLES)
    ap.add_argument("--layout", default=None, choices=synth.LAYOUTS)
    ap.add_argument("--compression", default="ZLIB:1")
    args = ap.parse_args()
    for layout in [args.layout] if args.layout else list(synth.LAYOUTS):
        r = bench(args.events, args.sample, layout, args.compression)
        print(f"{args.sample} layout={layout} compression={args.compression} events={args.events}: "
              f"physics {r['physics_ev_per_s']:,.0f} ev/s | physics+branches "
              f"{r['branches_ev_per_s']:,.0f} ev/s | full write {r['write_ev_per_s']:,.0f} ev/s per core | "
              f"{r['bytes_per_event']:,.0f} B/event")


if __name__ == "__main__":
    main()
