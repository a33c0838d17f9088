"""Synthetic CMS NanoAOD generator for the AGC ttbar analysis.

``generate(output_dir, ...)`` writes ROOT files (tree ``Events``) whose branch names, dtypes
and jagged layout follow the real AGC NanoAOD files, filled with a vectorised toy physics
model (ttbar, single top s/t/tW, W+jets; see :mod:`agc.synth.physics`), and a catalog JSON
with the structure of the real AGC catalog (``agc/data/nanoaod_inputs.json``), paths
relative to the catalog's directory.

Generation is deterministic for a given ``seed`` and independent of ``workers``: events
are generated in fixed blocks of :data:`agc.synth.writer.BLOCK_SIZE` events, each seeded
from ``numpy.random.SeedSequence(seed, spawn_key=(crc32(sample), file, block))``.

This package never imports the analysis code (``agc.analysis``).
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing as mp
import os
import threading
from collections.abc import Mapping
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path
from typing import Any

from agc.vocabulary import SAMPLES, split_sample_key

from .schema import MINIMAL_BRANCHES
from .writer import BLOCK_SIZE, FileTask, SynthError, write_file

__all__ = [
    "SAMPLES", "DEFAULT_DATASET", "LAYOUTS", "COMPRESSIONS", "CATALOG_NAME", "generate",
    "file_tasks", "MINIMAL_BRANCHES", "BLOCK_SIZE", "default_dataset_dir",
    "ensure_default_dataset", "SynthError",
]  # fmt: skip
LAYOUTS = ("realistic", "minimal")
COMPRESSIONS = ("ZLIB:1", "LZ4:4", "ZSTD:5", "LZMA:1", "none")
CATALOG_NAME = "catalog.json"

#: Default dataset of ``agc run``: sample -> (n_files, events_per_file).  ~390k events;
#: every sample populates both 4j1b and 4j2b (W+jets passes ~1e-4 / event, s-channel ~1e-3).
DEFAULT_DATASET: dict[str, tuple[int, int]] = {
    "ttbar__nominal": (2, 25_000),
    "ttbar__scaledown": (1, 20_000),
    "ttbar__scaleup": (1, 20_000),
    "ttbar__ME_var": (1, 20_000),
    "ttbar__PS_var": (1, 20_000),
    "single_top_s_chan__nominal": (1, 20_000),
    "single_top_t_chan__nominal": (1, 20_000),
    "single_top_tW__nominal": (1, 20_000),
    "wjets__nominal": (2, 100_000),
}


def _file_name(sample: str, index: int) -> str:
    return f"{sample}/synth_{sample}_{index:04d}.root"


def file_tasks(output_dir, events: Mapping[str, tuple[int, int]], *, layout: str = "realistic",
               compression: str = "ZLIB:1", seed: int = 42) -> list[FileTask]:  # fmt: skip
    """The per-file work items of a generation (exposed for benchmarks and tests)."""
    out = Path(output_dir)
    tasks = []
    for sample, (n_files, per_file) in events.items():
        for i in range(int(n_files)):
            tasks.append(
                FileTask(
                    sample=sample,
                    file_index=i,
                    nevents=int(per_file),
                    first_event=i * int(per_file),
                    path=str(out / _file_name(sample, i)),
                    layout=layout,
                    compression=compression,
                    seed=int(seed),
                )  # fmt: skip
            )
    return tasks


def _validate(events: Mapping[str, tuple[int, int]], layout: str, compression: str) -> None:
    from .writer import parse_compression

    if layout not in LAYOUTS:
        raise SynthError(f"--layout {layout!r}: choose one of {', '.join(LAYOUTS)}")
    parse_compression(compression)
    for sample, spec in events.items():
        if sample not in SAMPLES:
            raise SynthError(f"sample {sample!r}: choose from {', '.join(SAMPLES)}")
        n_files, per_file = spec
        if int(n_files) < 0 or int(per_file) < 0:
            raise SynthError(f"negative file or event count for {sample!r}: {spec!r}")


def _pool_context():
    # fork is fastest; fall back to spawn if the caller runs threads (fork is unsafe then)
    if "fork" in mp.get_all_start_methods() and threading.active_count() == 1:
        return mp.get_context("fork")
    return mp.get_context("spawn")


def generate(
    output_dir,
    *,
    events: dict[str, tuple[int, int]] | None = None,
    layout: str = "realistic",
    compression: str = "ZLIB:1",
    seed: int = 42,
    workers: int | None = None,
    progress: bool = False,
) -> Path:
    """Generate synthetic NanoAOD files plus ``catalog.json``; return the catalog path.

    ``events`` maps sample keys (see :data:`SAMPLES`) to ``(n_files, events_per_file)``;
    ``None`` means :data:`DEFAULT_DATASET`.  Files are written atomically and the catalog
    last, so an interrupted generation never leaves a catalog behind.  ``"ZLIB:1"`` (the
    real files' setting) is encoded with ISA-L when the optional ``isal`` package is
    installed, about five times faster than the standard library's zlib (see
    :class:`agc.synth.writer.IsalZLIB`).
    """
    events = dict(DEFAULT_DATASET if events is None else events)
    _validate(events, layout, compression)
    out = Path(output_dir)
    catalog_path = out / CATALOG_NAME
    if catalog_path.exists():
        catalog_path.unlink()  # a stale catalog must not describe a half-rewritten dataset
    tasks = file_tasks(out, events, layout=layout, compression=compression, seed=seed)
    for sample in events:
        (out / sample).mkdir(parents=True, exist_ok=True)
    workers = os.cpu_count() or 1 if workers is None else max(1, int(workers))
    workers = min(workers, max(1, len(tasks)))
    bar = None
    if progress:
        try:
            from tqdm import tqdm

            bar = tqdm(total=sum(t.nevents for t in tasks), unit="ev", desc="synth")
        except ImportError:  # pragma: no cover
            bar = None
    # largest files first for better load balance
    order = sorted(tasks, key=lambda t: -t.nevents)
    if workers == 1:
        for t in order:
            write_file(t)
            if bar is not None:
                bar.update(t.nevents)
    else:
        with ProcessPoolExecutor(max_workers=workers, mp_context=_pool_context()) as ex:
            futures = {ex.submit(write_file, t): t for t in order}
            for fut in as_completed(futures):
                fut.result()
                if bar is not None:
                    bar.update(futures[fut].nevents)
    if bar is not None:
        bar.close()

    catalog: dict = {}
    for sample in events:
        process, variation = split_sample_key(sample)
        files: list[dict[str, Any]] = [
            {"path": Path(t.path).relative_to(out).as_posix(), "nevts": t.nevents}
            for t in tasks
            if t.sample == sample
        ]
        catalog.setdefault(process, {})[variation] = {
            "nevts_total": sum(f["nevts"] for f in files),
            "files": files,
        }
    tmp = catalog_path.with_name(f".{CATALOG_NAME}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(catalog, indent=4) + "\n")
    os.replace(tmp, catalog_path)
    return catalog_path


def default_dataset_dir() -> Path:
    """Where the default dataset of ``agc run`` lives, by content key.

    ``$AGC_DATA_DIR`` (default ``~/.cache/agc-harness``, honouring ``$XDG_CACHE_HOME``), then
    ``synthetic-default-<key>``: the key hashes :data:`DEFAULT_DATASET` and the generator's
    source, so a changed generator gets a new directory instead of silently reusing stale files.
    """
    if os.environ.get("AGC_DATA_DIR"):
        root = Path(os.environ["AGC_DATA_DIR"])
    else:
        root = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "agc-harness"
    digest = hashlib.sha256(json.dumps(DEFAULT_DATASET, sort_keys=True).encode())
    for source in sorted(Path(__file__).parent.glob("*.py")):
        digest.update(source.name.encode() + source.read_bytes())
    return root / f"synthetic-default-{digest.hexdigest()[:12]}"


def ensure_default_dataset(progress: bool = False) -> Path:
    """The catalog of the default dataset, generated the first time (about half a minute)."""
    catalog = default_dataset_dir() / CATALOG_NAME
    if catalog.exists():
        return catalog
    return generate(catalog.parent, progress=progress)
