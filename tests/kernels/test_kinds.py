"""Every declared kind is complete: a test fails when any table lacks a kind.

Each kind's declaration (``kernels.kinds``) must give a layer, its parameter names, example
parameters, the per-sample output rule, a one-shot function, a float64 reference, NumPy,
torch and ONNX Runtime peers; the exporter must have its ONNX builder and the demo
repository a model of it.
"""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from normserve import kernels
from normserve.export.builders import builders
from normserve.kernels.functional import BY_KIND
from normserve.kernels.kinds import PreparedLayer, Sizes, kinds
from normserve.kernels.oracle import assert_close, reference, reference_for
from normserve.service.demo import demo_models

KINDS = sorted(kinds())


def _example(name: str):
    """The kind's example layer and its inputs: one array, or the tuple of a kind's several
    inputs (the convention of the references and peers)."""
    example = kinds()[name].example(np.random.default_rng(0), Sizes(), True)
    layer = kernels.prepare(name, example.params, **example.hyper)
    rng = np.random.default_rng(1)
    xs = tuple(rng.standard_normal(example.shape(3)).astype(np.float32)
               for _ in layer.input_names)
    return example, layer, xs[0] if len(xs) == 1 else xs


def _outputs(ys) -> tuple:
    return ys if isinstance(ys, tuple) else (ys,)


def test_every_table_has_every_kind():
    assert set(kernels.KINDS) == set(BY_KIND) == set(kinds())
    assert set(builders()) == set(kinds())
    assert {cfg["kind"] for cfg, _ in demo_models().values()} == set(kinds())


@pytest.mark.parametrize("name", KINDS)
def test_declaration_is_complete(name):
    kind = kinds()[name]
    assert issubclass(kind.layer, PreparedLayer) and kind.layer.kind == name
    example, layer, x = _example(name)
    assert example.params and set(example.params) <= kind.param_names
    assert len(example.input_shape) == len(example.sample)
    assert all(d in (s, -1) for d, s in zip(example.input_shape, example.sample, strict=True))
    xs = _outputs(x)
    ys = layer.apply_all(xs)
    assert len(ys) == len(layer.output_names) and len(xs) == len(layer.input_names)
    functional = _outputs(kind.functional(*xs, **example.params, **example.hyper))
    exact = _outputs(reference(name, x, example.params, example.hyper))
    prepared = _outputs(reference_for(layer, x))
    numpy_peer = _outputs(kind.numpy_peer(layer, x)())
    for i, y in enumerate(ys):
        assert y.shape[1:] == layer.sample_output_shape(example.sample)
        assert functional[i].tobytes() == y.tobytes()
        assert_close(y, exact[i], np.float32)
        assert_close(y, prepared[i], np.float32)
        np.testing.assert_allclose(numpy_peer[i], y, rtol=1e-5, atol=1e-5)
    node = kind.onnx_peer(layer, example.params)
    assert node.op and node.opset >= 17 and len(node.outputs) >= len(layer.output_names)


@pytest.mark.parametrize("name", KINDS)
def test_torch_peer_computes_the_kind(name):
    torch = pytest.importorskip("torch")
    example, layer, x = _example(name)
    params = {k: torch.from_numpy(v.astype(np.float32)) for k, v in example.params.items()}
    xt = torch.from_numpy(x) if isinstance(x, np.ndarray) else tuple(map(torch.from_numpy, x))
    got = _outputs(kinds()[name].torch_peer(layer, xt, params)())
    for g, y in zip(got, layer.apply_all(_outputs(x)), strict=True):
        np.testing.assert_allclose(g.numpy(), y, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", KINDS)
def test_free_dims_stay_free_in_the_output_rule(name):
    example, layer, _ = _example(name)
    out = layer.sample_output_shape(example.input_shape)
    sample_out = layer.output_shape((1, *example.sample))[1:]
    for dim, fixed in zip(out, sample_out, strict=True):
        assert dim in (fixed, -1)


def test_kernels_never_import_the_exporter():
    code = "import sys, normserve.kernels; print('normserve.export' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120, check=True).stdout
    assert out.strip() == "False"
