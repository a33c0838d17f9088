"""Input catalogs, filesets, URL rewriting and chunking (spec §1, §9).

A catalog is the AGC's ``nanoaod_inputs.json`` structure,
``{process: {variation: {"nevts_total": int, "files": [{"path": str, "nevts": int}]}}}``, either the
real AGC catalog shipped with the package (``"agc"``) or a synthetic one written by
``agc generate``. Both take exactly the same path from here on.

A file entry's ``nevts`` must equal the file's entries (checked when it is read); an entry
with ``"partial": true`` deliberately covers only the file's first ``nevts`` events (a file
longer than that is then fine, a shorter one is still an error).

A file entry may say where the file has replicas: ``"sites": ["LCG.RAL-LCG2.uk", ...]`` (grid
site names, as DIRAC spells them). The sites reach each chunk of the file
(:attr:`Chunk.sites`), and the chunked engine on a Dask executor runs the chunk on a worker of
one of those sites when it can (data locality, ``dirac.locality_wait``). Where a chunk runs
does not change what it gives: the sites are not part of a chunk's cache key.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from agc.config import REAL_CATALOG
from agc.constants import CROSS_SECTIONS_PB, sample_weight
from agc.errors import UserError
from agc.vocabulary import sample_key

TREE_NAME = "Events"

log = logging.getLogger(__name__)

#: Prefix of the canonical AGC URLs and its known mirrors (spec §1.5).
CANONICAL_PREFIX = "https://xrootd-local.unl.edu:1094//store/user/AGC/nanoAOD"
EOS_PREFIX = "root://eospublic.cern.ch//eos/opendata/cms/upload/agc/1.0.0/"


class CatalogError(UserError, ValueError):
    """A catalog file or option is not usable; the message says which and what to do."""


@dataclass(frozen=True)
class InputFile:
    path: str
    nevts: int
    #: ``nevts`` deliberately covers only the first events of the file (catalog ``partial``)
    partial: bool = False
    #: the sites holding a replica of the file (catalog ``sites``), in the catalog's order
    sites: tuple[str, ...] = ()


@dataclass(frozen=True)
class Sample:
    """One fileset entry ``{process}__{variation}`` with the files chosen for this run."""

    process: str
    variation: str
    files: tuple[InputFile, ...]
    xsec: float

    @property
    def name(self) -> str:
        return sample_key(self.process, self.variation)

    @property
    def nevts(self) -> int:
        """Events in the files processed: the N of the normalisation w = sigma L / N."""
        return sum(f.nevts for f in self.files)

    @property
    def weight(self) -> float:
        return sample_weight(self.process, self.nevts)


@dataclass(frozen=True)
class Chunk:
    """One task: an entry range of one file of one sample."""

    sample: str
    process: str
    variation: str
    path: str
    entry_start: int
    entry_stop: int
    weight: float
    tree: str = TREE_NAME
    #: The file's events as the catalog gives them (its ``nevts``), checked when it is read.
    file_entries: int | None = None
    #: The sites holding a replica of the file (catalog ``sites``): where the chunk is best
    #: run. Placement only: it is not part of the chunk's cache key.
    sites: tuple[str, ...] = ()

    @property
    def nevents(self) -> int:
        return self.entry_stop - self.entry_start


def load_catalog(source: str | os.PathLike = REAL_CATALOG) -> tuple[dict, Path | None]:
    """Load a catalog: ``"agc"`` for the real AGC inputs, or the path of a catalog JSON.

    Returns the catalog and the directory relative paths in it are resolved against
    (``None`` for the real catalog, whose paths are URLs).
    """
    if str(source) == REAL_CATALOG:
        text = resources.files("agc").joinpath("data/nanoaod_inputs.json").read_text()
        return json.loads(text), None
    path = Path(source)
    if path.is_dir():
        path = path / "catalog.json"
    if not path.exists():
        raise CatalogError(
            f"catalog {path}: no such file. Give 'agc' for the real AGC inputs or "
            "the catalog.json written by 'agc generate'."
        )
    try:
        catalog = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise CatalogError(f"catalog {path}: not valid JSON ({err})") from err
    _check_structure(catalog, path)
    return catalog, path.parent.resolve()


def _check_structure(catalog: object, where: Path) -> None:
    if not isinstance(catalog, dict) or not catalog:
        raise CatalogError(f"catalog {where}: expected {{process: {{variation: {{...}}}}}}")
    for process, variations in catalog.items():
        if not isinstance(variations, dict):
            raise CatalogError(f"catalog {where}: entry {process!r} is not a mapping of variations")
        for variation, entry in variations.items():
            files = entry.get("files") if isinstance(entry, dict) else None
            if not isinstance(files, list) or not all(
                isinstance(f, dict) and "path" in f and "nevts" in f for f in files
            ):
                raise CatalogError(
                    f"catalog {where}: {process}/{variation} needs "
                    "'files': [{'path': ..., 'nevts': ...}]"
                )


def rewrite_url(
    path: str,
    *,
    base_dir: Path | None = None,
    eos: bool = False,
    xcache: str | None = None,
    mirror: str | os.PathLike | None = None,
) -> str:
    """Where to read one catalog path from.

    Args:
        base_dir: directory that relative paths (synthetic catalogs) are resolved against.
        eos: read the real inputs from the CERN EOS public mirror (coffea ``INPUT_FROM_EOS``).
        xcache: prefix prepended to every remote URL, e.g. ``root://xcache.example:1094//``;
            local paths become ``<xcache>/<absolute path>`` so that an XCache in front of an
            origin exporting ``/`` serves them.
        mirror: local directory holding a copy of the inputs under their ``/store/...`` path
            (the reference's ``local_data_cache``).
    """
    url = path
    if base_dir is not None and "://" not in url and not os.path.isabs(url):
        url = str((base_dir / url).resolve())
    if eos and url.startswith(CANONICAL_PREFIX):
        url = EOS_PREFIX + url[len(CANONICAL_PREFIX) :].lstrip("/")
    if mirror is not None and "/store/" in url:
        url = str(Path(mirror) / url[url.index("/store/") + 1 :])
    if xcache:
        if "://" in url:
            # keep the host-less path: root://cache//store/... or root://cache//eos/...
            rest = url.split("://", 1)[1]
            rest = rest.split("/", 1)[1] if "/" in rest else rest
            url = xcache.rstrip("/") + "//" + rest.lstrip("/")
        else:
            url = xcache.rstrip("/") + "//" + url.lstrip("/")
    return url


def build_fileset(
    catalog: Mapping,
    base_dir: Path | None = None,
    *,
    n_files: int = -1,
    samples: tuple[str, ...] | None = None,
    eos: bool = False,
    xcache: str | None = None,
    mirror: str | None = None,
) -> dict[str, Sample]:
    """The fileset of a run: the first ``n_files`` files (listing order; -1 = all) per entry.

    ``data`` entries are skipped, as in the reference. ``samples`` restricts the entries by
    fileset key (``ttbar__nominal``...).
    """
    if n_files == 0 or n_files < -1:
        raise CatalogError(
            f"--n-files {n_files}: give a positive number of files per sample, or -1 for all"
        )
    fileset: dict[str, Sample] = {}
    listed: list[str] = []  # every fileset key of the catalog, selected or not
    for process, variations in catalog.items():
        if process == "data":
            continue
        if process not in CROSS_SECTIONS_PB:
            raise CatalogError(
                f"catalog process {process!r} has no cross section; known: "
                f"{', '.join(CROSS_SECTIONS_PB)}"
            )
        for variation, entry in variations.items():
            key = sample_key(process, variation)
            listed.append(key)
            if samples is not None and key not in samples:
                continue
            chosen = entry["files"] if n_files == -1 else entry["files"][:n_files]
            files = tuple(
                InputFile(
                    rewrite_url(
                        _path(f, key), base_dir=base_dir, eos=eos, xcache=xcache, mirror=mirror
                    ),
                    _nevts(f, key),
                    _partial(f, key),
                    _sites(f, key),
                )
                for f in chosen
            )
            if files:
                fileset[key] = Sample(process, variation, files, CROSS_SECTIONS_PB[process])
    if samples is not None:
        unknown = sorted(set(samples) - set(fileset))
        if unknown:
            raise CatalogError(
                f"--samples: {', '.join(unknown)} not in the catalog; known: "
                f"{', '.join(sorted(listed))}"
            )
    if not fileset:
        raise CatalogError("the catalog selects no input files")
    _check_shared_files(fileset)
    return fileset


def _path(entry: Mapping, sample: str) -> str:
    path = entry.get("path")
    if not isinstance(path, str) or not path:
        raise CatalogError(f"catalog {sample}: a file has path {path!r}; give the file's path")
    return path


def _partial(entry: Mapping, sample: str) -> bool:
    partial = entry.get("partial", False)
    if not isinstance(partial, bool):
        raise CatalogError(
            f"catalog {sample}: {entry.get('path')}: partial {partial!r} must be true or false"
        )
    return partial


def _sites(entry: Mapping, sample: str) -> tuple[str, ...]:
    """A file's replica sites: a list of site names (``[]`` or absent: none known)."""
    sites = entry.get("sites", [])
    if not isinstance(sites, list) or not all(isinstance(s, str) and s.strip() for s in sites):
        raise CatalogError(
            f"catalog {sample}: {entry.get('path')}: sites {sites!r} must be a list of site "
            'names such as ["LCG.RAL-LCG2.uk"] (the sites holding a replica of the file)'
        )
    return tuple(dict.fromkeys(s.strip() for s in sites))


def _nevts(entry: Mapping, sample: str) -> int:
    """A file's event count: a positive integer (``20000.0`` is one, ``19999.7`` is not)."""
    nevts = entry.get("nevts")
    if isinstance(nevts, float) and nevts.is_integer():
        nevts = int(nevts)
    if not isinstance(nevts, int) or isinstance(nevts, bool) or nevts <= 0:
        raise CatalogError(
            f"catalog {sample}: {entry.get('path')}: nevts {nevts!r} is not a positive whole "
            "number of events; give the number of entries of the file's Events tree"
        )
    return nevts


def _check_shared_files(fileset: Mapping[str, Sample]) -> None:
    """A file twice in one sample is refused (its events would count twice); a file in two
    samples is allowed (each sample's histograms are its own) but said loudly."""
    owners: dict[str, list[str]] = {}
    for key, sample in fileset.items():
        paths = [f.path for f in sample.files]
        twice = sorted({p for p in paths if paths.count(p) > 1})
        if twice:
            raise CatalogError(
                f"catalog {key}: {', '.join(twice)} listed more than once; its events would be "
                "counted twice (in the histograms and in the normalisation): remove the copies"
            )
        for path in paths:
            owners.setdefault(path, []).append(key)
    shared = {path: keys for path, keys in owners.items() if len(keys) > 1}
    for path, keys in sorted(shared.items()):
        log.warning(
            "catalog: %s is an input of %s: each sample gets its own histograms of it; is "
            "that intended?",
            path,
            " and ".join(keys),
        )


def is_synthetic(fileset: Mapping[str, Sample]) -> bool:
    """True when every input is a file written by ``agc generate`` (named ``synth_*.root``)."""
    return all(
        os.path.basename(f.path).startswith("synth_") for s in fileset.values() for f in s.files
    )


def chunk_ranges(nevts: int, chunksize: int) -> list[tuple[int, int]]:
    """coffea's rule: n = max(round(nevts / chunksize), 1) chunks of (nearly) equal size."""
    if chunksize <= 0:
        raise CatalogError(f"--chunksize {chunksize}: must be a positive number of events")
    if nevts <= 0:
        return []
    n = max(round(nevts / chunksize), 1)
    size = math.ceil(nevts / n)
    return [(start, min(start + size, nevts)) for start in range(0, nevts, size)]


def make_chunks(fileset: Mapping[str, Sample], chunksize: int) -> list[Chunk]:
    """All chunks of a fileset, sample by sample, file by file."""
    chunks = []
    for sample in fileset.values():
        weight = sample.weight
        for f in sample.files:
            for start, stop in chunk_ranges(f.nevts, chunksize):
                chunks.append(
                    Chunk(
                        sample.name,
                        sample.process,
                        sample.variation,
                        f.path,
                        start,
                        stop,
                        weight,
                        file_entries=None if f.partial else f.nevts,
                        sites=f.sites,
                    )
                )
    return chunks
