"""Exported graphs: parity for every kind, opset and dtype; forms; dynamic batch; errors."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from export_cases import layer
from kernel_cases import ONE_INPUT_KINDS

from normserve import export, kernels
from normserve.export.parity import check_parity
from normserve.kernels.oracle import assert_close, reference_for, tolerance

KINDS = ONE_INPUT_KINDS  # the fused kinds: test_fused*.py
OPSETS = [17, export.default_opset()]


def run_ort(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, {"input": x})[0]


def test_default_opset_has_every_native_operator():
    """The default opset is one the installed runtime runs RMSNormalization at."""
    assert export.default_opset() >= 23
    rms = layer("rms_norm")
    model = export.to_onnx(rms, form="native")
    assert [n.op_type for n in model.graph.node] == ["RMSNormalization", "Identity"]
    x = np.random.default_rng(0).standard_normal((3, 4, 16)).astype(np.float32)
    assert_close(run_ort(model, x), rms.apply(x), np.float32)


@pytest.mark.parametrize("dtype", ["fp32", "fp16"])
@pytest.mark.parametrize("opset", OPSETS)
@pytest.mark.parametrize("kind", KINDS)
def test_parity_every_kind_opset_dtype(kind, opset, dtype):
    model = export.to_onnx(layer(kind), opset, dtype=dtype)
    assert model.opset_import[0].version == opset
    report = check_parity(layer(kind), model).raise_if_failed()
    datas = {(c.data, c.executor, c.batch) for c in report.cases}
    assert {("random", "ort", 1), ("random", "ort", 7), ("random", "onnx-ref", 7),
            ("large-offset", "ort", 7)} <= datas
    assert max(c.batch for c in report.cases) >= 64
    assert all(c.dtype == dtype for c in report.cases)


@pytest.mark.parametrize("kind", ["group_norm", "instance_norm", "layer_norm"])
@pytest.mark.parametrize("opset", OPSETS)
def test_stable_form_fixes_what_runtime_operators_lose(kind, opset):
    """On 1e4 + N(0, 1) data the native operators lose 1e-5 agreement; the stable form keeps it.

    Checked against float64 directly, so the test does not lean on the parity code.
    """
    lay = layer(kind)
    x = (1e4 + np.random.default_rng(3).standard_normal((7, *lay.sample_shape))).astype(
        np.float32)
    exact = reference_for(lay, x)
    stable = run_ort(export.to_onnx(lay, opset, form="stable"), x)
    assert_close(stable, exact, np.float32)
    assert_close(lay.apply(x), exact, np.float32)
    if kind == "group_norm" and opset < 21:
        pytest.skip("no GroupNormalization-21 at this opset to compare with")
    native = run_ort(export.to_onnx(lay, opset, form="native"), x)
    atol, rtol = tolerance(np.float32)
    assert not np.allclose(native, exact, rtol=rtol, atol=atol)
    report = check_parity(lay, export.to_onnx(lay, opset, form="native"))
    assert any("less accurate side" in n for n in report.notes)


def test_parity_check_fails_on_a_wrong_graph():
    """A graph off by one ulp-ish amount in a parameter must be reported, and raise."""
    lay = layer("layer_norm")
    model = export.to_onnx(lay)
    init = next(i for i in model.graph.initializer if i.name == "bias")
    bias = onnx.numpy_helper.to_array(init) + 1e-3
    init.CopyFrom(onnx.numpy_helper.from_array(bias, "bias"))
    report = check_parity(lay, model)
    assert not report.ok
    assert "MISMATCH" in report.format()
    with pytest.raises(export.ParityError):
        report.raise_if_failed()


def test_no_group_normalization_18_and_per_channel_affine():
    """Below 21 GroupNorm is decomposed (GroupNormalization-18's scale/bias are per group)."""
    lay = layer("group_norm")
    for opset in range(17, 21):
        model = export.to_onnx(lay, opset)
        assert "GroupNormalization" not in {n.op_type for n in model.graph.node}
    native = export.to_onnx(lay, 21, form="native")
    gn = [n for n in native.graph.node if n.op_type == "GroupNormalization"]
    assert len(gn) == 1
    scale = next(i for i in native.graph.initializer if i.name == gn[0].input[1])
    assert list(scale.dims) == [8]  # one per channel, as GroupNormalization-21 takes


@pytest.mark.parametrize("opset", OPSETS)
def test_fp16_does_not_overflow_where_the_kernel_does_not(opset):
    """|x| ~ 1000 in FP16: x^2 = 1e6 overflows FP16 (max 65504), not the FP32 statistics."""
    lay = layer("rms_norm")
    x = (1000 * np.random.default_rng(4).standard_normal((5, 4, 16))).astype(np.float16)
    for form in ("auto", "stable") + (("native",) if opset >= 23 else ()):
        y = run_ort(export.to_onnx(lay, opset, dtype="fp16", form=form), x)
        assert y.dtype == np.float16
        assert np.isfinite(y).all()
        assert_close(y, lay.apply(x).astype(np.float64), np.float16)


@pytest.mark.parametrize("kind", KINDS)
def test_dynamic_batch_and_shape_inference(kind):
    lay = layer(kind)
    model = export.check_model(export.to_onnx(lay))
    (inp,), (out,) = model.graph.input, model.graph.output
    assert (inp.name, out.name) == ("input", "output")
    assert inp.type.tensor_type.shape.dim[0].dim_param == "batch"
    assert out.type.tensor_type.shape.dim[0].dim_param == "batch"
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(5)
    for n in (1, 2, 33):
        x = rng.standard_normal((n, *lay.sample_shape)).astype(np.float32)
        y = sess.run(None, {"input": x})[0]
        assert y.shape == lay.output_shape(x.shape)
        # The batch axis is free: row 0 alone is row 0 of the batch. To a tolerance, not
        # bitwise: ONNX Runtime promises no batch invariance (MLAS may take another GEMM path
        # for one row on another CPU); normserve's own kernels are tested bitwise for it.
        np.testing.assert_allclose(sess.run(None, {"input": x[:1]})[0][0], y[0],
                                   rtol=1e-6, atol=1e-6)


def test_free_dimensions_export_symbolic():
    lay = layer("group_norm")
    model = export.to_onnx(lay, input_shape=[8, -1])
    dims = model.graph.input[0].type.tensor_type.shape.dim
    assert dims[1].dim_value == 8 and dims[2].dim_param
    x = np.random.default_rng(6).standard_normal((3, 8, 11)).astype(np.float32)
    assert_close(run_ort(model, x), lay.apply(x), np.float32)
    assert check_parity(lay, model, input_shape=[8, -1]).ok


def test_compare_with_torch_modules():
    """An independent oracle: torch's own eval-mode modules with the same state dicts."""
    torch = pytest.importorskip("torch")
    from export_cases import state_dicts

    sd = state_dicts()
    modules = {
        "layer_norm": torch.nn.LayerNorm(64),
        "rms_norm": torch.nn.RMSNorm([4, 16]),
        "batch_norm": torch.nn.BatchNorm2d(8),
        "group_norm": torch.nn.GroupNorm(4, 8),
        "instance_norm": torch.nn.InstanceNorm1d(8, affine=True),
    }
    rng = np.random.default_rng(7)
    for kind, module in modules.items():
        _, params, shape = sd[kind]
        module.load_state_dict({k: torch.from_numpy(v) for k, v in params.items()},
                               strict=False)
        module.eval()
        x = rng.standard_normal((5, *shape)).astype(np.float32)
        with torch.no_grad():
            expected = module(torch.from_numpy(x)).numpy()
        got = run_ort(export.to_onnx(layer(kind)), x)
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5, err_msg=kind)


