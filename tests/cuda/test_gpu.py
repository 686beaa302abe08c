"""The CUDA kernels on a real GPU, at realistic shapes (skipped without one).

The same matrix as the simulator tests (``cuda_cases``), every dtype, plus inputs from other
libraries through ``__cuda_array_interface__``. Run with ``pytest -m gpu`` on a GPU machine.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import pytest
from cuda_cases import (
    Sizes,
    assert_matches_reference,
    fused_matches,
    make_case,
    make_cases,
    random_input,
)

from normserve.kernels import dtypes


def _real_gpu() -> bool:
    if os.environ.get("NUMBA_ENABLE_CUDASIM") == "1":
        return False
    try:
        from numba import cuda

        return bool(cuda.is_available())
    except Exception:
        return False


pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not _real_gpu(), reason="needs a real CUDA GPU")]

SIZES = Sizes(batch=67, features=4096, channels=64, groups=8, spatial=(28, 28),
              in_features=1000, out_features=777)
ODD = Sizes(batch=5, features=1001, channels=6, groups=3, spatial=(7, 9), in_features=65,
            out_features=63)
CASES = {c.kind: c for c in make_cases(SIZES)}
ODD_CASES = {c.kind: c for c in make_cases(ODD, seed=3)}
DTYPES = list(dtypes.SUPPORTED)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("kind", sorted(CASES))
@pytest.mark.parametrize("sizes", ["realistic", "odd"])
def test_kind_matches_reference(kind: str, dtype: np.dtype, sizes: str) -> None:
    case = (CASES if sizes == "realistic" else ODD_CASES)[kind]
    x = random_input(case.shape, dtype)
    assert_matches_reference(case, x, case.layer().apply(x))


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("n", [4096, 1001, 9000])
@pytest.mark.parametrize("kind", ["add_rms_norm", "add_layer_norm"])
def test_fused_kind_is_the_unfused_add_and_norm(kind: str, n: int, dtype: np.dtype) -> None:
    """Rows in registers (n <= ITEMS * MAX_THREADS) and past them (9000)."""
    rng = np.random.default_rng(0)
    params = {"weight": rng.uniform(0.5, 1.5, n)}
    hyper: dict[str, Any] = {"normalized_shape": [n]}
    if kind == "add_layer_norm":
        params |= {"bias": rng.uniform(-1, 1, n), "skip_bias": rng.uniform(-0.5, 0.5, n)}
    else:
        hyper["offset"] = 1.0
    x = random_input((67, n), dtype)
    r = random_input((67, n), dtype, seed=2)
    fused_matches(kind, x, r, params, hyper)


@pytest.mark.parametrize("kind", sorted(CASES))
def test_batch_invariance(kind: str) -> None:
    case = CASES[kind]
    layer = case.layer()
    x = random_input(case.shape, np.dtype(np.float32))
    full = layer.apply(x)
    for lo, hi in ((0, 1), (30, 31), (3, 67), (60, 67)):
        np.testing.assert_array_equal(layer.apply(x[lo:hi]), full[lo:hi])


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_headline_shape_layer_and_rms_norm(dtype: type) -> None:
    for kind in ("layer_norm", "rms_norm"):
        case = make_case(kind, Sizes(8192, 4096, 1, 1, (1,), 1, 1))
        x = random_input(case.shape, np.dtype(dtype))
        assert_matches_reference(case, x, case.layer().apply(x))


def test_large_offset_layer_norm_fp32() -> None:
    from normserve import kernels
    from normserve.kernels import reference as ref
    from normserve.kernels.oracle import LARGE_OFFSET_TOLERANCE

    x = random_input((64, 4096), np.dtype(np.float32), offset=1e4)
    y = kernels.layer_norm(x, [4096], device="cuda")
    assert np.abs(y - ref.layer_norm(x, [4096])).max() < LARGE_OFFSET_TOLERANCE


def test_rows_longer_than_the_register_cache() -> None:
    case = make_case("group_norm", Sizes(3, 4, 4, 2, (100, 100), 4, 4))  # 20000-value rows
    x = random_input(case.shape, np.dtype(np.float32), offset=2.0)
    assert_matches_reference(case, x, case.layer().apply(x))


class _Foreign:
    """A device buffer known only through ``__cuda_array_interface__`` (as CuPy/torch give)."""

    def __init__(self, device_array: Any) -> None:
        self._keep = device_array
        self.__cuda_array_interface__ = device_array.__cuda_array_interface__


def test_cuda_array_interface_in_and_out() -> None:
    from numba import cuda

    case = CASES["layer_norm"]
    layer = case.layer()
    x = random_input(case.shape, np.dtype(np.float16))
    out = cuda.device_array(case.shape, dtype=np.float16)
    result = layer.apply(_Foreign(cuda.to_device(x)), out=_Foreign(out))
    assert isinstance(result, _Foreign)
    np.testing.assert_array_equal(out.copy_to_host(), layer.apply(x))


def test_torch_cuda_tensors() -> None:
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("torch has no CUDA here")
    case = CASES["rms_norm"]
    layer = case.layer()
    x = random_input(case.shape, np.dtype(np.float32))
    y = layer.apply(torch.from_numpy(x).cuda())
    np.testing.assert_array_equal(y.copy_to_host(), layer.apply(x))
    expected = torch.nn.functional.rms_norm(torch.from_numpy(x).cuda(), (SIZES.features,),
                                            torch.from_numpy(case.params["weight"]).float().cuda())
    np.testing.assert_allclose(y.copy_to_host(), expected.cpu().numpy(), atol=1e-5, rtol=1e-5)


def test_nan_stays_in_its_row() -> None:
    case = CASES["group_norm"]
    x = random_input(case.shape, np.dtype(np.float32))
    x[2, 0, 3, 3] = np.nan
    y = case.layer().apply(x)
    assert np.isnan(y[2, :8]).all()  # group 0 of sample 2 (8 channels a group)
    assert np.isfinite(y[2, 8:]).all() and np.isfinite(y[[0, 1, 3]]).all()


def test_benchmark_quick_runs() -> None:
    from normserve.bench import cuda as bench_cuda

    assert bench_cuda.main(["--quick", "--repeat", "3", "--inner", "2",
                            "--kinds", "layer_norm", "weight_norm"]) == 0
