"""The start-up says what the warm-up does (issue 22): at the first kernel Numba compiles, that
it is compiling (once, cached afterwards), and at the end how many kernels compiled in how long,
or that every kernel came from the cache."""

from __future__ import annotations

import logging

import numba
import numpy as np
from numba.core import event as numba_event

from normserve.service.app import _Compiles


def _kernel():  # a fresh dispatcher each call: same source, same cache entry
    @numba.njit(cache=True)
    def double(x):
        return 2.0 * x

    return double


def test_compiles_are_counted_and_announced_once(tmp_path, monkeypatch, caplog):
    monkeypatch.setattr(numba.config, "CACHE_DIR", str(tmp_path))
    caplog.set_level(logging.INFO, "normserve")
    compiles = _Compiles()
    with numba_event.install_listener("numba:compile", compiles):
        kernel = _kernel()
        kernel(1.0)
        kernel(np.float32(1.0))  # another signature: another kernel
    assert compiles.kernels == 2 and compiles.cached_in == {str(tmp_path)}
    announced = [r.message for r in caplog.records if "compiling kernels" in r.message]
    assert len(announced) == 1 and str(tmp_path) in announced[0]
    again = _Compiles()  # the next start: loaded from the cache, no compile event
    with numba_event.install_listener("numba:compile", again):
        assert _kernel()(3.0) == 6.0
    assert again.kernels == 0


def test_a_kernel_without_a_cache_is_counted_as_not_cached():
    compiles = _Compiles()
    with numba_event.install_listener("numba:compile", compiles):
        assert numba.njit(lambda x: x + 1)(1) == 2
    assert compiles.kernels == 1 and compiles.cached_in == set()
