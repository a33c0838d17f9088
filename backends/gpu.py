"""The ``gpu`` backend: the analysis of each chunk on a GPU, reading on CPU workers.

Two modes:

``inprocess`` (default)
    Every chunk in this process, one after the other: read on the CPU, columns moved to the
    device, the analysis and the histogram filling there (one GPU).
``dask``
    A Dask cluster on this machine: one worker per GPU advertising the resource ``GPU=1``
    (``CUDA_VISIBLE_DEVICES`` set to its GPU), and ``--workers`` reader workers advertising
    ``CPU=1``. Each chunk is two tasks: ``read`` asks for ``CPU`` and ``analysis`` for
    ``GPU`` (:data:`STAGE_RESOURCES`), so reading runs on the readers and the analysis on the
    GPUs, whichever finishes first; the columns go from reader to GPU worker through Dask.

``device="cuda"`` needs cupy (the ``gpu-cuda12`` / ``gpu-cuda13`` extras) and a visible CUDA
device: without either the backend fails when it is made, before anything is planned,
naming what is missing. It never falls back to the CPU by itself. ``device="cpu"`` runs the
very same code path (the device filler, the segment sums, the same workers and stage
placement) on numpy: the analysis workers are then named ``cpu-device-N`` instead of
``gpu-N`` and the run records ``device: cpu``. That is how machines without a GPU (CI) run
this backend; it measures nothing about GPUs.

The backend never imports the analysis: the device reaches the analysis through the run's
tasks (:attr:`agc.chunks.ChunkTask.device`); the backend checks it and places the stages.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

from agc.devices import DEVICES, DeviceUnavailable, check_cuda
from backends.base import BackendError, BaseExecutor, capped_workers
from backends.local import DaskExecutor, InProcessExecutor, worker_environment

log = logging.getLogger(__name__)

#: Dask resources of the two stages of a chunk in the dask mode.
STAGE_RESOURCES: dict[str, dict[str, float]] = {"read": {"CPU": 1}, "analysis": {"GPU": 1}}

GPU_MODES = ("inprocess", "dask")


@dataclass
class GpuBackend:
    """The analysis on the GPU(s) of this machine (see the module docstring).

    ``workers``: reader workers of the dask mode (default: the cores not used by an analysis
    worker, at least one); ``gpus``: analysis workers of the dask mode (default: every
    visible GPU; with ``device="cpu"``: one).
    """

    workers: int | None = None
    mode: str | None = None
    profile: str | None = None
    device: str = "cuda"
    gpus: int | None = None

    name = "gpu"
    description = "the analysis on this machine's GPU(s), reading on CPU workers (cupy)"

    def __post_init__(self) -> None:
        if self.profile is not None:
            raise BackendError(
                f"--profile {self.profile}: the gpu backend runs on this machine and takes no "
                "profile; for GPUs of a batch system give its profile worker.gpus and stages"
            )
        self.mode = self.mode or "inprocess"
        if self.mode not in GPU_MODES:
            raise BackendError(f"--mode {self.mode}: the gpu backend runs {' or '.join(GPU_MODES)}")
        if self.device not in DEVICES:
            raise BackendError(f"--device {self.device}: choose one of {', '.join(DEVICES)}")
        self.cupy_version: str | None = None
        if self.device == "cuda":
            try:
                self.cupy_version = check_cuda()
            except DeviceUnavailable as err:
                raise BackendError(
                    f"--backend gpu --device cuda: {err}. Nothing was run; '--device cpu' runs "
                    "the same GPU code path on numpy (it measures no GPU)"
                ) from None

    def visible_gpus(self) -> int:
        """Analysis workers of the dask mode: ``gpus``, else every visible GPU (cuda) or 1."""
        if self.gpus is not None:
            return self.gpus
        if self.device != "cuda":
            return 1
        import cupy  # noqa: PLC0415 - checked in __post_init__

        return int(cupy.cuda.runtime.getDeviceCount())

    def start(self, tasks: int | None = None) -> BaseExecutor:
        if self.mode == "inprocess":
            return InProcessExecutor()
        import dask
        from distributed import Client, Nanny, Scheduler, SpecCluster

        gpus = capped_workers(self.visible_gpus(), tasks, "GPU workers")
        readers = capped_workers(
            self.workers or max((os.cpu_count() or 1) - gpus, 1), tasks, "reader workers"
        )
        prefix = "gpu" if self.device == "cuda" else "cpu-device"
        spec = {
            f"reader-{i}": {
                "cls": Nanny,
                "options": {"nthreads": 1, "resources": {"CPU": 1}},
            }
            for i in range(readers)
        }
        for i in range(gpus):
            env = {"CUDA_VISIBLE_DEVICES": str(i)} if self.device == "cuda" else {}
            spec[f"{prefix}-{i}"] = {
                "cls": Nanny,
                "options": {"nthreads": 1, "resources": {"GPU": 1}, "env": env},
            }
        with dask.config.set({"distributed.nanny.pre-spawn-environ": worker_environment()}):
            cluster = SpecCluster(
                workers=spec,
                scheduler={"cls": Scheduler, "options": {"dashboard_address": None}},
                name=f"agc-gpu-{self.device}",
            )
        client = Client(cluster)
        client.wait_for_workers(readers + gpus)
        log.info("gpu backend: %d reader worker(s), %d %s worker(s)", readers, gpus, prefix)
        return DaskExecutor(client, cluster, readers + gpus, stage_resources=dict(STAGE_RESOURCES))
