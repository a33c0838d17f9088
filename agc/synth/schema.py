"""NanoAOD branch layout of the synthetic files and conversion of physics output to branches.

The branch list (names, dtypes, counters, order) is the one of the real AGC NanoAOD files,
recorded in ``_schema_data.py`` together with summary statistics used for filler content.
"""

from __future__ import annotations

import zlib
from functools import lru_cache

import numpy as np

from ._schema_data import SCHEMA

CORE_BRANCHES = (
    "Electron_pt", "Electron_eta", "Electron_cutBased", "Electron_sip3d",
    "Muon_pt", "Muon_eta", "Muon_tightId", "Muon_sip3d", "Muon_pfRelIso04_all",
    "Jet_pt", "Jet_eta", "Jet_phi", "Jet_mass", "Jet_btagCSVV2", "Jet_jetId",
)  # fmt: skip
COUNTERS = ("nJet", "nElectron", "nMuon")
ML_BRANCHES = ("Jet_qgl", "Electron_phi", "Electron_mass", "Muon_phi", "Muon_mass", "event")
ANALYSIS_BRANCHES = CORE_BRANCHES + COUNTERS  # the 18 branches of spec §2 (5.08 % of bytes)
EVENT_BRANCHES = ("run", "luminosityBlock", "event", "genWeight")
# what coffea's NanoAODSchema uses to build the Jet/Electron/Muon collections and their links
SCHEMA_SUPPORT = (
    "Electron_charge", "Electron_pdgId", "Electron_jetIdx", "Electron_genPartIdx",
    "Muon_charge", "Muon_pdgId", "Muon_jetIdx", "Muon_genPartIdx",
    "Jet_electronIdx1", "Jet_electronIdx2", "Jet_muonIdx1", "Jet_muonIdx2",
    "Jet_hadronFlavour", "Jet_partonFlavour",
)  # fmt: skip
MINIMAL_BRANCHES = frozenset(
    CORE_BRANCHES + COUNTERS + ML_BRANCHES + EVENT_BRANCHES + SCHEMA_SUPPORT
)

BRANCHES: dict[str, dict] = {b["name"]: b for b in SCHEMA["branches"]}
COUNTER_PMF: dict[str, list[float]] = SCHEMA["counters"]
QUANTILES = np.asarray(SCHEMA["quantiles"])
OWN_COLLECTIONS = ("Jet", "Electron", "Muon")


def branch_names(layout: str) -> list[str]:
    """Branch names of a layout, in the order of the real files."""
    if layout == "realistic":
        return [b["name"] for b in SCHEMA["branches"]]
    if layout == "minimal":
        return [b["name"] for b in SCHEMA["branches"] if b["name"] in MINIMAL_BRANCHES]
    raise ValueError(f"unknown layout {layout!r}; expected 'realistic' or 'minimal'")


def collection_of(spec: dict) -> str | None:
    return spec["counter"][1:] if spec["counter"] else None


def numpy_dtype(spec: dict) -> np.dtype:
    return np.dtype(spec["dtype"])


