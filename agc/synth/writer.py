"""Block generation and ROOT writing (uproot) for the synthetic NanoAOD files.

Each block of :data:`BLOCK_SIZE` events is generated from its own seeded RNG and written
as one basket per branch (one uproot ``extend``).

Two private methods of ``uproot.writing._cascadetree.Tree`` are wrapped while a tree is
declared (see :func:`_nanoaod_tree_declaration`); if a future uproot changes them the
wrappers are skipped:

* Unsigned counters: uproot (5.7) always writes the counter branch of a jagged array as a
  signed ``int32`` (``nJet/I``), while real NanoAOD counters are ``uint32`` (``nJet/i``);
  ``_branch_np`` is wrapped to declare them ``uint32`` (without it they fall back to
  ``int32``: values are identical, and readers such as coffea's NanoAODSchema accept both).
* Metadata reuse: ``_build_out`` serializes a tree's metadata in time quadratic in the
  number of branches (seconds for the 947 NanoAOD branches); the serialization of an
  empty tree is kept per process and reused by every later file of the same layout.

Compression ``ZLIB:1`` is encoded with ISA-L when the optional ``isal`` package is
installed (:class:`IsalZLIB`: same format, about five times faster), else with the
standard library's zlib.
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

from agc.errors import UserError

from . import physics, schema


class SynthError(UserError, ValueError):
    """A bad generator option (layout, compression, sample, counts)."""


BLOCK_SIZE = 10_000  # events per deterministic RNG block (part of the seeding contract) and basket


#: Random stream of a block for what only the ML step reads (see :func:`block_rng`).
AUX_STREAM = 1


def block_rng(
    seed: int, sample: str, file_index: int, block_index: int, stream: int = 0
) -> np.random.Generator:
    """The generator of one block; ``stream`` 0 is the main one, :data:`AUX_STREAM` the ML one.

    The streams are independent (different spawn keys), so what the auxiliary stream draws
    leaves every branch drawn from the main stream as it was.
    """
    key: tuple[int, ...] = (zlib.crc32(sample.encode()), int(file_index), int(block_index))
    if stream:
        key = (*key, int(stream))
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence(int(seed), spawn_key=key)))


class IsalZLIB(uproot.ZLIB):
    """ZLIB level 1 encoded with ISA-L (the optional ``isal`` package).

    The baskets are ordinary ROOT ``ZL`` blocks of zlib streams, read by any zlib decoder;
    ISA-L's level 1 is about five times faster than the standard library's zlib level 1
    and compresses NanoAOD baskets to within a few per cent of it (real baskets: equal).
    """

    def __init__(self):
        super().__init__(1)

    @property
    def code_pair(self):  # written to the file header as plain ZLIB level 1
        return uproot.ZLIB(self.level).code_pair

    def compress(self, data: bytes) -> bytes:
        from isal import isal_zlib

        return isal_zlib.compress(data, level=1)


def _isal_available() -> bool:
    try:
        import isal.isal_zlib  # noqa: F401
    except ImportError:
        return False
    return True


def parse_compression(compression: str | None):
    """``"ALGO:level"`` -> uproot compression; ZLIB:1 uses ISA-L when ``isal`` is installed."""
    if compression is None or str(compression).lower() in ("none", "0", ""):
        return None
    algo, _, level = str(compression).partition(":")
    algo = algo.upper()
    classes = {"ZLIB": uproot.ZLIB, "LZ4": uproot.LZ4, "ZSTD": uproot.ZSTD, "LZMA": uproot.LZMA}
    if algo not in classes or not (level or "1").isdigit():
        raise SynthError(
            f"--compression {compression!r}: use ZLIB:n, LZ4:n, ZSTD:n or LZMA:n (n a level "
            "such as 1) or none"
        )
    number = int(level) if level else 1
    if algo == "ZLIB" and number == 1 and _isal_available():
        return IsalZLIB()
    return classes[algo](number)


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
    aux_rng = block_rng(task.seed, task.sample, task.file_index, block_index, AUX_STREAM)
    process = task.sample.split("__")[0]
    phys = physics.simulate(rng, process, physics.TUNES[task.sample], n, aux_rng)
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
        if "Idx" in name and coll is not None:  # cross references: valid indices only
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
    found = (schema.collection_of(schema.BRANCHES[n]) for n in names)
    return frozenset(c for c in found if c is not None)


def _collections(names: list[str]) -> frozenset[str]:
    return _collections_cached(tuple(names))


def _freeze(value):
    """Hashable stand-in for a value of uproot's per-branch bookkeeping (for cache keys)."""
    if isinstance(value, dict):  # reference to the counter branch's bookkeeping
        return ("branch", value.get("fName"))
    if isinstance(value, np.ndarray):
        return (value.dtype.str, value.shape, value.tobytes())
    try:
        hash(value)
    except TypeError:
        return repr(value)
    return value


