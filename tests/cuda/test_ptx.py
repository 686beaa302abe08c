"""The CUDA kernels type-check and compile for a real GPU (PTX for sm_80), without one.

The simulator runs kernels as plain Python, so it cannot catch what only Numba's CUDA typing
and NVVM reject (a non-constant shared-array shape, an unsupported FP16 cast). This compiles
every kernel for every data dtype; it needs NVVM and NVRTC (``numba-cuda[cu13]`` installs them)
and is skipped without them.
"""

from __future__ import annotations

import os
from types import SimpleNamespace

import pytest

if os.environ.get("NUMBA_ENABLE_CUDASIM") == "1":
    pytest.skip("the simulator replaces the CUDA compiler", allow_module_level=True)

try:
    from numba.cuda.cudadrv import nvrtc, nvvm

    nvvm.NVVM()
    nvrtc._get_nvrtc_version()
except Exception as exc:  # only the toolchain's shared libraries are probed here
    pytest.skip(f"NVVM/NVRTC not installed ({type(exc).__name__})", allow_module_level=True)

import numba.cuda.dispatcher
from numba import cuda, types

from normserve.kernels import cuda_kernels as ck

CC = (8, 0)


@pytest.fixture(autouse=True)
def _no_device_needed(monkeypatch: pytest.MonkeyPatch) -> None:
    """Device functions are compiled for the current device's cc: pretend one is there."""
    monkeypatch.setattr(numba.cuda.dispatcher, "get_current_device",
                        lambda: SimpleNamespace(compute_capability=CC))


def _arr(dtype: types.Type, ndim: int) -> types.Array:
    return types.Array(dtype, ndim, "C")


@pytest.mark.parametrize("data", [types.float16, types.float32, types.float64], ids=str)
def test_every_kernel_compiles(data: types.Type) -> None:
    acc = types.float64 if data == types.float64 else types.float32
    norm_sig = (_arr(data, 2), _arr(data, 2), _arr(acc, 1), _arr(acc, 1), types.int64,
                types.int64, types.float64, types.boolean)
    affine_sig = (_arr(data, 1), _arr(data, 1), _arr(types.float64, 1),
                  _arr(types.float64, 1), types.int64, types.int64)
    linear_sig = (_arr(data, 2), _arr(acc, 2), _arr(acc, 1), _arr(data, 2))
    add_norm_sig = (_arr(data, 2), _arr(data, 2), _arr(types.float64, 1), _arr(data, 2),
                    _arr(data, 2), _arr(acc, 1), _arr(acc, 1), types.float64, types.boolean,
                    types.boolean)
    for kernel, sig in ((ck.norm_kernel(acc), norm_sig), (ck.channel_affine, affine_sig),
                        (ck.linear_kernel(acc), linear_sig),
                        (ck.add_norm_kernel(acc), add_norm_sig)):
        ptx, _ = cuda.compile_ptx(kernel.py_func, sig, cc=CC)
        assert ".entry" in ptx
        assert "st.local" not in ptx  # register tiles stayed in registers
