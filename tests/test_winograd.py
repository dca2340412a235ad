"""Winograd F(4x4, 3x3) convolution: equal to F.conv2d up to float rounding, used only where it pays off."""

import contextlib
import copy

import pytest
import torch
import torch.nn.functional as F
from tiny import NUM_LABELS, tiny_config, tiny_maskformer_decoder

from hf_segmodels import MaskFormerForUniversalSegmentation, kernels, winograd


@pytest.mark.parametrize("shape", [(1, 8, 5, 16, 16), (2, 16, 24, 13, 22), (1, 64, 100, 64, 64), (3, 32, 32, 7, 9),
                                   (1, 4, 4, 1, 1), (1, 4, 4, 4, 4)])
@pytest.mark.parametrize("with_bias", [False, True])
@pytest.mark.parametrize("band_tiles", [None, 16])
@pytest.mark.parametrize("layout", ["contiguous", "channels_last", "strided"])
def test_conv3x3_equals_conv2d(shape, with_bias, band_tiles, layout):
    x, weight, bias, expected = convolution_case(shape, with_bias)
    width = x.shape[-1]
    if layout == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    elif layout == "strided":
        x = torch.cat([x, x], dim=-1)[..., :width]  # a view whose rows are twice as long
    # uninitialised memory filled with NaN: a padding cell left unzeroed would show in the result
    assert torch.utils.deterministic.fill_uninitialized_memory
    with _deterministic():
        actual = winograd.conv3x3(x, weight, bias, band_tiles=band_tiles)
    assert actual.shape == expected.shape and actual.is_contiguous()
    assert_close_at_scale(actual, expected)


def convolution_case(shape: tuple[int, ...], with_bias: bool):
    """(x, weight, bias, F.conv2d's output) for shape (batch, channels, out_channels, height, width), seeded by it."""
    batch, channels, out_channels, height, width = shape
    generator = torch.Generator().manual_seed(sum(shape))
    x = torch.randn(batch, channels, height, width, generator=generator)
    weight = torch.randn(out_channels, channels, 3, 3, generator=generator) / (3 * channels**0.5)
    bias = torch.randn(out_channels, generator=generator) if with_bias else None
    return x, weight, bias, F.conv2d(x, weight, bias, padding=1)


def assert_close_at_scale(actual: torch.Tensor, expected: torch.Tensor) -> None:
    """Equal within 2e-5 of the expected output's largest magnitude (Winograd's rounding, ~1e-5 of the scale)."""
    scale = expected.abs().max()
    torch.testing.assert_close(actual / scale, expected / scale, rtol=0, atol=2e-5)


@contextlib.contextmanager
def _deterministic():
    """`torch.use_deterministic_algorithms(True)`, which fills `torch.empty` tensors with NaN
    (`torch.utils.deterministic.fill_uninitialized_memory`)."""
    previous = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(previous)


def as_winograd(conv: torch.nn.Conv2d) -> winograd.Conv2d:
    """A `winograd.Conv2d` with `conv`'s geometry and parameters (same state-dict keys)."""
    layer = winograd.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size, stride=conv.stride,
                            padding=conv.padding)
    layer.load_state_dict(conv.state_dict())
    return layer


