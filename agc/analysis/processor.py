"""One chunk of the AGC ttbar analysis: selection, systematics, observables, histograms.

:func:`process_events` is a pure function of the events and the sample's metadata. It knows
nothing about files, Dask or backends; the array namespace comes from the data (numpy on CPU,
cupy on a CUDA awkward backend).
"""

from __future__ import annotations

import awkward as ak
import hist
import numpy as np

from agc.analysis.observables import trijet_mass_flat
from agc.analysis.selection import (
    BTAG_THRESHOLD,
    electron_mask,
    jet_mask,
    muon_mask,
    region_masks_from_counts,
)
from agc.analysis.systematics import (
    JET_PT_SCALE_UP,
    N_BTAG_VARIATIONS,
    WJETS_SCALE_VAR,
    btag_weight,
    resolution_factors_flat,
)
from agc.analysis.xp import flat_namespace, to_flat_xp, to_host
from agc.config import REGIONS
from agc.histograms import histogram_name, new_histogram

DEFAULT_SEED = 20240501

JET_PT_VARIATIONS = ("pt_scale_up", "pt_res_up")


def weight_variations(process: str) -> list[str]:
    """Event-weight systematics filled for a nominal sample (without the _up/_down suffix)."""
    names = [f"btag_var_{i}" for i in range(N_BTAG_VARIATIONS)]
    if process == "wjets":
        names.append("scale_var")
    return names


def histogram_labels(process: str, variation: str, systematics: bool = True) -> list[str]:
    """Variation labels a sample produces: only nominal samples get systematics (spec §4)."""
    if variation != "nominal":
        return [variation]
    labels = ["nominal"]
    if systematics:
        labels += list(JET_PT_VARIATIONS)
        labels += [f"{w}_{d}" for w in weight_variations(process) for d in ("up", "down")]
    return labels


def histogram_names(process: str, variation: str, systematics: bool = True) -> list[str]:
    """All output names one sample contributes to (before pseudodata)."""
    return [
        histogram_name(r, process, label)
        for r in REGIONS
        for label in histogram_labels(process, variation, systematics)
    ]


def _fill(h: hist.Hist, observable, weight) -> None:
    """Fill on the host; ``weight`` is a scalar or an array matching ``observable``."""
    h.fill(
        observable=to_host(observable),
        weight=weight if isinstance(weight, float) else to_host(weight),
    )


def process_events(
    events: ak.Array,
    *,
    process: str,
    variation: str,
    weight: float,
    dataset: str | None = None,
    seed: int = DEFAULT_SEED,
    systematics: bool = True,
) -> dict[str, hist.Hist]:
    """Histograms of one chunk of events, keyed by the output names of spec §6.

    Args:
        events: awkward array with the branches of :data:`agc.analysis.events.ANALYSIS_BRANCHES`
            (flat, as read by uproot) or coffea NanoEvents with Electron/Muon/Jet collections.
        process: e.g. ``"ttbar"``; ``variation``: e.g. ``"nominal"``, ``"ME_var"``.
        weight: per-event normalisation w = sigma * L / N (spec §1.3).
        dataset: fileset key, part of the seed of the ``pt_res_up`` smear (default
            ``"{process}__{variation}"``).
        seed: seed of the ``pt_res_up`` smear.
        systematics: False runs the nominal selection only (for quick checks).

    Returns:
        One 1D histogram per name of :func:`histogram_names`, empty ones included.
    """
    dataset = dataset or f"{process}__{variation}"
    hists = {
        name: new_histogram(name.split("_", 1)[0])
        for name in histogram_names(process, variation, systematics)
    }
    jets, jet_counts = _flat(events, "Jet", ("pt", "eta", "phi", "mass", "btagCSVV2", "jetId"))
    el, el_counts = _flat(events, "Electron", ("pt", "eta", "cutBased", "sip3d"))
    mu, mu_counts = _flat(events, "Muon", ("pt", "eta", "tightId", "sip3d", "pfRelIso04_all"))
    xp = flat_namespace(jet_counts)
    n_leptons = _count(electron_mask(*el), el_counts, xp) + _count(muon_mask(*mu), mu_counts, xp)
    pt, eta, phi, mass, btag, jet_id = jets

    pt_variations = [("nominal", pt)]
    if variation == "nominal" and systematics:
        # float64 factor: the reference multiplies by a per-event float64 field, which promotes
        # the float32 jet pT to float64; a Python float would keep float32 and move cut edges
        pt_variations.append(("pt_scale_up", pt * np.float64(JET_PT_SCALE_UP)))
        factors = resolution_factors_flat(
            jet_counts,
            *(to_flat_xp(events[b]) for b in ("run", "luminosityBlock", "event")),
            dataset=dataset,
            seed=seed,
        )
        pt_variations.append(("pt_res_up", pt * factors))

    event_of_jet = xp.repeat(xp.arange(len(jet_counts)), jet_counts)
    for pt_label, varied_pt in pt_variations:
        selected = jet_mask(varied_pt, eta, jet_id)
        n_jets = _count(selected, jet_counts, xp)
        n_btags = _count(selected & (btag > BTAG_THRESHOLD), jet_counts, xp)
        masks = region_masks_from_counts(n_leptons, n_jets, n_btags)
        for region in REGIONS:
            in_region = masks[region]
            if not bool(in_region.any()):
                continue
            take = selected & in_region[event_of_jet]
            counts = n_jets[in_region]
            region_pt = varied_pt[take]
            if region == "4j1b":
                observable = ak.sum(ak.unflatten(region_pt, counts), axis=1)
            else:
                observable, _ = trijet_mass_flat(
                    region_pt, eta[take], phi[take], mass[take], btag[take], counts
                )
            label = variation if (pt_label == "nominal" and variation != "nominal") else pt_label
            _fill(hists[histogram_name(region, process, label)], observable, weight)
            if pt_label != "nominal" or variation != "nominal" or not systematics:
                continue
            first_jet = xp.cumsum(counts) - counts
            for i in range(N_BTAG_VARIATIONS):
                jet_pt = to_host(region_pt[first_jet + i])
                for direction in ("up", "down"):
                    name = histogram_name(region, process, f"btag_var_{i}_{direction}")
                    _fill(hists[name], observable, weight * btag_weight(jet_pt, direction))
            if process == "wjets":
                for direction, factor in WJETS_SCALE_VAR.items():
                    name = histogram_name(region, process, f"scale_var_{direction}")
                    _fill(hists[name], observable, weight * factor)
    return hists


def _flat(events: ak.Array, collection: str, fields: tuple[str, ...]):
    """Flat per-object columns of a collection and its objects per event (numpy or cupy).

    Works on flat branches as read by uproot (``Jet_pt``) and on NanoEvents (``Jet.pt``).
    """
    columns = []
    for f in fields:
        name = f"{collection}_{f}"
        columns.append(events[name] if name in events.fields else events[collection][f])
    counts = to_flat_xp(ak.num(columns[0], axis=1))
    return [to_flat_xp(ak.flatten(c, axis=1)) for c in columns], counts


def _count(mask, counts, xp):
    """Per event: how many of its objects pass the flat ``mask``."""
    ends = xp.cumsum(counts)
    passed = xp.concatenate([xp.zeros(1, dtype=xp.int64), xp.cumsum(mask, dtype=xp.int64)])
    return passed[ends] - passed[ends - counts]