def test_named_errors():
    lay = layer("rms_norm")
    with pytest.raises(export.OpsetError, match="opset 16 cannot express rms_norm"):
        export.to_onnx(lay, 16)
    with pytest.raises(export.OpsetError, match="RMSNormalization needs opset 23"):
        export.to_onnx(lay, 17, form="native")
    with pytest.raises(export.OpsetError, match="GroupNormalization needs opset 21"):
        export.to_onnx(layer("group_norm"), 20, form="native")
    with pytest.raises(export.OpsetError):
        export.to_onnx(lay, export.max_opset() + 1)
    with pytest.raises(export.ExportError, match="dtype"):
        export.to_onnx(lay, dtype="fp8")
    with pytest.raises(export.ExportError, match="form"):
        export.to_onnx(lay, form="fast")
    bare = kernels.prepare("group_norm", num_groups=2)
    with pytest.raises(export.ExportError, match="input_shape"):
        export.to_onnx(bare)
    with pytest.raises(export.ExportError, match="does not fit"):
        export.to_onnx(bare, input_shape=[3, 4])
    assert issubclass(export.OpsetError, ValueError)  # the service maps it to 400


@pytest.mark.parametrize("kind", ["layer_norm", "group_norm", "rms_norm", "batch_norm"])
def test_nan_stays_in_its_row(kind):
    """SPEC 1: NaN and Inf reach only the affected rows, in the graph as in the kernel."""
    lay = layer(kind)
    x = np.random.default_rng(8).standard_normal((4, *lay.sample_shape)).astype(np.float32)
    x[1].flat[3] = np.nan
    x[2].flat[0] = np.inf
    y = run_ort(export.to_onnx(lay), x)
    expected = lay.apply(x)
    np.testing.assert_array_equal(np.isnan(y), np.isnan(expected))
    assert np.isfinite(y[[0, 3]]).all()
    assert_close(y[[0, 3]], expected[[0, 3]], np.float32)
