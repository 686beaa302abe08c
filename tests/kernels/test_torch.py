"""Prepared layers built from real PyTorch state dicts match torch.nn modules in eval mode."""

from __future__ import annotations

import numpy as np
import pytest

from normserve import kernels

torch = pytest.importorskip("torch")
nn = torch.nn


def _state(module) -> dict[str, np.ndarray]:
    return {k: v.detach().numpy() for k, v in module.state_dict().items()}


def _randomise(module, seed: int = 0):
    """Give every parameter and buffer non-trivial values, then switch to eval mode."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in list(module.named_parameters()) + list(module.named_buffers()):
            if t.is_floating_point():
                values = torch.rand(t.shape, generator=gen) + 0.5
                t.copy_(values if "var" in name else values - 1.0 if "mean" in name else values)
    return module.eval()


def _check(module, layer, x: np.ndarray, tol: float = 1e-5):
    with torch.no_grad():
        expected = module(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(layer.apply(x), expected, rtol=tol, atol=tol)


def _x(*shape) -> np.ndarray:
    return np.random.default_rng(0).standard_normal(shape).astype(np.float32)


def test_batch_norm_2d():
    m = _randomise(nn.BatchNorm2d(6))
    _check(m, kernels.prepare("batch_norm", _state(m), eps=m.eps), _x(3, 6, 5, 4))


def test_batch_norm_1d():
    m = _randomise(nn.BatchNorm1d(7, affine=False))
    _check(m, kernels.prepare("batch_norm", _state(m)), _x(9, 7))


def test_layer_norm():
    m = _randomise(nn.LayerNorm([4, 6]))
    _check(m, kernels.prepare("layer_norm", _state(m), normalized_shape=[4, 6]), _x(5, 3, 4, 6))


def test_rms_norm_default_eps():
    m = _randomise(nn.RMSNorm(33))
    _check(m, kernels.prepare("rms_norm", _state(m), normalized_shape=[33]), _x(4, 33) * 1e-3)


def test_instance_norm():
    m = _randomise(nn.InstanceNorm2d(4, affine=True))
    _check(m, kernels.prepare("instance_norm", _state(m)), _x(2, 4, 7, 5))


def test_instance_norm_with_running_stats_is_refused():
    m = nn.InstanceNorm1d(4, affine=True, track_running_stats=True)
    with pytest.raises(ValueError, match="batch_norm"):
        kernels.prepare("instance_norm", _state(m))


def test_group_norm():
    m = _randomise(nn.GroupNorm(3, 12))
    _check(m, kernels.prepare("group_norm", _state(m), num_groups=3), _x(2, 12, 9))


# The legacy hook is deprecated, but checkpoints saved with it (weight_g/weight_v) are still
# what many users have: it stays covered, its FutureWarning expected.
@pytest.mark.filterwarnings("ignore:`torch.nn.utils.weight_norm` is deprecated:FutureWarning")
@pytest.mark.parametrize("modern", [False, True])
def test_weight_norm_linear(modern):
    lin = nn.Linear(19, 11)
    wn = nn.utils.parametrizations.weight_norm if modern else nn.utils.weight_norm
    m = _randomise(wn(lin))
    _check(m, kernels.prepare("weight_norm", _state(m)), _x(6, 19))


@pytest.mark.parametrize("modern", [False, True])
def test_spectral_norm_linear_uses_stored_u_v(modern):
    lin = nn.Linear(23, 13)
    sn = nn.utils.parametrizations.spectral_norm if modern else nn.utils.spectral_norm
    m = sn(lin)
    m.train()
    with torch.no_grad():  # a few power iterations, as training would leave them
        for _ in range(3):
            m(torch.zeros(1, 23))
    m.eval()
    layer = kernels.prepare("spectral_norm", _state(m))
    _check(m, layer, _x(5, 23))
