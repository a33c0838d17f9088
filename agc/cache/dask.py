"""Dask plugins of the chunk cache: results are stored by the workers as tasks finish.

* :class:`CacheWorkerPlugin` opens the store once per worker and, when a chunk task reaches
  the ``memory`` state, writes its result to the store, so results outlive the cluster (a
  crashed client, a killed scheduler or a closed cluster loses nothing that finished).
* :class:`CacheSchedulerPlugin` keeps the cluster-wide ledger of what the workers stored or
  skipped (a retried task whose result was stored before its worker died is skipped).

Tasks whose results already exist are skipped twice: by the driver before submission
(:meth:`agc.cache.ChunkCache.split`) and by the task itself on the worker
(:class:`agc.cache.ComputeAndStore`), which covers retries and concurrent runs.
"""

from __future__ import annotations

import logging
from collections import Counter

from distributed import SchedulerPlugin, WorkerPlugin

import agc.cache as cache

log = logging.getLogger(__name__)

PLUGIN_NAME = "agc-cache"
EVENT_TOPIC = "agc-cache"


class CacheWorkerPlugin(WorkerPlugin):
    """Stores each chunk result in the store at ``url`` as its task finishes on this worker."""

    name = PLUGIN_NAME

    def __init__(self, url: str) -> None:
        self.url = url
        self.worker = None

    def setup(self, worker) -> None:
        self.worker = worker
        cache.worker_store(self.url)
        cache._PLUGIN_URLS.add(self.url)

    def teardown(self, worker) -> None:
        cache._PLUGIN_URLS.discard(self.url)

    def transition(self, key, start, finish, **kwargs) -> None:
        if finish != "memory" or self.worker is None:
            return
        try:
            value = self.worker.data[key]
        except KeyError:
            return
        pending = getattr(value, "cache_pending", None)
        if pending:
            chunk_key, meta = pending
            cache._store_result(cache.worker_store(self.url), chunk_key, value, meta)
            value.cache_pending = None
            self.worker.log_event(EVENT_TOPIC, {"action": "stored", "key": chunk_key})
        elif getattr(getattr(value, "timing", None), "cached", False):
            self.worker.log_event(EVENT_TOPIC, {"action": "skipped", "task": str(key)})


class CacheSchedulerPlugin(SchedulerPlugin):
    """Counts, for the whole cluster, the chunk results stored and skipped by the workers."""

    name = PLUGIN_NAME
    idempotent = True

    def __init__(self) -> None:
        self.counts: Counter = Counter()
        self.stored_keys: set[str] = set()

    def log_event(self, topic, msg) -> None:
        if topic != EVENT_TOPIC or not isinstance(msg, dict):
            return
        self.counts[msg.get("action", "?")] += 1
        if msg.get("action") == "stored":
            self.stored_keys.add(msg["key"])

    def ledger(self) -> dict:
        return {
            "stored": self.counts["stored"],
            "skipped": self.counts["skipped"],
            "stored_keys": sorted(self.stored_keys),
        }


def install_plugins(client, url: str) -> None:
    """Register the scheduler and worker plugins on ``client``'s cluster."""
    client.register_plugin(CacheSchedulerPlugin())
    client.register_plugin(CacheWorkerPlugin(url), name=PLUGIN_NAME)


def ledger(client) -> dict:
    """The scheduler plugin's counts: ``{"stored": n, "skipped": n, "stored_keys": [...]}``."""
    return client.run_on_scheduler(_ledger_on_scheduler)


def _ledger_on_scheduler(dask_scheduler=None) -> dict:
    plugin = dask_scheduler.plugins.get(PLUGIN_NAME)
    return plugin.ledger() if plugin is not None else {"stored": 0, "skipped": 0, "stored_keys": []}
