"""Triton model repository: layout, config.pbtxt parsed against Triton's ModelConfig message."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from export_cases import state_dicts
from google.protobuf import text_format

from normserve import export, repository
from normserve.cli import main as normserve


def triton_model_config():
    """tritonclient's ModelConfig message, loaded from its file (its grpc extra is optional)."""
    spec = importlib.util.find_spec("tritonclient")
    if spec is None:
        pytest.skip("tritonclient is not installed")
    path = Path(spec.submodule_search_locations[0]) / "grpc" / "model_config_pb2.py"
    mod_spec = importlib.util.spec_from_file_location("triton_model_config_pb2", path)
    module = importlib.util.module_from_spec(mod_spec)
    mod_spec.loader.exec_module(module)
    return module.ModelConfig


@pytest.fixture(scope="module")
def ModelConfig():
    return triton_model_config()


def make_repository(root: Path, kinds=("layer_norm", "instance_norm", "weight_norm")) -> Path:
    for kind in kinds:
        hyper, params, shape = state_dicts()[kind]
        repository.save_model(root / kind, {"kind": kind, **hyper, "input_shape": shape,
                                         "max_batch_size": 48, "max_queue_delay_us": 300,
                                         "max_queue_size": 77}, params)
    return root


@pytest.mark.parametrize("dtype", ["fp32", "fp16"])
def test_repository_layout_and_config(tmp_path, ModelConfig, dtype):
    repo = make_repository(tmp_path / "models")
    result = export.write_triton_repository(repo, tmp_path / "triton", dtype=dtype)
    assert result.ok and sorted(result.written) == ["instance_norm", "layer_norm",
                                                    "weight_norm"]
    for name in result.written:
        text = (tmp_path / "triton" / name / "config.pbtxt").read_text()
        config = text_format.Parse(text, ModelConfig())
        assert config.name == name
        assert config.platform == "onnxruntime_onnx"
        assert config.max_batch_size == 48
        assert config.dynamic_batching.max_queue_delay_microseconds == 300
        assert config.dynamic_batching.default_queue_policy.max_queue_size == 77
        (inp,), (out,) = config.input, config.output
        assert (inp.name, out.name) == ("input", "output")
        want = "TYPE_FP32" if dtype == "fp32" else "TYPE_FP16"
        assert ModelConfig.DESCRIPTOR.fields_by_name["input"].message_type.fields_by_name[
            "data_type"].enum_type.values_by_number[inp.data_type].name == want
        _, lay = repository.load_model(repo / name)
        assert list(inp.dims) == list(lay.sample_shape)
        assert list(out.dims) == list(lay.output_shape((1, *lay.sample_shape))[1:])
        # the model Triton would load runs at the config's batch size and dims
        onnx_path = tmp_path / "triton" / name / "1" / "model.onnx"
        sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
        npdt = np.float32 if dtype == "fp32" else np.float16
        x = np.random.default_rng(0).standard_normal((48, *inp.dims)).astype(npdt)
        assert sess.run(None, {inp.name: x})[0].shape == (48, *out.dims)


def test_a_typo_cannot_pass(ModelConfig):
    """The parse is strict: a misspelt field or enum is an error, so the test above means it."""
    for typo in ('platfrom: "onnxruntime_onnx"', "input [ { name: \"x\" data_type: TYPE_FP33 } ]",
                 "dynamic_batching { max_queue_delay_us: 5 }"):
        with pytest.raises(text_format.ParseError):
            text_format.Parse(typo, ModelConfig())


def test_free_dims_in_config(tmp_path, ModelConfig):
    hyper, params, _ = state_dicts()["group_norm"]
    repository.save_model(tmp_path / "models" / "gn", {"kind": "group_norm", **hyper,
                                                    "input_shape": [8, -1, -1]}, params)
    result = export.write_triton_repository(tmp_path / "models", tmp_path / "out", opset=17)
    assert result.ok, result.errors
    config = text_format.Parse((tmp_path / "out" / "gn" / "config.pbtxt").read_text(),
                               ModelConfig())
    assert list(config.input[0].dims) == [8, -1, -1]
    assert config.max_batch_size == 64  # config.json's default


def test_bad_model_is_named_and_others_still_written(tmp_path, capsys):
    repo = make_repository(tmp_path / "models", kinds=("layer_norm",))
    (repo / "broken").mkdir()
    (repo / "broken" / "config.json").write_text(json.dumps({"kind": "nope"}))
    (repo / "bad name!").mkdir()
    out = tmp_path / "triton"
    code = normserve(["export", "--triton-repository", str(out), str(repo)])
    err = capsys.readouterr().err
    assert code == 2
    assert "broken" in err and "kind" in err and "bad name!" in err
    assert (out / "layer_norm" / "1" / "model.onnx").is_file()
    assert not (out / "broken").exists()


def test_cli_writes_repository(tmp_path, capsys):
    repo = make_repository(tmp_path / "models", kinds=("rms_norm", "batch_norm"))
    out = tmp_path / "triton"
    assert normserve(["export", "--triton-repository", str(out), str(repo), "--opset",
                      "17"]) == 0
    assert "-> OK" in capsys.readouterr().out
    assert sorted(p.name for p in out.iterdir()) == ["batch_norm", "rms_norm"]
    assert normserve(["export", "--triton-repository", str(out), str(tmp_path / "none")]) == 2


@pytest.mark.parametrize("ort_fused", [False, True])
def test_fused_norms_list_both_inputs_and_outputs(tmp_path, ModelConfig, ort_fused):
    repo = make_repository(tmp_path / "models", kinds=("add_rms_norm", "add_layer_norm"))
    result = export.write_triton_repository(repo, tmp_path / "triton", ort_fused=ort_fused)
    assert result.reports["add_rms_norm"].ok
    if ort_fused:  # SkipLayerNormalization misses the SPEC on 1e4 + N(0, 1): not written
        assert sorted(result.written) == ["add_rms_norm"]
        assert any("less accurate side" in n for n in result.reports["add_layer_norm"].notes)
    else:
        assert sorted(result.written) == ["add_layer_norm", "add_rms_norm"]
    for name in result.written:
        config = text_format.Parse((tmp_path / "triton" / name / "config.pbtxt").read_text(),
                                   ModelConfig())
        assert [i.name for i in config.input] == ["input", "residual"]
        assert [o.name for o in config.output] == ["output", "residual_out"]
        onnx_path = tmp_path / "triton" / name / "1" / "model.onnx"
        sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
        x = np.random.default_rng(0).standard_normal((5, *config.input[0].dims))
        feeds = {i.name: x.astype(np.float32) for i in config.input}
        assert [a.shape for a in sess.run(None, feeds)] == [(5, *config.output[0].dims)] * 2
