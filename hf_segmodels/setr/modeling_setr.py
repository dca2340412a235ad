"""SETR (arXiv 2012.15840): a plain ViT encoder read by a naive, progressive-upsampling (PUP) or multi-level feature
aggregation (MLA) decoder, with auxiliary heads on intermediate layers for training."""

import torch
import torch.nn.functional as F
from torch import nn
from transformers import initialization as init
from transformers.modeling_outputs import SemanticSegmenterOutput
from transformers.utils.output_capturing import OutputRecorder, capture_outputs

from ..layers import MultiHeadSelfAttention, TransformerLayer, ViTEncoder, init_vit_weights, tokens_to_feature_map
from ..losses import semantic_cross_entropy
from ..modeling_utils import SegmentationModelMixin, SegmentationPreTrainedModel, check_pixel_values
from ..winograd import Conv2d as WinogradConv2d
from .configuration_setr import SetrConfig


def _upsample(hidden_states: torch.Tensor, scale: int, align_corners: bool = False) -> torch.Tensor:
    """Bilinear x`scale` of (B, C, h, w) to (B, C, h * scale, w * scale)."""
    if scale == 1:
        return hidden_states
    size = (hidden_states.shape[-2] * scale, hidden_states.shape[-1] * scale)
    return F.interpolate(hidden_states, size=size, mode="bilinear", align_corners=align_corners)


class HeadConv2d(WinogradConv2d):
    """A decoder conv followed by BatchNorm (Kaiming-normal initialised, as mmsegmentation's `ConvModule`). The wide
    3x3 ones (PUP: 256 channels up to 256x256 maps at 512x512 inputs) run as Winograd F(4x4, 3x3) at CPU inference
    and in exported graphs (`hf_segmodels.winograd`)."""


class ClassifierConv2d(nn.Conv2d):
    """A head's per-pixel classifier (N(0, 0.01) initialised, as mmsegmentation's `conv_seg`)."""


