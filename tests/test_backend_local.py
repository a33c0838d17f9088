"""The local backend: its Dask workers' process environment; its process pool, which
survives a killed worker, and whose workers never outlive the main process."""

import multiprocessing
import os
import signal
import subprocess
import sys
import time
from functools import partial
from pathlib import Path

import pytest
from conftest import assert_same_histograms

import agc.engines
import agc.runner
from agc import RunConfig, run
from agc.chunks import process_chunk
from backends.base import BackendError
from backends.local import (
    LocalBackend,
    ProcessPoolTaskExecutor,
    die_with_parent,
    worker_environment,
)


def _environ(names):
    return {name: os.environ.get(name) for name in names}


def test_dask_workers_keep_glibcs_dynamic_mmap_threshold():
    """distributed's MALLOC_TRIM_THRESHOLD_ is not passed on to the workers; its other
    settings (one BLAS/OpenMP thread) are."""
    assert "MALLOC_TRIM_THRESHOLD_" not in worker_environment()
    executor = LocalBackend(mode="dask", workers=1).start()
    try:
        env = executor.client.run(_environ, ["MALLOC_TRIM_THRESHOLD_", "OMP_NUM_THREADS"])
    finally:
        executor.close()
    (worker_env,) = env.values()
    assert worker_env == {"MALLOC_TRIM_THRESHOLD_": None, "OMP_NUM_THREADS": "1"}


# -- the process pool: a worker that dies, and workers that die with their parent -----------
def _kill_once(markers: Path, doomed: frozenset, fn, task):
    """``fn(task)``, but the first time a task of ``doomed`` comes, its worker is SIGKILLed
    (as the kernel's OOM killer does); a marker file makes the retry succeed."""
    key = getattr(task, "index", task)
    marker = markers / f"killed-{key}"
    if key in doomed and not marker.exists():
        marker.touch()
        os.kill(os.getpid(), signal.SIGKILL)
    return fn(task)


def _always_die(task):
    os.kill(os.getpid(), signal.SIGKILL)


def test_a_killed_worker_is_replaced_and_its_task_run_again(tmp_path, caplog):
    executor = ProcessPoolTaskExecutor(1)
    try:
        results = list(executor.map_unordered(partial(_kill_once, tmp_path, {-5}, abs), [-5]))
    finally:
        executor.close()
    assert results == [5]
    assert (executor.worker_restarts, executor.tasks_resubmitted) == (1, 1)
    assert "a process-pool worker died" in caplog.text


def test_a_killed_worker_loses_no_result_and_repeats_none(tmp_path):
    """Tasks in flight when the pool breaks run again; those that returned are not repeated."""
    executor = ProcessPoolTaskExecutor(2)
    tasks = list(range(-20, 0))
    try:
        results = list(executor.map_unordered(partial(_kill_once, tmp_path, {-13}, abs), tasks))
    finally:
        executor.close()
    assert sorted(results) == sorted(abs(t) for t in tasks)
    assert executor.worker_restarts == 1
    assert 1 <= executor.tasks_resubmitted <= 2 * executor.workers


def test_workers_that_keep_dying_fail_clearly_after_max_restarts():
    executor = ProcessPoolTaskExecutor(1)
    assert executor.max_restarts == 3
    try:
        with pytest.raises(BackendError, match="workers keep dying.*memory"):
            list(executor.map_unordered(_always_die, [1, 2]))
    finally:
        executor.close()
    assert executor.worker_restarts == 3


@pytest.mark.fault(
    "SIGKILL of a process-pool worker (processes)",
    "survived",
    histograms="identical to an in-process run",
)
def test_a_run_survives_a_killed_pool_worker(small_catalog, tmp_path, monkeypatch, caplog):
    """Through ``agc.run``: the histograms of a run that lost a worker mid-run are those of an
    in-process run, to the last bit."""
    config = {"catalog": str(small_catalog), "chunksize": 1000, "fit": False}
    reference = run(RunConfig(**config, mode="inprocess"), progress=False, write=False)
    killer = partial(_kill_once, tmp_path, frozenset({3, 11}), process_chunk)
    monkeypatch.setattr(agc.engines, "process_chunk", killer)  # before the pool forks
    result = run(RunConfig(**config, mode="processes", workers=2), progress=False, write=False)
    assert_same_histograms(reference.histograms, result.histograms, rtol=0)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["killed-11", "killed-3"]
    # the run record and the summary say what was lost
    assert result.record.worker_restarts == 2 and 2 <= result.record.tasks_resubmitted <= 8
    assert result.summary["worker_restarts"] == 2
    assert caplog.text.count("a process-pool worker died") == 2


