"""Physics constants of the AGC CMS ttbar analysis (spec §1.2, §1.3, §3).

These are the values of the reference *code*, which the reference histograms were made with
(the AGC docs list other cross sections; the code wins, spec §11.1). The names of samples and
regions are in :mod:`agc.vocabulary`.
"""

from __future__ import annotations

#: Integrated luminosity in pb^-1, hard-coded in the reference processor.
LUMINOSITY_PB = 3378.0

#: Seed of the ``pt_res_up`` smear (see :mod:`agc.analysis.systematics`).
DEFAULT_SEED = 20240501

#: Cross sections in pb per process, exactly as computed in the reference code.
CROSS_SECTIONS_PB: dict[str, float] = {
    "ttbar": 396.87 + 332.97,
    "single_top_s_chan": 2.0268 + 1.2676,
    "single_top_t_chan": (36.993 + 22.175) / 0.252,
    "single_top_tW": 37.936 + 37.906,
    "wjets": 61457 * 0.252,
}


def sample_weight(process: str, nevts_processed: int) -> float:
    """Per-event weight w = sigma * L / N (spec §1.3); N: the events of the files processed."""
    if nevts_processed <= 0:
        raise ValueError(f"sample {process!r}: number of processed events must be > 0")
    return CROSS_SECTIONS_PB[process] * LUMINOSITY_PB / nevts_processed
