"""Segmenter (arXiv 2105.05633): a plain ViT encoder and a linear or Mask-Transformer decoder."""

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers import initialization as init
from transformers.modeling_outputs import SemanticSegmenterOutput
from transformers.utils.output_capturing import OutputRecorder, capture_outputs

from ..layers import (
    MultiHeadSelfAttention,
    TransformerLayer,
    ViTEncoder,
    init_vit_weights,
    linear_drop_path_rates,
    tokens_to_feature_map,
)
from ..losses import semantic_cross_entropy
from ..modeling_utils import SegmentationModelMixin, SegmentationPreTrainedModel, check_pixel_values
from .configuration_segmenter import SegmenterConfig


@dataclass
class SegmenterOutput(SemanticSegmenterOutput):
    r"""
    A `SemanticSegmenterOutput` (`loss`, `logits`, `hidden_states`, `attentions`: the ViT encoder's layers, as in
    transformers' ViT-based models) plus `decoder_attentions`: the self-attention probabilities (B, heads,
    N + num_labels, N + num_labels) of every Mask-Transformer layer (patch tokens and class embeddings attend
    jointly), when `output_attentions=True` and the decoder is the Mask Transformer.
    """

    decoder_attentions: tuple[torch.FloatTensor, ...] | None = None


class SegmenterLinearDecoder(nn.Module):
    """A Linear layer on every patch token: (B, h * w, hidden) -> (B, num_labels, h, w)."""

    def __init__(self, config: SegmenterConfig):
        super().__init__()
        self.head = nn.Linear(config.hidden_size, config.num_labels)

    def forward(self, patch_tokens: torch.Tensor, grid: tuple[int, int], output_attentions: bool = False):
        return tokens_to_feature_map(self.head(patch_tokens), grid)


class MaskTransformerDecoder(nn.Module):
    """The Mask Transformer: learned class embeddings are processed jointly with the projected patch tokens; masks
    are the scalar products of L2-normalised patch and class embeddings, followed by a LayerNorm over classes."""

    def __init__(self, config: SegmenterConfig):
        super().__init__()
        width = config.decoder_hidden_size
        self.num_labels = config.num_labels
        self.proj_dec = nn.Linear(config.hidden_size, width)
        self.cls_emb = nn.Parameter(torch.zeros(1, config.num_labels, width))
        rates = linear_drop_path_rates(config.decoder_drop_path_rate, config.decoder_num_hidden_layers)
        self.layers = nn.ModuleList(
            TransformerLayer(
                config,
                width,
                config.decoder_num_attention_heads,
                config.decoder_intermediate_size,
                config.decoder_layer_norm_eps,
                drop_path_rate=rate,
                dropout=config.decoder_dropout,
                attention_dropout=0.0,
                hidden_act=config.hidden_act,
            )
            for rate in rates
        )
        self.decoder_norm = nn.LayerNorm(width, eps=config.decoder_layer_norm_eps)
        # Bias-free projections (the original stores them as (d, d) matrices applied as x @ P; a Linear holds P^T).
        self.proj_patch = nn.Linear(width, width, bias=False)
        self.proj_classes = nn.Linear(width, width, bias=False)
        self.mask_norm = nn.LayerNorm(config.num_labels, eps=config.decoder_layer_norm_eps)

    def forward(self, patch_tokens: torch.Tensor, grid: tuple[int, int], output_attentions: bool = False):
        """patch_tokens (B, h * w, encoder hidden) -> masks (B, num_labels, h, w)."""
        hidden_states = torch.cat(
            [self.proj_dec(patch_tokens), self.cls_emb.expand(patch_tokens.shape[0], -1, -1)], dim=1
        )
        for layer in self.layers:
            hidden_states, _ = layer(hidden_states, output_attentions)
        hidden_states = self.decoder_norm(hidden_states)
        patches = F.normalize(self.proj_patch(hidden_states[:, : -self.num_labels]), dim=-1)
        classes = F.normalize(self.proj_classes(hidden_states[:, -self.num_labels :]), dim=-1)
        masks = self.mask_norm(patches @ classes.transpose(1, 2))
        return tokens_to_feature_map(masks, grid)


class SegmenterPreTrainedModel(SegmentationPreTrainedModel):
    config: SegmenterConfig
    base_model_prefix = "segmenter"
    _no_split_modules = ["TransformerLayer"]
    _can_record_outputs = {
        "hidden_states": OutputRecorder(TransformerLayer, index=0, layer_name="encoder"),
        "attentions": OutputRecorder(MultiHeadSelfAttention, index=1, layer_name="encoder"),
        "decoder_attentions": OutputRecorder(MultiHeadSelfAttention, index=1, layer_name="decoder"),
    }

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        # The paper's init: trunc-normal(0.02) Linear weights and tokens, zero biases, unit LayerNorms; the decoder's
        # class embeddings trunc-normal(0.02) and its projections scaled normal (d^-0.5), as the original.
        init_vit_weights(module, self.config.initializer_range)
        if isinstance(module, MaskTransformerDecoder):
            init.trunc_normal_(module.cls_emb, std=self.config.initializer_range)
            scale = module.proj_patch.weight.shape[0] ** -0.5
            init.normal_(module.proj_patch.weight, std=scale)
            init.normal_(module.proj_classes.weight, std=scale)


