"""MaskFormer's backbones: transformers' ResNet (adapted to the releases: DeepLab stem, multi-grid dilations) with an
inference path that folds its BatchNorms into the convolutions, transformers' Swin through `load_backbone`, and our own
encoders (SegFormer's MiT; the plain ViT of Segmenter / SETR with a simple feature pyramid)."""

import torch
import torch.nn.functional as F
from torch import nn
from transformers.backbone_utils import load_backbone

from ..kernels import active as kernel_active, capturing
from ..layers import MultiHeadSelfAttention, ViTEncoder, tokens_to_feature_map
from ..segformer.modeling_segformer import EfficientSelfAttention, SegformerModel
from ..winograd import (
    cacheable,
    cached,
    conv3x3 as winograd_conv3x3,
    conv3x3_for as winograd_conv3x3_for,
    conv3x3_graph,
    transform_filters,
)
from .configuration_maskformer import MaskFormerConfig


def _folded(conv_layer: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    """The weight and bias of `conv_layer`'s convolution with its BatchNorm's per-channel affine map folded in."""
    conv, norm = conv_layer.convolution, conv_layer.normalization
    scale = norm.weight * torch.rsqrt(norm.running_var + norm.eps)
    bias = norm.bias - norm.running_mean * scale
    if conv.bias is not None:
        bias = bias + conv.bias * scale
    return conv.weight * scale.reshape(-1, 1, 1, 1), bias


def _conv_batch_norm(conv_layer: nn.Module, hidden_states: torch.Tensor, relu: bool) -> torch.Tensor:
    """`BatchNorm(conv(x))` (then ReLU) of an eval-mode ResNet conv layer as ONE convolution: the BatchNorm's
    per-channel affine map is folded into the convolution's weight and bias on the fly (a temporary of one layer's
    size, cheaper than the BatchNorm pass it removes). The saved parameters are left untouched. The wide 3x3
    convolutions of stages 2-4 run as Winograd, their folded and transformed filters remembered for the layer
    while its parameters and statistics are unchanged (`winograd.cached`)."""
    conv, norm = conv_layer.convolution, conv_layer.normalization
    sources = (conv.weight, norm.weight, norm.bias, norm.running_mean, norm.running_var)
    sources += (conv.bias,) if conv.bias is not None else ()
    winograd = None
    if (conv.stride, conv.padding, conv.dilation, conv.groups) == ((1, 1), (1, 1), (1, 1), 1):
        winograd = winograd_conv3x3_for(hidden_states, conv.weight, filters_cached=cacheable(*sources))
    if winograd is conv3x3_graph:  # (while exporting)
        output = conv3x3_graph(hidden_states, *_folded(conv_layer))
    elif winograd is not None and not (torch.is_grad_enabled() and any(t.requires_grad for t in sources)):

        def transformed():
            weight, bias = _folded(conv_layer)
            return transform_filters(weight), bias

        filters, bias = cached(conv_layer, transformed, *sources)
        output = winograd_conv3x3(hidden_states, conv.weight, bias, filters=filters)
    else:  # (also where autograd runs through the folding)
        weight, bias = _folded(conv_layer)
        stride = conv.stride
        if conv.kernel_size == (1, 1) and conv.padding == (0, 0) and stride != (1, 1) and not capturing():
            # a strided 1x1 convolution (the shortcut of a stage's first block) reads every stride-th pixel: subsample
            # first, then a dense 1x1 convolution (oneDNN's strided 1x1 ran at ~30% of the dense one's rate)
            hidden_states = hidden_states[:, :, :: stride[0], :: stride[1]]
            stride = (1, 1)
        output = F.conv2d(hidden_states, weight, bias, stride, conv.padding, conv.dilation, conv.groups)
    return output.relu_() if relu else output


def supports_folded_resnet(backbone: nn.Module) -> bool:
    """Whether `folded_resnet_feature_maps` computes exactly what `backbone(...)` does: a transformers ResNet backbone
    with ReLU activations whose BatchNorms all use their running statistics (eval mode)."""
    from transformers.models.resnet.modeling_resnet import ResNetBackbone

    if not kernel_active("folded_batch_norm"):
        return False
    if type(backbone) is not ResNetBackbone or backbone.config.hidden_act != "relu":
        return False
    return not any(m.training or not m.track_running_stats for m in backbone.modules() if isinstance(m, nn.BatchNorm2d))


def folded_resnet_feature_maps(backbone: nn.Module, pixel_values: torch.Tensor) -> list[torch.Tensor]:
    """The feature maps of transformers' `ResNetBackbone` (same order, same values up to float rounding), each
    conv + BatchNorm (+ ReLU) run as one folded convolution, residual additions and ReLUs in place. Faster
    on CPU than the module's own forward; only valid when `supports_folded_resnet(backbone)`."""
    stem = backbone.embedder.embedder
    # the stem and its max-pool in channels-last: PyTorch's CPU max-pool is ~20x faster on a channels-last map
    # (vectorised over channels) than on a (B, C, H, W)-contiguous one, the convolutions run as fast
    hidden_states = pixel_values.contiguous(memory_format=torch.channels_last)
    for conv_layer in stem if isinstance(stem, nn.Sequential) else [stem]:
        hidden_states = _conv_batch_norm(conv_layer, hidden_states, relu=True)
    stages = [backbone.embedder.pooler(hidden_states).contiguous()]
    for stage in backbone.encoder.stages:
        hidden_states = stages[-1]
        for layer in stage.layers:
            residual = hidden_states
            for index, conv_layer in enumerate(layer.layer):
                hidden_states = _conv_batch_norm(conv_layer, hidden_states, relu=index < len(layer.layer) - 1)
            if not isinstance(layer.shortcut, nn.Identity):
                residual = _conv_batch_norm(layer.shortcut, residual, relu=False)
            hidden_states = hidden_states.add_(residual).relu_()
        stages.append(hidden_states)
    return [stages[index] for index, name in enumerate(backbone.stage_names) if name in backbone.out_features]


def adapt_resnet_backbone(backbone: nn.Module, config: MaskFormerConfig) -> None:
    """The DeepLab variant of transformers' `ResNetBackbone` that MaskFormer's R101c uses, made in place from
    transformers' own layers: `config.backbone_deep_stem` replaces the 7x7 stem convolution by three 3x3
    `ResNetConvLayer`s (stride 2 first; `embedding_size // 2`, `// 2`, `embedding_size` channels; the max-pool stays),
    and `config.backbone_last_stage_dilations` sets the dilation (and padding) of the 3x3 convolution of every block
    of the last stage."""
    from transformers.models.resnet.modeling_resnet import ResNetConvLayer

    if config.backbone_deep_stem:
        channels = config.backbone_config.embedding_size
        activation = config.backbone_config.hidden_act
        backbone.embedder.embedder = nn.Sequential(
            ResNetConvLayer(config.backbone_config.num_channels, channels // 2, 3, stride=2, activation=activation),
            ResNetConvLayer(channels // 2, channels // 2, 3, activation=activation),
            ResNetConvLayer(channels // 2, channels, 3, activation=activation),
        )
    if config.backbone_last_stage_dilations is not None:
        for layer, dilation in zip(backbone.encoder.stages[-1].layers, config.backbone_last_stage_dilations):
            conv = layer.layer[1].convolution  # the bottleneck's 3x3 convolution
            conv.dilation = (int(dilation),) * 2
            conv.padding = (int(dilation),) * 2


# ----------------------------------------------------------------------------------------------------------------
# Our own encoders as backbones: SegFormer's MiT, the plain ViT with a simple feature pyramid
# ----------------------------------------------------------------------------------------------------------------


class LayerNorm2d(nn.LayerNorm):
    """LayerNorm over the channels of a (B, C, H, W) map."""

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return super().forward(hidden_states.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


class SimpleFeaturePyramid(nn.Module):
    """ViTDet's simple feature pyramid (Li et al., 2022) without its output convolutions (the FPN pixel decoder has
    its own): the plain ViT's single map at stride `patch_size` becomes maps at strides 4, 8, 16, 32 by 2x2 transposed
    convolutions (LayerNorm + GELU between consecutive ones; channels halve at each), identity, or max pooling."""

    def __init__(self, hidden_size: int, patch_size: int, strides: tuple[int, ...] = (4, 8, 16, 32)):
        super().__init__()
        self.levels = nn.ModuleList()
        self.channels = []
        for stride in strides:
            layers, channels = [], hidden_size
            ratio = max(patch_size, stride) // min(patch_size, stride)
            if ratio & (ratio - 1) or max(patch_size, stride) % min(patch_size, stride):
                raise ValueError(f"The simple feature pyramid needs a power-of-two patch size, got {patch_size}.")
            if stride < patch_size:
                for step in range(ratio.bit_length() - 1):
                    if step:
                        layers += [LayerNorm2d(channels, eps=1e-6), nn.GELU()]
                    layers.append(nn.ConvTranspose2d(channels, channels // 2, kernel_size=2, stride=2))
                    channels //= 2
            elif stride > patch_size:
                layers.append(nn.MaxPool2d(kernel_size=ratio, stride=ratio))
            self.levels.append(nn.Sequential(*layers))
            self.channels.append(channels)

    def forward(self, feature_map: torch.Tensor) -> list[torch.Tensor]:
        """(B, C, h, w) at stride `patch_size` -> four maps at strides 4, 8, 16, 32, highest resolution first."""
        return [level(feature_map) for level in self.levels]


class MaskFormerViTBackbone(nn.Module):
    """The plain ViT encoder of Segmenter / SETR (built from a `SegmenterConfig` or `SetrConfig`; its decoder fields
    are unused) followed by a `SimpleFeaturePyramid`: four maps with channels hidden / 4, hidden / 2, hidden, hidden
    for patch size 16. Pretrained ViT weights load into `.encoder` (e.g. `hf_segmodels.pretrained.load_pretrained_vit`
    or a converted Segmenter's `encoder` state dict)."""

    def __init__(self, config):
        super().__init__()
        self.config = config
        self.encoder = ViTEncoder(config)
        self.pyramid = SimpleFeaturePyramid(config.hidden_size, config.patch_size)
        self.channels = list(self.pyramid.channels)

    def forward(self, pixel_values: torch.Tensor) -> list[torch.Tensor]:
        outputs = self.encoder(pixel_values)
        tokens = outputs.last_hidden_state[:, self.encoder.num_extra_tokens :]
        return self.pyramid(tokens_to_feature_map(tokens, outputs.grid_size))


class MaskFormerMiTBackbone(nn.Module):
    """SegFormer's Mix Transformer encoder (built from a `SegformerConfig`; its decoder fields are unused): four maps
    at strides 4, 8, 16, 32 with `hidden_sizes` channels. A SegFormer's encoder weights load into `.model`
    (`model.backbone.model.load_state_dict(segformer.segformer.state_dict())`)."""

    def __init__(self, config):
        super().__init__()
        self.model = SegformerModel(config)
        self.channels = list(config.hidden_sizes)

    def forward(self, pixel_values: torch.Tensor) -> list[torch.Tensor]:
        return list(self.model(pixel_values).feature_maps)


def _follow_attention_implementation(backbone: nn.Module, config: MaskFormerConfig) -> nn.Module:
    """Points the attention modules of our encoders (which read only `config._attn_implementation`, through
    `layers.attend`) at the MaskFormer config, so that `attn_implementation="sdpa"|"eager"` of the whole model applies
    to the backbone too."""
    for module in backbone.modules():
        if isinstance(module, (MultiHeadSelfAttention, EfficientSelfAttention)):
            module.config = config
    return backbone


def build_backbone(config: MaskFormerConfig) -> nn.Module:
    """The backbone of `config`: one of our encoders for a SegFormer / Segmenter / SETR `backbone_config`, otherwise
    the transformers backbone built by `load_backbone` (adapted by `adapt_resnet_backbone` where asked)."""
    model_type = config.backbone_config.model_type
    if model_type == "segmodels_segformer":
        return _follow_attention_implementation(MaskFormerMiTBackbone(config.backbone_config), config)
    if model_type in ("segmodels_segmenter", "segmodels_setr"):
        return _follow_attention_implementation(MaskFormerViTBackbone(config.backbone_config), config)
    backbone = load_backbone(config)
    adapt_resnet_backbone(backbone, config)
    return backbone


def backbone_feature_maps(backbone: nn.Module, pixel_values: torch.Tensor) -> list[torch.Tensor]:
    """The backbone's feature maps, highest resolution first (the folded-BatchNorm path for eval-mode ResNets)."""
    if isinstance(backbone, (MaskFormerViTBackbone, MaskFormerMiTBackbone)):
        return backbone(pixel_values)
    if supports_folded_resnet(backbone):
        return folded_resnet_feature_maps(backbone, pixel_values)
    return list(backbone(pixel_values).feature_maps)
