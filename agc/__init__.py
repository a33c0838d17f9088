"""AGC benchmarking harness: the IRIS-HEP Analysis Grand Challenge CMS ttbar analysis,
run faithfully on pluggable backends, with measured throughput and latency.

The Python API::

    from agc import run, RunConfig

    result = run(RunConfig(chunksize=50_000, mode="processes", workers=4))
    result.histograms["4j2b_ttbar"], result.events_per_second, result.run_dir

``RunConfig()`` has the defaults of ``agc run``: the synthetic dataset (generated once), the
local backend, the fit and plots at the end. ``run`` and ``RunConfig`` are imported on first
use, so ``import agc`` stays cheap.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from agc._version import __version__

if TYPE_CHECKING:
    from agc.config import RunConfig
    from agc.runner import RunResult, run

__all__ = ["RunConfig", "RunResult", "__version__", "run"]


def __getattr__(name: str) -> Any:
    if name == "RunConfig":
        from agc.config import RunConfig

        return RunConfig
    if name in ("run", "RunResult"):
        from agc import runner

        return getattr(runner, name)
    raise AttributeError(f"module 'agc' has no attribute {name!r}")
