"""Developer tool: regenerate ``agc/synth/nanoaod_schema.json`` from a real NanoAOD file.

Usage (from the project root)::

    python -m agc.synth._extract_schema ../shared/data/nanoAOD_2015_CMS_Open_Data_ttbar.root \
        ../shared/data/agc/nanoaod_branch_ratios.json

It records, for every branch of the real file, only *summary statistics* (dtype, counter,
on-disk byte fraction of real AGC inputs, a few quantiles or a small categorical pmf, the
number of mantissa bits NanoAOD keeps for float branches, and the multiplicity pmf of each
counter).  No event data is copied.  The generator uses these to make filler branches whose
names, dtypes, jagged layout and compressibility resemble real NanoAOD.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

QUANTILES = [0.0, 0.01, 0.05, 0.1, 0.25, 0.5, 0.75, 0.9, 0.95, 0.99, 1.0]


def _mantissa_bits(x: np.ndarray) -> int:
    m = np.asarray(x, dtype=np.float32).view(np.uint32) & np.uint32(0x7FFFFF)
    m = m[m != 0]
    if len(m) == 0:
        return 0
    tz = np.zeros(len(m), dtype=np.int64)
    y = m.copy()
    alive = np.ones(len(m), dtype=bool)
    for _ in range(23):
        alive &= (y & 1) == 0
        tz += alive
        y >>= np.uint32(1)
    return int(23 - tz.min())


def _sig(v: float) -> float:
    v = float(v)
    return float(f"{v:.5g}") if np.isfinite(v) else 0.0  # keep the data file plain Python


def extract(root_path: str, ratios_path: str) -> dict:
    import awkward as ak
    import uproot

    tree = uproot.open(root_path)["Events"]
    ratios = json.loads(Path(ratios_path).read_text())
    branches = []
    counters = {}
    for br in tree.values():
        name = br.name
        interp = br.interpretation
        jagged = type(interp).__name__ == "AsJagged"
        dt = (interp.content if jagged else interp).from_dtype.newbyteorder("=")
        arr = br.array()
        flat = np.asarray(ak.flatten(arr, axis=None) if jagged else arr)
        if flat.dtype.kind == "f":
            flat = flat[np.isfinite(flat)]
        entry: dict[str, Any] = {
            "name": name,
            "dtype": dt.str.lstrip("<>|="),
            "counter": br.count_branch.name if jagged else None,
            "ratio": float(ratios.get(name, 0.0)),
        }
        if dt.kind == "f":
            entry["kind"] = "float"
            entry["mbits"] = _mantissa_bits(flat)
        else:
            entry["kind"] = "bool" if dt.kind == "b" else "int"
        vals, cnts = np.unique(flat, return_counts=True)
        if len(vals) and len(vals) <= 16:
            entry["values"] = [_sig(v) if dt.kind == "f" else int(v) for v in vals]
            entry["probs"] = [round(float(c) / len(flat), 5) for c in cnts]
        elif len(flat):
            q = np.quantile(flat.astype(np.float64), QUANTILES)
            entry["quantiles"] = [_sig(v) for v in q]
        else:
            entry["values"] = [0]
            entry["probs"] = [1.0]
        branches.append(entry)
    for br in tree.values():
        if br.count_branch is not None and br.count_branch.name not in counters:
            c = np.asarray(br.count_branch.array(library="np")).astype(np.int64)
            pmf = np.bincount(c) / len(c)
            counters[br.count_branch.name] = [round(float(p), 5) for p in pmf]
    return {"branches": branches, "counters": counters, "quantiles": QUANTILES}


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    data = extract(argv[0], argv[1])
    out = Path(__file__).with_name("nanoaod_schema.json")
    out.write_text(json.dumps(data, separators=(",", ":")) + "\n")
    print(f"wrote {out} ({len(data['branches'])} branches)")


if __name__ == "__main__":
    main()