_POOL_RUN = """
import sys, time
from pathlib import Path
import agc.engines
import agc.runner
from agc import RunConfig, run
from agc.chunks import process_chunk

def slow(task):
    Path(sys.argv[2]).touch()
    time.sleep(1)
    return process_chunk(task)

agc.engines.process_chunk = slow
run(RunConfig(catalog=sys.argv[1], mode="processes", workers=2, chunksize=500, fit=False),
    progress=False, write=False)
"""


def _alive(pids) -> set[int]:
    """The processes of ``pids`` that still run (a zombie has ended: only its entry is left)."""
    import psutil

    alive = set()
    for pid in pids:
        try:
            if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                alive.add(pid)
        except psutil.NoSuchProcess:
            pass
    return alive


def _wait_until_gone(pids, seconds: float = 10) -> set[int]:
    deadline = time.monotonic() + seconds
    while (alive := _alive(pids)) and time.monotonic() < deadline:
        time.sleep(0.1)
    return alive


@pytest.mark.slow
@pytest.mark.fault(
    "SIGKILL/SIGTERM of the main process (processes)",
    "failed clearly",
    histograms="none written; no pool worker outlives it",
)
@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM], ids=["SIGKILL", "SIGTERM"])
def test_pool_workers_die_with_the_main_process(small_catalog, tmp_path, sig):
    psutil = pytest.importorskip("psutil")
    started = tmp_path / "processing"
    child = subprocess.Popen([sys.executable, "-c", _POOL_RUN, str(small_catalog), str(started)])
    workers: list[int] = []
    try:
        deadline = time.monotonic() + 60
        while not started.exists() and time.monotonic() < deadline:
            assert child.poll() is None, "the run ended before it processed"
            time.sleep(0.05)
        assert started.exists(), "no chunk was processed within 60 s"
        workers = [p.pid for p in psutil.Process(child.pid).children(recursive=True)]
        assert len(workers) >= 2  # the pool forks both at its first task
        child.send_signal(sig)
        assert child.wait(timeout=30) == -sig
        assert _wait_until_gone(workers) == set(), f"pool workers survived {sig.name}"
    finally:
        child.kill()
        child.wait(timeout=30)
        for pid in _alive(workers):  # a failed test leaves no process behind
            os.kill(pid, signal.SIGKILL)


_ORPHANED = """
import os, sys, time
from backends.local import die_with_parent

parent = os.getpid()
pid = os.fork()
if pid == 0:
    sys.platform = "elsewhere"  # not Linux: the polling thread, not prctl
    die_with_parent(parent, poll_seconds=0.1)
    time.sleep(60)
    os._exit(0)
print(pid, flush=True)
time.sleep(60)
"""


def test_away_from_linux_a_thread_ends_the_worker_when_its_parent_dies():
    child = subprocess.Popen([sys.executable, "-c", _ORPHANED], stdout=subprocess.PIPE, text=True)
    grandchild = None
    try:
        grandchild = int(child.stdout.readline())
        assert _alive([grandchild]) == {grandchild}
        child.kill()
        child.wait(timeout=30)
        assert _wait_until_gone([grandchild]) == set()
    finally:
        child.kill()
        child.wait(timeout=30)
        if grandchild is not None and _alive([grandchild]):
            os.kill(grandchild, signal.SIGKILL)


def test_a_worker_whose_parent_died_before_its_initializer_ends_at_once():
    """The parent-death signal would never come: the worker ends itself."""
    ctx = multiprocessing.get_context("fork")
    for parent, exitcode in ((os.getpid(), 0), (1, 1)):  # pid 1: not this worker's parent
        proc = ctx.Process(target=die_with_parent, args=(parent,))
        proc.start()
        proc.join(timeout=30)
        assert proc.exitcode == exitcode
