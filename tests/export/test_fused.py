"""The fused norms exported: standard ONNX with two graph outputs, and ONNX Runtime's fused
contrib operators on request; parity proven through ONNX Runtime for both outputs."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from export_cases import layer
from onnx import TensorProto, helper, numpy_helper

from normserve import export, kernels
from normserve.export.cli import main as export_main
from normserve.export.parity import check_parity
from normserve.export.triton import config_pbtxt
from normserve.repository import ModelConfig, save_model

KINDS = ("add_rms_norm", "add_layer_norm")
OPSETS = (17, 23)


def _session(model: onnx.ModelProto) -> ort.InferenceSession:
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])


def _gemma() -> kernels.PreparedLayer:
    w = np.random.default_rng(4).uniform(-0.5, 0.5, 64).astype(np.float32)
    return kernels.prepare("add_rms_norm", {"weight": w}, offset=1.0)


@pytest.mark.parametrize("dtype", ["fp32", "fp16"])
@pytest.mark.parametrize("opset", OPSETS)
@pytest.mark.parametrize("kind", KINDS)
def test_standard_graph_has_parity_for_both_outputs(kind, opset, dtype):
    lay = layer(kind)
    model = export.to_onnx(lay, opset, dtype=dtype)
    assert [o.name for o in model.graph.output] == ["output", "residual_out"]
    assert [i.name for i in model.graph.input] == ["input", "residual"]
    assert all(op.domain in ("", "ai.onnx") for op in model.opset_import)
    report = check_parity(lay, model).raise_if_failed()
    assert {c.output for c in report.cases} == {"output", "residual_out"}
    assert {c.executor for c in report.cases} == {"ort", "onnx-ref"}


@pytest.mark.parametrize("opset", OPSETS)
def test_standard_rms_graph_uses_the_operator_where_the_opset_has_it(opset):
    ops = [n.op_type for n in export.to_onnx(_gemma(), opset, form="auto").graph.node]
    assert ops[0] == "Add"
    assert ("RMSNormalization" in ops) == (opset >= 23)
    check_parity(_gemma(), opset=opset).raise_if_failed()


def test_offset_is_folded_into_the_scale_in_fp32():
    lay = _gemma()
    model = export.to_onnx(lay, 23, form="native")
    node = next(n for n in model.graph.node if n.op_type == "RMSNormalization")
    scale = next(numpy_helper.to_array(i) for i in model.graph.initializer
                 if i.name == node.input[1])
    expected = np.float32(1.0) + lay.weight.astype(np.float32)
    assert scale.dtype == np.float32 and scale.tobytes() == expected.tobytes()


@pytest.mark.parametrize("opset", OPSETS)
@pytest.mark.parametrize("kind", KINDS)
def test_ort_fused_is_one_contrib_node_with_epsilon_set(kind, opset):
    lay = layer(kind)
    model = export.to_onnx(lay, opset, ort_fused=True)
    ops = [n for n in model.graph.node if n.op_type not in ("Identity",)]
    assert len(ops) == 1 and ops[0].domain == "com.microsoft"
    assert ops[0].op_type == {"add_rms_norm": "SkipSimplifiedLayerNormalization",
                              "add_layer_norm": "SkipLayerNormalization"}[kind]
    eps = {a.name: helper.get_attribute_value(a) for a in ops[0].attribute}["epsilon"]
    assert eps == pytest.approx(lay.eps_for(np.float32))
    assert ops[0].output[1] == ops[0].output[2] == ""  # mean and inv_std_var unused
    if kind == "add_rms_norm":
        assert len(ops[0].input) == 3  # never the bias slot (see the probe below)
    x = np.random.default_rng(0).standard_normal((5, *lay.sample_shape)).astype(np.float32)
    r = np.random.default_rng(1).standard_normal(x.shape).astype(np.float32)
    y, h = _session(model).run(None, {"input": x, "residual": r})
    y_k, h_k = lay.apply(x, r)
    # output 3, input_skip_bias_sum, is h; ORT adds the skip bias in a second FP32 rounding
    if kind == "add_rms_norm":
        assert h.tobytes() == h_k.tobytes()
    np.testing.assert_allclose(h, h_k, rtol=0, atol=1e-6)
    np.testing.assert_allclose(y, y_k, rtol=1e-5, atol=1e-5)


def test_ort_fused_rms_has_parity_and_fused_layer_norm_is_named_on_large_offsets():
    check_parity(_gemma(), ort_fused=True).raise_if_failed()
    check_parity(layer("add_rms_norm"), ort_fused=True).raise_if_failed()
    report = check_parity(layer("add_layer_norm"), ort_fused=True)
    assert all(c.passed for c in report.cases if c.data == "random")
    if not report.ok:  # SkipLayerNormalization, like LayerNormalization, on 1e4 + N(0, 1)
        assert any("less accurate side" in n for n in report.notes)


def test_skip_simplified_bias_slot_in_the_installed_runtime():
    """Some ORT CPU versions read SkipSimplifiedLayerNormalization's bias from the wrong slot.
    The exporter never passes one (add_rms_norm has no skip bias); this records what the
    installed runtime does with it, so an upgrade that breaks it is seen."""
    n = 8
    rng = np.random.default_rng(0)
    gamma, bias = rng.uniform(0.5, 1.5, n), rng.uniform(-1, 1, n)
    node = helper.make_node("SkipSimplifiedLayerNormalization", ["x", "skip", "gamma", "bias"],
                            ["y", "", "", "h"], domain="com.microsoft", epsilon=1e-6)
    vi = [helper.make_tensor_value_info(k, TensorProto.FLOAT, [3, n]) for k in ("x", "skip")]
    vo = [helper.make_tensor_value_info(k, TensorProto.FLOAT, [3, n]) for k in ("y", "h")]
    inits = [numpy_helper.from_array(v.astype(np.float32), k)
             for k, v in (("gamma", gamma), ("bias", bias))]
    model = helper.make_model(helper.make_graph([node], "probe", vi, vo, inits),
                              opset_imports=[helper.make_opsetid("", 17),
                                             helper.make_opsetid("com.microsoft", 1)])
    x, s = (rng.standard_normal((3, n)).astype(np.float32) for _ in range(2))
    y, h = _session(model).run(None, {"x": x, "skip": s})
    expected_h = x + s + bias.astype(np.float32)
    hd = expected_h.astype(np.float64)
    expected_y = hd / np.sqrt((hd * hd).mean(-1, keepdims=True) + 1e-6) * gamma
    assert ort.__version__ and np.allclose(h, expected_h, atol=1e-6), ort.__version__
    np.testing.assert_allclose(y, expected_y, rtol=1e-5, atol=1e-5)


def test_triton_config_lists_both_inputs_and_outputs():
    lay = layer("add_rms_norm")
    text = config_pbtxt("block", ModelConfig.model_validate(
        {"kind": "add_rms_norm", "normalized_shape": list(lay.sample_shape),
         "input_shape": list(lay.sample_shape)}), lay)
    for name in ("input", "residual", "output", "residual_out"):
        assert f'name: "{name}"' in text


def test_cli_exports_both_forms(tmp_path, capsys):
    lay = _gemma()
    folder = tmp_path / "block"
    save_model(folder, {"kind": "add_rms_norm", **lay.hyper, "input_shape": [64]},
               {"weight": lay.weight.astype(np.float32)})
    for flags in ([], ["--ort-fused"]):
        out = tmp_path / f"m{len(flags)}.onnx"
        assert export_main([str(folder), "-o", str(out), *flags]) == 0
        model = onnx.load(str(out))
        assert [o.name for o in model.graph.output] == ["output", "residual_out"]
        fused = any(n.domain == "com.microsoft" for n in model.graph.node)
        assert fused == bool(flags)
    assert "residual_out" in capsys.readouterr().out
