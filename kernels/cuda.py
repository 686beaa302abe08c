"""The CUDA backend: validates inputs, moves them if needed and launches ``cuda_kernels``.

Inputs may be NumPy arrays (copied to the GPU and the result copied back into a NumPy array),
Numba device arrays, or any object exposing ``__cuda_array_interface__`` (CuPy arrays, PyTorch
CUDA tensors), used in place and answered with a device array. FP16 data is computed natively
(FP32 accumulation, FP32 parameters); BF16, which Numba cannot type on the device, is accepted
from NumPy only and widened to FP32 on the host.

The functions ``row_norm``, ``add_row_norm``, ``grouped_norm``, ``channel_affine`` and
``linear`` mirror
``kernels.cpu`` and take device arrays: the prepared layers call them through ``_run``.
"""

from __future__ import annotations

import sys
from typing import Any

import numpy as np
from numba import cuda, float32
from numba import float64 as nb_float64
from numba.cuda.cudadrv.devicearray import is_cuda_ndarray

from . import cuda_kernels as ck
from . import dtypes
from .checks import check_out, check_residual, host_output

#: The dtypes device arrays may have (Numba has no bfloat16 on the device).
DEVICE_DTYPES: tuple[np.dtype, ...] = (dtypes.FLOAT16, dtypes.FLOAT32, dtypes.FLOAT64)

#: Threads of the elementwise batch-norm kernel, and the most blocks it launches.
_AFFINE_THREADS = 256
_AFFINE_MAX_BLOCKS = 65536


def _acc(dtype: np.dtype):
    """The Numba accumulation type of a data dtype: float64 for FP64, float32 otherwise."""
    return nb_float64 if np.dtype(dtype) == dtypes.FLOAT64 else float32


def row_norm(x, out, weight, bias, eps: float, center: bool) -> None:
    """Layer norm (``center``) or RMSNorm over each row of the device array ``x``."""
    rows, n = x.shape
    grid, block = ck.row_launch(n, rows)
    ck.norm_kernel(_acc(x.dtype))[grid, block](x, out, weight, bias, 1, 1, float(eps),
                                                 bool(center))


def add_row_norm(x, residual, skip, h, out, weight, bias, eps: float, center: bool,
                 has_skip: bool) -> None:
    """The fused residual add + layer norm / RMSNorm over rows of device arrays."""
    rows, n = x.shape
    grid, block = ck.row_launch(n, rows)
    ck.add_norm_kernel(_acc(x.dtype))[grid, block](x, residual, skip, h, out, weight, bias,
                                                     float(eps), bool(center), bool(has_skip))


def grouped_norm(x, out, weight, bias, groups: int, spatial: int, eps: float) -> None:
    """Group/instance norm over rows of (sample, group); affine per channel."""
    rows, n = x.shape
    grid, block = ck.row_launch(n, rows)
    ck.norm_kernel(_acc(x.dtype))[grid, block](x, out, weight, bias, int(groups),
                                                 int(spatial), float(eps), True)


