"""Reading one chunk of columns with uproot, with errors that name the file and what to do."""

from __future__ import annotations

from collections.abc import Sequence

import awkward as ak
import uproot

from agc.errors import UserError


class InputFileError(UserError, RuntimeError):
    """An input file cannot be used: missing, corrupt, wrong tree, missing branch, short."""


def read_chunk(path: str, branches: Sequence[str], entry_start: int, entry_stop: int,
               tree: str = "Events") -> tuple[ak.Array, int]:
    """Read ``branches`` for entries [entry_start, entry_stop) of ``tree`` in ``path``.

    Returns the events (flat branch fields, e.g. ``Jet_pt``) and the bytes requested from the
    file (compressed, as uproot's source counts them).
    """
    try:
        f = uproot.open(path)
    except FileNotFoundError as err:
        raise InputFileError(f"{path}: no such file. Check the catalog paths, or re-run "
                             "'agc generate' for synthetic inputs.") from err
    except Exception as err:
        raise InputFileError(f"{path}: not a readable ROOT file ({type(err).__name__}: {err}). "
                             "It may be truncated or corrupt: re-generate or re-copy it.") from err
    with f:
        try:
            events_tree = f[tree]
        except Exception as err:
            trees = sorted({k.split(";")[0] for k, c in f.classnames().items()
                            if c in ("TTree", "ROOT::RNTuple")})
            raise InputFileError(f"{path}: no tree {tree!r} in the file (trees: "
                                 f"{', '.join(trees) or 'none'}). NanoAOD files keep events in "
                                 "'Events'.") from err
        if not isinstance(events_tree, uproot.behaviors.TTree.TTree):
            raise InputFileError(f"{path}: {tree!r} is a {type(events_tree).__name__}, not a "
                                 "TTree; this harness reads NanoAOD TTrees")
        missing = [b for b in branches if b not in events_tree]
        if missing:
            raise InputFileError(f"{path}: tree {tree!r} lacks branch(es) {', '.join(missing)} "
                                 "that the analysis reads; is this NanoAOD?")
        if entry_stop > events_tree.num_entries:
            raise InputFileError(f"{path}: the catalog asks for entries up to {entry_stop} but "
                                 f"the file has {events_tree.num_entries}; the catalog's 'nevts' "
                                 "does not match the file.")
        try:
            events = events_tree.arrays(list(branches), entry_start=entry_start,
                                        entry_stop=entry_stop)
        except Exception as err:
            raise InputFileError(f"{path}: reading entries {entry_start}-{entry_stop} failed "
                                 f"({type(err).__name__}: {err}); the file is probably "
                                 "corrupt: re-generate or re-copy it.") from err
        return events, f.file.source.num_requested_bytes
