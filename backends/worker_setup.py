"""A Dask nanny preload for batch-job workers: the allocator behaviour of local workers.

distributed's nanny starts its worker process with ``MALLOC_TRIM_THRESHOLD_=65536`` (its
``distributed.nanny.pre-spawn-environ`` default). That switches off glibc's dynamic mmap
threshold: every large buffer uproot allocates while opening and reading a file is then
mmap-ed and unmapped again, and a chunk costs 2-3x the CPU of a process-pool worker. The local
backend starts its Dask workers without it (:func:`backends.local.worker_environment`); a
batch job cannot remove a variable from a nanny it starts, so the jobs of the batch backends
run their nanny with ``--preload-nanny backends.worker_setup``, and this module removes it
before the worker process is spawned. A value the job's own environment sets (a site's
choice) is kept.
"""

from __future__ import annotations

import logging
import os
from typing import Any

log = logging.getLogger(__name__)

VARIABLE = "MALLOC_TRIM_THRESHOLD_"


def dask_setup(nanny: Any) -> None:
    """Called by the nanny before it spawns its worker (Dask's preload protocol)."""
    if VARIABLE in os.environ:  # set by the job: the site's choice
        return
    for env in (getattr(nanny, "pre_spawn_env", None), getattr(nanny, "env", None)):
        if isinstance(env, dict):
            env.pop(VARIABLE, None)
    log.debug("worker started without %s (as local workers are)", VARIABLE)