def channel_affine(x, out, scale, shift) -> None:
    """Batch norm with folded float64 ``scale``/``shift`` on (N, C, S) device arrays."""
    _, channels, spatial = x.shape
    size = x.size
    blocks = min(_AFFINE_MAX_BLOCKS, (size + _AFFINE_THREADS - 1) // _AFFINE_THREADS)
    ck.channel_affine[blocks, _AFFINE_THREADS](x.reshape(size), out.reshape(size), scale, shift,
                                               channels, spatial)


def linear(x, weight_t, bias, out) -> None:
    """``out = x @ weight_t + bias`` on device arrays, batch-invariant tiled GEMM."""
    grid, block = ck.linear_launch(x.shape[0], weight_t.shape[1])
    ck.linear_kernel(_acc(x.dtype))[grid, block](x, weight_t, bias, out)


def to_device(a: np.ndarray) -> Any:
    """Upload a prepared parameter once; the layer caches it per dtype (resident on the GPU)."""
    return cuda.to_device(a)


def _device_view(a: Any) -> Any:
    """``a`` as a Numba device array without copying, or None if it is not on the GPU."""
    if is_cuda_ndarray(a):
        return a
    if hasattr(a, "__cuda_array_interface__"):
        return cuda.as_cuda_array(a)
    return None


def _launch(layer, x, out) -> None:
    """Run the layer on C-contiguous device arrays of one kernel dtype."""
    params = layer._params_for(dtypes.compute_dtype(np.dtype(x.dtype)), tuple(x.shape))
    layer._run(sys.modules[__name__], x, out, params)


def _apply_host(layer, x: np.ndarray, out: Any) -> np.ndarray:
    out = host_output(layer, x, out)
    if x.size == 0:
        return out
    dt, shape = out.dtype, out.shape
    kdt = dt if dt in DEVICE_DTYPES else dtypes.FLOAT32  # BF16 is widened on the host
    dx = cuda.to_device(np.ascontiguousarray(x, dtype=kdt))
    dout = cuda.device_array(shape, dtype=kdt)
    _launch(layer, dx, dout)
    if kdt == dt:
        dout.copy_to_host(out)
    else:
        np.copyto(out, dout.copy_to_host(), casting="unsafe")
    return out


def _apply_device(layer, dx: Any, out: Any) -> Any:
    dt = np.dtype(dx.dtype)
    if dt not in DEVICE_DTYPES:
        raise TypeError(f"x has dtype {dt}; CUDA device arrays must be float16, float32 or "
                        "float64 (pass bfloat16 data as a NumPy array)")
    layer.output_shape(tuple(dx.shape))
    if not dx.is_c_contiguous():
        raise ValueError("x must be C-contiguous on the GPU (make a contiguous copy first)")
    dout = _device_output(layer, dx, out, "out")
    if dx.size:
        _launch(layer, dx, dout)
    return dout if out is None else out


def _device_output(layer, dx: Any, out: Any, name: str) -> Any:
    """``out`` checked as a device output for ``dx`` (``name`` in errors), or a new one."""
    shape = layer.output_shape(tuple(dx.shape))
    if out is None:
        return cuda.device_array(shape, dtype=dx.dtype)
    dout = _device_view(out)
    if dout is None:
        raise TypeError(f"{name} must be a CUDA device array when x is one, got "
                        f"{type(out).__name__}")
    check_out(dout, shape, np.dtype(dx.dtype), name)
    return dout


def _apply_add_device(layer, dx: Any, residual: Any, out: Any, residual_out: Any):
    dr = _device_view(residual)
    if dr is None:
        raise TypeError("residual must be a CUDA device array when x is one, got "
                        f"{type(residual).__name__}")
    check_residual(dx, dr)
    if np.dtype(dx.dtype) not in DEVICE_DTYPES:
        raise TypeError(f"x has dtype {dx.dtype}; CUDA device arrays must be float16, float32 "
                        "or float64 (pass bfloat16 data as a NumPy array)")
    if not (dx.is_c_contiguous() and dr.is_c_contiguous()):
        raise ValueError("x and residual must be C-contiguous on the GPU")
    dout = _device_output(layer, dx, out, "out")
    dh = _device_output(layer, dx, residual_out, "residual_out")
    if dx.size:
        params = layer._params_for(dtypes.compute_dtype(np.dtype(dx.dtype)), tuple(dx.shape))
        layer._run_add(sys.modules[__name__], dx, dr, dh, dout, params)
    return (dout if out is None else out), (dh if residual_out is None else residual_out)


def apply_add(layer, x: Any, residual: Any, out: Any = None, residual_out: Any = None):
    """Run a fused (residual add + norm) layer on the GPU: ``(out, residual_out)``, NumPy
    in and out or device arrays in and out, as ``apply``. BF16 NumPy data, which the device
    cannot round to, has ``h`` summed and rounded on the host, then the unfused norm."""
    dx = _device_view(x)
    if dx is not None:
        return _apply_add_device(layer, dx, residual, out, residual_out)
    if not isinstance(x, np.ndarray):
        raise TypeError("x must be a NumPy array or a CUDA device array (anything with "
                        f"__cuda_array_interface__) on device='cuda', got {type(x).__name__}")
    if not isinstance(residual, np.ndarray):
        raise TypeError("residual must be a NumPy array when x is one, got "
                        f"{type(residual).__name__}")
    check_residual(x, residual)
    out = host_output(layer, x, out)
    residual_out = host_output(layer, x, residual_out, name="residual_out")
    if np.may_share_memory(out, residual_out):
        raise ValueError("out and residual_out must be different arrays")
    if x.size == 0:
        return out, residual_out
    if out.dtype not in DEVICE_DTYPES:
        layer.add_on_host(x, residual, residual_out)
        return _apply_host(layer, residual_out, out), residual_out
    dy, dh = _apply_add_device(layer, cuda.to_device(np.ascontiguousarray(x)),
                               cuda.to_device(np.ascontiguousarray(residual)), None, None)
    dy.copy_to_host(out)
    dh.copy_to_host(residual_out)
    return out, residual_out


def apply(layer, x: Any, out: Any = None) -> Any:
    """Run a prepared layer on the GPU: NumPy in, NumPy out; device array in, device array out."""
    dx = _device_view(x)
    if dx is not None:
        return _apply_device(layer, dx, out)
    if isinstance(x, np.ndarray):
        return _apply_host(layer, x, out)
    raise TypeError("x must be a NumPy array or a CUDA device array (anything with "
                    f"__cuda_array_interface__) on device='cuda', got {type(x).__name__}")
