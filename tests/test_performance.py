"""Performance capabilities of the four architectures on tiny models: torch.compile (graph capture and numerics),
bfloat16 autocast, the batched sliding window against the naive loop, and MaskFormer's folded-BatchNorm ResNet path.

torch.compile: the default suite compiles with `backend="aot_eager"`, which runs dynamo's graph capture and AOTAutograd
(the parts that fail on unsupported Python or graph breaks) in a few seconds; the real inductor compile (C++ codegen,
about a minute per model on this CPU) is in the `slow` test of the same models.

bfloat16 autocast tolerance (documented contract): under `torch.autocast("cpu", dtype=torch.bfloat16)` every model's
logits stay within `BF16_TOLERANCE` (5%) of the fp32 logits' range (`max |bf16 - fp32| <= 0.05 * max |fp32|`), and the
argmax prediction agrees with fp32 on at least 90% of the pixels. bfloat16 keeps 8 mantissa bits (relative rounding
2^-9 per operation), so a few percent after a dozen layers is the expected error, not a bug.
"""

import contextlib

import pytest
import torch
from tiny import NUM_LABELS, WIDE_RESNET, naive_sliding_window, randomize_batch_norms, tiny_maskformer_backbone
from tiny import tiny_model as shared_tiny_model
from tiny import tiny_transformers_model
from transformers.models.resnet.modeling_resnet import ResNetBackbone

from hf_segmodels import infer_logits
from hf_segmodels.inference import _window_starts
from hf_segmodels.maskformer.convert_maskformer import convert_transformers_checkpoint
from hf_segmodels.maskformer.backbones import folded_resnet_feature_maps, supports_folded_resnet

BF16_TOLERANCE = 0.05
ARCHITECTURES = ["segmenter", "setr", "segformer", "maskformer-resnet", "maskformer-swin"]


def tiny_model(architecture: str) -> torch.nn.Module:
    """The tiny model of `architecture` (MaskFormer: "maskformer-<backbone kind>") with non-trivial BatchNorms."""
    if architecture.startswith("maskformer"):
        backbone = tiny_maskformer_backbone(architecture.removeprefix("maskformer-"))
        model = shared_tiny_model("maskformer", NUM_LABELS, backbone_config=backbone)
    else:
        model = shared_tiny_model(architecture, 5 if architecture == "segformer" else 4)
    return randomize_batch_norms(model)


@contextlib.contextmanager
def fresh_dynamo():
    """torch._dynamo with its caches reset on entry and on exit."""
    import torch._dynamo

    torch._dynamo.reset()
    try:
        yield torch._dynamo
    finally:
        torch._dynamo.reset()


def logits_of(outputs) -> torch.Tensor:
    return outputs.logits


# ------------------------------------------------------------------------------------------------------------------
# torch.compile
# ------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_compile_graph_capture_matches_eager(architecture):
    model = tiny_model(architecture)
    pixel_values = torch.randn(2, 3, 64, 64)
    with fresh_dynamo() as dynamo, torch.no_grad():
        eager = model(pixel_values=pixel_values).logits
        compiled = torch.compile(model, backend="aot_eager", fullgraph=False)(pixel_values=pixel_values).logits
        explanation = dynamo.explain(model)(pixel_values=pixel_values)
    torch.testing.assert_close(compiled, eager, atol=1e-5, rtol=1e-5)
    # every graph break is a known one (listed by benchmarks/run_all.py); none in our own code paths except SegFormer's
    assert explanation.graph_count == explanation.graph_break_count + 1
    if architecture != "segformer":
        assert explanation.graph_break_count == 0, [r.reason for r in explanation.break_reasons]


@pytest.mark.slow
@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_inductor_compile_matches_eager(architecture):
    model = tiny_model(architecture)
    pixel_values = torch.randn(1, 3, 64, 64)
    with fresh_dynamo(), torch.no_grad():
        eager = model(pixel_values=pixel_values).logits
        compiled = torch.compile(model)(pixel_values=pixel_values).logits
    torch.testing.assert_close(compiled, eager, atol=1e-4, rtol=1e-4)


# ------------------------------------------------------------------------------------------------------------------
# bfloat16 autocast
# ------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_bfloat16_autocast_within_documented_tolerance(architecture):
    model = tiny_model(architecture)
    pixel_values = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        reference = model(pixel_values=pixel_values).logits
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = model(pixel_values=pixel_values).logits
    assert low.shape == reference.shape
    assert torch.isfinite(low).all()
    error = (low.float() - reference).abs().max().item()
    assert error <= BF16_TOLERANCE * reference.abs().max().item(), error
    agreement = (low.float().argmax(1) == reference.argmax(1)).float().mean().item()
    assert agreement >= 0.9, agreement


def test_bfloat16_sliding_window_sums_in_float32():
    model = tiny_model("segformer")
    pixel_values = torch.randn(1, 3, 48, 80)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        scores = infer_logits(model, pixel_values, window=32, stride=20)
    assert scores.dtype == torch.float32 and scores.shape == (1, 5, 48, 80)


