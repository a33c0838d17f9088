"""Chunk results <-> bytes, without pickle.

A shared store (XRootD, S3) is written by many people; unpickling what it holds would run
whatever code it contains. Results are therefore stored as a ``numpy.savez`` archive of plain
arrays (no object arrays, loaded with ``allow_pickle=False``) plus a JSON description of the
histograms' axes and storage. Values and variances are copied bit for bit, flow bins included.
"""

from __future__ import annotations

import io
import json
from collections.abc import Mapping

import hist
import numpy as np

FORMAT = "agc-chunk-npz-2"


def _axis_spec(axis) -> dict:
    spec = {
        "name": axis.name,
        "label": axis.label,
        "underflow": bool(axis.traits.underflow),
        "overflow": bool(axis.traits.overflow),
    }
    if isinstance(axis, hist.axis.Regular) and not axis.transform:
        return {
            "type": "regular",
            "bins": len(axis),
            "start": float(axis.edges[0]),
            "stop": float(axis.edges[-1]),
            **spec,
        }
    if isinstance(axis, hist.axis.Variable):
        return {"type": "variable", "edges": [float(e) for e in axis.edges], **spec}
    raise TypeError(f"cannot cache histograms with a {type(axis).__name__} axis")


def _axis(spec: dict):
    common = {
        "name": spec["name"],
        "label": spec["label"],
        "underflow": spec["underflow"],
        "overflow": spec["overflow"],
    }
    if spec["type"] == "regular":
        return hist.axis.Regular(spec["bins"], spec["start"], spec["stop"], **common)
    return hist.axis.Variable(spec["edges"], **common)


def encode(nevents: int, histograms: Mapping[str, hist.Hist], bytes_read: int = 0) -> bytes:
    """The bytes of one chunk result (histograms with Weight or Double storage).

    All bin contents go into one flat float64 array (and the variances into another), with
    each histogram's offset in the JSON description: one array read per entry, not one per
    histogram.
    """
    described, values, variances, offset = [], [], [], 0
    for name, h in histograms.items():
        weighted = isinstance(h.storage_type(), hist.storage.Weight)
        if not weighted and not isinstance(h.storage_type(), hist.storage.Double):
            raise TypeError(f"cannot cache histogram {name!r} with {h.storage_type.__name__}")
        view = h.view(flow=True)
        flat = np.asarray(view.value if weighted else view, dtype=np.float64).ravel()
        values.append(flat)
        variances.append(
            np.asarray(view.variance, dtype=np.float64).ravel() if weighted else np.zeros_like(flat)
        )
        described.append(
            {
                "name": name,
                "axes": [_axis_spec(a) for a in h.axes],
                "weighted": weighted,
                "offset": offset,
                "shape": list(view.shape),
            }
        )
        offset += flat.size
    meta = {
        "format": FORMAT,
        "nevents": int(nevents),
        "bytes_read": int(bytes_read),
        "histograms": described,
    }
    buffer = io.BytesIO()
    np.savez(
        buffer,
        meta=np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8),
        values=np.concatenate(values) if values else np.zeros(0),
        variances=np.concatenate(variances) if variances else np.zeros(0),
    )
    return buffer.getvalue()


def decode(data: bytes) -> tuple[int, dict[str, hist.Hist], int]:
    """(nevents, histograms, bytes_read of the original read) from :func:`encode`'s bytes."""
    with np.load(io.BytesIO(data), allow_pickle=False) as archive:
        meta = json.loads(archive["meta"].tobytes())
        if meta.get("format") != FORMAT:
            raise ValueError(f"unknown chunk format {meta.get('format')!r}")
        values, variances = archive["values"], archive["variances"]
    histograms = {}
    for d in meta["histograms"]:
        storage = hist.storage.Weight() if d["weighted"] else hist.storage.Double()
        h = hist.Hist(*(_axis(a) for a in d["axes"]), storage=storage)
        view = h.view(flow=True)
        n = int(np.prod(d["shape"]))
        part = slice(d["offset"], d["offset"] + n)
        if d["weighted"]:
            view.value[...] = values[part].reshape(d["shape"])
            view.variance[...] = variances[part].reshape(d["shape"])
        else:
            view[...] = values[part].reshape(d["shape"])
        histograms[d["name"]] = h
    return meta["nevents"], histograms, meta["bytes_read"]
