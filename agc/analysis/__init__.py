"""The AGC CMS ttbar analysis as pure functions on awkward arrays (spec §3-4).

Entry point: :func:`process_events`, which runs :func:`objects` and :func:`select_regions` and
fills the histograms. The building blocks (:mod:`.selection`, :mod:`.observables`,
:mod:`.systematics`) are public for tests, notebooks and the GPU path; the names of samples,
regions, branches and histograms are in :mod:`agc.vocabulary`. The optional ML step (spec §5)
is :mod:`.ml`: :func:`load_models` once, then ``process_events(..., ml=models)``.
"""

from agc.analysis.ml import (
    MLModels,
    ModelFilesError,
    check_models,
    load_models,
    models_fingerprint,
)
from agc.analysis.processor import (
    Objects,
    RegionEvents,
    count_per_event,
    objects,
    process_events,
    select_regions,
)
from agc.analysis.xp import to_device

__all__ = [
    "MLModels",
    "ModelFilesError",
    "Objects",
    "RegionEvents",
    "check_models",
    "count_per_event",
    "load_models",
    "models_fingerprint",
    "objects",
    "process_events",
    "select_regions",
    "to_device",
]
