"""Block generation and ROOT writing (uproot) for the synthetic NanoAOD files.

Unsigned counters: uproot (5.7) always writes the counter branch of a jagged array as a
signed ``int32`` (``nJet/I``), while real NanoAOD counters are ``uint32`` (``nJet/i``).
We get real ``uint32`` counters by temporarily wrapping uproot's private
``uproot.writing._cascadetree.Tree._branch_np`` while the tree is declared (see
:func:`_unsigned_counters`).  If a future uproot changes that private API the wrapper
becomes a no-op and counters fall back to ``int32`` (values are identical; readers such as
coffea's NanoAODSchema accept both).
"""

from __future__ import annotations

import contextlib
import functools
import os
import zlib
from dataclasses import dataclass

import awkward as ak
import numpy as np
import uproot

from . import physics, schema

BLOCK_SIZE = 10_000  # events per deterministic RNG block (part of the seeding contract)
EXTEND_EVENTS = 100_000  # events per uproot ``extend`` call (one basket per branch)


def block_rng(seed: int, sample: str, file_index: int, block_index: int) -> np.random.Generator:
    key = (zlib.crc32(sample.encode()), int(file_index), int(block_index))
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence(int(seed), spawn_key=key)))


def parse_compression(compression: str | None):
    if compression is None or str(compression).lower() in ("none", "0", ""):
        return None
    algo, _, level = str(compression).partition(":")
    algo = algo.upper()
    classes = {"ZLIB": uproot.ZLIB, "LZ4": uproot.LZ4, "ZSTD": uproot.ZSTD, "LZMA": uproot.LZMA}
    if algo not in classes:
        raise ValueError(f"unknown compression {compression!r}; use ZLIB:n, LZ4:n, ZSTD:n, LZMA:n or none")
    return classes[algo](int(level) if level else 1)


@dataclass(frozen=True)
class FileTask:
    sample: str
    file_index: int
    nevents: int
    first_event: int  # 0-based index of the file's first event within the sample
    path: str
    layout: str
    compression: str
    seed: int


