"""One chunk of the AGC ttbar analysis: selection, systematics, observables, histograms.

:func:`process_events` is a pure function of the events and the sample's metadata. It knows
nothing about files, Dask or backends; the array namespace comes from the data (numpy on CPU,
cupy on a CUDA awkward backend). It works on flat per-object columns in three steps, each a
public function that tests drive directly:

1. :func:`objects` -- the flat jet columns, jets per event, and the tight leptons per event;
2. :func:`select_regions` -- for one (possibly varied) jet pT: the selected jets, their counts
   and b tags, the region of each event, and the region's observable (H_T or m_bjj);
3. the fills: nominal, jet-pT variations, b-tag and W+jets weight variations.

With ``ml`` (models of :func:`agc.analysis.ml.load_models`), the 4j2b events of each jet-pT
variation also get the jet-parton assignment of :mod:`agc.analysis.ml`, and the features of
each event's best candidate fill 20 ML histograms per variation label, with the same weights
as that label's 4j2b histogram (see :func:`process_events`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import awkward as ak
import hist
import numpy as np

from agc.analysis.filler import Filler
from agc.analysis.ml import JetColumns, MLColumns, MLModels, best_candidate_features, ml_columns
from agc.analysis.observables import ht_flat, trijet_mass_flat
from agc.analysis.selection import btag_mask, electron_mask, jet_mask, muon_mask, region_masks
from agc.analysis.systematics import (
    JET_PT_SCALE_UP,
    WJETS_SCALE_VAR,
    btag_weight,
    resolution_factors_flat,
)
from agc.analysis.xp import flat_namespace, segment_sum, to_flat_xp, to_host
from agc.constants import DEFAULT_SEED
from agc.devices import DEVICES
from agc.histograms import new_histogram, new_ml_histogram
from agc.vocabulary import (
    DIRECTIONS,
    EVENT_ID_BRANCHES,
    ML_FEATURES,
    ML_REGION,
    N_BTAG_VARIATIONS,
    NOMINAL,
    REGIONS,
    WJETS_SCALE_VARIATION,
    btag_variation,
    histogram_labels,
    histogram_name,
    histogram_names,
    ml_histogram_name,
)

JET_FIELDS = ("pt", "eta", "phi", "mass", "btagCSVV2", "jetId")
ELECTRON_FIELDS = ("pt", "eta", "cutBased", "sip3d")
MUON_FIELDS = ("pt", "eta", "tightId", "sip3d", "pfRelIso04_all")


@dataclass(frozen=True)
class Objects:
    """The flat columns one chunk's selection works on (numpy or cupy arrays).

    ``jets`` maps :data:`JET_FIELDS` to one entry per jet; ``jet_counts`` is jets per event,
    ``event_of_jet`` the event of each jet, ``n_leptons`` the tight leptons per event.
    """

    jets: dict[str, Any]
    jet_counts: Any
    event_of_jet: Any
    n_leptons: Any
    xp: Any
    #: None: the CPU engine's path; "cpu" / "cuda": the device path (see process_events).
    device: str | None = None


@dataclass(frozen=True)
class RegionEvents:
    """The events of one region for one jet pT: their selected jets (flat) and observable."""

    #: Per event of the chunk: is it in the region?
    mask: Any
    #: Per event in the region: its selected jets, and its observable (H_T or m_bjj, GeV).
    counts: Any
    observable: Any
    #: Per selected jet of those events, in event order (pT as varied).
    pt: Any
    eta: Any
    phi: Any
    mass: Any
    btag: Any
    #: Per jet of the chunk (flat): is it one of the selected jets above?
    jet_mask: Any = None


def objects(events: ak.Array, device: str | None = None) -> Objects:
    """The jet columns and the tight-lepton count per event of a chunk.

    ``events``: flat branches as uproot reads them (``Jet_pt``...) or coffea NanoEvents;
    ``device``: as in :func:`process_events`.
    """
    jets, jet_counts = _flat(events, "Jet", JET_FIELDS)
    electrons, electron_counts = _flat(events, "Electron", ELECTRON_FIELDS)
    muons, muon_counts = _flat(events, "Muon", MUON_FIELDS)
    xp = flat_namespace(jet_counts)
    n_leptons = count_per_event(electron_mask(*electrons), electron_counts) + count_per_event(
        muon_mask(*muons), muon_counts
    )
    event_of_jet = xp.repeat(xp.arange(len(jet_counts)), jet_counts)
    return Objects(
        dict(zip(JET_FIELDS, jets, strict=True)), jet_counts, event_of_jet, n_leptons, xp, device
    )


def select_regions(obj: Objects, pt) -> dict[str, RegionEvents]:
    """The events of each region, with the jets selected on the jet pT ``pt`` (flat, per jet).

    Regions without events are left out.
    """
    jets = obj.jets
    selected = jet_mask(pt, jets["eta"], jets["jetId"])
    n_jets = count_per_event(selected, obj.jet_counts)
    n_btags = count_per_event(selected & btag_mask(jets["btagCSVV2"]), obj.jet_counts)
    masks = region_masks(obj.n_leptons, n_jets, n_btags)
    out = {}
    for region in REGIONS:
        in_region = masks[region]
        if not bool(in_region.any()):
            continue
        take = selected & in_region[obj.event_of_jet]
        counts = n_jets[in_region]
        region_pt = pt[take]
        eta, phi, mass, btag = (jets[f][take] for f in ("eta", "phi", "mass", "btagCSVV2"))
        if region == "4j1b":
            # the same sums bit for bit; ak.sum is faster on the CPU, the segment sum needs
            # no awkward kernel (none exists on a GPU without awkward's CUDA kernels)
            ht = segment_sum if obj.device else ht_flat
            observable = ht(region_pt, counts)
        else:
            observable, _ = trijet_mass_flat(region_pt, eta, phi, mass, btag, counts)
        out[region] = RegionEvents(
            in_region, counts, observable, region_pt, eta, phi, mass, btag, take
        )
    return out


def jet_pt_variations(
    events: ak.Array, obj: Objects, *, dataset: str, seed: int
) -> list[tuple[str, Any]]:
    """(label, flat jet pT) of the nominal and of the jet-pT systematics (spec §4)."""
    pt = obj.jets["pt"]
    # float64 factor: the reference multiplies by a per-event float64 field, which promotes
    # the float32 jet pT to float64; a Python float would keep float32 and move cut edges
    scaled = pt * np.float64(JET_PT_SCALE_UP)
    factors = resolution_factors_flat(
        obj.jet_counts,
        *(to_flat_xp(events[b]) for b in EVENT_ID_BRANCHES),
        dataset=dataset,
        seed=seed,
    )
    return [(NOMINAL, pt), ("pt_scale_up", scaled), ("pt_res_up", pt * factors)]


def process_events(
    events: ak.Array,
    *,
    process: str,
    variation: str,
    weight: float,
    dataset: str | None = None,
    seed: int = DEFAULT_SEED,
    systematics: bool = True,
    ml: MLModels | None = None,
    device: str | None = None,
) -> dict[str, hist.Hist]:
    """Histograms of one chunk of events, keyed by the output names of spec §6.

    Args:
        events: awkward array with the branches of :data:`agc.vocabulary.ANALYSIS_BRANCHES`
            (flat, as read by uproot) or coffea NanoEvents with Electron/Muon/Jet collections;
            with ``ml``, also those of :data:`agc.vocabulary.ML_EXTRA_BRANCHES`.
        process: e.g. ``"ttbar"``; ``variation``: e.g. ``"nominal"``, ``"ME_var"``.
        weight: per-event normalisation w = sigma * L / N (spec §1.3).
        dataset: fileset key, part of the seed of the ``pt_res_up`` smear (default
            ``"{process}__{variation}"``).
        seed: seed of the ``pt_res_up`` smear.
        systematics: False runs the nominal selection only (for quick checks).
        ml: the ML models (:func:`agc.analysis.ml.load_models`), or None for no ML step.
        device: None for the CPU engine's path (``hist.fill`` on the host, ``ak.sum``);
            ``"cuda"`` or ``"cpu"`` for the device path, which asks awkward for no kernel and
            fills every histogram through one :class:`agc.analysis.filler.Filler` on the
            device of the data (one device-to-host copy per chunk). ``"cuda"`` expects
            events on awkward's CUDA backend (:func:`agc.analysis.xp.to_device`); ``"cpu"``
            runs the very same code on numpy. Both paths give the same histograms (bit for
            bit on the CPU).

    Returns:
        One 1D histogram per name of :func:`agc.vocabulary.histogram_names`, empty ones
        included. With ``ml``, the same dict also holds one histogram per name of
        :func:`agc.vocabulary.ml_histogram_names` (``{feature}_{process}[_{variation}]``,
        :func:`agc.histograms.split_ml_histograms` separates them): for every variation label
        of the sample's 4j2b histograms, the features of the best candidate of each 4j2b
        event, with that histogram's weights. As in the reference, ``pt_scale_up`` and
        ``pt_res_up`` re-run the assignment on the varied jets, and the b-tag and W+jets weight
        variations reuse the nominal assignment with their varied weights. The region
        histograms are the same, bit for bit, with and without ``ml``.

    Raises:
        agc.analysis.ml.MissingBranchesError: with ``ml``, when the events lack an ML branch.
    """
    if device is not None and device not in DEVICES:
        raise ValueError(f"device must be one of {', '.join(DEVICES)} or None, not {device!r}")
    dataset = dataset or f"{process}__{variation}"
    hists = {
        name: new_histogram(name.split("_", 1)[0])
        for name in histogram_names(process, variation, systematics)
    }
    ml_inputs = None
    if ml is not None:
        ml_inputs = ml_columns(events)
        for feature in ML_FEATURES:
            for label in histogram_labels(process, variation, systematics):
                hists[ml_histogram_name(feature, process, label)] = new_ml_histogram(feature)
    obj = objects(events, device)
    if device is None:

        def fill(name: str, values, weight) -> None:
            _fill(hists[name], values, weight)

    else:
        filler = Filler(hists, obj.xp)
        fill = filler.fill
    with_systematics = variation == NOMINAL and systematics
    if with_systematics:
        pt_variations = jet_pt_variations(events, obj, dataset=dataset, seed=seed)
    else:
        pt_variations = [(NOMINAL, obj.jets["pt"])]
    for pt_label, varied_pt in pt_variations:
        for region, selection in select_regions(obj, varied_pt).items():
            label = variation if pt_label == NOMINAL else pt_label
            fills: list[tuple[str, Any]] = [(label, weight)]
            if pt_label == NOMINAL and with_systematics:
                fills += _weight_variations(obj, selection, process, weight)
            observable = selection.observable
            for fill_label, fill_weight in fills:
                fill(histogram_name(region, process, fill_label), observable, fill_weight)
            if ml is not None and ml_inputs is not None and region == ML_REGION:
                features = _ml_features(ml, ml_inputs, selection)
                for fill_label, fill_weight in fills:
                    for i, feature in enumerate(ML_FEATURES):
                        name = ml_histogram_name(feature, process, fill_label)
                        fill(name, features[:, i], fill_weight)
    return hists if device is None else filler.result()


def _weight_variations(
    obj: Objects, selection: RegionEvents, process: str, weight: float
) -> list[tuple[str, Any]]:
    """(label, per-event weight) of the event-weight systematics of a region (nominal jets).

    b-tag weights: one nuisance parameter per leading jet (the i-th selected jet's pT); the
    W+jets scale: a constant factor.
    """
    out: list[tuple[str, Any]] = []
    first_jet = obj.xp.cumsum(selection.counts) - selection.counts
    for i in range(N_BTAG_VARIATIONS):
        jet_pt = selection.pt[first_jet + i]  # on the data's device
        for direction in DIRECTIONS:
            out.append((btag_variation(i, direction), weight * btag_weight(jet_pt, direction)))
    if process == "wjets":
        for direction, factor in WJETS_SCALE_VAR.items():
            out.append((f"{WJETS_SCALE_VARIATION}_{direction}", weight * factor))
    return out


def _ml_features(ml: MLModels, inputs: MLColumns, selection: RegionEvents) -> np.ndarray:
    """The best candidate's 20 features of each event of a region (host, events x 20)."""
    jets = JetColumns(
        selection.pt,
        selection.eta,
        selection.phi,
        selection.mass,
        selection.btag,
        inputs.qgl[selection.jet_mask],
    )
    return best_candidate_features(
        ml,
        jets,
        selection.counts,
        inputs.lepton.take(selection.mask),
        inputs.event[selection.mask],
    )


def count_per_event(mask, counts):
    """Per event: how many of its objects pass the flat per-object ``mask``."""
    xp = flat_namespace(counts)
    ends = xp.cumsum(counts)
    passed = xp.concatenate([xp.zeros(1, dtype=xp.int64), xp.cumsum(mask, dtype=xp.int64)])
    return passed[ends] - passed[ends - counts]


def _fill(h: hist.Hist, observable, weight) -> None:
    """Fill on the host; ``weight`` is a scalar or an array matching ``observable``."""
    h.fill(
        observable=to_host(observable),
        weight=weight if isinstance(weight, float) else to_host(weight),
    )


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
