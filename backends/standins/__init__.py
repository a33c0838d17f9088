"""STAND-INS for batch-system commands, for machines without the batch system.

``backends/standins/bin`` holds stand-in ``condor_submit`` / ``condor_rm`` / ``condor_q`` and
``dirac-wms-job-submit`` / ``dirac-wms-job-kill`` / ``dirac-wms-job-status``. They take the
same files and arguments and print what the real commands print (the parts dask-jobqueue and
:mod:`backends.dirac` read), but run each job as a detached local process instead of sending it
to a pool or the grid. Select them by putting ``backends/standins/bin`` first on ``PATH``
(:func:`bin_dir`), or by the ``submit_command`` / ``cancel_command`` keys of a profile; the
backend code path is otherwise exactly the production one.

State (job counter, one record per live job, job output) lives in ``$AGC_STANDIN_STATE``
(default ``~/.cache/agc-standins``). Only the standard library is used, so the commands run
under any ``python3``.
"""

from pathlib import Path


def bin_dir() -> Path:
    """The directory of the stand-in commands (put it first on PATH to select them)."""
    return Path(__file__).resolve().parent / "bin"
