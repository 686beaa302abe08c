"""Bad arguments raise ValueError/TypeError naming the argument; model folders load safely."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from kernel_cases import make_case, sample_input

from normserve import kernels
from normserve.kernels import reference as R
from normserve.kernels.oracle import assert_close
from normserve.repository import ModelError, load_model, save_model, scan_repository

X = np.zeros((2, 4), np.float32)
X3 = np.zeros((2, 4, 3), np.float32)
ONES4 = np.ones(4)

BAD_CALLS = [
    (lambda: kernels.layer_norm([[1.0, 2.0]], [2]), TypeError, "x must be a NumPy array"),
    (lambda: kernels.layer_norm(X.astype(np.int32), [4]), TypeError, "x has dtype int32"),
    (lambda: kernels.layer_norm(X, [5]), ValueError, "normalized_shape"),
    (lambda: kernels.layer_norm(X, []), TypeError, "normalized_shape"),
    (lambda: kernels.layer_norm(X, [0]), ValueError, "normalized_shape"),
    (lambda: kernels.layer_norm(X, "4"), TypeError, "normalized_shape"),
    (lambda: kernels.layer_norm(np.zeros(4, np.float32), [4]), ValueError, "batch axis"),
    (lambda: kernels.layer_norm(X, [4], weight=np.ones(3)), ValueError, "weight"),
    (lambda: kernels.layer_norm(X, [4], bias=np.ones((2, 2))), ValueError, "bias"),
    (lambda: kernels.layer_norm(X, [4], weight=np.array([1, np.nan, 1, 1])), ValueError,
     "weight contains NaN"),
    (lambda: kernels.layer_norm(X, [4], eps=0), ValueError, "eps"),
    (lambda: kernels.layer_norm(X, [4], eps=-1e-5), ValueError, "eps"),
    (lambda: kernels.layer_norm(X, [4], eps="small"), TypeError, "eps"),
    (lambda: kernels.layer_norm(X, [4], eps=float("nan")), ValueError, "eps"),
    (lambda: kernels.layer_norm(X, [4], weight="abc"), TypeError, "weight"),
    (lambda: kernels.layer_norm(X, [4], out=np.zeros((2, 3), np.float32)), ValueError, "out"),
    (lambda: kernels.layer_norm(X, [4], out=np.zeros((2, 4), np.float64)), TypeError, "out"),
    (lambda: kernels.layer_norm(X, [4], out=np.zeros((4, 2), np.float32).T), ValueError,
     "out must be C-contiguous"),
    (lambda: kernels.layer_norm(X, [4], out=[0.0] * 8), TypeError, "out"),
    (lambda: kernels.layer_norm(X, [4], device="tpu"), ValueError, "device"),
    (lambda: kernels.rms_norm(X, [4], eps=-1.0), ValueError, "eps"),
    (lambda: kernels.batch_norm(X, np.zeros(3), np.ones(3)), ValueError, "channels"),
    (lambda: kernels.batch_norm(X, np.zeros(4), np.ones(3)), ValueError, "running_var"),
    (lambda: kernels.batch_norm(X, np.zeros(4), -ONES4), ValueError, "running_var"),
    (lambda: kernels.batch_norm(X, np.zeros((2, 2)), ONES4), ValueError, "running_mean"),
    (lambda: kernels.batch_norm(np.zeros(4, np.float32), np.zeros(4), ONES4), ValueError,
     "channel axis"),
    (lambda: kernels.instance_norm(X), ValueError, "instance_norm"),
    (lambda: kernels.instance_norm(X3, weight=np.ones(3)), ValueError, "channels"),
    (lambda: kernels.group_norm(X3, 3), ValueError, "num_groups"),
    (lambda: kernels.group_norm(X3, 0), ValueError, "num_groups"),
    (lambda: kernels.group_norm(X3, 2.0), TypeError, "num_groups"),
    (lambda: kernels.group_norm(X3, 3, weight=np.ones(4)), ValueError, "must divide"),
    (lambda: kernels.group_norm(X3, 2, weight=np.ones((4, 1))), ValueError, "1-D"),
    (lambda: kernels.weight_norm_linear(X, np.ones((3, 5)), np.ones((3, 1))), ValueError,
     "x must be"),
    (lambda: kernels.weight_norm_linear(X, np.ones((3, 4)), np.ones((2, 1))), ValueError,
     "weight_g"),
    (lambda: kernels.weight_norm_linear(X, np.ones(4), np.ones(1)), ValueError, "weight_v"),
    (lambda: kernels.weight_norm_linear(X, np.zeros((3, 4)), np.ones((3, 1))), ValueError,
     "norm is 0"),
    (lambda: kernels.weight_norm_linear(X, np.array([[1, 2, np.nan, 4]] * 3, np.float32),
                                        np.ones((3, 1))), ValueError, "weight_v contains NaN"),
    (lambda: kernels.weight_norm_linear(X, np.full((3, 4), np.inf), np.ones((3, 1))),
     ValueError, "weight_v contains NaN or Inf"),
    (lambda: kernels.weight_norm_linear(X, np.ones((3, 4)), np.ones((3, 1)), dim=2),
     ValueError, "dim"),
    (lambda: kernels.weight_norm_linear(X, np.ones((3, 4)), np.ones((3, 1)), bias=np.ones(4)),
     ValueError, "bias"),
    (lambda: kernels.spectral_norm_linear(X, np.ones((3, 4)), weight_u=np.ones(3)),
     ValueError, "together"),
    (lambda: kernels.spectral_norm_linear(X, np.ones((3, 4)), weight_u=np.ones(4),
                                          weight_v=np.ones(4)), ValueError, "weight_u"),
    (lambda: kernels.spectral_norm_linear(X, np.zeros((3, 4))), ValueError, "sigma"),
    (lambda: kernels.spectral_sigma(np.ones(3)), ValueError, "weight_orig"),
    (lambda: kernels.prepare("softmax"), ValueError, "kind must be one of"),
    (lambda: kernels.prepare("layer_norm", {"weight": ONES4}, normalized_shape=[4], axis=1),
     ValueError, "axis"),
    (lambda: kernels.prepare("layer_norm", {"weight": ONES4, "gamma": ONES4}), ValueError,
     "gamma"),
    (lambda: kernels.prepare("layer_norm", {}), ValueError, "normalized_shape"),
    (lambda: kernels.prepare("group_norm", {}), ValueError, "num_groups"),
    (lambda: kernels.prepare("batch_norm", {"running_mean": ONES4}), ValueError, "running_var"),
    (lambda: kernels.prepare("weight_norm", {"weight_v": np.ones((2, 4))}), ValueError,
     "weight_g"),
    (lambda: kernels.prepare("layer_norm", [1, 2]), TypeError, "params"),
]


@pytest.mark.parametrize("call,exc,message", BAD_CALLS, ids=[m for _, _, m in BAD_CALLS])
def test_bad_arguments_name_what_is_wrong(call, exc, message):
    with pytest.raises(exc, match=message):
        call()


def test_state_dict_extras_from_torch_are_accepted():
    """torch's BatchNorm state dict carries num_batches_tracked; it has no effect in eval."""
    layer = kernels.prepare("batch_norm", {"running_mean": ONES4, "running_var": ONES4,
                                           "num_batches_tracked": np.array(5)})
    assert layer.params["scale"].shape == (4,)