def generate_block(task: FileTask, block_index: int, n: int) -> dict[str, np.ndarray]:
    """All branches (flat contents; counters as per-event counts) of one block of events."""
    rng = block_rng(task.seed, task.sample, task.file_index, block_index)
    process = task.sample.split("__")[0]
    phys = physics.simulate(rng, process, physics.TUNES[task.sample], n)
    br = schema.physics_branches(phys, n)
    tune = physics.TUNES[task.sample]
    first = task.first_event + block_index * BLOCK_SIZE
    event = np.arange(first + 1, first + n + 1, dtype=np.uint64)
    br["event"] = event
    br["run"] = np.ones(n, dtype=np.uint32)
    br["luminosityBlock"] = (1 + event // 800).astype(np.uint32)
    sign = np.where(rng.uniform(0, 1, n) < tune.neg_weight_frac, -1.0, 1.0)
    br["genWeight"] = sign * tune.gen_weight
    names = schema.branch_names(task.layout)
    counts = {"Jet": br["nJet"], "Electron": br["nElectron"], "Muon": br["nMuon"]}
    out: dict[str, np.ndarray] = {}
    for name in names:
        spec = schema.BRANCHES[name]
        coll = schema.collection_of(spec)
        if name in br:
            out[name] = schema.to_branch_dtype(name, br[name])
            continue
        if name.startswith("n") and name in schema.COUNTER_PMF:
            c = name[1:]
            if c not in counts:
                counts[c] = schema.filler_counts(name, n, rng)
            out[name] = counts[c]
            continue
        if coll is not None and coll not in counts:
            counts[coll] = schema.filler_counts(spec["counter"], n, rng)
        size = n if coll is None else int(counts[coll].sum())
        if "Idx" in name:  # cross references: valid indices only (coffea follows them)
            out[name] = schema.to_branch_dtype(name, _index_filler(name, counts[coll], rng))
            continue
        out[name] = schema.filler_values(name, size, rng)
    return out


def _index_filler(name: str, counts: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """-1 (no match), except GenPart mothers: an acyclic tree (mother index < own index)."""
    size = int(counts.sum())
    if name != "GenPart_genPartIdxMother":
        return np.full(size, -1, dtype=np.int32)
    starts = np.repeat(np.cumsum(counts) - counts, counts)
    local = np.arange(size) - starts
    mother = np.floor(rng.uniform(0, 1, size) * local).astype(np.int32)
    return np.where(local < 2, -1, mother)


def _concat(blocks: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    if len(blocks) == 1:
        return blocks[0]
    return {k: np.concatenate([b[k] for b in blocks]) for k in blocks[0]}


def _to_uproot(data: dict[str, np.ndarray], names: list[str]) -> dict:
    """Group flat branches into per-collection jagged records (uproot makes the counters)."""
    out: dict = {}
    fields: dict[str, list[str]] = {}
    for name in names:
        spec = schema.BRANCHES[name]
        coll = schema.collection_of(spec)
        if name.startswith("n") and name[1:] in _collections(names):
            fields.setdefault(name[1:], [])
            out.setdefault(name[1:], None)
            continue
        if coll is None:
            out[name] = data[name]
        else:
            fields.setdefault(coll, []).append(name)
            out.setdefault(coll, None)
    for coll, fnames in fields.items():
        counts = np.asarray(data["n" + coll], dtype=np.int64)
        offsets = np.zeros(len(counts) + 1, dtype=np.int64)
        np.cumsum(counts, out=offsets[1:])
        if len(fnames) == 1 and fnames[0] == coll:  # e.g. LHEPdfWeight[nLHEPdfWeight]
            content = ak.contents.NumpyArray(data[coll])
            out[coll] = ak.Array(ak.contents.ListOffsetArray(ak.index.Index64(offsets), content))
            continue
        sub = [f[len(coll) + 1 :] for f in fnames]
        rec = ak.contents.RecordArray(
            [ak.contents.NumpyArray(data[f]) for f in fnames], sub, length=int(offsets[-1])
        )
        out[coll] = ak.Array(ak.contents.ListOffsetArray(ak.index.Index64(offsets), rec))
    return out


@functools.lru_cache(maxsize=4)
def _collections_cached(names: tuple[str, ...]) -> frozenset[str]:
    return frozenset(
        schema.collection_of(schema.BRANCHES[n]) for n in names if schema.BRANCHES[n]["counter"]
    )


def _collections(names: list[str]) -> frozenset[str]:
    return _collections_cached(tuple(names))


@contextlib.contextmanager
def _unsigned_counters():
    """Make uproot declare generated counter branches as uint32 (``/i``) like NanoAOD."""
    try:
        from uproot.writing import _cascadetree

        tree_cls = _cascadetree.Tree
        original = tree_cls._branch_np
    except (ImportError, AttributeError):  # pragma: no cover - other uproot versions
        yield False
        return

    def _branch_np(self, branch_name, branch_type, branch_dtype, counter=None, kind="normal"):
        if kind == "counter":
            branch_type = branch_dtype = np.dtype(np.uint32)
        return original(self, branch_name, branch_type, branch_dtype, counter=counter, kind=kind)

    tree_cls._branch_np = _branch_np
    try:
        yield True
    finally:
        tree_cls._branch_np = original


def _branch_types(chunk: dict) -> dict:
    return {k: (v.layout.form.type if isinstance(v, ak.Array) else v.dtype) for k, v in chunk.items()}


def write_file(task: FileTask) -> tuple[str, int]:
    """Generate and write one file atomically (temporary name, then rename)."""
    names = schema.branch_names(task.layout)
    tmp = f"{task.path}.tmp-{os.getpid()}"
    nblocks = -(-task.nevents // BLOCK_SIZE)
    per_extend = max(1, EXTEND_EVENTS // BLOCK_SIZE)
    try:
        with uproot.recreate(tmp, compression=parse_compression(task.compression)) as f:
            tree = None
            for start in range(0, max(nblocks, 1), per_extend):
                blocks = []
                for b in range(start, min(start + per_extend, nblocks)):
                    n = min(BLOCK_SIZE, task.nevents - b * BLOCK_SIZE)
                    blocks.append(generate_block(task, b, n))
                if not blocks:  # empty file: still declare the tree
                    blocks.append(generate_block(task, 0, 0))
                chunk = _to_uproot(_concat(blocks), names)
                if tree is None:
                    with _unsigned_counters():
                        tree = f.mktree("Events", _branch_types(chunk), title="Events")
                if len(next(iter(chunk.values()))) or task.nevents == 0:
                    tree.extend(chunk)
        os.replace(tmp, task.path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        raise
    return task.path, task.nevents
