"""A run directory: what it holds, how it is written (all or nothing), what may replace it.

A run writes into a hidden staging directory beside its target (unique to the run) and renames
it into place only when everything is written (:class:`StagedRunDirectory`), so a failed or
interrupted run never leaves a directory that looks complete. An existing target is replaced
only when it is recognisably a run directory of ours (:func:`check_output_dir`): anything else
is refused before the run starts, so nothing of the user's is lost.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import socket
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import hist

from agc.errors import UserError
from agc.fileio import atomic_write_text
from agc.histograms import ML_HISTOGRAMS_FILE, add_offset, write_json, write_root
from agc.metrics import RunRecord, TaskTiming, phases_frame, runs_frame, tasks_frame
from agc.processes import alive

log = logging.getLogger(__name__)

SUMMARY = "summary.json"
METRICS = "metrics"
#: Files of a run directory besides the plots (``*.png``, ``*.pdf``).
RUN_FILES = frozenset(
    {
        "histograms.root",
        "histograms.json",
        SUMMARY,
        METRICS,
        "workspace.json",
        "fit_result.json",
        ML_HISTOGRAMS_FILE,
        "histograms_ml.json",
        "workspace_ml.json",
    }
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


#: About what a run writes (histograms, summary, metrics, workspace, plots; with the ML step
#: ~6 MB): a place with less free space is refused before any work.
EXPECTED_OUTPUT_BYTES = 8 * 2**20


def check_output_dir(path: Path, expected_bytes: int | None = None) -> None:
    """Refuse, before any work, an output location that the run could not use or must not
    replace: a file, a place it cannot write or without room for ``expected_bytes``, or a
    directory with content that is not a run of ours."""
    if path.exists() and not path.is_dir():
        raise OutputError(f"--output {path}: is a file; give a directory")
    existing = next(p for p in (path.parent, *path.parent.parents) if p.exists())
    if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        raise OutputError(
            f"--output {path}: {existing} is not a directory this user can write; choose "
            "another place"
        )
    expected_bytes = EXPECTED_OUTPUT_BYTES if expected_bytes is None else expected_bytes
    free = shutil.disk_usage(existing).free
    if free < expected_bytes:
        raise OutputError(
            f"--output {path}: {existing} has {free / 2**20:.1f} MiB free, a run writes about "
            f"{expected_bytes / 2**20:.0f} MiB; free some space or choose another place"
        )
    if path.is_dir() and any(path.iterdir()) and not is_run_directory(path):
        raise OutputError(
            f"--output {path}: exists and is not a run directory of this harness; choose a "
            "new or empty directory (nothing was changed)"
        )


class OutputLock:
    """``.{name}.lock`` beside a run directory: one run at a time writes it.

    Taken when the run is planned, released when it ends. A lock whose run is gone (same
    host, process not alive: killed, or the machine rebooted) is taken over, and the staging
    directories that run left (``.{name}.*.partial``) are removed then: nobody else could
    be writing them. A live lock is refused, naming the run that holds it.
    """

    def __init__(self, target: Path, run_id: str) -> None:
        self.target = Path(target)
        self.path = self.target.parent / f".{self.target.name}.lock"
        self.run_id = run_id

    def acquire(self) -> OutputLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        mine = {"run_id": self.run_id, "pid": os.getpid(), "host": socket.gethostname()}
        for _ in range(3):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                self._take_over_if_stale()
                continue
            except OSError as err:
                raise OutputError(f"--output {self.target}: cannot be written ({err})") from None
            with os.fdopen(fd, "w") as f:
                json.dump(mine, f)
            for stale in self.target.parent.glob(f".{self.target.name}.*.partial"):
                log.warning("removing %s, left by a run that did not finish", stale)
                shutil.rmtree(stale, ignore_errors=True)
            return self
        raise OutputError(f"--output {self.target}: could not take {self.path}")

    def _take_over_if_stale(self) -> None:
        try:
            holder = json.loads(self.path.read_text())
            age = time.time() - self.path.stat().st_mtime
        except FileNotFoundError:
            return  # released meanwhile: try again
        except (OSError, ValueError):
            holder, age = {}, 0.0
        if not holder and age < 10:  # being written this very moment by the run taking it
            holder = {"run_id": "(starting)", "pid": "?", "host": socket.gethostname()}
            running = True
        else:
            running = holder.get("host") != socket.gethostname() or alive(holder.get("pid"))
        if holder and running:
            raise OutputError(
                f"--output {self.target}: run {holder.get('run_id')} (pid {holder.get('pid')} "
                f"on {holder.get('host')}) is writing it; wait for it or choose another "
                f"directory (if that run is gone, remove {self.path})"
            )
        # gone: move the lock aside atomically, so that of two runs only one takes it over
        aside = self.path.with_name(f"{self.path.name}.stale-{os.getpid()}")
        try:
            os.replace(self.path, aside)
            aside.unlink()
        except FileNotFoundError:
            pass

    def release(self) -> None:
        try:
            if json.loads(self.path.read_text()).get("run_id") == self.run_id:
                self.path.unlink()
        except (OSError, ValueError):
            pass

    def __enter__(self) -> OutputLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


class StagedRunDirectory:
    """``.{name}.{run_id}.partial`` beside ``target``: written into, then renamed into place."""

    def __init__(self, target: Path, run_id: str) -> None:
        self.target = Path(target)
        self.staging = self.target.parent / f".{self.target.name}.{run_id}.partial"
        with self.writing():
            (self.staging / METRICS).mkdir(parents=True)

    @contextlib.contextmanager
    def writing(self) -> Iterator[None]:
        """Any ``OSError`` of the ``with`` block (full disk, read-only file system, a file
        where a directory should be) as one :class:`OutputError` naming the run directory."""
        try:
            yield
        except UserError:
            raise
        except OSError as err:
            where = f" ({err.filename})" if err.filename else ""
            raise OutputError(
                f"--output {self.target}: writing failed: {err.strerror or err}{where}; nothing "
                "was left there"
            ) from err

    def commit(self) -> Path:
        """Move the staged outputs into place (replacing a previous run directory there)."""
        check_output_dir(self.target, expected_bytes=0)  # it may have changed while we ran
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


def write_ml_histograms(directory: Path, histograms: Mapping[str, hist.Hist]) -> None:
    """``histograms_ml.root`` and ``histograms_ml.json``: the ML feature histograms of every
    sample and variation of the run, each with :data:`agc.histograms.ML_OFFSET` (1e-6) added
    to every bin, as the reference writes them (an unfilled one is 1e-6 everywhere)."""
    filled = add_offset(histograms)
    write_root(filled, directory / ML_HISTOGRAMS_FILE)
    write_json(filled, directory / "histograms_ml.json")


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
    atomic_write_text(directory / SUMMARY, json.dumps(summary, indent=1, default=str))
