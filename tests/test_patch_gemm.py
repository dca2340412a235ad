"""`patch_gemm.PatchConv2d`: a convolution with kernel = stride as one matrix product in CPU inference (SegFormer's
spatial reduction), the same numbers as PyTorch's convolution, PyTorch's convolution wherever the product cannot be
used."""

import pytest
import torch
import torch.nn.functional as F

from hf_segmodels import kernels
from hf_segmodels.patch_gemm import PatchConv2d


def layers(kernel: int, channels_in: int = 12, channels_out: int = 20):
    torch.manual_seed(0)
    plain = torch.nn.Conv2d(channels_in, channels_out, kernel, stride=kernel)
    layer = PatchConv2d(channels_in, channels_out, kernel, stride=kernel)
    layer.load_state_dict(plain.state_dict())
    return plain, layer


def channels_last(*shape):
    return torch.randn(*shape).contiguous(memory_format=torch.channels_last)


def ran_product(layer, x) -> bool:
    """Whether `layer(x)` ran as a matrix product (F.linear) rather than a convolution."""
    calls = []
    original = F.linear
    F.linear = lambda *args, **kwargs: calls.append(1) or original(*args, **kwargs)
    try:
        layer(x)
    finally:
        F.linear = original
    return bool(calls)


@pytest.mark.parametrize("kernel, height, width", [(8, 64, 48), (4, 30, 19), (2, 7, 9), (2, 2, 2)])
def test_patch_product_equals_the_convolution(kernel, height, width):
    """Sizes that are not multiples of the kernel are floored as by the convolution; batch 2."""
    plain, layer = layers(kernel)
    x = channels_last(2, 12, height, width)
    with torch.no_grad():
        assert ran_product(layer, x)
        result, reference = layer(x), plain(x)
    assert result.shape == reference.shape == (2, 20, height // kernel, width // kernel)
    assert result.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(result, reference, atol=1e-5, rtol=1e-5)
    assert reference.abs().max() > 0.1  # (not trivially small)


def test_the_convolution_runs_wherever_the_product_cannot():
    plain, layer = layers(4)
    x = channels_last(1, 12, 16, 16)
    assert not ran_product(layer, x)  # autograd: the weight requires gradients
    torch.testing.assert_close(layer(x), plain(x))
    with torch.no_grad():
        assert not ran_product(layer, x.contiguous())  # not channels-last
        with pytest.raises(RuntimeError, match="Kernel size can't be greater"):  # the convolution's own error
            layer(channels_last(1, 12, 3, 16))  # smaller than one patch
        with kernels.disabled("patch_gemm"):
            assert not ran_product(layer, x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            assert not ran_product(layer, x)
    overlapping = PatchConv2d(12, 20, 4, stride=2)
    with torch.no_grad():
        assert not ran_product(overlapping, x)
        torch.testing.assert_close(overlapping(x), F.conv2d(x, overlapping.weight, overlapping.bias, stride=2))
    compiled = torch.compile(layer, backend="eager", fullgraph=True)
    with torch.no_grad():
        assert not ran_product(compiled, x)  # (while torch.compile traces, the compiler picks its own kernels)


def test_the_weight_matrix_follows_weight_changes():
    plain, layer = layers(2)
    x = channels_last(1, 12, 8, 8)
    with torch.no_grad():
        layer(x)  # remembers the weight as a matrix
        layer.weight.mul_(-2.0)
        plain.weight.mul_(-2.0)
        torch.testing.assert_close(layer(x), plain(x), atol=1e-5, rtol=1e-5)
        layer.load_state_dict(layers(2, 12, 20)[0].state_dict())
        torch.testing.assert_close(layer(x), layers(2, 12, 20)[0](x), atol=1e-5, rtol=1e-5)