# ------------------------------------------------------------------------------------------------------------------
# sliding window: batched against the naive one-window-at-a-time loop
# ------------------------------------------------------------------------------------------------------------------


class CountingModel(torch.nn.Module):
    """A model whose scores depend on the window content and position-independent, that counts its calls."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = torch.nn.Conv2d(3, 6, 3, padding=1)
        self.calls = []

    def full_resolution_logits(self, pixel_values):
        self.calls.append(pixel_values.shape[0])
        return self.conv(pixel_values) * pixel_values.mean(dim=(1, 2, 3), keepdim=True)


@pytest.mark.parametrize(
    "shape, window, stride, batch_size",
    [
        ((1, 3, 64, 96), (32, 32), (20, 24), 8),  # overlapping windows, last ones flush with the border
        ((2, 3, 37, 53), (16, 20), (10, 7), 3),  # batch of 2 images, a partial last batch of windows
        ((1, 3, 40, 40), (20, 20), (20, 20), 1),  # no overlap, one window per call
        ((2, 3, 37, 53), (16, 20), (10, 7), 1),  # overlap, 2 images, one window per call (in-place slice path)
        ((1, 3, 10, 12), (16, 20), (5, 5), 1),  # one clipped window, one window per call
        ((1, 3, 10, 12), (16, 20), (5, 5), 8),  # window larger than the image: one clipped window
    ],
)
def test_batched_sliding_window_equals_naive_loop(shape, window, stride, batch_size):
    model = CountingModel()
    pixel_values = torch.randn(*shape)
    with torch.no_grad():
        expected = naive_sliding_window(model, pixel_values, window, stride)
        model.calls.clear()
        scores = infer_logits(model, pixel_values, window=window, stride=stride, window_batch_size=batch_size)
    torch.testing.assert_close(scores, expected, atol=1e-6, rtol=1e-6)
    windows = len(_window_starts(shape[2], min(window[0], shape[2]), stride[0])) * len(
        _window_starts(shape[3], min(window[1], shape[3]), stride[1])
    )
    # windows go through the model `batch_size` at a time (times the image batch), not one by one
    assert sum(model.calls) == windows * shape[0]
    assert len(model.calls) == -(-windows // batch_size)


def test_batched_sliding_window_equals_naive_loop_on_real_models():
    for architecture in ("segformer", "maskformer-resnet"):
        model = tiny_model(architecture)
        pixel_values = torch.randn(1, 3, 72, 120)
        with torch.no_grad():
            expected = naive_sliding_window(model, pixel_values, (64, 64), (40, 40))
            scores = infer_logits(model, pixel_values, window=(64, 64), stride=(40, 40), window_batch_size=4)
        torch.testing.assert_close(scores, expected, atol=1e-5, rtol=1e-5)


# ------------------------------------------------------------------------------------------------------------------
# MaskFormer: ResNet backbone with BatchNorm folded into the convolutions
# ------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("layer_type", ["bottleneck", "basic"])
def test_folded_resnet_equals_transformers_backbone(layer_type):
    torch.manual_seed(0)
    config = tiny_maskformer_backbone(depths=[2, 1, 2, 1], layer_type=layer_type,
                                      out_features=["stage1", "stage3", "stage4"])  # fmt: skip
    backbone = ResNetBackbone(config)
    randomize_batch_norms(backbone)
    backbone.eval()
    assert supports_folded_resnet(backbone)
    pixel_values = torch.randn(2, 3, 64, 80)
    state = {name: tensor.clone() for name, tensor in backbone.state_dict().items()}
    with torch.no_grad():
        expected = backbone(pixel_values).feature_maps
        folded = folded_resnet_feature_maps(backbone, pixel_values)
    assert len(folded) == len(expected) == 3
    for ours, theirs in zip(folded, expected):
        torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-5)
    # the saved weights are untouched
    assert all(torch.equal(state[name], tensor) for name, tensor in backbone.state_dict().items())


def wide_resnet_backbone() -> ResNetBackbone:
    """A seeded eval-mode ResNet with random BatchNorm statistics whose second stage (128 channels, 32x32 at 256x256
    inputs) is wide enough for Winograd."""
    torch.manual_seed(0)
    config = tiny_maskformer_backbone(**WIDE_RESNET)
    backbone = ResNetBackbone(config)
    randomize_batch_norms(backbone)
    return backbone.eval()


def test_folded_resnet_runs_wide_convolutions_through_winograd(monkeypatch):
    """A stage wide enough (128 channels at 32x32) takes the Winograd path for its stride-1 3x3 convolutions (BatchNorm
    folded in first); the stem runs channels-last for the max-pool. Same maps as transformers' backbone."""
    from hf_segmodels.maskformer import backbones

    backbone = wide_resnet_backbone()
    calls = []
    original = backbones.winograd_conv3x3
    monkeypatch.setattr(
        backbones, "winograd_conv3x3", lambda x, *args, **kwargs: calls.append(x.shape) or original(x, *args, **kwargs)
    )
    pixel_values = torch.randn(1, 3, 256, 256)
    with torch.no_grad():
        expected = backbone(pixel_values).feature_maps
        folded = folded_resnet_feature_maps(backbone, pixel_values)
    # stage 2: the second conv of its first block (the first has stride 2) and both convs of the second block
    assert calls == [(1, 128, 32, 32)] * 3
    for ours, theirs in zip(folded, expected, strict=True):
        assert ours.is_contiguous()
        torch.testing.assert_close(ours, theirs, atol=1e-4, rtol=1e-4)


