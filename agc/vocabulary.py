"""The words of the AGC ttbar analysis, written once: samples, regions, branches, histogram names.

Everything that names something lives here, so that the analysis, the catalog, the generator,
the fit and the plots agree by construction:

* **samples** (fileset keys ``{process}__{variation}``, spec §1) and the **processes**;
* **regions** and their observables, the histogram **binning** (spec §3) and the **fit binning**
  (spec §6);
* **branch sets** (spec §2): what one chunk reads, the 18 branches of the byte accounting, the
  reference's I/O-only sets;
* **histogram names** (spec §6): :func:`histogram_name` builds them, :func:`parse_histogram_name`
  reads them back, :func:`histogram_labels` lists the variations a sample fills;
* the **ML step** (spec §5): the 20 jet-parton assignment features, their binning, and the
  names of their histograms (:func:`ml_histogram_name`, :func:`parse_ml_histogram_name`);
* the **cabinetry** tables: cabinetry sample <-> process, cabinetry channel <-> region.

This module imports nothing of the package: the generator (:mod:`agc.synth`) uses it without
importing the analysis.
"""

from __future__ import annotations

from typing import NamedTuple

# -- samples and processes (spec §1) -------------------------------------------------------

#: Physics processes, in the order of the AGC catalog.
PROCESSES: tuple[str, ...] = (
    "ttbar",
    "single_top_s_chan",
    "single_top_t_chan",
    "single_top_tW",
    "wjets",
)

#: Name of the pseudo-data "process" (spec §6): built from the simulated samples.
PSEUDODATA = "pseudodata"

#: Variation of the samples that carry the systematics (spec §4).
NOMINAL = "nominal"

#: ttbar variations that are samples of their own (own files, own weight w), spec §1.
ALTERNATIVE_SAMPLES: tuple[str, ...] = ("scaledown", "scaleup", "ME_var", "PS_var")

#: The nine fileset keys of the AGC, in catalog order.
SAMPLES: tuple[str, ...] = (
    "ttbar__nominal",
    "ttbar__scaledown",
    "ttbar__scaleup",
    "ttbar__ME_var",
    "ttbar__PS_var",
    "single_top_s_chan__nominal",
    "single_top_t_chan__nominal",
    "single_top_tW__nominal",
    "wjets__nominal",
)

SAMPLE_SEPARATOR = "__"


def sample_key(process: str, variation: str = NOMINAL) -> str:
    """The fileset key of a sample: ``ttbar__PS_var``."""
    return f"{process}{SAMPLE_SEPARATOR}{variation}"


def split_sample_key(key: str) -> tuple[str, str]:
    """``ttbar__PS_var`` -> (``ttbar``, ``PS_var``); raises ValueError if it is not a key."""
    process, separator, variation = key.partition(SAMPLE_SEPARATOR)
    if not separator or not process or not variation:
        raise ValueError(f"{key!r} is not a sample key of the form process__variation")
    return process, variation


# -- regions, observables and binning (spec §3, §6) ----------------------------------------

#: 4j1b: control region, observable H_T; 4j2b: signal region, observable m_bjj.
REGIONS: tuple[str, ...] = ("4j1b", "4j2b")

#: Axis label of each region's observable.
OBSERVABLE_LABELS: dict[str, str] = {"4j1b": "$H_T$ [GeV]", "4j2b": "$m_{bjj}$ [GeV]"}

#: Every output histogram: 25 bins of 20 GeV in [50, 550] GeV, with under- and overflow.
N_BINS, LOW, HIGH = 25, 50.0, 550.0

#: The fit uses the histograms from FIT_START GeV, FIT_REBIN bins merged: 11 bins of 40 GeV.
FIT_START, FIT_REBIN = 110.0, 2
FIT_BIN_WIDTH = FIT_REBIN * (HIGH - LOW) / N_BINS
#: Bin edges of the fit (GeV): 110, 150, ..., 550.
FIT_BINNING: tuple[float, ...] = tuple(
    FIT_START + i * FIT_BIN_WIDTH for i in range(round((HIGH - FIT_START) / FIT_BIN_WIDTH) + 1)
)

# -- systematic variations (spec §4) -------------------------------------------------------

