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

import numpy as np

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

    from agc.analysis import ANALYSIS_BRANCHES
    from agc.reader import read_chunk

    entry = json.load(open(catalog))["ttbar"]["nominal"]["files"][0]
    path = os.path.join(os.path.dirname(catalog), entry["path"])
    return read_chunk(path, ANALYSIS_BRANCHES, 0, entry["nevts"])[0]


class Chunk:
    """The steps of one 20k-event ttbar chunk."""

    timeout = 120

    def setup_cache(self):
        return _dataset()

    def setup(self, catalog):
        from agc.analysis.processor import _flat

        self.events = _events(catalog)
        self.jets, self.counts = _flat(
            self.events, "Jet", ("pt", "eta", "phi", "mass", "btagCSVV2", "jetId")
        )
        pt, eta, _, _, _, jet_id = self.jets
        from agc.analysis.selection import jet_mask

        self.selected = jet_mask(pt, eta, jet_id)

    def time_read_chunk(self, catalog):
        _events(catalog)

    def time_jet_selection(self, catalog):
        from agc.analysis.selection import jet_mask

        pt, eta, _, _, _, jet_id = self.jets
        jet_mask(pt, eta, jet_id)

    def time_trijet_mass(self, catalog):
        from agc.analysis.observables import trijet_mass_flat

        pt, eta, phi, mass, btag, _ = (c[self.selected] for c in self.jets)
        cs = np.concatenate([[0], np.cumsum(self.selected)])
        ends = np.cumsum(self.counts)
        trijet_mass_flat(pt, eta, phi, mass, btag, cs[ends] - cs[ends - self.counts])

    def time_histogram_fill(self, catalog):
        from agc.histograms import new_histogram

        new_histogram("4j2b").fill(observable=self.jets[0], weight=0.5)

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
        from agc.run import RunConfig, run

        return run(
            RunConfig(
                catalog=catalog, backend_options={"mode": "inprocess"}, chunksize=10_000, fit=False
            ),
            progress=False,
            write=False,
        )