def truncate_mantissa(x, bits: int) -> np.ndarray:
    """Round float32 values to ``bits`` mantissa bits (NanoAOD stores reduced precision)."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    if bits <= 0 or bits >= 23:
        return x
    shift = 23 - bits
    u = x.view(np.uint32)
    u = (u + np.uint32(1 << (shift - 1))) & np.uint32((0xFFFFFFFF << shift) & 0xFFFFFFFF)
    return u.view(np.float32)


# ------------------------------------------------------------------------------------------
# filler content: per-branch pools of values drawn from the real files' summary statistics

POOL_SIZE = 12289  # > 32 KiB of float32, so zlib's window never sees an exact repeat
PIECE = 2048


@lru_cache(maxsize=None)
def filler_pool(name: str) -> np.ndarray:
    spec = BRANCHES[name]
    rng = np.random.default_rng(zlib.crc32(name.encode()))
    dt = numpy_dtype(spec)
    if "values" in spec:
        vals = np.asarray(spec["values"], dtype=np.float64)
        p = np.asarray(spec["probs"], dtype=np.float64)
        pool = rng.choice(vals, POOL_SIZE, p=p / p.sum())
    else:
        q = np.asarray(spec["quantiles"], dtype=np.float64)
        pool = np.interp(rng.uniform(0, 1, POOL_SIZE), QUANTILES, q)
        if dt.kind in "iu":
            pool = np.round(pool)
    if dt.kind == "f":
        return truncate_mantissa(pool, int(spec.get("mbits", 23)))
    if dt.kind == "b":
        return pool.astype(bool)
    return pool.astype(dt)


def filler_values(name: str, n: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` filler values: pieces of the branch's pool walked with random strides."""
    pool = filler_pool(name)
    if n == 0:
        return pool[:0].copy()
    npiece = -(-n // PIECE)
    start = rng.integers(0, POOL_SIZE, npiece)
    stride = rng.integers(1, POOL_SIZE, npiece)
    k = np.arange(PIECE)
    idx = (start[:, None] + k[None, :] * stride[:, None]) % POOL_SIZE
    return pool[idx.ravel()[:n]]


def filler_counts(counter: str, n: int, rng: np.random.Generator) -> np.ndarray:
    pmf = np.asarray(COUNTER_PMF[counter], dtype=np.float64)
    if len(pmf) == 1:
        return np.zeros(n, dtype=np.int64)
    nz = np.flatnonzero(pmf)
    if len(nz) == 1:
        return np.full(n, nz[0], dtype=np.int64)
    cdf = np.cumsum(pmf / pmf.sum())
    return np.searchsorted(cdf, rng.uniform(0, 1, n) * cdf[-1] * 0.999999)


# ------------------------------------------------------------------------------------------
# physics output -> NanoAOD branches


def _origin_to_genflav(origin):
    # NanoAOD genPartFlav: 1 prompt, 15 from tau, 5 from b, 4 from c, 0 unmatched
    return np.choose(np.clip(origin, 0, 3), [1, 15, 5, 0]).astype(np.uint8)


def physics_branches(phys: dict, n: int) -> dict[str, np.ndarray]:
    """Map the physics model's objects to NanoAOD branch arrays (flat contents)."""
    out: dict[str, np.ndarray] = {}
    jc, j = phys["Jet"]
    ec, e = phys["Electron"]
    mc, m = phys["Muon"]
    nj, ne, nm = len(j["pt"]), len(e["pt"]), len(m["pt"])
    out["nJet"], out["nElectron"], out["nMuon"] = jc, ec, mc
    minus1 = np.full(nj, -1, dtype=np.int32)
    out.update({
        "Jet_pt": j["pt"], "Jet_eta": j["eta"], "Jet_phi": j["phi"], "Jet_mass": j["mass"],
        "Jet_btagCSVV2": j["btagCSVV2"], "Jet_qgl": j["qgl"], "Jet_jetId": j["jetId"],
        "Jet_hadronFlavour": j["hadronFlavour"], "Jet_partonFlavour": j["partonFlavour"],
        "Jet_electronIdx1": j["electronIdx1"], "Jet_electronIdx2": minus1,
        "Jet_muonIdx1": j["muonIdx1"], "Jet_muonIdx2": minus1,
        "Jet_nElectrons": (j["electronIdx1"] >= 0).astype(np.int32),
        "Jet_nMuons": (j["muonIdx1"] >= 0).astype(np.int32),
        "Jet_genJetIdx": minus1, "Jet_cleanmask": np.ones(nj, dtype=np.uint8),
    })  # fmt: skip
    rng = np.random.default_rng(nj + 7 * ne + 13 * nm)  # only used for cosmetic jitter
    out.update({
        "Electron_pt": e["pt"], "Electron_eta": e["eta"], "Electron_phi": e["phi"],
        "Electron_mass": rng.normal(0.0, 0.012, ne) + 0.000511,
        "Electron_charge": e["charge"], "Electron_pdgId": -11 * e["charge"],
        "Electron_cutBased": e["cut"], "Electron_sip3d": e["sip3d"],
        "Electron_pfRelIso03_all": e["iso"], "Electron_miniPFRelIso_all": e["iso"] * 0.9,
        "Electron_jetIdx": e["jetIdx"], "Electron_genPartIdx": np.full(ne, -1),
        "Electron_photonIdx": np.full(ne, -1), "Electron_genPartFlav": _origin_to_genflav(e["origin"]),
        "Electron_cleanmask": np.ones(ne, dtype=np.uint8),
        "Electron_mvaFall17V2Iso_WP90": e["cut"] >= 3, "Electron_mvaFall17V2Iso_WP80": e["cut"] >= 4,
    })  # fmt: skip
    out.update({
        "Muon_pt": m["pt"], "Muon_eta": m["eta"], "Muon_phi": m["phi"],
        "Muon_mass": np.full(nm, 0.10566),
        "Muon_charge": m["charge"], "Muon_pdgId": -13 * m["charge"],
        "Muon_tightId": m["tight"], "Muon_sip3d": m["sip3d"], "Muon_pfRelIso04_all": m["iso"],
        "Muon_pfRelIso03_all": m["iso"] * 0.8, "Muon_miniPFRelIso_all": m["iso"] * 0.9,
        "Muon_jetIdx": m["jetIdx"], "Muon_genPartIdx": np.full(nm, -1),
        "Muon_fsrPhotonIdx": np.full(nm, -1), "Muon_genPartFlav": _origin_to_genflav(m["origin"]),
        "Muon_cleanmask": np.ones(nm, dtype=np.uint8),
        "Muon_looseId": np.ones(nm, dtype=bool), "Muon_mediumId": m["tight"] | (m["origin"] <= 1),
    })  # fmt: skip
    return out


def to_branch_dtype(name: str, arr) -> np.ndarray:
    spec = BRANCHES[name]
    dt = numpy_dtype(spec)
    if dt.kind == "f":
        return truncate_mantissa(arr, int(spec.get("mbits", 23)))
    return np.asarray(arr).astype(dt, copy=False)
