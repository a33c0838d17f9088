"""Systematic variations (spec §4).

Object systematics (``pt_scale_up``, ``pt_res_up``) vary the jet pT before the selection is re-run;
event-weight systematics (four b-tag nuisance parameters, the W+jets scale) reweight the nominal
selection.

Deliberate difference from the reference: the ``pt_res_up`` smear is *seeded and independent of
chunking*. The reference draws ``np.random.normal`` unseeded once per chunk, so its histograms
change from run to run and with the chunk size. Here each jet's Gaussian number is a pure
function of (seed, dataset, run, luminosityBlock, event, jet index): a counter-based generator
(splitmix64 hashing followed by a Box-Muller transform). A jet gets the same factor whatever
chunk, worker or backend processes it, so ``pt_res_up`` is reproducible bit for bit.
"""

from __future__ import annotations

import zlib

import numpy as np

from agc.analysis.xp import flat_namespace

JET_PT_SCALE_UP = 1.03
JET_PT_RESOLUTION = 0.05
WJETS_SCALE_VAR = {"up": 1.025, "down": 0.975}

_GOLDEN = 0x9E3779B97F4A7C15
_MASK64 = (1 << 64) - 1


def _splitmix64(x, xp):
    """splitmix64 finaliser on a uint64 array (wrapping arithmetic is intended)."""
    x = x + xp.uint64(_GOLDEN)
    x = (x ^ (x >> xp.uint64(30))) * xp.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> xp.uint64(27))) * xp.uint64(0x94D049BB133111EB)
    return x ^ (x >> xp.uint64(31))


def _unit_uniform(bits, xp):
    """53 high bits of a uint64 as a float64 in the open interval (0, 1)."""
    return ((bits >> xp.uint64(11)).astype(xp.float64) + 0.5) * (1.0 / (1 << 53))


def dataset_key(dataset: str) -> int:
    """A stable 32-bit integer for a dataset name (same on every machine and Python)."""
    return zlib.crc32(dataset.encode())


def resolution_factors_flat(counts, run, lumi, event, *, dataset: str, seed: int):
    """Per-jet factors r ~ Normal(1, 0.05), deterministic per (seed, dataset, event id, jet index).

    Args:
        counts: jets per event; ``run``, ``lumi``, ``event``: the event ids (numpy or cupy).
        dataset: the fileset key; ``seed``: the run's smear seed.

    Returns:
        One float64 factor per jet, in the order of the flattened jets (float64 like the
        reference's ``np.random.normal`` draws, so the smeared pT is float64 as there).
    """
    xp = flat_namespace(counts)
    starts = xp.cumsum(counts) - counts
    jet_index = (xp.arange(int(counts.sum())) - xp.repeat(starts, counts)).astype(xp.uint64)
    with np.errstate(over="ignore"):
        key = _splitmix64(
            xp.asarray([(seed & _MASK64) ^ (dataset_key(dataset) << 32)], dtype=xp.uint64), xp
        )
        per_event = key
        for part in (run, lumi, event):
            per_event = _splitmix64(per_event ^ part.astype(xp.uint64), xp)
        per_jet = _splitmix64(xp.repeat(per_event, counts) ^ jet_index, xp)
        u1 = _unit_uniform(per_jet, xp)
        u2 = _unit_uniform(_splitmix64(per_jet, xp), xp)
    gauss = xp.sqrt(-2.0 * xp.log(u1)) * xp.cos(2.0 * xp.pi * u2)
    return 1.0 + JET_PT_RESOLUTION * gauss


def btag_weight(jet_pt, direction: str):
    """Multiplicative b-tag weight 1 +- 0.075 * pT / 50 of one jet pT per event (spec §4).

    Same formula as correctionlib ``event_systematics`` / ``btag_var`` in the reference's
    corrections.json, evaluated in double precision.
    """
    pt = jet_pt.astype("float64") if hasattr(jet_pt, "astype") else jet_pt
    if direction == "up":
        return 1.0 + (pt * 0.075 / 50)
    if direction == "down":
        return 1.0 - (pt * 0.075 / 50)
    raise ValueError(f"btag_weight: direction must be 'up' or 'down', not {direction!r}")
