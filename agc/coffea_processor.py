"""The harness's analysis as a coffea processor, for the ``coffea`` engine.

A module of its own so that importing :mod:`agc.engines` (every run) does not import
``coffea.processor`` (about 0.6 s); workers import it by name when they unpickle the processor.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

from coffea import processor

from agc.chunks import ChunkTask, analyse


class HarnessProcessor(processor.ProcessorABC):
    """The harness's analysis as a coffea processor: one chunk's ``ChunkResult`` per call,
    keyed by the chunk's index (coffea merges the dicts of all chunks)."""

    def __init__(self, tasks: Sequence[ChunkTask], nbytes: dict[int, int]):
        self.tasks = {t.index: t for t in tasks}
        self.nbytes = nbytes

    def process(self, events):
        index = events.metadata["agc_index"]
        started, cpu0 = time.time(), time.process_time()
        result = analyse(events, self.tasks[index], self.nbytes[index], started=started, cpu0=cpu0)
        return {"chunks": {index: result}}

    def postprocess(self, accumulator):
        return accumulator
