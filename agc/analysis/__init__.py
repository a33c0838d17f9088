"""The AGC CMS ttbar analysis as pure functions on awkward arrays (spec §3-4).

Entry point: :func:`process_events`. The building blocks (:mod:`.selection`,
:mod:`.observables`, :mod:`.systematics`) are public for tests, notebooks and the GPU path.
"""

from agc.analysis.events import ANALYSIS_BRANCHES, CORE_BRANCHES, IO_BRANCH_SETS, collections
from agc.analysis.processor import DEFAULT_SEED, histogram_names, process_events

__all__ = [
    "ANALYSIS_BRANCHES",
    "CORE_BRANCHES",
    "DEFAULT_SEED",
    "IO_BRANCH_SETS",
    "collections",
    "histogram_names",
    "process_events",
]
