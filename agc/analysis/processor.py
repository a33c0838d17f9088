"""One chunk of the AGC ttbar analysis: selection, systematics, observables, histograms.

:func:`process_events` is a pure function of the events and the sample's metadata. It knows
nothing about files, Dask or backends; the array namespace comes from the data (numpy on CPU,
cupy on a CUDA awkward backend).
"""

from __future__ import annotations

import awkward as ak
import hist
import numpy as np

from agc.analysis.events import collections
from agc.analysis.observables import ht, trijet_mass
from agc.analysis.selection import region_masks, select_electrons, select_jets, select_muons
from agc.analysis.systematics import (
    JET_PT_SCALE_UP,
    N_BTAG_VARIATIONS,
    WJETS_SCALE_VAR,
    btag_weight,
    jet_resolution_factors,
    with_jet_pt,
)
from agc.analysis.xp import to_host
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
    return [histogram_name(r, process, label) for r in REGIONS
            for label in histogram_labels(process, variation, systematics)]


def _fill(h: hist.Hist, observable, weight) -> None:
    """Fill on the host; ``weight`` is a scalar or an array matching ``observable``."""
    h.fill(observable=to_host(observable),
           weight=weight if isinstance(weight, float) else to_host(weight))


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
    hists = {name: new_histogram(name.split("_", 1)[0])
             for name in histogram_names(process, variation, systematics)}
    electrons, muons, jets = collections(events)
    electrons, muons = select_electrons(electrons), select_muons(muons)

    pt_variations: list[tuple[str, ak.Array]] = [("nominal", jets)]
    if variation == "nominal" and systematics:
        # float64 factor: the reference multiplies by a per-event float64 field, which promotes
        # the float32 jet pT to float64; a Python float would keep float32 and move cut edges
        pt_variations.append(("pt_scale_up",
                              with_jet_pt(jets, jets.pt * np.float64(JET_PT_SCALE_UP))))
        factors = jet_resolution_factors(jets, events.run, events.luminosityBlock, events.event,
                                         dataset=dataset, seed=seed)
        pt_variations.append(("pt_res_up", with_jet_pt(jets, jets.pt * factors)))

    for pt_label, varied_jets in pt_variations:
        selected_jets = select_jets(varied_jets)
        masks = region_masks(electrons, muons, selected_jets)
        for region in REGIONS:
            region_jets = selected_jets[masks[region]]
            if len(region_jets) == 0:
                continue
            observable = ht(region_jets) if region == "4j1b" else trijet_mass(region_jets)
            label = variation if (pt_label == "nominal" and variation != "nominal") else pt_label
            _fill(hists[histogram_name(region, process, label)], observable, weight)
            if pt_label != "nominal" or variation != "nominal" or not systematics:
                continue
            for i in range(N_BTAG_VARIATIONS):
                jet_pt = to_host(region_jets.pt[:, i])
                for direction in ("up", "down"):
                    name = histogram_name(region, process, f"btag_var_{i}_{direction}")
                    _fill(hists[name], observable, weight * btag_weight(jet_pt, direction))
            if process == "wjets":
                for direction, factor in WJETS_SCALE_VAR.items():
                    name = histogram_name(region, process, f"scale_var_{direction}")
                    _fill(hists[name], observable, weight * factor)
    return hists
