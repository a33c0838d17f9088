"""A slowed-down chunk task for the batch-backend fault tests.

The tasks run in the batch jobs' worker processes, so the wrapper lives in this module
(importable there: the tests put ``tests/`` on the ``PYTHONPATH`` that ``sbatch`` passes on) and
reads its settings from the environment the jobs inherit:

- ``AGC_TEST_TASK_SECONDS``: seconds each task sleeps before it runs;
- ``AGC_TEST_TASK_MARKERS``: a directory where each task, as it starts, leaves a file named
  after its SLURM job id (``SLURM_JOB_ID``), so a test knows which job is running a task.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from agc.chunks import process_chunk


def slow_process_chunk(task):
    markers = os.environ.get("AGC_TEST_TASK_MARKERS")
    if markers:
        job = os.environ.get("SLURM_JOB_ID", "none")
        (Path(markers) / f"{job}.{os.getpid()}.{time.monotonic_ns()}").touch()
    time.sleep(float(os.environ.get("AGC_TEST_TASK_SECONDS", "0")))
    return process_chunk(task)