def _empty_tree_key(tree) -> tuple | None:
    """Everything the serialized metadata of an empty uproot tree depends on (None: not empty)."""
    if tree._num_entries or tree._num_baskets:
        return None
    return (
        tree._name, tree._title, tree._basket_capacity,
        tuple(sorted((k, _freeze(v)) for k, v in tree._metadata.items())),
        tuple(tuple(sorted((k, _freeze(v)) for k, v in d.items())) for d in tree._branch_data),
    )  # fmt: skip


#: serialized metadata of empty trees already declared by this process:
#: key -> (bytes, tree attributes set by the serialization, per-branch entries set by it)
_EMPTY_TREE_METADATA: dict[tuple, tuple[bytes, dict, list[dict]]] = {}


def _changes(before: dict, after: dict) -> dict:
    return {k: v for k, v in after.items() if k not in before or before[k] is not v}


def _fresh(value):
    """A cached value to hand to a new tree (arrays are copied: uproot updates them)."""
    return value.copy() if isinstance(value, np.ndarray) else value


def _memoized_build_out(original):
    """Wrap ``Tree._build_out`` to serialize each distinct empty tree only once per process.

    uproot serializes a tree's metadata in time quadratic in its number of branches (about
    3 s for the 947 NanoAOD branches), once per file; every file of a layout declares the
    same empty tree, so the bytes and the offsets the serialization records (where later
    ``extend`` calls patch the metadata) are reused.
    """

    @functools.wraps(original)
    def _build_out(self):
        try:
            key = _empty_tree_key(self)
        except (AttributeError, KeyError, TypeError):  # pragma: no cover - other uproot versions
            key = None
        if key is None:
            return original(self)
        hit = _EMPTY_TREE_METADATA.get(key)
        if hit is None:
            tree_before = dict(vars(self))
            branches_before = [dict(d) for d in self._branch_data]
            blob = b"".join(original(self))
            hit = (
                blob,
                _changes(tree_before, vars(self)),
                [_changes(b, d) for b, d in zip(branches_before, self._branch_data, strict=True)],
            )
            _EMPTY_TREE_METADATA[key] = hit
        blob, tree_changes, branch_changes = hit
        for k, v in tree_changes.items():
            setattr(self, k, _fresh(v))
        for datum, changes in zip(self._branch_data, branch_changes, strict=True):
            datum.update({k: _fresh(v) for k, v in changes.items()})
        return [blob]

    return _build_out


@contextlib.contextmanager
def _nanoaod_tree_declaration():
    """While declaring trees: counters as uint32 (``/i``) like NanoAOD, and metadata reuse.

    Both wrap private methods of ``uproot.writing._cascadetree.Tree``; if a future uproot
    changes them, the wrappers are skipped (counters then fall back to ``int32``).
    """
    try:
        from uproot.writing import _cascadetree

        tree_cls = _cascadetree.Tree
        branch_np, build_out = tree_cls._branch_np, tree_cls._build_out
    except (ImportError, AttributeError):  # pragma: no cover - other uproot versions
        yield
        return

    def _branch_np(self, branch_name, branch_type, branch_dtype, counter=None, kind="normal"):
        if kind == "counter":
            branch_type = branch_dtype = np.dtype(np.uint32)
        return branch_np(self, branch_name, branch_type, branch_dtype, counter=counter, kind=kind)

    tree_cls._branch_np = _branch_np
    tree_cls._build_out = _memoized_build_out(build_out)
    try:
        yield
    finally:
        tree_cls._branch_np, tree_cls._build_out = branch_np, build_out


def _branch_types(chunk: dict) -> dict:
    return {
        k: (v.layout.form.type if isinstance(v, ak.Array) else v.dtype) for k, v in chunk.items()
    }


def _basket_capacity(nbaskets: int) -> int:
    """Basket slots to reserve: room for the whole file (uproot re-serializes the tree when
    they run out), rounded up to a power of two so that files of similar size share one
    empty-tree layout (see :func:`_memoized_build_out`)."""
    return max(16, 1 << (nbaskets + 1).bit_length())


def write_file(task: FileTask) -> tuple[str, int]:
    """Generate and write one file atomically (temporary name, then rename).

    Each block of events becomes one basket per branch (one uproot ``extend``), so a
    worker holds only one block in memory.
    """
    names = schema.branch_names(task.layout)
    tmp = f"{task.path}.tmp-{os.getpid()}"
    nblocks = max(1, -(-task.nevents // BLOCK_SIZE))  # an empty file still declares the tree
    try:
        with uproot.recreate(tmp, compression=parse_compression(task.compression)) as f:
            tree = None
            for b in range(nblocks):
                n = min(BLOCK_SIZE, task.nevents - b * BLOCK_SIZE)
                chunk = _to_uproot(generate_block(task, b, n), names)
                if tree is None:
                    with _nanoaod_tree_declaration():
                        tree = f.mktree(
                            "Events", _branch_types(chunk), title="Events",
                            initial_basket_capacity=_basket_capacity(nblocks),
                        )  # fmt: skip
                tree.extend(chunk)
        os.replace(tmp, task.path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        raise
    return task.path, task.nevents