#: Jet-pT variations: the selection is re-run with the varied pT.
JET_PT_VARIATIONS: tuple[str, ...] = ("pt_scale_up", "pt_res_up")
#: Number of b-tag weight nuisance parameters (``btag_var_0`` ... ``btag_var_3``).
N_BTAG_VARIATIONS = 4
#: The W+jets scale weight variation.
WJETS_SCALE_VARIATION = "scale_var"
DIRECTIONS: tuple[str, ...] = ("up", "down")


def btag_variation(index: int, direction: str) -> str:
    """``btag_var_{index}_{direction}``."""
    return f"btag_var_{index}_{direction}"


def weight_variations(process: str) -> list[str]:
    """Event-weight systematics of a nominal sample (without the _up/_down suffix)."""
    names = [f"btag_var_{i}" for i in range(N_BTAG_VARIATIONS)]
    if process == "wjets":
        names.append(WJETS_SCALE_VARIATION)
    return names


def histogram_labels(process: str, variation: str, systematics: bool = True) -> list[str]:
    """Variation labels a sample fills: only nominal samples get systematics (spec §4)."""
    if variation != NOMINAL:
        return [variation]
    labels = [NOMINAL]
    if systematics:
        labels += list(JET_PT_VARIATIONS)
        labels += [f"{w}_{d}" for w in weight_variations(process) for d in DIRECTIONS]
    return labels


# -- histogram names (spec §6) -------------------------------------------------------------


class HistogramName(NamedTuple):
    """A parsed output name: ``4j2b_ttbar_btag_var_1_up`` -> (4j2b, ttbar, btag_var_1_up)."""

    region: str
    process: str
    variation: str = NOMINAL

    @property
    def sample(self) -> str | None:
        """The fileset key whose events fill this histogram (None for pseudodata)."""
        if self.process == PSEUDODATA:
            return None
        own = self.variation if self.variation in ALTERNATIVE_SAMPLES else NOMINAL
        return sample_key(self.process, own)

    def __str__(self) -> str:
        return histogram_name(self.region, self.process, self.variation)


def histogram_name(region: str, process: str, variation: str = NOMINAL) -> str:
    """``{region}_{process}`` for nominal, else ``{region}_{process}_{variation}``."""
    if variation == NOMINAL:
        return f"{region}_{process}"
    return f"{region}_{process}_{variation}"


def histogram_names(process: str, variation: str, systematics: bool = True) -> list[str]:
    """Every output name one sample fills (before pseudodata)."""
    return _names(REGIONS, process, variation, systematics)


def _names(prefixes, process: str, variation: str, systematics: bool) -> list[str]:
    """``{prefix}_{process}[_{label}]`` for each prefix (region or ML feature) and label."""
    labels = histogram_labels(process, variation, systematics)
    return [histogram_name(prefix, process, label) for prefix in prefixes for label in labels]


def parse_histogram_name(
    name: str, processes: tuple[str, ...] = (*PROCESSES, PSEUDODATA)
) -> HistogramName | None:
    """The inverse of :func:`histogram_name`; None for a name of no known region and process.

    Process names contain underscores (``single_top_tW``), so the longest matching process wins.
    """
    region, _, rest = name.partition("_")
    if region not in REGIONS:
        return None
    for process in sorted(processes, key=len, reverse=True):
        if rest == process:
            return HistogramName(region, process)
        if rest.startswith(process + "_"):
            return HistogramName(region, process, rest[len(process) + 1 :])
    return None


# -- the ML step: jet-parton assignment features and their histograms (spec §5) -------------

#: The region whose events get the jet-parton assignment (the signal region).
ML_REGION = "4j2b"
#: Jets considered for the assignment: the leading ``min(n_jets, MAX_N_JETS)`` selected jets.
MAX_N_JETS = 6

#: The 20 features of a candidate assignment (W1, W2, b_had, b_lep), in the models' order.
ML_FEATURES: tuple[str, ...] = (
    "deltar_leptonbtoplep",
    "deltar_w1w2",
    "deltar_w1btophad",
    "deltar_w2btophad",
    "mass_leptonbtoplep",
    "mass_w1w2",
    "mass_w1w2btophad",
    "pt_w1w2btophad",
    "pt_w1",
    "pt_w2",
    "pt_btophad",
    "pt_btoplep",
    "btag_w1",
    "btag_w2",
    "btag_btophad",
    "btag_btoplep",
    "qgl_w1",
    "qgl_w2",
    "qgl_btophad",
    "qgl_btoplep",
)

