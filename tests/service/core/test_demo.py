"""The shipped demo repository is what ``service/demo.py`` writes (no server)."""

from __future__ import annotations

import numpy as np
from service_helpers import demo_params

from normserve.service.demo import demo_models


def test_demo_repository_is_what_demo_py_writes():
    """The shipped files hold one model of each kind with the deterministic parameters.

    Bitwise on any machine: demo.py generates them with correctly rounded arithmetic only
    (no BLAS, LAPACK or libm), so a regeneration anywhere writes the same bits."""
    models = demo_models()
    assert sorted(cfg["kind"] for cfg, _ in models.values()) == sorted(
        ["batch_norm", "layer_norm", "rms_norm", "instance_norm", "group_norm", "weight_norm",
         "spectral_norm", "add_rms_norm", "add_layer_norm",
         "rms_norm"])  # the second rms_norm: Gemma's, with offset 1
    for name, (_, params) in models.items():
        shipped = demo_params(name)
        assert sorted(shipped) == sorted(params)
        for key, value in params.items():
            np.testing.assert_array_equal(shipped[key], value)
