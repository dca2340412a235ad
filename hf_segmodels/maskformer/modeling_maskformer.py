"""MaskFormer (arXiv 2107.06278): per-pixel embeddings from a backbone + FPN pixel decoder, N query embeddings from a
DETR transformer decoder, and mask classification (a class and a mask embedding per query)."""

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers import initialization as init
from transformers.activations import ACT2FN
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.utils import ModelOutput
from transformers.utils.output_capturing import OutputRecorder, capture_outputs

from ..image_processing import class_argmax
from ..kernels import capturing
from ..layers import attend, init_vit_weights
from ..losses import check_semantic_labels
from ..modeling_utils import SegmentationModelMixin, SegmentationPreTrainedModel, check_pixel_values
from ..winograd import Conv2d as WinogradConv2d, conv3x3 as winograd_conv3x3, worthwhile as winograd_worthwhile
from .backbones import MaskFormerViTBackbone, backbone_feature_maps, build_backbone
from .configuration_maskformer import MaskFormerConfig
from .loss_maskformer import MaskFormerLoss


@dataclass
class MaskFormerForUniversalSegmentationOutput(ModelOutput):
    r"""
    Output of [`MaskFormerForUniversalSegmentation`]; a `SemanticSegmenterOutput` (loss, logits, hidden_states,
    attentions) extended with the mask-classification outputs.

    loss (`torch.FloatTensor`, *optional*): the Hungarian-matched training loss (CE + focal + dice, plus the same on
        every intermediate decoder layer when `config.use_auxiliary_loss`), when labels were given.
    logits (`torch.FloatTensor` of shape `(B, num_labels, h, w)`): semantic per-pixel scores at the mask resolution
        (1/4 of the input): sum over queries of softmax class probability (without "no object") x sigmoid mask.
    class_queries_logits (`torch.FloatTensor` of shape `(B, Q, num_labels + 1)`): class logits of every query, the
        last class being "no object".
    masks_queries_logits (`torch.FloatTensor` of shape `(B, Q, h, w)`): mask logits of every query.
    auxiliary_outputs (`list[dict]`, *optional*): for decoder layers 1 .. L-1 (the last layer's predictions are the
        main outputs), `{"class_queries_logits", "masks_queries_logits"}`, the original's `aux_outputs`; returned
        when auxiliary losses are computed or `output_auxiliary_logits=True`.
    auxiliary_logits (`list[dict]`, *optional*): transformers' field: one `{"class_queries_logits",
        "masks_queries_logits"}` per decoder layer (L entries; the last equals the main outputs), returned when
        `output_auxiliary_logits=True`. transformers' own MaskFormer derives its L entries from the decoder's input
        and layers 1 .. L-1 instead; ours are the original's per-layer predictions.
    encoder_last_hidden_state (`(B, C, h/8, w/8)`): the backbone's last feature map (1/32 of the input).
    pixel_decoder_last_hidden_state (`(B, mask_feature_size, h, w)`): the per-pixel embeddings (always returned,
        as in transformers; `full_resolution_logits` / `infer_logits`, which need only the masks, skip them and fold
        the projection into the mask embeddings instead: same values, fewer multiplications).
    transformer_decoder_last_hidden_state (`(B, Q, d_model)`): the query embeddings after the final LayerNorm.
    encoder_hidden_states, pixel_decoder_hidden_states, transformer_decoder_hidden_states (*optional*): the
        backbone's feature maps, the FPN outputs (low to high resolution) and, as in transformers, L + 1 decoder
        states: the decoder's input (zero targets) then the LayerNorm-ed output of every layer, when
        `output_hidden_states=True`; `hidden_states` is their concatenation.
    attentions, cross_attentions (*optional*): the decoder's self-attention (B, heads, Q, Q) and cross-attention
        (B, heads, Q, h/32 * w/32) probabilities of every layer, when `output_attentions=True`.
    image_sizes (`torch.LongTensor` of shape `(B, 2)`): the (height, width) of every image before padding, read from
        `pixel_mask` (the whole input when no mask is given). The post-processing of [`MaskFormerImageProcessor`]
        crops the upsampled masks to it, as the original's `sem_seg_postprocess` does.
    padded_sizes (`torch.LongTensor` of shape `(B, 2)`): the (height, width) of the padded input (`pixel_values`),
        the size the original upsamples the mask logits to before cropping (the same for every row).
    """

    loss: torch.FloatTensor | None = None
    logits: torch.FloatTensor | None = None
    class_queries_logits: torch.FloatTensor | None = None
    masks_queries_logits: torch.FloatTensor | None = None
    auxiliary_outputs: list[dict[str, torch.FloatTensor]] | None = None
    auxiliary_logits: list[dict[str, torch.FloatTensor]] | None = None
    encoder_last_hidden_state: torch.FloatTensor | None = None
    pixel_decoder_last_hidden_state: torch.FloatTensor | None = None
    transformer_decoder_last_hidden_state: torch.FloatTensor | None = None
    encoder_hidden_states: tuple[torch.FloatTensor, ...] | None = None
    pixel_decoder_hidden_states: tuple[torch.FloatTensor, ...] | None = None
    transformer_decoder_hidden_states: tuple[torch.FloatTensor, ...] | None = None
    hidden_states: tuple[torch.FloatTensor, ...] | None = None
    attentions: tuple[torch.FloatTensor, ...] | None = None
    cross_attentions: tuple[torch.FloatTensor, ...] | None = None
    image_sizes: torch.LongTensor | None = None
    padded_sizes: torch.LongTensor | None = None


# ----------------------------------------------------------------------------------------------------------------
# Pixel decoder
# ----------------------------------------------------------------------------------------------------------------