@pytest.mark.parametrize("fmt", ["safetensors", "npz"])
def test_model_folder_round_trip(tmp_path, fmt):
    case = make_case("group_norm", 10)
    config = {"kind": "group_norm", "num_groups": 3, "input_shape": [6, -1],
              "max_batch_size": 8}
    if fmt == "safetensors":
        save_model(tmp_path / "gn", config, case.params)
    else:
        (tmp_path / "gn").mkdir()
        (tmp_path / "gn" / "config.json").write_text(json.dumps(config))
        np.savez(tmp_path / "gn" / "params.npz", **case.params)
    cfg, layer = load_model(tmp_path / "gn")
    assert cfg.max_batch_size == 8 and layer.sample_shape == (6, -1)
    x = sample_input(case, 3, np.float32)
    assert_close(layer.apply(x), case.reference(x), np.float32)


def test_npz_with_pickled_objects_is_refused(tmp_path):
    folder = tmp_path / "evil"
    folder.mkdir()
    (folder / "config.json").write_text('{"kind": "layer_norm", "normalized_shape": [2]}')
    np.savez(folder / "params.npz", weight=np.array([object()], dtype=object))
    with pytest.raises(ModelError, match=r"params\.npz"):
        load_model(folder)


@pytest.mark.parametrize(
    "config,message",
    [
        ('{"kind": "layer_norm"', "not valid JSON"),
        ("[1, 2]", "JSON object"),
        ('{"normalized_shape": [4]}', "field kind"),
        ('{"kind": "softmax"}', "field kind"),
        ('{"kind": "layer_norm", "normalized_shape": [4], "max_batch_size": 0}',
         "max_batch_size"),
        ('{"kind": "layer_norm", "normalized_shape": [4], "input_shape": [0]}', "input_shape"),
        ('{"kind": "layer_norm", "normalized_shape": [4], "input_shape": [5]}',
         "normalized_shape"),
        ('{"kind": "batch_norm"}', "running_mean"),
        ('{"kind": "layer_norm", "normalized_shape": [4], "momentum": 0.1}', "momentum"),
    ],
)
def test_bad_model_folders_name_file_and_field(tmp_path, config, message):
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "config.json").write_text(config)
    with pytest.raises(ModelError, match=message):
        load_model(tmp_path / "m")