class ConvBatchNormReLU(nn.Sequential):
    """k x k conv (stride 1, "same" padding) -> BatchNorm -> ReLU. The released models were trained with SyncBN;
    `nn.SyncBatchNorm.convert_sync_batchnorm` turns these into synchronised ones for multi-GPU training."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, bias: bool = False):
        super().__init__()
        self.conv = HeadConv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2, bias=bias)
        self.norm = nn.BatchNorm2d(out_channels)
        self.activation = nn.ReLU()


class ProgressiveUpsamplingHead(nn.Module):
    """SETR's naive and PUP decoders (and their auxiliary heads): LayerNorm over the channels of one encoder layer's
    patch tokens, then `num_convs` x [conv, BatchNorm, ReLU, bilinear x`up_scale`], then a 1x1 classifier.

    PUP is four 3x3 stages with x2 each (x16 in total); the naive decoder is a single 1x1 stage. With
    `classifier_before_last_upsample` the classifier runs before the last stage's upsampling, as the original
    PUP code does (conv_4, then x2).
    """

    def __init__(
        self,
        config: SetrConfig,
        hidden_size: int,
        num_convs: int,
        kernel_size: int,
        up_scale: int,
        dropout: float,
        classifier_before_last_upsample: bool = False,
    ):
        super().__init__()
        self.up_scale = up_scale
        self.classifier_before_last_upsample = classifier_before_last_upsample
        self.layernorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        channels = [config.hidden_size] + [hidden_size] * num_convs
        self.stages = nn.ModuleList(
            ConvBatchNormReLU(channels[i], channels[i + 1], kernel_size, bias=config.decoder_conv_bias)
            for i in range(num_convs)
        )
        self.dropout = nn.Dropout2d(dropout)
        self.classifier = ClassifierConv2d(hidden_size, config.num_labels, kernel_size=1)

    def forward(self, patch_tokens: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        """patch_tokens (B, h * w, hidden_size) -> logits (B, num_labels, h * up_scale^num_convs, w * ...)."""
        hidden_states = tokens_to_feature_map(self.layernorm(patch_tokens), grid)
        last = len(self.stages) - 1
        for index, stage in enumerate(self.stages):
            hidden_states = stage(hidden_states)
            if index == last and self.classifier_before_last_upsample:
                return _upsample(self.classifier(self.dropout(hidden_states)), self.up_scale)
            hidden_states = _upsample(hidden_states, self.up_scale)
        return self.classifier(self.dropout(hidden_states))


class MultiLevelFeatureAggregation(nn.Module):
    """MLA's aggregation: the patch tokens of M evenly spaced layers are LayerNorm-ed, reshaped to maps and projected
    by a 1x1 conv each; top-down, every projection is added to the sum of the deeper ones, and each of the M
    cumulative sums goes through a 3x3 conv. Stream i aggregates layers i..M-1 (stream 0 sees all of them)."""

    def __init__(self, config: SetrConfig):
        super().__init__()
        num_streams = len(config.mla_layer_indices)
        self.layernorms = nn.ModuleList(
            nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps) for _ in range(num_streams)
        )
        self.projections = nn.ModuleList(
            ConvBatchNormReLU(config.hidden_size, config.mla_hidden_size, 1) for _ in range(num_streams)
        )
        self.aggregations = nn.ModuleList(
            ConvBatchNormReLU(config.mla_hidden_size, config.mla_hidden_size, 3) for _ in range(num_streams)
        )

    def forward(self, layer_tokens: list[torch.Tensor], grid: tuple[int, int]) -> list[torch.Tensor]:
        """M tensors (B, h * w, hidden_size), shallowest first -> M streams (B, mla_hidden_size, h, w)."""
        projected = [
            projection(tokens_to_feature_map(norm(tokens), grid))
            for tokens, norm, projection in zip(layer_tokens, self.layernorms, self.projections)
        ]
        streams = [None] * len(projected)
        cumulative = None
        for index in reversed(range(len(projected))):
            cumulative = projected[index] if cumulative is None else cumulative + projected[index]
            streams[index] = self.aggregations[index](cumulative)
        return streams


class MultiLevelFeatureAggregationHead(nn.Module):
    """The MLA decoder: `MultiLevelFeatureAggregation`, then per stream two 3x3 conv + BatchNorm + ReLU and a
    bilinear x4 upsampling, the streams concatenated (stream 0 first) and a classifier conv."""

    def __init__(self, config: SetrConfig):
        super().__init__()
        self.align_corners = config.mla_align_corners
        self.aggregation = MultiLevelFeatureAggregation(config)
        self.stream_heads = nn.ModuleList(
            nn.Sequential(
                ConvBatchNormReLU(config.mla_hidden_size, config.mla_head_hidden_size, 3),
                ConvBatchNormReLU(config.mla_head_hidden_size, config.mla_head_hidden_size, 3),
            )
            for _ in config.mla_layer_indices
        )
        self.dropout = nn.Dropout2d(config.decoder_dropout)
        kernel_size = config.mla_classifier_kernel_size
        self.classifier = ClassifierConv2d(
            len(config.mla_layer_indices) * config.mla_head_hidden_size,
            config.num_labels,
            kernel_size=kernel_size,
            padding=kernel_size // 2,
        )

    def forward(self, layer_tokens: list[torch.Tensor], grid: tuple[int, int]):
        """M tensors (B, h * w, hidden_size) -> logits (B, num_labels, 4h, 4w) and the M streams (B, mla_hidden_size,
        h, w) that the auxiliary heads read."""
        streams = self.aggregation(layer_tokens, grid)
        upsampled = [_upsample(head(stream), 4, self.align_corners) for head, stream in zip(self.stream_heads, streams)]
        return self.classifier(self.dropout(torch.cat(upsampled, dim=1))), streams


class MlaAuxiliaryHead(nn.Module):
    """Auxiliary classifier of SETR-MLA: a 1x1 conv on one aggregated stream, (B, C, h, w) -> (B, num_labels, h, w)."""

    def __init__(self, config: SetrConfig):
        super().__init__()
        self.dropout = nn.Dropout2d(config.auxiliary_dropout)
        self.classifier = ClassifierConv2d(
            config.mla_hidden_size, config.num_labels, kernel_size=1, bias=config.auxiliary_classifier_bias
        )

    def forward(self, stream: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.dropout(stream))


class SetrPreTrainedModel(SegmentationPreTrainedModel):
    config: SetrConfig
    base_model_prefix = "setr"
    _no_split_modules = ["TransformerLayer"]
    _can_record_outputs = {
        "hidden_states": OutputRecorder(TransformerLayer, index=0),
        "attentions": OutputRecorder(MultiHeadSelfAttention, index=1),
    }

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        # Encoder: the ViT initialisation (trunc-normal 0.02, zero biases, unit LayerNorms) that pretrained ViT / DeiT
        # weights then replace. Heads as mmsegmentation initialises them: Kaiming-normal (fan_out, ReLU) convs before
        # BatchNorm, unit BatchNorms, classifiers N(0, 0.01) with zero bias.
        if isinstance(module, (HeadConv2d, ClassifierConv2d)):
            if isinstance(module, HeadConv2d):
                init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            else:
                init.normal_(module.weight, std=0.01)
            if module.bias is not None:
                init.zeros_(module.bias)
        elif isinstance(module, nn.BatchNorm2d):
            init.ones_(module.weight)
            init.zeros_(module.bias)
            init.zeros_(module.running_mean)
            init.ones_(module.running_var)
            init.zeros_(module.num_batches_tracked)
        else:
            init_vit_weights(module, self.config.initializer_range)


class SetrForSemanticSegmentation(SegmentationModelMixin, SetrPreTrainedModel):
    """SETR for semantic segmentation.

    Input: `pixel_values` (B, 3, H, W) of any size; the image is zero-padded at the bottom and right to a multiple
    of the patch size and the position embeddings are resized bilinearly to the padded grid, as mmsegmentation does.
    (The original fudan-zvg/SETR code only accepts exactly `image_size` inputs, for which nothing is resized.)
    Output: `logits` (B, num_labels, h, w) at the decoder's output stride of the padded input (patch size / the
    head's total upsampling: PUP 1, MLA 4, naive 4 (mmseg) or 16 (original)); `full_resolution_logits` /
    `hf_segmodels.infer_logits` resize them bilinearly to (H, W), as both reference implementations do.
    The auxiliary heads only run when `labels` are given.
    """

    def __init__(self, config: SetrConfig):
        super().__init__(config)
        self.encoder = ViTEncoder(config)
        auxiliary_layers = config.auxiliary_layer_indices or []
        if config.decoder_type == "mla":
            self.decode_head = MultiLevelFeatureAggregationHead(config)
            self.auxiliary_heads = nn.ModuleList(MlaAuxiliaryHead(config) for _ in auxiliary_layers)
        else:
            self.decode_head = ProgressiveUpsamplingHead(
                config,
                config.decoder_hidden_size,
                config.decoder_num_convs,
                config.decoder_kernel_size,
                config.decoder_up_scale,
                config.decoder_dropout,
                config.decoder_classifier_before_last_upsample,
            )
            self.auxiliary_heads = nn.ModuleList(
                ProgressiveUpsamplingHead(
                    config,
                    config.auxiliary_hidden_size,
                    config.auxiliary_num_convs,
                    config.auxiliary_kernel_size,
                    config.auxiliary_up_scale,
                    config.auxiliary_dropout,
                )
                for _ in auxiliary_layers
            )
        self.post_init()

    @capture_outputs(tie_last_hidden_states=False)
    def forward(
        self, pixel_values: torch.FloatTensor, labels: torch.LongTensor | None = None, **kwargs
    ) -> SemanticSegmenterOutput | tuple:
        r"""
        pixel_values (`torch.FloatTensor` of shape `(B, 3, H, W)`): normalised images of any size.
        labels (`torch.LongTensor` of shape `(B, H, W)`, *optional*): class ids in `[0, num_labels)`, 255 ignored.
            The loss is the cross-entropy of the decoder's logits plus `auxiliary_loss_weight` times that of every
            auxiliary head, each upsampled bilinearly to the label size.
        output_hidden_states, output_attentions, return_dict (keywords): as in transformers.

        Returns `SemanticSegmenterOutput` with `loss`, `logits` (B, num_labels, h, w), `hidden_states` (encoder
        embeddings and every encoder layer, (B, tokens, hidden)) and `attentions` (every encoder layer, (B, heads,
        N, N)).
        """
        pixel_values = check_pixel_values(pixel_values, self.config.num_channels, self.dtype)
        if labels is not None and tuple(labels.shape[-2:]) != tuple(pixel_values.shape[-2:]):
            raise ValueError(
                f"`labels` of size {tuple(labels.shape[-2:])} do not match `pixel_values` of size "
                f"{tuple(pixel_values.shape[-2:])}."
            )

        config = self.config
        is_mla = config.decoder_type == "mla"
        run_auxiliary = labels is not None and len(self.auxiliary_heads) > 0
        layers = list(config.mla_layer_indices) if is_mla else [config.decoder_layer_index]
        if run_auxiliary and not is_mla:
            layers += [layer for layer in config.auxiliary_layer_indices if layer not in layers]
        output_attentions = kwargs.get("output_attentions", config.output_attentions)
        encoder_outputs = self.encoder(pixel_values, output_attentions=bool(output_attentions), return_layers=layers)
        grid = encoder_outputs.grid_size
        extra = self.encoder.num_extra_tokens
        patch_tokens = {layer: tokens[:, extra:] for layer, tokens in zip(layers, encoder_outputs.layer_outputs)}

        if is_mla:
            logits, streams = self.decode_head([patch_tokens[layer] for layer in config.mla_layer_indices], grid)
        else:
            logits = self.decode_head(patch_tokens[config.decoder_layer_index], grid)

        loss = None
        if labels is not None:
            ignore_index = config.semantic_loss_ignore_index
            loss = semantic_cross_entropy(logits, labels, ignore_index)
            for head, layer in zip(self.auxiliary_heads, config.auxiliary_layer_indices or []):
                if is_mla:
                    auxiliary_logits = head(streams[config.mla_layer_indices.index(layer)])
                else:
                    auxiliary_logits = head(patch_tokens[layer], grid)
                loss = loss + config.auxiliary_loss_weight * semantic_cross_entropy(
                    auxiliary_logits, labels, ignore_index
                )
        return SemanticSegmenterOutput(loss=loss, logits=logits)


__all__ = ["SetrForSemanticSegmentation", "SetrPreTrainedModel"]
