"""asv suite: the hot functions of a chunk and a small end-to-end run.

Run from the project root (offline, in the current environment):

    asv machine --yes
    asv run --python=same --quick --set-commit-hash $(git rev-parse HEAD)
    agc report RESULTS_DIR --asv-results .asv/results     # offline page from asv's JSON

Inputs are a small synthetic dataset (minimal layout) generated once per asv process in
``setup_cache``.
"""

from __future__ import annotations

import os
import tempfile

#: one chunk of ttbar events (the busiest sample: systematics, trijets)
EVENTS = {"ttbar__nominal": (1, 20_000), "wjets__nominal": (1, 5_000)}


def _dataset() -> str:
    from agc import synth

    root = os.environ.get("AGC_ASV_DATA") or tempfile.mkdtemp(prefix="agc-asv-")
    catalog = os.path.join(root, synth.CATALOG_NAME)
    if not os.path.exists(catalog):
        synth.generate(root, events=EVENTS, layout="minimal", seed=1, workers=1)
    return catalog


def _events(catalog: str):
    import json

    from agc.reader import read_chunk
    from agc.vocabulary import ANALYSIS_BRANCHES

    entry = json.load(open(catalog))["ttbar"]["nominal"]["files"][0]
    path = os.path.join(os.path.dirname(catalog), entry["path"])
    return read_chunk(path, ANALYSIS_BRANCHES, 0, entry["nevts"])[0]


class Chunk:
    """The steps of one 20k-event ttbar chunk."""

    timeout = 120

    def setup_cache(self):
        return _dataset()

    def setup(self, catalog):
        from agc.analysis import objects
        from agc.analysis.selection import jet_mask

        self.events = _events(catalog)
        self.objects = objects(self.events)
        jets = self.objects.jets
        self.selected = jet_mask(jets["pt"], jets["eta"], jets["jetId"])

    def time_read_chunk(self, catalog):
        _events(catalog)

    def time_objects(self, catalog):
        from agc.analysis import objects

        objects(self.events)

    def time_jet_selection(self, catalog):
        from agc.analysis.selection import jet_mask

        jets = self.objects.jets
        jet_mask(jets["pt"], jets["eta"], jets["jetId"])

    def time_select_regions(self, catalog):
        from agc.analysis import select_regions

        select_regions(self.objects, self.objects.jets["pt"])

    def time_trijet_mass(self, catalog):
        from agc.analysis import count_per_event
        from agc.analysis.observables import trijet_mass_flat

        jets = {k: v[self.selected] for k, v in self.objects.jets.items()}
        counts = count_per_event(self.selected, self.objects.jet_counts)
        trijet_mass_flat(
            jets["pt"], jets["eta"], jets["phi"], jets["mass"], jets["btagCSVV2"], counts
        )

    def time_histogram_fill(self, catalog):
        from agc.histograms import new_histogram

        new_histogram("4j2b").fill(observable=self.objects.jets["pt"], weight=0.5)

    def time_process_events(self, catalog):
        from agc.analysis import process_events

        process_events(self.events, process="ttbar", variation="nominal", weight=1.0)

    def peakmem_process_events(self, catalog):
        from agc.analysis import process_events

        process_events(self.events, process="ttbar", variation="nominal", weight=1.0)


class Generator:
    """The synthetic NanoAOD generator (5k ttbar events, minimal layout, one process)."""

    timeout = 120

    def time_generate_5k_events(self):
        from agc import synth

        with tempfile.TemporaryDirectory() as tmp:
            synth.generate(
                tmp, events={"ttbar__nominal": (1, 5_000)}, layout="minimal", seed=3, workers=1
            )


class EndToEnd:
    """``run()`` in-process over the small dataset (25k events), no outputs written."""

    timeout = 300

    def setup_cache(self):
        return _dataset()

    def time_run_inprocess(self, catalog):
        self._run(catalog)

    def track_events_per_second(self, catalog):
        return self._run(catalog).events_per_second

    track_events_per_second.unit = "events/s"

    @staticmethod
    def _run(catalog):
        from agc import RunConfig, run

        return run(
            RunConfig(catalog=catalog, mode="inprocess", chunksize=10_000, fit=False),
            progress=False,
            write=False,
        )
