"""The backend layer: where the chunks of a run are executed.

A backend is found by name in the ``agc.backends`` entry-point group, so a site can ship its own
as a separate package. See :mod:`backends.base`.
"""

from backends.base import Backend, BaseExecutor, Executor, available_backends, get_backend

__all__ = ["Backend", "BaseExecutor", "Executor", "available_backends", "get_backend"]
