"""Errors blame the right argument: when parameters disagree with each other or with ``x``,
the message names the one that disagrees with ``x`` and says what ``x`` has."""

import numpy as np
import pytest

from normserve import kernels

X4 = np.ones((2, 4, 5), np.float32)  # 4 channels on axis 1
C3, C4 = np.ones(3), np.ones(4)


@pytest.mark.parametrize(("call", "blamed"), [
    (lambda: kernels.instance_norm(X4, weight=C3, bias=C4), "weight"),
    (lambda: kernels.instance_norm(X4, weight=C4, bias=C3), "bias"),
    (lambda: kernels.group_norm(X4, 2, weight=C3, bias=C4), "weight"),
    (lambda: kernels.group_norm(X4, 2, weight=C4, bias=C3), "bias"),
    (lambda: kernels.group_norm(X4, 2, weight=C3), "weight"),
    (lambda: kernels.batch_norm(X4, C3, C4), "running_mean"),
    (lambda: kernels.batch_norm(X4, C4, C3), "running_var"),
    (lambda: kernels.batch_norm(X4, C4, C4, weight=C3, bias=C4), "weight"),
    (lambda: kernels.batch_norm(X4, C4, C4, weight=C4, bias=C3), "bias"),
])
def test_the_parameter_that_disagrees_with_x_is_named(call, blamed):
    with pytest.raises(ValueError) as err:
        call()
    msg = str(err.value)
    assert msg.startswith(f"{blamed} must have shape [4]"), msg
    assert "x has 4 channels on axis 1" in msg and "got [3]" in msg


@pytest.mark.parametrize("kind", ["instance_norm", "group_norm"])
def test_prepared_layer_says_weight_and_bias_disagree(kind):
    hyper = {"num_groups": 1} if kind == "group_norm" else {}
    with pytest.raises(ValueError, match=r"weight has shape \[3\] and bias \[4\]: they must"):
        kernels.prepare(kind, {"weight": C3, "bias": C4}, **hyper)


def test_params_agreeing_with_each_other_but_not_x_blame_x():
    with pytest.raises(ValueError, match=r"x must have 3 channels on axis 1, got shape \[2, 4"):
        kernels.instance_norm(X4, weight=C3, bias=C3)


@pytest.mark.parametrize(("u", "v", "blamed", "n", "got"),
                         [(5, 3, "weight_u", 2, 5), (2, 5, "weight_v", 3, 5)])
def test_spectral_vectors_named_one_at_a_time(u, v, blamed, n, got):
    w = np.arange(1.0, 7.0).reshape(2, 3)
    with pytest.raises(ValueError, match=rf"^{blamed} must have shape \[{n}\] \(weight_orig is "
                                         rf"\[2, 3\]\), got \[{got}\]"):
        kernels.spectral_sigma(w, np.ones(u), np.ones(v))


def test_channel_errors_from_x_without_channels_stay_the_layers():
    with pytest.raises(ValueError, match="weight has shape"):
        kernels.instance_norm(np.ones(4, np.float32), weight=C3, bias=C4)
