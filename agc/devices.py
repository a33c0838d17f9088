"""The devices of the analysis' device path, and the check that a CUDA one is usable.

Shared by the analysis (:mod:`agc.analysis.xp`) and the ``gpu`` backend, which checks the
device before anything is planned; it imports neither.
"""

from __future__ import annotations

#: Devices of the device path (:func:`agc.analysis.process_events`): a CUDA GPU through cupy,
#: or the same code on numpy ("cpu", so that machines without a GPU run it too).
DEVICES = ("cuda", "cpu")

#: The cupy release the device path needs: array ``repeats`` in ``cupy.repeat`` (14.1), NumPy
#: 2 promotion of ``float32 * np.float64`` (14), an exact ``x**2`` (14.2).
MIN_CUPY = (14, 2)


class DeviceUnavailable(RuntimeError):
    """The device path was asked for CUDA on a machine (or environment) that lacks it."""


def check_cuda() -> str:
    """cupy's version when cupy is importable, recent enough and sees a CUDA device.

    Raises :class:`DeviceUnavailable` naming what is missing (never falls back to the CPU).
    """
    try:
        import cupy  # noqa: PLC0415 - only on GPU machines
    except ImportError as err:
        raise DeviceUnavailable(
            f"cupy is not installed ({err}): install the GPU extra matching the CUDA "
            "driver, e.g. pip install 'agc-harness[gpu-cuda12]' (or gpu-cuda13)"
        ) from None
    version = tuple(int(p) for p in cupy.__version__.split(".")[:2] if p.isdigit())
    if version < MIN_CUPY:
        raise DeviceUnavailable(
            f"cupy {cupy.__version__} is too old: the device path needs cupy >= "
            f"{'.'.join(map(str, MIN_CUPY))}"
        )
    try:
        count = cupy.cuda.runtime.getDeviceCount()
    except Exception as err:  # CUDARuntimeError: no driver, no device
        raise DeviceUnavailable(
            f"no usable CUDA device (cupy {cupy.__version__}: {type(err).__name__}: {err}); "
            "check the NVIDIA driver and CUDA_VISIBLE_DEVICES"
        ) from None
    if count < 1:
        raise DeviceUnavailable("no CUDA device is visible (CUDA_VISIBLE_DEVICES?)")
    return str(cupy.__version__)