class MaskFormerConvNormLayer(nn.Module):
    """detectron2's `Conv2d(norm="GN", activation=relu)`: bias-free convolution, GroupNorm(32), optional ReLU."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, activation: bool = True):
        super().__init__()
        # (wide 3x3 convolutions run as Winograd F(4x4, 3x3) at CPU inference, see winograd.py)
        self.conv = WinogradConv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2, bias=False)
        self.norm = nn.GroupNorm(32, out_channels)
        self.activation = nn.ReLU(inplace=True) if activation else nn.Identity()  # on the GroupNorm's fresh output

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.activation(self.norm(self.conv(hidden_states)))


class MaskFormerPostNormLayer(GradientCheckpointingLayer):
    """Base of the post-norm DETR layers: their feed-forward block `fc1`, `activation`, `fc2`, `final_layer_norm`
    (FFN size, activation and dropouts of `config.decoder_config`) and the residual + LayerNorm after every block."""

    def __init__(self, config: MaskFormerConfig, width: int):
        super().__init__()
        decoder = config.decoder_config
        self.dropout = decoder.dropout
        self.activation_dropout = decoder.activation_dropout
        self.fc1 = nn.Linear(width, decoder.decoder_ffn_dim)
        self.activation = ACT2FN[decoder.activation_function]
        self.fc2 = nn.Linear(decoder.decoder_ffn_dim, width)
        self.final_layer_norm = nn.LayerNorm(width)

    def add_and_norm(self, hidden_states: torch.Tensor, update: torch.Tensor, norm: nn.LayerNorm) -> torch.Tensor:
        """norm(hidden_states + dropout(update))."""
        return norm(hidden_states + F.dropout(update, p=self.dropout, training=self.training))

    def feed_forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        """fc1, activation, dropout (`activation_dropout`), fc2, then dropout, residual and `final_layer_norm`."""
        update = self.activation(self.fc1(hidden_states))
        update = self.fc2(F.dropout(update, p=self.activation_dropout, training=self.training))
        return self.add_and_norm(hidden_states, update, self.final_layer_norm)


class MaskFormerEncoderLayer(MaskFormerPostNormLayer):
    """Post-norm DETR encoder layer of the original `TransformerEncoderPixelDecoder`: self-attention over the
    flattened feature map (sine position embeddings added to queries and keys, not to values), then a feed-forward
    network; each followed by dropout, the residual and a LayerNorm."""

    def __init__(self, config: MaskFormerConfig):
        decoder = config.decoder_config
        width = config.fpn_feature_size
        super().__init__(config, width)
        self.self_attn = MaskFormerAttention(config, width, decoder.decoder_attention_heads, decoder.attention_dropout)
        self.self_attn_layer_norm = nn.LayerNorm(width)

    def forward(self, hidden_states: torch.Tensor, position_embeddings: torch.Tensor) -> torch.Tensor:
        """hidden_states (B, h*w, C), position_embeddings (h*w, C) -> (B, h*w, C)."""
        queries = hidden_states + position_embeddings
        attended, _ = self.self_attn(queries, queries, hidden_states)
        hidden_states = self.add_and_norm(hidden_states, attended, self.self_attn_layer_norm)
        return self.feed_forward(hidden_states)


class MaskFormerPixelDecoder(nn.Module):
    """The FPN pixel decoder (the original's `BasePixelDecoder`): top-down pathway from the lowest-resolution backbone
    feature with nearest upsampling and 1x1 lateral connections, a 3x3 conv after every merge, and a final 3x3
    projection to the per-pixel embeddings at the resolution of the first (1/4) feature map.

    With `config.pixel_decoder_encoder_layers > 0` (the original's `TransformerEncoderPixelDecoder`), the lowest-
    resolution map is first projected to `fpn_feature_size` (1x1 conv) and encoded by that many transformer-encoder
    layers; the encoded map feeds the FPN's top 3x3 conv and is the transformer decoder's memory."""

    def __init__(self, config: MaskFormerConfig, feature_channels: list[int]):
        super().__init__()
        size = config.fpn_feature_size
        if config.pixel_decoder_encoder_layers:
            self.input_projection = nn.Conv2d(feature_channels[-1], size, kernel_size=1)
            self.encoder_layers = nn.ModuleList(
                MaskFormerEncoderLayer(config) for _ in range(config.pixel_decoder_encoder_layers)
            )
            self.stem = MaskFormerConvNormLayer(size, size, 3)
        else:
            self.input_projection = None
            self.encoder_layers = nn.ModuleList()
            self.stem = MaskFormerConvNormLayer(feature_channels[-1], size, 3)
        # top-down order: from the second lowest resolution to the highest
        self.lateral_convs = nn.ModuleList(
            MaskFormerConvNormLayer(channels, size, 1, activation=False) for channels in feature_channels[-2::-1]
        )
        self.output_convs = nn.ModuleList(MaskFormerConvNormLayer(size, size, 3) for _ in feature_channels[:-1])
        self.mask_projection = WinogradConv2d(size, config.mask_feature_size, kernel_size=3, padding=1)

    @property
    def memory_channels(self) -> int | None:
        """Channels of the map `encode` gives the transformer decoder, or None when it is the backbone's own map."""
        return self.input_projection.out_channels if self.input_projection is not None else None

    def encode(self, feature: torch.Tensor) -> torch.Tensor:
        """The lowest-resolution backbone map (B, C, h, w) -> the FPN's top-level input and the transformer decoder's
        memory: itself, or (B, fpn_feature_size, h, w) after the projection and the transformer encoder."""
        if self.input_projection is None:
            return feature
        hidden_states = self.input_projection(feature)
        batch, channels, height, width = hidden_states.shape
        position_embeddings = sine_position_embedding(height, width, channels // 2, feature.device, hidden_states.dtype)
        hidden_states = hidden_states.flatten(2).transpose(1, 2)
        for layer in self.encoder_layers:
            hidden_states = layer(hidden_states, position_embeddings)
        return hidden_states.transpose(1, 2).reshape(batch, channels, height, width)

    def fpn(self, features: list[torch.Tensor]) -> tuple[tuple[torch.Tensor, ...], torch.Tensor]:
        """features: backbone maps, highest resolution first -> the FPN outputs (B, fpn_feature_size, ., .), low to
        high resolution (the last one, at 1/4, is the input of `mask_projection`), and the transformer decoder's
        memory (see `encode`)."""
        memory = self.encode(features[-1])
        hidden_states = self.stem(memory)
        fpn_outputs = (hidden_states,)
        for lateral_conv, output_conv, feature in zip(self.lateral_convs, self.output_convs, features[-2::-1]):
            lateral = lateral_conv(feature)
            batch, channels, height, width = hidden_states.shape
            # (capturing first: under a dynamic export the size comparison would become a guard on the input size)
            if not capturing() and lateral.shape[-2:] == (2 * height, 2 * width) and lateral.is_contiguous():
                # nearest 2x upsampling (output row i reads row i // 2) added as a broadcast: no upsampled copy
                lateral.view(batch, channels, height, 2, width, 2).add_(hidden_states[:, :, :, None, :, None])
                hidden_states = lateral
            else:
                hidden_states = lateral.add_(F.interpolate(hidden_states, size=lateral.shape[-2:], mode="nearest"))
            hidden_states = output_conv(hidden_states)
            fpn_outputs += (hidden_states,)
        return fpn_outputs, memory

    def forward(self, features: list[torch.Tensor]) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
        """features: backbone maps, highest resolution first. Returns the per-pixel embeddings
        (B, mask_feature_size, H/4, W/4) and the FPN outputs (B, fpn_feature_size, ., .), low to high resolution."""
        fpn_outputs, _ = self.fpn(features)
        return self.mask_projection(fpn_outputs[-1]), fpn_outputs

    def projected_mask_logits(self, fpn_output: torch.Tensor, mask_embeddings: torch.Tensor) -> torch.Tensor:
        """`mask_embeddings . mask_projection(fpn_output)` without the per-pixel embeddings: the projection is linear,
        so each image's Q mask embeddings are folded into its weights (Q, C, 3, 3) and bias (Q,) and ONE convolution
        with Q instead of mask_feature_size output channels gives the mask logits directly.

        fpn_output (B, C, h, w), mask_embeddings (B, Q, mask_feature_size) -> mask logits (B, Q, h, w)."""
        num_masks = mask_embeddings.shape[1]
        padding = self.mask_projection.padding
        # (Q, C, 3, 3) filters: Winograd at CPU inference (see winograd.py), else oneDNN, which is measured faster
        # with a multiple of 32 output channels than with 100 (zero embeddings pad, cropped below)
        winograd_path = (
            padding == (1, 1)
            and winograd_worthwhile(fpn_output, self.mask_projection.weight[:num_masks], filters_cached=False)
            and not (torch.is_grad_enabled() and mask_embeddings.requires_grad)  # (the folded weights need autograd)
        )
        if not winograd_path and fpn_output.device.type == "cpu" and num_masks % 32:
            mask_embeddings = F.pad(mask_embeddings, (0, 0, 0, -num_masks % 32))
        weights = torch.einsum("bqm,mckl->bqckl", mask_embeddings, self.mask_projection.weight)
        biases = mask_embeddings @ self.mask_projection.bias
        masks = []
        for index in range(fpn_output.shape[0]):
            if winograd_path:
                masks.append(winograd_conv3x3(fpn_output[index : index + 1], weights[index], biases[index]))
            else:
                masks.append(F.conv2d(fpn_output[index : index + 1], weights[index], biases[index], padding=padding))
        masks = masks[0] if len(masks) == 1 else torch.cat(masks)  # (no copy for a single image)
        return masks[:, :num_masks]

    def folding_is_cheaper(self, num_masks: int) -> bool:
        """Whether `projected_mask_logits` for `num_masks` mask embeddings per image costs fewer multiplications than
        the projection to mask_feature_size channels followed by the (num_masks x mask_feature_size) product."""
        out_channels, in_channels, kernel_h, kernel_w = self.mask_projection.weight.shape
        taps = in_channels * kernel_h * kernel_w
        return num_masks * taps < out_channels * taps + num_masks * out_channels


# ----------------------------------------------------------------------------------------------------------------
# Transformer decoder (DETR)
# ----------------------------------------------------------------------------------------------------------------


def sine_position_embedding(
    height: int, width: int, num_features: int, device, dtype, temperature: float = 10000.0
) -> torch.Tensor:
    """DETR's normalised sine position embedding of an unpadded (height, width) grid: (height * width, 2 *
    num_features), y features first, channels alternating sin / cos."""
    eps, scale = 1e-6, 2 * math.pi
    y_embed = torch.arange(1, height + 1, device=device, dtype=torch.float32)
    x_embed = torch.arange(1, width + 1, device=device, dtype=torch.float32)
    y_embed = y_embed / (y_embed[-1:] + eps) * scale
    x_embed = x_embed / (x_embed[-1:] + eps) * scale
    dim_t = torch.arange(num_features, device=device, dtype=torch.float32)
    dim_t = temperature ** (2 * torch.div(dim_t, 2, rounding_mode="floor") / num_features)

    def encode(positions: torch.Tensor) -> torch.Tensor:
        angles = positions[:, None] / dim_t
        return torch.stack((angles[:, 0::2].sin(), angles[:, 1::2].cos()), dim=2).flatten(1)

    pos_y = encode(y_embed)[:, None, :].expand(height, width, num_features)
    pos_x = encode(x_embed)[None, :, :].expand(height, width, num_features)
    return torch.cat((pos_y, pos_x), dim=-1).flatten(0, 1).to(dtype)


class MaskFormerAttention(nn.Module):
    """Multi-head attention with separate q/k/v/output projections; position embeddings are added to the query and
    key inputs by the caller (DETR). Runs through transformers' attention interface."""

    def __init__(self, config, hidden_size: int, num_heads: int, dropout: float = 0.0):
        super().__init__()
        self.config = config
        self.num_heads = num_heads
        self.head_dim = hidden_size // num_heads
        self.scaling = self.head_dim**-0.5
        self.attention_dropout = dropout
        self.is_causal = False
        self.q_proj = nn.Linear(hidden_size, hidden_size)
        self.k_proj = nn.Linear(hidden_size, hidden_size)
        self.v_proj = nn.Linear(hidden_size, hidden_size)
        self.o_proj = nn.Linear(hidden_size, hidden_size)

    def forward(
        self, queries: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, output_attentions: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """queries (B, Nq, C), keys / values (B, Nk, C) -> (B, Nq, C) and the probabilities (B, heads, Nq, Nk)."""
        batch, num_queries, channels = queries.shape
        query = self.q_proj(queries).view(batch, num_queries, self.num_heads, self.head_dim).transpose(1, 2)
        key = self.k_proj(keys).view(batch, -1, self.num_heads, self.head_dim).transpose(1, 2)
        value = self.v_proj(values).view(batch, -1, self.num_heads, self.head_dim).transpose(1, 2)
        output, weights = attend(self, query, key, value, output_attentions)
        return self.o_proj(output.reshape(batch, num_queries, channels)), weights


class MaskFormerDecoderLayer(MaskFormerPostNormLayer):
    """Post-norm DETR decoder layer: self-attention among the queries, cross-attention to the image features,
    feed-forward network; each followed by dropout, the residual and a LayerNorm."""

    def __init__(self, config: MaskFormerConfig):
        decoder = config.decoder_config
        width = decoder.d_model
        heads = decoder.decoder_attention_heads
        super().__init__(config, width)
        # the attention reads `_attn_implementation` from the top-level config, which the model sets
        self.self_attn = MaskFormerAttention(config, width, heads, decoder.attention_dropout)
        self.self_attn_layer_norm = nn.LayerNorm(width)
        self.encoder_attn = MaskFormerAttention(config, width, heads, decoder.attention_dropout)
        self.encoder_attn_layer_norm = nn.LayerNorm(width)

    def forward(
        self,
        hidden_states: torch.Tensor,
        query_position_embeddings: torch.Tensor,
        image_features: torch.Tensor,
        image_keys: torch.Tensor,
        output_attentions: bool = False,
    ):
        """hidden_states (B, Q, C); query_position_embeddings (1 or B, Q, C); image_features (B, h*w, C) are the
        values of the cross-attention and `image_keys` (features + sine position embeddings) its keys."""
        queries = hidden_states + query_position_embeddings
        attended, self_weights = self.self_attn(queries, queries, hidden_states, output_attentions)
        hidden_states = self.add_and_norm(hidden_states, attended, self.self_attn_layer_norm)
        attended, cross_weights = self.encoder_attn(
            hidden_states + query_position_embeddings, image_keys, image_features, output_attentions
        )
        hidden_states = self.add_and_norm(hidden_states, attended, self.encoder_attn_layer_norm)
        return self.feed_forward(hidden_states), self_weights, cross_weights


class MaskFormerTransformerDecoder(nn.Module):
    """The transformer decoder of the original `TransformerPredictor` (0 encoder layers): the backbone's last feature
    map is projected to `d_model`, `num_queries` learned query position embeddings attend to it through the DETR
    decoder, starting from zero targets. A shared LayerNorm normalises the output of every layer."""

    def __init__(self, config: MaskFormerConfig, in_channels: int):
        super().__init__()
        decoder_config = config.decoder_config
        width = decoder_config.d_model
        # the original's `TransformerPredictor`: a 1x1 projection when the widths differ or ENFORCE_INPUT_PROJ is set
        # (the released Swin panoptic models), else none (`nn.Sequential()`)
        project = in_channels != width or config.enforce_input_projection
        self.input_projection = nn.Conv2d(in_channels, width, kernel_size=1) if project else None
        self.query_position_embeddings = nn.Embedding(config.num_queries, width)
        self.layers = nn.ModuleList(MaskFormerDecoderLayer(config) for _ in range(decoder_config.decoder_layers))
        self.layernorm = nn.LayerNorm(width)
        self.gradient_checkpointing = False

    def forward(
        self, image_features: torch.Tensor, output_intermediate: bool = False, output_attentions: bool = False
    ):
        """image_features (B, C, h, w) -> queries (B, Q, d_model) after the final LayerNorm and the LayerNorm-ed output
        of every layer (a tuple, when `output_intermediate`, else None). The layers' self- and cross-attention
        probabilities are recorded by the model's `_can_record_outputs`."""
        if self.input_projection is not None:
            image_features = self.input_projection(image_features)
        batch, width, height, feature_width = image_features.shape
        position_embeddings = sine_position_embedding(
            height, feature_width, width // 2, image_features.device, image_features.dtype
        )
        image_features = image_features.flatten(2).transpose(1, 2)
        image_keys = image_features + position_embeddings
        query_position_embeddings = self.query_position_embeddings.weight.unsqueeze(0)
        hidden_states = torch.zeros(
            batch, query_position_embeddings.shape[1], width, device=image_features.device, dtype=image_features.dtype
        )
        intermediate = () if output_intermediate else None
        for layer in self.layers:
            hidden_states, _, _ = layer(
                hidden_states, query_position_embeddings, image_features, image_keys, output_attentions
            )
            if output_intermediate:
                intermediate += (self.layernorm(hidden_states),)
        last = intermediate[-1] if output_intermediate else self.layernorm(hidden_states)
        return last, intermediate


class MaskFormerMLP(nn.Module):
    """The mask-embedding MLP: Linear layers with ReLU between them (3 layers: 2 hidden layers of `hidden_size`)."""

    def __init__(self, input_size: int, hidden_size: int, output_size: int, num_layers: int = 3):
        super().__init__()
        sizes = [input_size] + [hidden_size] * (num_layers - 1) + [output_size]
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(sizes[:-1], sizes[1:]))

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        for index, layer in enumerate(self.layers):
            hidden_states = layer(hidden_states)
            if index < len(self.layers) - 1:
                hidden_states = F.relu(hidden_states)
        return hidden_states


def semantic_labels_to_masks(labels: torch.Tensor, ignore_index: int = 255):
    """(B, H, W) semantic maps -> per image one binary mask (N_i, H, W) and class id (N_i,) per class present
    (ignoring `ignore_index`), classes in increasing order."""
    mask_labels, class_labels = [], []
    for label_map in labels:
        classes = torch.unique(label_map)
        classes = classes[classes != ignore_index]
        mask_labels.append((label_map[None] == classes[:, None, None]).float())
        class_labels.append(classes.long())
    return mask_labels, class_labels


def image_sizes_from_pixel_mask(
    pixel_values: torch.Tensor, pixel_mask: torch.Tensor | None
) -> tuple[torch.LongTensor, torch.LongTensor]:
    """(B, 2) (height, width) of every image before its bottom / right padding (the extent of the ones of
    `pixel_mask`; the whole input without a mask) and (B, 2) the padded input size."""
    batch, _, height, width = pixel_values.shape
    padded = torch.tensor([[height, width]], dtype=torch.long, device=pixel_values.device).expand(batch, 2)
    if pixel_mask is None:
        return padded.clone(), padded.clone()
    if pixel_mask.dim() != 3 or tuple(pixel_mask.shape) != (batch, height, width):
        raise ValueError(
            f"`pixel_mask` must have shape (B, H, W) = {(batch, height, width)} like `pixel_values`, got "
            f"{tuple(pixel_mask.shape)}."
        )
    valid = pixel_mask.to(pixel_values.device) != 0
    rows = torch.arange(1, height + 1, device=valid.device)
    cols = torch.arange(1, width + 1, device=valid.device)
    heights = (valid.any(2) * rows).amax(1)
    widths = (valid.any(1) * cols).amax(1)
    return torch.stack((heights, widths), 1).long(), padded.clone()


def semantic_scores(
    class_queries_logits: torch.Tensor, masks_queries_logits: torch.Tensor, in_place: bool = False
) -> torch.Tensor:
    """Semantic per-pixel scores (B, K, h, w): sum over queries of softmax class probability (K real classes,
    without "no object") times sigmoid mask probability (the original's `semantic_probabilistic_inference`).
    `in_place=True` turns `masks_queries_logits` (a tensor the caller owns and no longer needs, outside autograd)
    into its sigmoid in place instead of allocating another full-size tensor."""
    classes = class_queries_logits.softmax(dim=-1)[..., :-1]
    masks = masks_queries_logits.sigmoid_() if in_place else masks_queries_logits.sigmoid()
    return torch.einsum("bqc,bqhw->bchw", classes, masks)


# Output pixels per band of `upsampled_semantic`: the band's upsampled masks (100 queries) and scores (150 classes)
# stay a few MB, reused from band to band, instead of two full-size tensors of hundreds of MB.
_BAND_PIXELS = 8192


def upsampled_semantic(
    class_queries_logits: torch.Tensor,
    masks_queries_logits: torch.Tensor,
    padded_size: tuple[int, int],
    size: tuple[int, int],
    labels: bool = False,
) -> torch.Tensor:
    """The original's full-resolution semantic inference: the mask logits (B, Q, h, w) are upsampled bilinearly
    (`align_corners=False`) to `padded_size`, cropped to `size` (H, W) and combined with the class probabilities
    (`semantic_scores`). Returns the scores (B, K, H, W), or with `labels=True` only their argmax (B, H, W) int64
    (the first maximum wins ties), without the (B, K, H, W) tensor ever existing.

    Outside autograd, and when the height's upsampling factor is a power of two (MaskFormer's masks are at 1/4 of
    the padded size), it runs band of rows by band of rows on channels-last masks: a band's rows interpolate exactly
    as in the whole upsampling (the same source coordinates and weights), the band's masks and scores stay in the
    caches, and PyTorch's channels-last bilinear kernel is several times faster than the channels-first one (its
    sums differ from the channels-first kernel's in the last bit, ~5e-7 on the logits). Otherwise the whole tensors
    are computed."""
    batch, queries, mask_height, mask_width = masks_queries_logits.shape
    height, width = size
    factor = padded_size[0] // mask_height
    if torch.is_grad_enabled() or factor * mask_height != padded_size[0] or factor & (factor - 1):
        masks = F.interpolate(masks_queries_logits, size=padded_size, mode="bilinear", align_corners=False)
        scores = semantic_scores(class_queries_logits, masks[..., :height, :width], in_place=not torch.is_grad_enabled())
        return torch.stack([class_argmax(item) for item in scores]) if labels else scores
    classes = class_queries_logits.softmax(dim=-1)[..., :-1].transpose(1, 2)  # (B, K, Q)
    num_classes = classes.shape[1]
    masks_queries_logits = masks_queries_logits.contiguous(memory_format=torch.channels_last)
    shape = (batch, height, width) if labels else (batch, num_classes, height, width)
    result = torch.empty(shape, dtype=torch.long if labels else classes.dtype, device=classes.device)
    rows_per_band = max(1, _BAND_PIXELS // width)
    for start in range(0, height, rows_per_band):
        stop = min(start + rows_per_band, height)
        # the source rows the band's output rows interpolate from, with one row of margin on each side (no clamping)
        first, last = max(start // factor - 1, 0), min((stop - 1) // factor + 2, mask_height)
        masks = F.interpolate(
            masks_queries_logits[:, :, first:last], size=((last - first) * factor, padded_size[1]), mode="bilinear",
            align_corners=False,
        )  # fmt: skip
        # (B, Q, rows, W) channels-last is (B, rows, W, Q) in memory: the band's rows are one block per image
        masks = masks.permute(0, 2, 3, 1)[:, start - first * factor : stop - first * factor, :width].sigmoid_()
        for index in range(batch):
            band = masks[index].reshape(-1, queries).t()  # (Q, rows * width)
            if labels:
                result[index, start:stop] = class_argmax(torch.mm(classes[index], band)).view(stop - start, width)
            else:
                torch.mm(classes[index], band, out=result[index].view(num_classes, -1)[:, start * width : stop * width])
    return result


# ----------------------------------------------------------------------------------------------------------------
# Model
# ----------------------------------------------------------------------------------------------------------------


class MaskFormerPreTrainedModel(SegmentationPreTrainedModel):
    config: MaskFormerConfig
    base_model_prefix = "maskformer"
    _no_split_modules = ["MaskFormerDecoderLayer", "MaskFormerEncoderLayer"]
    _can_record_outputs = {
        # the transformer decoder's layers return (queries, self-attention, cross-attention probabilities)
        "attentions": OutputRecorder(MaskFormerDecoderLayer, index=1),
        "cross_attentions": OutputRecorder(MaskFormerDecoderLayer, index=2),
    }

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        # The original's init: detectron2's c2_xavier_fill (kaiming-uniform, a=1, zero bias) for the pixel decoder
        # and the input projection; Xavier-uniform weights in the DETR decoder; N(0, 1) query embeddings; PyTorch's
        # default Linear init for the class head and mask MLP. The backbone keeps its own init.
        xavier_gain = self.config.init_xavier_std
        if isinstance(module, MaskFormerViTBackbone):
            # the papers' ViT init (runs after the generic branches below have visited its children)
            for child in module.encoder.modules():
                init_vit_weights(child, module.config.initializer_range)
        elif isinstance(module, nn.Conv2d):
            # every convolution of the pixel decoder and the input projection (those of the ViT backbone are
            # re-initialised by the branch above, which runs after its children)
            init.kaiming_uniform_(module.weight, a=1)
            if module.bias is not None:
                init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):  # the query position embeddings
            init.normal_(module.weight, std=1.0)
        elif isinstance(module, (MaskFormerDecoderLayer, MaskFormerEncoderLayer)):
            for linear in module.modules():
                if isinstance(linear, nn.Linear):
                    init.xavier_uniform_(linear.weight, gain=xavier_gain)
                    init.zeros_(linear.bias)
        elif isinstance(module, MaskFormerLoss):
            # a non-persistent buffer: from_pretrained materialises it empty, so it is set here
            init.copy_(module.class_weights, module.default_class_weights(self.config))
        elif isinstance(module, (nn.LayerNorm, nn.GroupNorm)):
            init.ones_(module.weight)
            init.zeros_(module.bias)
        elif isinstance(module, nn.Linear):
            # decoder-layer Linears are overwritten by the MaskFormerDecoderLayer branch (parents run last)
            init.kaiming_uniform_(module.weight, a=math.sqrt(5))
            bound = 1 / math.sqrt(module.weight.shape[1])
            init.uniform_(module.bias, -bound, bound)


class MaskFormerForUniversalSegmentation(SegmentationModelMixin, MaskFormerPreTrainedModel):
    """MaskFormer for semantic, instance and panoptic segmentation.

    Input: `pixel_values` (B, 3, H, W) of any size. Output (see [`MaskFormerForUniversalSegmentationOutput`]):
    `class_queries_logits` (B, Q, K + 1), `masks_queries_logits` (B, Q, H/4, W/4) and the semantic `logits`
    (B, K, H/4, W/4). `full_resolution_logits` / `hf_segmodels.infer_logits` give (B, K, H, W) scores the way the
    original's semantic inference computes them.

    Training: pass either `labels` (B, H, W) semantic maps (255 ignored; one binary target mask per class present)
    or `mask_labels` (list of B (N_i, H, W) binary masks) + `class_labels` (list of B (N_i,) class ids) for instance
    / panoptic training (these win when both are given). Works with `transformers.Trainer` out of the box (see
    `forward` and `MaskFormerConfig.keys_to_ignore_at_inference`).

    Differences from transformers' `MaskFormerForInstanceSegmentation` outputs, kept for identity with the original:
    `auxiliary_logits` holds the prediction of each of the L decoder layers (transformers derives its L entries
    from the decoder input and layers 1 .. L-1), and `auxiliary_outputs` the original's L - 1 `aux_outputs`.
    """

    def __init__(self, config: MaskFormerConfig):
        super().__init__(config)
        self.backbone = build_backbone(config)
        channels = list(self.backbone.channels)
        self.pixel_decoder = MaskFormerPixelDecoder(config, channels)
        self.transformer_decoder = MaskFormerTransformerDecoder(
            config, self.pixel_decoder.memory_channels or channels[-1]
        )
        width = config.decoder_config.d_model
        self.class_predictor = nn.Linear(width, config.num_labels + 1)
        self.mask_embedder = MaskFormerMLP(width, width, config.mask_feature_size)
        self.criterion = MaskFormerLoss(config)
        self.post_init()

    def _check_targets(self, pixel_values, labels, mask_labels, class_labels):
        size = tuple(pixel_values.shape[-2:])
        batch = pixel_values.shape[0]
        if labels is not None and mask_labels is None and class_labels is None:
            check_semantic_labels(labels, self.config.num_labels)
            if labels.shape[0] != batch or tuple(labels.shape[-2:]) != size:
                raise ValueError(
                    f"`labels` of shape {tuple(labels.shape)} do not match `pixel_values` of shape "
                    f"{tuple(pixel_values.shape)}; expected ({batch}, {size[0]}, {size[1]})."
                )
            return semantic_labels_to_masks(labels)
        if (mask_labels is None) != (class_labels is None):
            raise ValueError("`mask_labels` and `class_labels` must be given together.")
        if mask_labels is None:
            return None, None
        if len(mask_labels) != batch or len(class_labels) != batch:
            raise ValueError(
                f"Got {len(mask_labels)} `mask_labels` and {len(class_labels)} `class_labels` entries for a batch of "
                f"{batch} images; pass one of each per image."
            )
        for index, (masks, classes) in enumerate(zip(mask_labels, class_labels)):
            if masks.dim() != 3 or tuple(masks.shape[-2:]) != size:
                raise ValueError(
                    f"`mask_labels[{index}]` must have shape (num_segments, {size[0]}, {size[1]}) like `pixel_values`, "
                    f"got {tuple(masks.shape)}."
                )
            if classes.dim() != 1 or classes.shape[0] != masks.shape[0]:
                raise ValueError(
                    f"`mask_labels[{index}]` holds {masks.shape[0]} masks but `class_labels[{index}]` has shape "
                    f"{tuple(classes.shape)}; there must be one class id per mask."
                )
            if classes.is_floating_point():
                raise ValueError(f"`class_labels[{index}]` must hold integer class ids, got dtype {classes.dtype}.")
            invalid = (classes < 0) | (classes >= self.config.num_labels)
            if invalid.any():
                raise ValueError(
                    f"`class_labels[{index}]` contains class ids {sorted(set(classes[invalid].tolist()))} outside "
                    f"[0, {self.config.num_labels}) (num_labels={self.config.num_labels})."
                )
        return list(mask_labels), [classes.long() for classes in class_labels]

    def mask_classification(self, decoder_states: torch.Tensor, fpn_output: torch.Tensor, fold_projection: bool = False):
        """The mask-classification heads: decoder_states (..., B, Q, C) and the FPN's last output fpn_output
        (B, fpn_feature_size, h, w) -> class logits (..., B, Q, K + 1), mask logits (..., B, Q, h, w) and the
        per-pixel embeddings (B, mask_feature_size, h, w).

        With `fold_projection` the per-pixel embeddings are not materialised (None is returned for them): the mask
        projection is folded into the mask embeddings (`MaskFormerPixelDecoder.projected_mask_logits`), the same
        values. Only internal inference paths that return scores alone use it; `forward` never does."""
        class_logits = self.class_predictor(decoder_states)
        mask_embeddings = self.mask_embedder(decoder_states)
        if fold_projection:
            return class_logits, self.pixel_decoder.projected_mask_logits(fpn_output, mask_embeddings), None
        pixel_embeddings = self.pixel_decoder.mask_projection(fpn_output)
        batch, channels = pixel_embeddings.shape[:2]
        # one (Q, C') x (C', h*w) product per image
        masks = torch.matmul(mask_embeddings, pixel_embeddings.reshape(batch, channels, -1))
        return class_logits, masks.unflatten(-1, pixel_embeddings.shape[-2:]), pixel_embeddings

    def _decode(self, pixel_values: torch.Tensor, output_intermediate: bool, output_attentions: bool = False):
        """Backbone, pixel decoder (FPN) and transformer decoder: the backbone maps, the FPN outputs, the final
        queries (B, Q, d_model) and every layer's (when `output_intermediate`)."""
        features = backbone_feature_maps(self.backbone, pixel_values)
        self._check_feature_size(pixel_values, features[-1])
        fpn_outputs, memory = self.pixel_decoder.fpn(features)
        queries, intermediate = self.transformer_decoder(memory, output_intermediate, output_attentions)
        return features, fpn_outputs, queries, intermediate

    def _check_feature_size(self, pixel_values: torch.Tensor, coarsest: torch.Tensor) -> None:
        """The pixel decoder's GroupNorm(32) needs more than one value per group on the coarsest backbone map."""
        if capturing():
            return
        height, width = coarsest.shape[-2:]
        # torch's group_norm needs more than one value per (image, group) pair across the batch
        if coarsest.shape[0] * (self.config.fpn_feature_size // 32) * height * width <= 1:
            raise ValueError(
                f"The input of size {tuple(pixel_values.shape[-2:])} is too small for this MaskFormer: its coarsest "
                f"feature map is {height}x{width}, which leaves one value per group (batch of one) in the pixel decoder's "
                f"GroupNorm(32) with {self.config.fpn_feature_size} channels. Use larger images (or pad them)."
            )

    @capture_outputs
    def forward(
        self,
        pixel_values: torch.FloatTensor,
        labels: torch.LongTensor | None = None,
        output_auxiliary_logits: bool | None = None,
        pixel_mask: torch.LongTensor | None = None,
        **kwargs,
    ) -> MaskFormerForUniversalSegmentationOutput | tuple:
        r"""
        pixel_values (`torch.FloatTensor` of shape `(B, 3, H, W)`): normalised images of any size.
        labels (`torch.LongTensor` of shape `(B, H, W)`, *optional*): semantic class ids in `[0, num_labels)`, 255
            ignored; converted to one binary mask per class present in each image.
        mask_labels (`list[torch.Tensor]`, *optional*, keyword): per image, (N_i, H, W) binary masks of the
            ground-truth segments (instances or stuff regions). With `class_labels` (keyword): per image (N_i,) class
            ids. They take precedence over `labels` when both are given (the processor returns both for instance /
            panoptic maps: `labels` is then the semantic map, for metrics).
            `mask_labels` / `class_labels` are taken as keyword arguments rather than named parameters on purpose:
            `transformers.Trainer` treats every parameter whose name contains "label" as a label it must find in
            each batch before it computes an evaluation loss, and the semantic `labels` alone must be enough (they
            also are what `compute_metrics` receives, as for the per-pixel models).
        num_items_in_batch (keyword): passed by `Trainer`; unused (the loss normalises by the number of masks).
        output_auxiliary_logits (`bool`, *optional*): also return the predictions of the intermediate layers.
        output_hidden_states, output_attentions, return_dict (keywords): as in transformers.
        pixel_mask (`torch.LongTensor` of shape `(B, H, W)`, *optional*): 1 on the image, 0 on the padding (bottom /
            right), as [`MaskFormerImageProcessor`] returns it. Like the original (which has no padding mask
            anywhere), the network itself runs on the zero-padded batch unmasked; the mask only tells the
            post-processing each image's own size (`image_sizes` of the output), so that it crops the padding off.
        """
        pixel_values = check_pixel_values(pixel_values, self.config.backbone_config.num_channels, self.dtype)
        mask_labels, class_labels = kwargs.pop("mask_labels", None), kwargs.pop("class_labels", None)
        # `Trainer` passes the number of items in the batch; the matching loss normalises by the number of target
        # masks itself (as the original and transformers' MaskFormer do), so it is not needed.
        kwargs.pop("num_items_in_batch", None)
        output_hidden_states = kwargs.pop("output_hidden_states", None)
        output_attentions = kwargs.pop("output_attentions", None)
        unexpected = set(kwargs)
        if unexpected:
            raise TypeError(f"MaskFormerForUniversalSegmentation.forward() got unexpected arguments {sorted(unexpected)}.")
        config = self.config
        output_hidden_states = config.output_hidden_states if output_hidden_states is None else output_hidden_states
        output_attentions = config.output_attentions if output_attentions is None else output_attentions
        if output_auxiliary_logits is None:
            output_auxiliary_logits = bool(config.output_auxiliary_logits)
        image_sizes, padded_sizes = image_sizes_from_pixel_mask(pixel_values, pixel_mask)
        mask_labels, class_labels = self._check_targets(pixel_values, labels, mask_labels, class_labels)
        compute_loss = mask_labels is not None
        auxiliary = output_auxiliary_logits or (compute_loss and config.use_auxiliary_loss)

        features, fpn_outputs, queries, intermediate = self._decode(
            pixel_values, auxiliary or output_hidden_states, output_attentions
        )
        # every layer's predictions when the intermediate ones are needed (the last layer's are the main outputs)
        class_logits, mask_logits, pixel_embeddings = self.mask_classification(
            torch.stack(intermediate) if auxiliary else queries, fpn_outputs[-1]
        )
        auxiliary_outputs = None
        if auxiliary:
            auxiliary_outputs = [
                {"class_queries_logits": c, "masks_queries_logits": m} for c, m in zip(class_logits[:-1], mask_logits[:-1])
            ]
            class_logits, mask_logits = class_logits[-1], mask_logits[-1]
        logits = semantic_scores(class_logits, mask_logits)

        loss = None
        if compute_loss:
            loss, _ = self.criterion(
                mask_logits, class_logits, mask_labels, class_labels,
                auxiliary_outputs if config.use_auxiliary_loss else None,
            )  # fmt: skip
        auxiliary_logits = None
        if output_auxiliary_logits:
            auxiliary_logits = auxiliary_outputs + [
                {"class_queries_logits": class_logits, "masks_queries_logits": mask_logits}
            ]
        if not output_auxiliary_logits and not (compute_loss and config.use_auxiliary_loss):
            auxiliary_outputs = None

        encoder_hidden_states = pixel_decoder_hidden_states = transformer_decoder_hidden_states = hidden_states = None
        if output_hidden_states:
            encoder_hidden_states = tuple(features)
            pixel_decoder_hidden_states = fpn_outputs
            transformer_decoder_hidden_states = (torch.zeros_like(queries),) + intermediate  # + decoder input
            hidden_states = encoder_hidden_states + pixel_decoder_hidden_states + transformer_decoder_hidden_states
        return MaskFormerForUniversalSegmentationOutput(
            loss=loss,
            logits=logits,
            class_queries_logits=class_logits,
            masks_queries_logits=mask_logits,
            auxiliary_outputs=auxiliary_outputs,
            auxiliary_logits=auxiliary_logits,
            encoder_last_hidden_state=features[-1],
            pixel_decoder_last_hidden_state=pixel_embeddings,
            transformer_decoder_last_hidden_state=queries,
            encoder_hidden_states=encoder_hidden_states,
            pixel_decoder_hidden_states=pixel_decoder_hidden_states,
            transformer_decoder_hidden_states=transformer_decoder_hidden_states,
            hidden_states=hidden_states,
            image_sizes=image_sizes,
            padded_sizes=padded_sizes,
        )

    def full_resolution_logits(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> (B, num_labels, H, W), the original's semantic inference: the image is zero-padded to a
        multiple of `config.size_divisibility`, the mask logits are upsampled (bilinear) to the padded size and
        cropped to (H, W), then combined with the class probabilities (`upsampled_semantic`)."""
        return self._full_resolution(pixel_values, labels=False)

    def full_resolution_semantic_map(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> (B, H, W) int64: the argmax of `full_resolution_logits` (the same map, first maximum on
        ties), computed without the (B, num_labels, H, W) scores (hundreds of MB at 512 x 512 x 150 classes): what
        the pipeline's semantic answer needs when the image is not resized."""
        return self._full_resolution(pixel_values, labels=True)

    def _full_resolution(self, pixel_values: torch.Tensor, labels: bool) -> torch.Tensor:
        pixel_values = check_pixel_values(pixel_values, self.config.backbone_config.num_channels, self.dtype)
        height, width = pixel_values.shape[-2:]
        divisor = self.config.size_divisibility
        if divisor > 1:
            pad_h, pad_w = (-height) % divisor, (-width) % divisor
            if pad_h or pad_w:
                pixel_values = F.pad(pixel_values, (0, pad_w, 0, pad_h))
        _, fpn_outputs, queries, _ = self._decode(pixel_values, output_intermediate=False)
        # only the masks are needed here: fold the mask projection into the mask embeddings where that is cheaper
        # (exact algebra, ~2.5x fewer multiplications for 100 queries and 256 channels)
        fold = self.pixel_decoder.folding_is_cheaper(queries.shape[1])
        class_logits, mask_logits, _ = self.mask_classification(queries, fpn_outputs[-1], fold_projection=fold)
        return upsampled_semantic(class_logits, mask_logits, pixel_values.shape[-2:], (height, width), labels=labels)


__all__ = ["MaskFormerForUniversalSegmentation", "MaskFormerPreTrainedModel"]