#: Bins of every ML feature histogram (with under- and overflow).
ML_N_BINS = 25
#: Histogram range (low, high) of each feature: Delta R, masses, pT, b tag, qgl (spec §5).
ML_RANGES: dict[str, tuple[float, float]] = {
    **dict.fromkeys(ML_FEATURES[0:4], (0.0, 6.0)),
    **dict.fromkeys(ML_FEATURES[4:6], (50.0, 300.0)),
    **dict.fromkeys(ML_FEATURES[6:8], (50.0, 550.0)),
    **dict.fromkeys(ML_FEATURES[8:12], (25.0, 300.0)),
    **dict.fromkeys(ML_FEATURES[12:16], (0.0, 1.0)),
    **dict.fromkeys(ML_FEATURES[16:20], (-1.0, 1.0)),
}

_OBJECT_LABELS = {
    "w1": "first W jet",
    "w2": "second W jet",
    "btophad": "$b_{top-had}$ jet",
    "btoplep": "$b_{top-lep}$ jet",
}
#: Axis label of each feature.
ML_FEATURE_LABELS: dict[str, str] = {
    "deltar_leptonbtoplep": "$\\Delta R$($b_{top-lep}$ jet, lepton)",
    "deltar_w1w2": "$\\Delta R$(W jets)",
    "deltar_w1btophad": "$\\Delta R$(first W jet, $b_{top-had}$ jet)",
    "deltar_w2btophad": "$\\Delta R$(second W jet, $b_{top-had}$ jet)",
    "mass_leptonbtoplep": "mass of $b_{top-lep}$ jet + lepton [GeV]",
    "mass_w1w2": "mass of the W jets [GeV]",
    "mass_w1w2btophad": "mass of the W jets + $b_{top-had}$ jet [GeV]",
    "pt_w1w2btophad": "$p_T$ of the W jets + $b_{top-had}$ jet [GeV]",
    **{f"pt_{k}": f"$p_T$ of the {v} [GeV]" for k, v in _OBJECT_LABELS.items()},
    **{f"btag_{k}": f"btagCSVV2 of the {v}" for k, v in _OBJECT_LABELS.items()},
    **{f"qgl_{k}": f"quark-gluon likelihood of the {v}" for k, v in _OBJECT_LABELS.items()},
}


class MLHistogramName(NamedTuple):
    """A parsed ML name: ``mass_w1w2_ttbar_pt_scale_up`` -> (mass_w1w2, ttbar, pt_scale_up)."""

    feature: str
    process: str
    variation: str = NOMINAL

    def __str__(self) -> str:
        return ml_histogram_name(self.feature, self.process, self.variation)


def ml_histogram_name(feature: str, process: str, variation: str = NOMINAL) -> str:
    """``{feature}_{process}`` for nominal, else ``{feature}_{process}_{variation}`` (spec §5):
    the pattern of :func:`histogram_name` with the feature in place of the region."""
    return histogram_name(feature, process, variation)


def ml_histogram_names(process: str, variation: str, systematics: bool = True) -> list[str]:
    """Every ML name one sample fills: each feature for the variations of its 4j2b histograms."""
    return _names(ML_FEATURES, process, variation, systematics)


def parse_ml_histogram_name(
    name: str, processes: tuple[str, ...] = (*PROCESSES, PSEUDODATA)
) -> MLHistogramName | None:
    """The inverse of :func:`ml_histogram_name`; None for a name of no feature and process.

    Feature and process names share prefixes (``pt_w1``, ``pt_w1w2btophad``; ``single_top_tW``),
    so the longest match wins for both.
    """
    for feature in sorted(ML_FEATURES, key=len, reverse=True):
        if not name.startswith(feature + "_"):
            continue
        rest = name[len(feature) + 1 :]
        for process in sorted(processes, key=len, reverse=True):
            if rest == process:
                return MLHistogramName(feature, process)
            if rest.startswith(process + "_"):
                return MLHistogramName(feature, process, rest[len(process) + 1 :])
    return None


# -- branch sets (spec §2) -----------------------------------------------------------------

