"""The local backend's Dask workers: their process environment."""

import os

from backends.local import LocalBackend, worker_environment


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