class SegmenterForSemanticSegmentation(SegmentationModelMixin, SegmenterPreTrainedModel):
    """Segmenter for semantic segmentation.

    Input: `pixel_values` (B, 3, H, W) of any size; the image is zero-padded at the bottom and right to a multiple
    of the patch size, and the position embeddings are resized to the padded grid as the original does.
    Output: `logits` (B, num_labels, h, w) on the padded patch grid (h = ceil(H / patch_size)); use
    `full_resolution_logits` / `hf_segmodels.infer_logits` for (B, num_labels, H, W) scores.
    """

    def __init__(self, config: SegmenterConfig):
        super().__init__(config)
        self.encoder = ViTEncoder(config)
        if config.decoder_type == "linear":
            self.decoder = SegmenterLinearDecoder(config)
        else:
            self.decoder = MaskTransformerDecoder(config)
        self.post_init()

    @property
    def sliding_window_resizes_small_images(self) -> bool:
        return self.config.output_upsampling == "pad_crop"

    def _upsample(self, logits: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        if self.config.output_upsampling == "resize":
            return F.interpolate(logits, size=size, mode="bilinear", align_corners=False)
        patch = self.config.patch_size
        padded = (logits.shape[-2] * patch, logits.shape[-1] * patch)
        logits = F.interpolate(logits, size=padded, mode="bilinear", align_corners=False)
        return logits[..., : size[0], : size[1]]

    def full_resolution_logits(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> (B, num_labels, H, W): the original forward pass (pad, encode, decode, upsample to the
        padded size and crop; or resize straight to (H, W) for checkpoints of mmsegmentation's port)."""
        return self._upsample(self(pixel_values=pixel_values).logits, pixel_values.shape[-2:])

    def forward(
        self, pixel_values: torch.FloatTensor, labels: torch.LongTensor | None = None, **kwargs
    ) -> SegmenterOutput | tuple:
        r"""
        pixel_values (`torch.FloatTensor` of shape `(B, 3, H, W)`): normalised images of any size.
        labels (`torch.LongTensor` of shape `(B, H, W)`, *optional*): class ids in `[0, num_labels)`, 255 ignored.
            The loss is the per-pixel cross-entropy of the full-resolution logits.
        output_hidden_states, output_attentions, return_dict (keywords): as in transformers.

        Returns `SegmenterOutput` with `loss`, `logits` (B, num_labels, h, w), `hidden_states` (encoder
        embeddings and every encoder layer, (B, tokens, hidden)), `attentions` (every encoder layer, (B, heads, N,
        N)) and `decoder_attentions` (every Mask-Transformer layer).
        """
        # The decoder's attention probabilities come with `output_attentions`, as the encoder's.
        output_attentions = kwargs.get("output_attentions")
        output_attentions = self.config.output_attentions if output_attentions is None else output_attentions
        kwargs["output_attentions"] = output_attentions
        has_attention = isinstance(self.decoder, MaskTransformerDecoder)
        kwargs["output_decoder_attentions"] = bool(output_attentions) and has_attention
        return self._forward(pixel_values, labels, **kwargs)

    @capture_outputs(tie_last_hidden_states=False)
    def _forward(self, pixel_values: torch.FloatTensor, labels: torch.LongTensor | None, **kwargs) -> SegmenterOutput:
        pixel_values = check_pixel_values(pixel_values, self.config.num_channels, self.dtype)
        if labels is not None and tuple(labels.shape[-2:]) != tuple(pixel_values.shape[-2:]):
            raise ValueError(
                f"`labels` of size {tuple(labels.shape[-2:])} do not match `pixel_values` of size "
                f"{tuple(pixel_values.shape[-2:])}."
            )
        output_attentions = bool(kwargs["output_attentions"])
        encoder_outputs = self.encoder(pixel_values, output_attentions=output_attentions)
        patch_tokens = encoder_outputs.last_hidden_state[:, self.encoder.num_extra_tokens :]
        logits = self.decoder(patch_tokens, encoder_outputs.grid_size, output_attentions)

        loss = None
        if labels is not None:
            loss = semantic_cross_entropy(
                self._upsample(logits, pixel_values.shape[-2:]), labels, self.config.semantic_loss_ignore_index
            )
        return SegmenterOutput(loss=loss, logits=logits)


__all__ = ["SegmenterForSemanticSegmentation", "SegmenterOutput", "SegmenterPreTrainedModel"]