#: Data branches of the core analysis; their counters come with them when uproot reads them.
CORE_BRANCHES: tuple[str, ...] = (
    "Electron_pt",
    "Electron_eta",
    "Electron_cutBased",
    "Electron_sip3d",
    "Muon_pt",
    "Muon_eta",
    "Muon_tightId",
    "Muon_sip3d",
    "Muon_pfRelIso04_all",
    "Jet_pt",
    "Jet_eta",
    "Jet_phi",
    "Jet_mass",
    "Jet_btagCSVV2",
    "Jet_jetId",
)
COUNTER_BRANCHES: tuple[str, ...] = ("nJet", "nElectron", "nMuon")
#: Event identity: the seed of the per-jet resolution smear, independent of chunking.
EVENT_ID_BRANCHES: tuple[str, ...] = ("run", "luminosityBlock", "event")
#: What the ML step reads in addition to the core analysis (spec §2, §5): the jets'
#: quark-gluon likelihood, the lepton four-vectors, and the event number of the even/odd split.
ML_EXTRA_BRANCHES: tuple[str, ...] = (
    "Jet_qgl",
    "Electron_phi",
    "Electron_mass",
    "Muon_phi",
    "Muon_mass",
    "event",
)
#: Everything one chunk of the analysis reads.
ANALYSIS_BRANCHES: tuple[str, ...] = CORE_BRANCHES + EVENT_ID_BRANCHES
#: Everything one chunk of the analysis with the ML step reads (``event`` is already an
#: analysis branch): 23 branches.
ML_BRANCHES: tuple[str, ...] = ANALYSIS_BRANCHES + tuple(
    b for b in ML_EXTRA_BRANCHES if b not in ANALYSIS_BRANCHES
)
#: The 18 branches of spec §2 (5.08 % of the bytes of the real files): the byte accounting.
SPEC_BRANCHES: tuple[str, ...] = CORE_BRANCHES + COUNTER_BRANCHES
#: The 24 branches of spec §2 with the ML step (6.31 % of the bytes of the real files).
ML_SPEC_BRANCHES: tuple[str, ...] = SPEC_BRANCHES + ML_EXTRA_BRANCHES

#: ``io_branches`` of a run: the analysis branches, or one of :data:`IO_BRANCH_SETS`.
ANALYSIS_BRANCH_SET = "analysis"
#: ``io_branches`` name of the branches of the analysis with the ML step (:data:`ML_BRANCHES`).
ML_BRANCH_SET = "ml"

#: I/O-only branch sets: those of the reference (``IO_BRANCHES``, spec §2/§9), keyed by the
#: percentage of file bytes they are on the real inputs, and :data:`ML_BRANCH_SET`, what a chunk
#: of the analysis with the ML step reads.
IO_BRANCH_SETS: dict[str, tuple[str, ...]] = {
    "4.1": ("Jet_pt", "Jet_eta", "Jet_phi", "Jet_btagCSVV2", "Jet_mass", "Muon_pt", "Electron_pt"),
    "15": ("LHEPdfWeight", "GenPart_pdgId", "CorrT1METJet_phi"),
    "25": ("LHEPdfWeight", "GenPart_pt", "GenPart_eta", "GenPart_pdgId", "LHEScaleWeight"),
    ML_BRANCH_SET: ML_BRANCHES,
}


def branch_set(name: str) -> tuple[str, ...]:
    """The branches of an ``io_branches`` name (KeyError for an unknown one)."""
    return ANALYSIS_BRANCHES if name == ANALYSIS_BRANCH_SET else IO_BRANCH_SETS[name]


# -- the cabinetry model (spec §6) ---------------------------------------------------------

#: cabinetry sample name -> process (the sample's ``SamplePath``); Pseudodata is the "data".
CABINETRY_SAMPLES: dict[str, str] = {
    "Pseudodata": PSEUDODATA,
    "ttbar": "ttbar",
    "W+jets": "wjets",
    "single top, s-channel": "single_top_s_chan",
    "single top, t-channel": "single_top_t_chan",
    "tW": "single_top_tW",
}
#: cabinetry channel (region) name -> region (the region's ``RegionPath``).
CABINETRY_REGIONS: dict[str, str] = {"4j1b CR": "4j1b", "4j2b SR": "4j2b"}
#: The parameter of interest, the ttbar normalisation factor.
POI = "ttbar_norm"


def process_of_cabinetry_sample(sample: str) -> str:
    """The process of a cabinetry sample name (the name itself if it is no known sample)."""
    return CABINETRY_SAMPLES.get(sample, sample)


def region_of_channel(channel: str) -> str:
    """The region of a cabinetry channel (``4j1b CR`` -> ``4j1b``)."""
    return CABINETRY_REGIONS.get(channel, channel.replace(" ", "_"))
