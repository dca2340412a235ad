"""Building blocks shared by the architectures: stochastic depth, the pre-norm transformer layer (attention through
transformers' attention interface) and the plain ViT encoder that Segmenter and SETR share, with position-embedding
resizing as the original implementations do it."""

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers import initialization as init
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
from transformers.utils import ModelOutput

from .onednn import Linear


def drop_path(hidden_states: torch.Tensor, drop_prob: float, training: bool) -> torch.Tensor:
    """Stochastic depth per sample: zeroes a whole residual branch with probability `drop_prob`, rescales the rest."""
    if drop_prob == 0.0 or not training:
        return hidden_states
    keep_prob = 1.0 - drop_prob
    shape = (hidden_states.shape[0],) + (1,) * (hidden_states.ndim - 1)
    mask = hidden_states.new_empty(shape).bernoulli_(keep_prob)
    return hidden_states * mask / keep_prob


class DropPath(nn.Module):
    def __init__(self, drop_prob: float = 0.0):
        super().__init__()
        self.drop_prob = drop_prob

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return drop_path(hidden_states, self.drop_prob, self.training)

    def extra_repr(self) -> str:
        return f"p={self.drop_prob}"


def eager_attention_forward(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float,
    dropout: float = 0.0,
    **kwargs,
) -> tuple[torch.Tensor, torch.Tensor]:
    """softmax(q k^T * scaling) v. Inputs (B, heads, N, head_dim); returns (B, N, heads, head_dim) and the
    attention probabilities (B, heads, N, N)."""
    weights = torch.matmul(query, key.transpose(-1, -2)) * scaling
    if attention_mask is not None:
        weights = weights + attention_mask
    weights = weights.softmax(dim=-1, dtype=torch.float32).to(query.dtype)
    weights = F.dropout(weights, p=dropout, training=module.training)
    return torch.matmul(weights, value).transpose(1, 2), weights


def attention_interface(config, output_attentions: bool) -> Callable:
    """The attention function chosen by `config._attn_implementation` ("sdpa", "eager", ...); eager when attention
    probabilities are requested, since fused kernels do not return them."""
    if output_attentions:
        return eager_attention_forward
    return ALL_ATTENTION_FUNCTIONS.get_interface(config._attn_implementation, eager_attention_forward)