def test_winograd_is_used_only_where_it_pays_off():
    conv = torch.nn.Conv2d(128, 128, 3, padding=1)
    big, small = torch.randn(1, 128, 32, 32), torch.randn(1, 128, 28, 28)
    with torch.no_grad():
        assert winograd.worthwhile(big, conv.weight)  # 64 tiles of 4x4
        assert not winograd.worthwhile(small, conv.weight)  # too few tiles (49)
        assert not winograd.worthwhile(big.double(), conv.weight.double())
        assert not winograd.worthwhile(big[:, :64], torch.nn.Conv2d(64, 128, 3).weight)  # too few channels
        assert not winograd.worthwhile(big, torch.nn.Conv2d(128, 64, 3).weight)  # too few output channels
        narrow = torch.nn.Conv2d(96, 96, 3).weight
        assert not winograd.worthwhile(torch.randn(1, 96, 32, 32), narrow)  # 64 tiles: too few for 96 channels
        assert winograd.worthwhile(torch.randn(1, 96, 64, 64), narrow)  # 256 tiles
        wide = torch.nn.Conv2d(512, 512, 3).weight
        assert winograd.worthwhile(torch.randn(1, 512, 16, 16), wide)  # 16 tiles are enough for 512 channels
        assert not winograd.worthwhile(torch.randn(1, 512, 12, 12), wide)  # 9 tiles: too few at any width
        # filters transformed at every call: 128 tiles for 512 channels
        assert not winograd.worthwhile(torch.randn(1, 512, 32, 32), wide, filters_cached=False)
        assert winograd.worthwhile(torch.randn(1, 512, 32, 64), wide, filters_cached=False)
    assert not winograd.worthwhile(big, conv.weight)  # autograd: training keeps PyTorch's kernels
    with torch.no_grad():
        strided = torch.nn.Conv2d(128, 128, 3, padding=1, stride=2)
        torch.testing.assert_close(as_winograd(strided)(big), strided(big), rtol=0, atol=0)
        try:
            kernels.enabled["winograd"] = False
            assert not winograd.worthwhile(big, conv.weight)
            torch.testing.assert_close(as_winograd(conv)(big), conv(big), rtol=0, atol=0)
        finally:
            kernels.enabled["winograd"] = True