def test_folded_resnet_remembers_winograd_filters_until_parameters_or_statistics_change():
    """The folded and transformed filters of a Winograd layer are computed once, and again after its weight or its
    BatchNorm's running statistics change: the maps follow transformers' backbone every time."""
    from hf_segmodels import winograd

    backbone = wide_resnet_backbone()
    pixel_values = torch.randn(1, 3, 256, 256)
    layer = backbone.encoder.stages[1].layers[1].layer[0]  # a 128-channel stride-1 3x3 conv layer

    def check():
        with torch.inference_mode():
            expected = backbone(pixel_values).feature_maps
            folded = folded_resnet_feature_maps(backbone, pixel_values)
        for ours, theirs in zip(folded, expected, strict=True):
            scale = theirs.abs().max()
            torch.testing.assert_close(ours / scale, theirs / scale, atol=2e-5, rtol=0)
        return winograd._CACHE[layer][1][0]

    filters = check()
    assert check() is filters  # remembered
    with torch.no_grad():
        layer.normalization.running_var.mul_(4)
    changed = check()
    assert changed is not filters
    with torch.no_grad():
        layer.convolution.weight.add_(0.1)
    assert check() is not changed


def test_folded_resnet_with_frozen_convolutions_still_trains_its_batch_norm_affine_parameters():
    """A frozen backbone but for one BatchNorm's weight (eval-mode statistics) after a wide 3x3 convolution: that layer
    takes PyTorch's convolution through the folding, and the BatchNorm weight gets transformers' gradient."""
    backbone = wide_resnet_backbone()
    backbone.requires_grad_(False)
    norm = backbone.encoder.stages[1].layers[1].layer[0].normalization  # after a 128-channel 3x3 convolution
    norm.weight.requires_grad_(True)  # (its input needs no gradient: only the folding would carry it)
    pixel_values = torch.randn(1, 3, 256, 256)  # (stage 2 at 32x32: wide enough for Winograd)
    sum(map(torch.sum, backbone(pixel_values).feature_maps)).backward()
    expected, norm.weight.grad = norm.weight.grad.clone(), None
    sum(map(torch.sum, folded_resnet_feature_maps(backbone, pixel_values))).backward()
    torch.testing.assert_close(norm.weight.grad, expected, rtol=1e-4, atol=1e-4)


def test_folded_resnet_only_with_running_statistics():
    torch.manual_seed(0)
    backbone = ResNetBackbone(tiny_maskformer_backbone(depths=[1, 1, 1, 1]))
    backbone.eval()
    assert supports_folded_resnet(backbone)
    backbone.encoder.stages[1].layers[0].shortcut.normalization.train()  # one BatchNorm using batch statistics
    assert not supports_folded_resnet(backbone)
    backbone.train()
    assert not supports_folded_resnet(backbone)
    backbone.eval()
    assert supports_folded_resnet(backbone)
    gelu = ResNetBackbone(tiny_maskformer_backbone(depths=[1, 1, 1, 1], hidden_act="gelu", out_features=["stage4"]))
    gelu.eval()
    assert not supports_folded_resnet(gelu)


def test_maskformer_eval_and_train_mode_agree_with_transformers_after_weight_change(tmp_path):
    reference = tiny_transformers_model("resnet")
    reference.save_pretrained(tmp_path)
    ours, _ = convert_transformers_checkpoint(tmp_path)
    ours.eval()
    pixel_values = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        expected = reference(pixel_values=pixel_values).masks_queries_logits
        torch.testing.assert_close(ours(pixel_values=pixel_values).masks_queries_logits, expected, atol=1e-4, rtol=1e-4)
        # weights changed after a first forward: the folded path reads them on every call (no stale cache)
        reference.model.pixel_level_module.encoder.embedder.embedder.normalization.running_mean.add_(0.3)
        ours.backbone.embedder.embedder.normalization.running_mean.add_(0.3)
        expected = reference(pixel_values=pixel_values).masks_queries_logits
        torch.testing.assert_close(ours(pixel_values=pixel_values).masks_queries_logits, expected, atol=1e-4, rtol=1e-4)
    # training mode uses batch statistics: the model's own (unfolded) backbone path, gradients flow
    ours.train()
    outputs = ours(pixel_values=pixel_values, labels=torch.randint(0, NUM_LABELS, (1, 64, 64)))
    outputs.loss.backward()
    assert ours.backbone.embedder.embedder.convolution.weight.grad is not None
