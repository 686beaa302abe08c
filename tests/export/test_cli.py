"""``normserve export``: model folder round trip through the CLI, exit codes, named errors."""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from export_cases import state_dicts

from normserve import export, repository
from normserve.cli import main as normserve
from normserve.export import cli as export_cli
from normserve.kernels.oracle import assert_close, tolerance


def save(folder, kind: str, **extra):
    hyper, params, shape = state_dicts()[kind]
    config = {"kind": kind, **hyper, "input_shape": shape, "max_batch_size": 32,
              "max_queue_delay_us": 250, **extra}
    return repository.save_model(folder, config, params)


@pytest.mark.parametrize("dtype", ["fp32", "fp16"])
@pytest.mark.parametrize("kind", ["layer_norm", "group_norm", "spectral_norm"])
def test_model_folder_round_trip(tmp_path, capsys, kind, dtype):
    """config.json + params.safetensors -> normserve export -> ONNX Runtime == the kernel."""
    folder = save(tmp_path / "m", kind)
    out = tmp_path / "out" / "model.onnx"
    assert normserve(["export", str(folder), "-o", str(out), "--dtype", dtype]) == 0
    assert "-> OK" in capsys.readouterr().out
    model = onnx.load(str(out))
    onnx.checker.check_model(model, full_check=True)
    _, lay = repository.load_model(folder)
    npdt = np.float32 if dtype == "fp32" else np.float16
    x = np.random.default_rng(0).standard_normal((9, *lay.sample_shape)).astype(npdt)
    sess = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    y = sess.run(None, {"input": x})[0]
    assert_close(y, lay.apply(x).astype(np.float64), npdt)


def test_opset_17_and_json_report(tmp_path, capsys):
    folder = save(tmp_path / "m", "rms_norm")
    out = tmp_path / "rms.onnx"
    assert export_cli.main([str(folder), "-o", str(out), "--opset", "17", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["ok"] and report["opset"] == 17 and report["max_abs"] < tolerance(np.float32)[0]
    assert onnx.load(str(out)).opset_import[0].version == 17


def test_mismatch_exits_1_and_writes_nothing(tmp_path, monkeypatch, capsys):
    """A graph that disagrees with the kernel (here: built from other parameters)."""
    folder = save(tmp_path / "m", "layer_norm")
    _, other = repository.load_model(save(tmp_path / "other", "layer_norm", eps=1e-1))
    monkeypatch.setattr(export_cli, "to_onnx", lambda layer, *a, **k: export.to_onnx(other))
    out = tmp_path / "model.onnx"
    assert export_cli.main([str(folder), "-o", str(out)]) == 1
    assert "MISMATCH" in capsys.readouterr().out
    assert not out.exists()
    assert export_cli.main([str(folder), "-o", str(out), "--force"]) == 1
    assert out.exists()


def test_opset_below_17_is_a_named_error(tmp_path, capsys):
    folder = save(tmp_path / "m", "layer_norm")
    assert export_cli.main([str(folder), "-o", str(tmp_path / "m.onnx"), "--opset", "16"]) == 2
    assert "opset 16 cannot express layer_norm" in capsys.readouterr().err


def test_native_rms_norm_at_opset_17_is_a_named_error(tmp_path, capsys):
    folder = save(tmp_path / "m", "rms_norm")
    assert export_cli.main([str(folder), "-o", str(tmp_path / "m.onnx"), "--opset", "17",
                            "--native"]) == 2
    assert "RMSNormalization needs opset 23" in capsys.readouterr().err


def test_bad_model_folder(tmp_path, capsys):
    missing = tmp_path / "nothing"
    assert export_cli.main([str(missing), "-o", str(tmp_path / "m.onnx")]) == 2
    assert "config.json: missing" in capsys.readouterr().err
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "config.json").write_text(json.dumps({"kind": "layer_norm", "normalized_shape": [4],
                                                 "max_batch_size": 0}))
    assert export_cli.main([str(bad), "-o", str(tmp_path / "m.onnx")]) == 2
    assert "max_batch_size" in capsys.readouterr().err


def test_usage_errors(tmp_path, capsys):
    folder = save(tmp_path / "m", "layer_norm")
    assert export_cli.main([str(folder)]) == 2  # neither -o nor --triton-repository
    assert export_cli.main([str(folder), "-o", "x.onnx", "--dtype", "fp8"]) == 2
    assert export_cli.main(["--help"]) == 0
    assert "--triton-repository" in capsys.readouterr().out