def test_maskformer_with_winograd_matches_direct_convolutions(monkeypatch):
    """A pixel decoder wide enough (128 channels, 64x64 masks) to take the Winograd path in its 3x3 convolutions at
    1/8 and 1/4 resolution, the folded mask projection (96 queries) included: same outputs as with PyTorch's
    convolutions."""
    torch.manual_seed(0)
    config = tiny_config("maskformer", NUM_LABELS, decoder_config=tiny_maskformer_decoder(num_queries=96),
                         fpn_feature_size=128, mask_feature_size=128)  # fmt: skip
    model = MaskFormerForUniversalSegmentation(config).eval()
    pixel_values = torch.randn(1, 3, 256, 256)
    calls = []
    original = winograd.conv3x3
    counting = lambda *args, **kwargs: calls.append(args[0].shape) or original(*args, **kwargs)  # noqa: E731
    monkeypatch.setattr(winograd, "conv3x3", counting)
    monkeypatch.setattr("hf_segmodels.maskformer.modeling_maskformer.winograd_conv3x3", counting)
    with torch.no_grad():
        fast = model(pixel_values=pixel_values)
        # the output convs at 1/8 (32x32: 64 tiles) and 1/4, and the mask projection; not 1/16 (16 tiles)
        assert [shape[-1] for shape in calls] == [32, 64, 64]
        monkeypatch.setitem(kernels.enabled, "winograd", False)
        direct = model(pixel_values=pixel_values)
    assert len(calls) == 3
    torch.testing.assert_close(fast.masks_queries_logits, direct.masks_queries_logits, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(fast.logits, direct.logits, rtol=1e-4, atol=1e-5)


def test_winograd_convolution_compiles_and_steps_aside_under_compile():
    conv = torch.nn.Conv2d(128, 128, 3, padding=1)
    x = torch.randn(1, 128, 32, 32)
    with torch.no_grad():
        assert winograd.worthwhile(x, conv.weight)
        # the transform itself is traceable ...
        direct = torch.compile(lambda v: winograd.conv3x3(v, conv.weight, conv.bias), backend="aot_eager",
                               fullgraph=True)
        torch.testing.assert_close(direct(x), winograd.conv3x3(x, conv.weight, conv.bias), rtol=1e-5, atol=1e-5)
        # ... but a model under torch.compile keeps PyTorch's convolution (the compiler picks its own kernels)
        graphs = []

        def backend(graph_module, example_inputs):
            graphs.append(str(graph_module.code))
            return graph_module.forward

        compiled = torch.compile(as_winograd(conv), backend=backend, fullgraph=True)
        torch.testing.assert_close(compiled(x), conv(x), rtol=0, atol=0)
        assert "conv2d" in graphs[0] and "einsum" not in graphs[0] and "bmm" not in graphs[0]
        assert "matmul" not in graphs[0] and "pixel_shuffle" not in graphs[0]  # (nor the graph form)


@pytest.mark.parametrize("shape", [(1, 8, 5, 16, 16), (2, 16, 24, 13, 22), (3, 32, 32, 7, 9), (1, 4, 4, 1, 1)])
@pytest.mark.parametrize("with_bias", [False, True])
def test_graph_form_equals_conv2d(shape, with_bias):
    """`conv3x3_graph` (standard operators: grouped convolutions, one batched product, pixel shuffle) computes the same
    convolution, at sizes that are not multiples of the 4x4 tile."""
    x, weight, bias, expected = convolution_case(shape, with_bias)
    actual = winograd.conv3x3_graph(x, weight, bias)
    assert actual.shape == expected.shape
    assert_close_at_scale(actual, expected)


def test_graph_form_is_written_only_while_exporting():
    conv = torch.nn.Conv2d(128, 128, 3, padding=1)
    x = torch.randn(1, 128, 16, 16)  # (16 tiles: too few for the eager kernel at 128 channels, enough for the graph)
    with torch.no_grad():
        assert not winograd.graph_worthwhile(x, conv.weight)  # eager
        assert winograd.conv3x3_for(x, conv.weight) is None
        seen = []

        class Probe(torch.nn.Module):
            def forward(self, v):
                seen.append((winograd.graph_worthwhile(v, conv.weight), winograd.worthwhile(v, conv.weight),
                             winograd.graph_worthwhile(v[:, :96], conv.weight[:, :96]),  # 96 channels
                             winograd.graph_worthwhile(v[..., :12, :12], conv.weight)))  # 9 tiles  # fmt: skip
                return v

        torch.export.export(Probe(), (x,), strict=False)
        assert seen == [(True, False, False, False)]
        seen.clear()
        with kernels.disabled("winograd"):
            torch.export.export(Probe(), (x,), strict=False)
        assert seen == [(False, False, False, False)]
        seen.clear()
        torch.compile(Probe(), backend="eager", fullgraph=True)(x)  # torch.compile alone: inductor's convolution
        assert seen == [(False, False, False, False)]


def test_exported_winograd_runs_in_onnx_runtime_at_any_size(tmp_path):
    """A wide convolution exported with dynamic height and width: the graph holds the Winograd form (no 3x3 Conv) and
    ONNX Runtime reproduces PyTorch's direct convolution at sizes that are and are not multiples of 4."""
    onnx = pytest.importorskip("onnx", reason="needs the deploy extra (pip install hf-segmodels[deploy])")
    ort = pytest.importorskip("onnxruntime", reason="needs the deploy extra (pip install hf-segmodels[deploy])")
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(128, 128, 3, padding=1)
    layer = as_winograd(conv).eval()
    path = tmp_path / "conv.onnx"

    def export(minimum):
        dims = {"x": {0: torch.export.Dim("batch", min=1), 2: torch.export.Dim("h", min=minimum),
                      3: torch.export.Dim("w", min=minimum)}}  # fmt: skip
        with torch.no_grad():
            program = torch.export.export(layer, (torch.randn(2, 128, 20, 24),), dynamic_shapes=dims, strict=False)
            torch.onnx.export(program, dynamo=True, optimize=True).save(str(path))

    # maps down to 2 pixels (one tile): the layer stays a plain convolution (and the dynamic export works)
    export(2)
    assert "DepthToSpace" not in {node.op_type for node in onnx.load(str(path)).graph.node}
    export(5)
    graph = onnx.load(str(path)).graph
    operators = {node.op_type for node in graph.node}
    assert {"MatMul", "DepthToSpace"} <= operators
    kernels_3x3 = [node for node in graph.node if node.op_type == "Conv" and any(
        attribute.name == "kernel_shape" and list(attribute.ints) == [3, 3] for attribute in node.attribute)]
    assert not kernels_3x3
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for shape in [(1, 128, 17, 30), (3, 128, 32, 32), (1, 128, 5, 6)]:
        x = torch.randn(shape)
        with torch.no_grad():
            expected = conv(x).numpy()
        (actual,) = session.run(None, {session.get_inputs()[0].name: x.numpy()})
        assert actual.shape == expected.shape
        assert abs(actual - expected).max() < 1e-4 * max(1.0, abs(expected).max())


def test_transformed_filters_are_remembered_until_the_weights_change(monkeypatch):
    torch.manual_seed(0)
    layer = as_winograd(torch.nn.Conv2d(128, 128, 3, padding=1)).eval()
    x = torch.randn(1, 128, 32, 32)
    transforms = []
    original = winograd.transform_filters
    monkeypatch.setattr(winograd, "transform_filters", lambda w: transforms.append(1) or original(w))
    with torch.inference_mode():
        first = layer(x)
        torch.testing.assert_close(layer(x), first, rtol=0, atol=0)
        assert len(transforms) == 1  # once for two calls
    with torch.no_grad():
        layer.weight.mul_(2)  # an in-place update (as load_state_dict does)
    with torch.inference_mode():
        second = layer(x)
    assert len(transforms) == 2
    expected = F.conv2d(x, layer.weight, layer.bias, padding=1)
    torch.testing.assert_close(second, expected, rtol=1e-4, atol=1e-4)
    layer.weight = torch.nn.Parameter(layer.weight.detach() / 2)  # a new parameter
    with torch.inference_mode():
        torch.testing.assert_close(layer(x), first, rtol=1e-5, atol=1e-5)
    assert len(transforms) == 3
    other = as_winograd(torch.nn.Conv2d(128, 128, 3, padding=1)).eval()
    layer.load_state_dict(other.state_dict())  # copies into the parameters in place
    copied = copy.deepcopy(layer)
    with torch.inference_mode():
        torch.testing.assert_close(layer(x), other(x), rtol=0, atol=0)
        torch.testing.assert_close(copied(x), other(x), rtol=0, atol=0)
    assert len(transforms) == 6  # (layer, copied and other each transform their own)
    with torch.no_grad():  # autograd on: PyTorch's convolution (nothing remembered for a graph)
        pass
    x.requires_grad_(True)
    layer(x).sum().backward()
    assert len(transforms) == 6 and x.grad is not None


def test_setr_pup_head_runs_its_wide_convolutions_through_winograd(monkeypatch):
    """SETR-PUP's head with 128 channels: its 3x3 convolutions at 32x32 and larger take Winograd (the first, from the
    narrow tiny encoder, does not); same logits as with PyTorch's convolutions."""
    from hf_segmodels import testing_utils

    model = testing_utils.tiny_model("setr", decoder_type="pup", decoder_hidden_size=128)
    pixel_values = torch.randn(1, 3, 128, 128)  # (patch 8: a 16x16 grid, head convs at 16, 32, 64 and 128)
    calls = []
    original = winograd.conv3x3
    monkeypatch.setattr(winograd, "conv3x3", lambda *a, **k: calls.append(a[0].shape[-1]) or original(*a, **k))
    with torch.no_grad():
        fast = model(pixel_values=pixel_values).logits
        with kernels.disabled("winograd"):
            direct = model(pixel_values=pixel_values).logits
    assert calls == [32, 64, 128]
    assert_close_at_scale(fast, direct)
