"""A run directory: what it holds, how it is written (all or nothing), what may replace it.

A run writes into a hidden staging directory beside its target (unique to the run) and renames
it into place only when everything is written (:class:`StagedRunDirectory`), so a failed or
interrupted run never leaves a directory that looks complete. An existing target is replaced
only when it is recognisably a run directory of ours (:func:`check_output_dir`): anything else
is refused before the run starts, so nothing of the user's is lost.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import hist

from agc.errors import UserError
from agc.histograms import write_json, write_root
from agc.metrics import RunRecord, TaskTiming, phases_frame, runs_frame, tasks_frame

log = logging.getLogger(__name__)

SUMMARY = "summary.json"
METRICS = "metrics"
#: Files of a run directory besides the plots (``*.png``, ``*.pdf``).
RUN_FILES = frozenset(
    {"histograms.root", "histograms.json", SUMMARY, METRICS, "workspace.json", "fit_result.json"}
)
PLOT_SUFFIXES = (".png", ".pdf")


class OutputError(UserError, OSError):
    """The output location cannot be used."""


def is_run_directory(path: Path) -> bool:
    """True if ``path`` holds a run of ours: a summary with a run id, and only our files."""
    try:
        summary = json.loads((path / SUMMARY).read_text())
        names = [p.name for p in path.iterdir()]
    except (OSError, ValueError):
        return False
    if not isinstance(summary, dict) or "run_id" not in summary:
        return False
    return all(n in RUN_FILES or Path(n).suffix in PLOT_SUFFIXES for n in names)


def check_output_dir(path: Path) -> None:
    """Refuse, before any work, an output location that the run could not use or must not
    replace: a file, or a directory with content that is not a run of ours."""
    if path.exists() and not path.is_dir():
        raise OutputError(f"--output {path}: is a file; give a directory")
    if path.is_dir() and any(path.iterdir()) and not is_run_directory(path):
        raise OutputError(
            f"--output {path}: exists and is not a run directory of this harness; choose a "
            "new or empty directory (nothing was changed)"
        )


class StagedRunDirectory:
    """``.{name}.{run_id}.partial`` beside ``target``: written into, then renamed into place."""

    def __init__(self, target: Path, run_id: str) -> None:
        self.target = Path(target)
        self.staging = self.target.parent / f".{self.target.name}.{run_id}.partial"
        (self.staging / METRICS).mkdir(parents=True)

    def commit(self) -> Path:
        """Move the staged outputs into place (replacing a previous run directory there)."""
        check_output_dir(self.target)  # it may have changed while the run ran
        if self.target.exists():
            shutil.rmtree(self.target)
        self.staging.rename(self.target)
        return self.target

    def discard(self) -> None:
        shutil.rmtree(self.staging, ignore_errors=True)


def write_histograms(directory: Path, histograms: Mapping[str, hist.Hist]) -> None:
    """``histograms.root`` (TH1D with sumw2) and ``histograms.json`` (the reference's form)."""
    write_root(histograms, directory / "histograms.root")
    write_json(histograms, directory / "histograms.json")


def write_record(
    directory: Path,
    summary: Mapping[str, Any],
    record: RunRecord,
    tasks: list[TaskTiming],
) -> None:
    """``summary.json`` and the tidy tables ``metrics/{runs,phases,tasks}.csv``."""
    metrics = directory / METRICS
    metrics.mkdir(exist_ok=True)
    runs_frame([record]).to_csv(metrics / "runs.csv", index=False)
    phases_frame([record]).to_csv(metrics / "phases.csv", index=False)
    if tasks:
        tasks_frame(record.run_id, tasks).to_csv(metrics / "tasks.csv", index=False)
    tmp = directory / f".{SUMMARY}.tmp-{os.getpid()}"
    tmp.write_text(json.dumps(summary, indent=1, default=str))
    os.replace(tmp, directory / SUMMARY)
