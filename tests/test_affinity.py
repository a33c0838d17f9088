"""File-affine scheduling: the chunks of one file go to one worker, which opens it once; a
worker without files left takes chunks of another's; histograms stay those of one process."""

import os
from collections import Counter
from functools import partial

import pytest
from conftest import assert_same_histograms

from agc import RunConfig, run
from agc.reader import close_open_files
from backends.local import _END, AffinityQueues, ProcessPoolTaskExecutor, assign_by_weight

CHUNKSIZE = 500  # small_catalog: 10 files, 4-8 chunks each


def _drain(queues: AffinityQueues, worker: int) -> list:
    out = []
    while (task := queues.next(worker)) is not _END:
        out.append(task)
    return out


def test_keys_are_dealt_heaviest_first_to_the_least_loaded_worker():
    owner = assign_by_weight({"a": 5, "b": 3, "c": 3, "d": 2, "e": 1}, 2)
    load = Counter()
    for key, w in owner.items():
        load[w] += {"a": 5, "b": 3, "c": 3, "d": 2, "e": 1}[key]
    assert owner["a"] == 0 and owner["b"] == 1 and owner["c"] == 1
    assert sorted(load.values()) == [7, 7]


def test_each_worker_runs_whole_groups_in_order():
    tasks = [(f, i) for f in "abcd" for i in range(3)]
    queues = AffinityQueues(tasks, 2, affinity=lambda t: (t[0], 1.0))
    ran: list[list] = [[], []]
    while len(ran[0]) + len(ran[1]) < len(tasks):
        for w in (0, 1):
            if (task := queues.next(w)) is not _END:
                ran[w].append(task)
    assert queues.next(0) is _END and queues.next(1) is _END
    # equal loads: nothing to steal; each file on one worker, its chunks in order
    assert ran == [
        [("a", 0), ("a", 1), ("a", 2), ("c", 0), ("c", 1), ("c", 2)],
        [("b", 0), ("b", 1), ("b", 2), ("d", 0), ("d", 1), ("d", 2)],
    ]


def test_an_idle_worker_steals_a_whole_group_not_started_else_the_back_half():
    tasks = [("big", i) for i in range(6)] + [("small", 0)]
    queues = AffinityQueues(tasks, 2, affinity=lambda t: (t[0], 1.0))
    assert queues.next(0) == ("big", 0)  # heaviest key: worker 0
    assert queues.next(1) == ("small", 0)
    # worker 1 has nothing left: it takes the back half of the file worker 0 reads
    assert [queues.next(1), queues.next(1)] == [("big", 4), ("big", 5)]
    assert queues.next(0) == ("big", 1)
    assert queues.next(1) == ("big", 3)
    assert queues.next(0) == ("big", 2)
    assert queues.next(0) is _END and queues.next(1) is _END

    two = AffinityQueues(
        [("a", 0), ("a", 1), ("b", 0), ("c", 0)], 2, affinity=lambda t: (t[0], 1.0)
    )
    # a (weight 2) -> worker 0; b, c -> worker 1, which has two groups: c is taken whole
    assert [two.next(0) for _ in range(3)] == [("a", 0), ("a", 1), ("c", 0)]
    assert _drain(two, 1) == [("b", 0)]


def test_tasks_put_back_run_first_on_their_worker():
    queues = AffinityQueues(range(4), 2, affinity=lambda t: (t % 2, 1.0))
    assert queues.next(0) == 0
    queues.put_back(0, [0])
    assert [queues.next(0), queues.next(0)] == [0, 2]


def test_without_affinity_tasks_are_taken_lazily_in_order():
    def tasks():
        yield from range(3)
        raise AssertionError("read past what was asked")

    queues = AffinityQueues(tasks(), 2)
    assert [queues.next(1), queues.next(0), queues.next(1)] == [0, 1, 2]


def _pid_of(task):
    return task, os.getpid()


def test_the_pool_runs_a_keys_tasks_on_one_worker():
    executor = ProcessPoolTaskExecutor(2)
    tasks = [(f, i) for f in "abcdef" for i in range(4)]
    try:
        results = list(executor.map_unordered(_pid_of, tasks, affinity=lambda t: (t[0], 1.0)))
    finally:
        executor.close()
    assert sorted(t for t, _ in results) == sorted(tasks)
    pids = {}
    for (f, _), pid in results:
        pids.setdefault(f, set()).add(pid)
    assert len({pid for _, pid in results}) == 2
    # stealing may split one file at the end; every other file ran on one worker
    assert sum(len(p) > 1 for p in pids.values()) <= 1


def test_a_killed_worker_of_an_affine_map_loses_no_result(tmp_path):
    from test_backend_local import _kill_once

    executor = ProcessPoolTaskExecutor(2)
    tasks = list(range(-16, 0))
    try:
        results = list(
            executor.map_unordered(
                partial(_kill_once, tmp_path, {-9}, abs), tasks, affinity=lambda t: (t % 4, 1.0)
            )
        )
    finally:
        executor.close()
    assert sorted(results) == sorted(abs(t) for t in tasks)
    assert executor.worker_restarts == 1
    assert 1 <= executor.tasks_resubmitted <= ProcessPoolTaskExecutor.IN_FLIGHT


def _opens(result) -> tuple[Counter, int]:
    """Opens per (worker, file) and the number of files of a run."""
    opens = Counter((t.worker, t.path) for t in result.tasks if t.open_seconds > 0)
    return opens, len({t.path for t in result.tasks})


@pytest.fixture(scope="module")
def reference(small_catalog):
    config = RunConfig(catalog=str(small_catalog), chunksize=CHUNKSIZE, mode="inprocess")
    return run(config, progress=False, write=False)


@pytest.mark.parametrize("mode", ["processes", "dask"])
def test_each_file_is_opened_once_per_worker(small_catalog, reference, mode):
    config = RunConfig(catalog=str(small_catalog), chunksize=CHUNKSIZE, mode=mode, workers=2)
    close_open_files()  # forked workers would find the reference run's files open
    result = run(config, progress=False, write=False)
    assert_same_histograms(reference.histograms, result.histograms, rtol=0)
    opens, files = _opens(result)
    assert files >= 8 and len(result.tasks) >= 3 * files  # several files, several chunks each
    assert len({t.worker for t in result.tasks}) == 2
    # every worker opened a file at most once, and most files were read by one worker only
    assert set(opens.values()) == {1}
    pairs = {(t.worker, t.path) for t in result.tasks}
    assert set(opens) == pairs
    assert len(pairs) <= files + 2