def attend(
    module: nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, output_attentions: bool = False
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Multi-head attention of (B, heads, N, head_dim) queries over (B, heads, M, head_dim) keys / values with the
    implementation of `module.config`, the module's `scaling` and (in training) `attention_dropout`.
    Returns (B, N, heads, head_dim) and the probabilities (B, heads, N, M) when `output_attentions`, else None."""
    attention = attention_interface(module.config, output_attentions)
    output, weights = attention(
        module,
        query,
        key,
        value,
        None,
        scaling=module.scaling,
        dropout=module.attention_dropout if module.training else 0.0,
    )
    return output, (weights if output_attentions else None)


class MultiHeadSelfAttention(nn.Module):
    """Multi-head self-attention with one fused `qkv` projection (rows q, k, v; heads contiguous inside each), as
    timm's ViT, Segmenter and the original SETR store it."""

    def __init__(self, config, hidden_size: int, num_heads: int, qkv_bias: bool = True, dropout: float = 0.0,
                 attention_dropout: float = 0.0):
        super().__init__()
        if hidden_size % num_heads != 0:
            raise ValueError(f"hidden size {hidden_size} is not divisible by the number of heads {num_heads}.")
        self.config = config
        self.num_heads = num_heads
        self.head_dim = hidden_size // num_heads
        self.scaling = self.head_dim**-0.5
        self.attention_dropout = attention_dropout
        self.is_causal = False
        self.qkv = Linear(hidden_size, 3 * hidden_size, bias=qkv_bias)
        self.proj = Linear(hidden_size, hidden_size)
        self.proj_dropout = nn.Dropout(dropout)

    def forward(self, hidden_states: torch.Tensor, output_attentions: bool = False):
        """(B, N, C) -> (B, N, C), and the attention probabilities (B, heads, N, N) when requested (else None)."""
        batch, length, channels = hidden_states.shape
        query, key, value = (
            self.qkv(hidden_states).view(batch, length, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        )
        output, weights = attend(self, query, key, value, output_attentions)
        return self.proj_dropout(self.proj(output.reshape(batch, length, channels))), weights


class FeedForward(nn.Module):
    """Linear -> activation -> dropout -> Linear -> dropout. The activation belongs to `fc1` (an exact GELU is
    applied inside the product at CPU inference, see `hf_segmodels.onednn.Linear`)."""

    def __init__(self, hidden_size: int, intermediate_size: int, hidden_act: str = "gelu", dropout: float = 0.0):
        super().__init__()
        self.fc1 = Linear(hidden_size, intermediate_size, activation=hidden_act)
        self.fc2 = Linear(intermediate_size, hidden_size)
        self.dropout = nn.Dropout(dropout)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        """(B, N, C) -> (B, N, C)."""
        return self.dropout(self.fc2(self.dropout(self.fc1(hidden_states))))


class TransformerLayer(GradientCheckpointingLayer):
    """Pre-norm transformer layer: x + DropPath(MHSA(LN(x))), then x + DropPath(FFN(LN(x)))."""

    def __init__(
        self,
        config,
        hidden_size: int,
        num_heads: int,
        intermediate_size: int,
        layer_norm_eps: float,
        drop_path_rate: float = 0.0,
        dropout: float = 0.0,
        attention_dropout: float = 0.0,
        qkv_bias: bool = True,
        hidden_act: str = "gelu",
    ):
        super().__init__()
        self.layernorm_before = nn.LayerNorm(hidden_size, eps=layer_norm_eps)
        self.attention = MultiHeadSelfAttention(config, hidden_size, num_heads, qkv_bias, dropout, attention_dropout)
        self.layernorm_after = nn.LayerNorm(hidden_size, eps=layer_norm_eps)
        self.mlp = FeedForward(hidden_size, intermediate_size, hidden_act, dropout)
        self.drop_path = DropPath(drop_path_rate)

    def forward(self, hidden_states: torch.Tensor, output_attentions: bool = False):
        """(B, N, C) -> (B, N, C), attention probabilities or None."""
        attention_output, weights = self.attention(self.layernorm_before(hidden_states), output_attentions)
        hidden_states = hidden_states + self.drop_path(attention_output)
        hidden_states = hidden_states + self.drop_path(self.mlp(self.layernorm_after(hidden_states)))
        return hidden_states, weights


def linear_drop_path_rates(max_rate: float, num_layers: int) -> list[float]:
    """Stochastic-depth rates growing linearly from 0 to `max_rate` (as `torch.linspace`, but also under
    `torch.device("meta")`, where tensors have no values)."""
    if num_layers <= 1:
        return [0.0] * num_layers
    return [max_rate * index / (num_layers - 1) for index in range(num_layers)]


def _pair(value) -> tuple[int, int]:
    return (int(value), int(value)) if isinstance(value, (int, float)) else (int(value[0]), int(value[1]))


def resize_position_embeddings(
    position_embeddings: torch.Tensor,
    num_extra_tokens: int,
    old_grid: tuple[int, int],
    new_grid: tuple[int, int],
    mode: str = "bilinear",
) -> torch.Tensor:
    """Resizes the grid part of `position_embeddings` (1, extra + old_h * old_w, C) to `new_grid` with
    `F.interpolate(mode, align_corners=False)` (no antialias); the extra (cls / distillation) positions are kept."""
    extra, grid = position_embeddings[:, :num_extra_tokens], position_embeddings[:, num_extra_tokens:]
    channels = grid.shape[-1]
    grid = grid.reshape(1, old_grid[0], old_grid[1], channels).permute(0, 3, 1, 2)
    grid = F.interpolate(grid, size=new_grid, mode=mode, align_corners=False)
    grid = grid.permute(0, 2, 3, 1).reshape(1, new_grid[0] * new_grid[1], channels)
    return torch.cat([extra, grid], dim=1)


def pad_to_multiple(pixel_values: torch.Tensor, multiple: int) -> torch.Tensor:
    """Zero-pads (B, C, H, W) at the bottom and right up to multiples of `multiple`."""
    if torch.compiler.is_exporting():
        # torch.export (dynamic shapes) cannot reason about a symbolic pad to the multiple; a pad of `multiple - 1`
        # gives the patch embedding (kernel = stride = multiple, which floors) the same ceil(H / multiple) windows.
        return F.pad(pixel_values, (0, multiple - 1, 0, multiple - 1))
    height, width = pixel_values.shape[-2:]
    pad_h, pad_w = (-height) % multiple, (-width) % multiple
    if pad_h or pad_w:
        pixel_values = F.pad(pixel_values, (0, pad_w, 0, pad_h))
    return pixel_values


class ViTEmbeddings(nn.Module):
    """Patch embedding (a patch_size x patch_size conv with stride patch_size), optional cls and distillation tokens
    and learned position embeddings for the `image_size // patch_size` grid."""

    def __init__(self, config):
        super().__init__()
        self.patch_size = config.patch_size
        image_size = _pair(config.image_size)
        self.grid_size = (image_size[0] // config.patch_size, image_size[1] // config.patch_size)
        self.num_extra_tokens = int(config.use_cls_token) + int(config.distilled)
        self.interpolation = config.position_embedding_interpolation
        self.patch_embeddings = nn.Conv2d(
            config.num_channels,
            config.hidden_size,
            kernel_size=config.patch_size,
            stride=config.patch_size,
            bias=config.patch_embeddings_bias,
        )
        self.cls_token = nn.Parameter(torch.zeros(1, 1, config.hidden_size)) if config.use_cls_token else None
        self.distillation_token = nn.Parameter(torch.zeros(1, 1, config.hidden_size)) if config.distilled else None
        num_positions = self.num_extra_tokens + self.grid_size[0] * self.grid_size[1]
        self.position_embeddings = nn.Parameter(torch.zeros(1, num_positions, config.hidden_size))
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, pixel_values: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        """(B, C, H, W) with H, W multiples of the patch size (while exporting: padded by patch_size - 1, which the
        flooring patch conv reads as the same ceil(H / patch) windows) -> tokens (B, extra + h * w, hidden) and
        (h, w)."""
        patches = self.patch_embeddings(pixel_values)
        grid = (patches.shape[-2], patches.shape[-1])
        tokens = patches.flatten(2).transpose(1, 2)
        extra = [t.expand(tokens.shape[0], -1, -1) for t in (self.cls_token, self.distillation_token) if t is not None]
        if extra:
            tokens = torch.cat([*extra, tokens], dim=1)
        position_embeddings = self.position_embeddings
        # As Segmenter and mmsegmentation do: resize only when the token count differs from the training grid's.
        # torch.export (dynamic shapes) would keep the branch taken at the example size as an assertion on the input
        # size, so the resize is always in an exported graph: at the training grid it returns the embeddings
        # unchanged (bilinear / bicubic at scale 1 weigh one source position by exactly 1).
        if torch.compiler.is_exporting() or tokens.shape[1] != position_embeddings.shape[1]:
            position_embeddings = resize_position_embeddings(
                position_embeddings, self.num_extra_tokens, self.grid_size, grid, self.interpolation
            )
        return self.dropout(tokens + position_embeddings.to(tokens.dtype)), grid


@dataclass
class ViTEncoderOutput(ModelOutput):
    """
    last_hidden_state (`torch.FloatTensor` of shape `(B, extra + h * w, hidden_size)`): output of the last layer
        (after the final LayerNorm when the config has one); extra = cls and distillation tokens.
    grid_size (`tuple[int, int]`): the patch grid (h, w) of the zero-padded input.
    layer_outputs (`tuple[torch.FloatTensor]`): the outputs (B, extra + h * w, hidden_size) of the layers named in
        `return_layers` (0-based, before any final norm), in that order.
    """

    last_hidden_state: torch.FloatTensor | None = None
    grid_size: tuple[int, int] | None = None
    layer_outputs: tuple[torch.FloatTensor, ...] | None = None


class ViTEncoder(nn.Module):
    """The plain ViT of Segmenter and SETR: no downsampling beyond the patch embedding, any input size (zero-padded at
    the bottom/right to a multiple of the patch size, position embeddings resized to the grid).

    Config fields (ViTConfig names): hidden_size, num_hidden_layers, num_attention_heads, intermediate_size,
    patch_size, image_size, num_channels, layer_norm_eps, hidden_act, qkv_bias, hidden_dropout_prob,
    attention_probs_dropout_prob, drop_path_rate; plus use_cls_token, distilled, patch_embeddings_bias,
    use_final_layer_norm, position_embedding_interpolation.

    Hidden states and attention probabilities of every layer are recorded by the models' `_can_record_outputs`
    (transformers' output capturing), not collected here.
    """

    def __init__(self, config):
        super().__init__()
        self.config = config
        self.embeddings = ViTEmbeddings(config)
        rates = linear_drop_path_rates(config.drop_path_rate, config.num_hidden_layers)
        self.layers = nn.ModuleList(
            TransformerLayer(
                config,
                config.hidden_size,
                config.num_attention_heads,
                config.intermediate_size,
                config.layer_norm_eps,
                drop_path_rate=rate,
                dropout=config.hidden_dropout_prob,
                attention_dropout=config.attention_probs_dropout_prob,
                qkv_bias=config.qkv_bias,
                hidden_act=config.hidden_act,
            )
            for rate in rates
        )
        self.layernorm = (
            nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps) if config.use_final_layer_norm else None
        )

    @property
    def num_extra_tokens(self) -> int:
        return self.embeddings.num_extra_tokens

    def forward(
        self, pixel_values: torch.Tensor, output_attentions: bool = False, return_layers: tuple[int, ...] = ()
    ) -> ViTEncoderOutput:
        """pixel_values (B, C, H, W) of any size -> `ViTEncoderOutput` over the padded input's patch grid, with the
        outputs of the layers `return_layers` (0-based indices into the layers)."""
        num_layers = len(self.layers)
        if any(not 0 <= index < num_layers for index in return_layers):
            raise ValueError(f"`return_layers` {tuple(return_layers)} must be layer indices in [0, {num_layers}).")
        hidden_states, grid = self.embeddings(pad_to_multiple(pixel_values, self.config.patch_size))
        kept = {}
        for index, layer in enumerate(self.layers):
            hidden_states, _ = layer(hidden_states, output_attentions)
            if index in return_layers:
                kept[index] = hidden_states
        if self.layernorm is not None:
            hidden_states = self.layernorm(hidden_states)
        return ViTEncoderOutput(
            last_hidden_state=hidden_states, grid_size=grid, layer_outputs=tuple(kept[i] for i in return_layers)
        )


def tokens_to_feature_map(tokens: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """(B, h * w, C) patch tokens -> (B, C, h, w)."""
    return tokens.transpose(1, 2).reshape(tokens.shape[0], tokens.shape[2], grid[0], grid[1])


def init_vit_weights(module: nn.Module, std: float) -> None:
    """ViT initialisation of the papers (timm's): trunc-normal(std) Linear/conv weights with zero biases, unit
    LayerNorms, trunc-normal(std) cls / distillation tokens and position embeddings. Uses transformers'
    `initialization` helpers so that weights loaded by `from_pretrained` are not re-initialised."""
    if isinstance(module, (nn.Linear, nn.Conv2d)):
        init.trunc_normal_(module.weight, std=std)
        if module.bias is not None:
            init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        init.ones_(module.weight)
        init.zeros_(module.bias)
    elif isinstance(module, ViTEmbeddings):
        init.trunc_normal_(module.position_embeddings, std=std)
        for token in (module.cls_token, module.distillation_token):
            if token is not None:
                init.trunc_normal_(token, std=std)