def test_corrupt_safetensors_names_the_file(tmp_path):
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "config.json").write_text('{"kind": "layer_norm", "normalized_shape": [4]}')
    (tmp_path / "m" / "params.safetensors").write_bytes(b"\xff" * 64)
    with pytest.raises(ModelError, match=r"params\.safetensors"):
        load_model(tmp_path / "m")


def test_repository_scan_skips_bad_names(tmp_path):
    for name in ("good_1.0", "bad name", "x" * 65):
        (tmp_path / name).mkdir()
    folders, skipped = scan_repository(tmp_path)
    assert [f.name for f in folders] == ["good_1.0"]
    assert sorted(skipped) == sorted(["bad name", "x" * 65])


finite = st.floats(-1e3, 1e3, allow_nan=False, width=32)


@settings(max_examples=60, deadline=None)
@given(
    x=hnp.arrays(np.float32, hnp.array_shapes(min_dims=2, max_dims=3, min_side=1, max_side=9),
                 elements=finite),
    eps=st.floats(1e-8, 1.0),
)
def test_layer_norm_property(x, eps):
    """Any finite FP32 input: the kernel matches float64 to the spec tolerance, scaled to the
    row's conditioning (FP32 inputs whose spread is tiny next to eps lose nothing here)."""
    n = x.shape[-1]
    y = kernels.layer_norm(x, [n], eps=eps)
    assert_close(y, R.layer_norm(x, [n], eps=eps), np.float32)


@settings(max_examples=40, deadline=None)
@given(
    x=hnp.arrays(np.float32, st.tuples(st.integers(1, 5), st.sampled_from([2, 4, 6]),
                                       st.integers(1, 7)), elements=finite),
    groups=st.sampled_from([1, 2]),
)
def test_group_norm_property(x, groups):
    y = kernels.group_norm(x, groups, eps=1e-3)
    assert_close(y, R.group_norm(x, groups, eps=1e-3), np.float32)


@settings(max_examples=40, deadline=None)
@given(rows=st.integers(1, 40), pick=st.integers(0, 39))
def test_batch_invariance_property(rows, pick):
    case = make_case("rms_norm", 37)
    layer = kernels.prepare(case.kind, case.params, **case.hyper)
    x = sample_input(case, rows, np.float32, seed=rows)
    i = pick % rows
    np.testing.assert_array_equal(layer.apply(x)[i], layer.apply(x[i : i + 1])[0])
