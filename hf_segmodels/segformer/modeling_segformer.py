"""SegFormer (arXiv 2105.15203): the hierarchical Mix Transformer (MiT) encoder and the lightweight all-MLP decoder.

Memory layout: the encoder works on tokens (B, h * w, C), i.e. channels-last feature maps. Its feature maps are
returned as (B, C, h, w) *views* of those tokens (channels-last strides), so moving between the token and the map view
never copies; the convolutions (patch embeddings, spatial reduction, depthwise conv) run channels-last as well.

Decoder speed: the paper's decoder projects every stage to `decoder_hidden_size`, upsamples all four to 1/4 resolution,
concatenates them (4 x decoder_hidden_size channels at 1/4 resolution) and fuses them with a 1x1 conv + BatchNorm +
ReLU. A 1x1 conv and bilinear upsampling commute (both are linear, the upsampling acts per channel, and its weights
sum to one so constants pass through), so in eval mode `SegformerDecodeHead` folds the fuse conv (and the eval-mode
BatchNorms) into per-stage matrices applied at each stage's own resolution and sums the upsampled results: the
4 x wide concatenation is never built. The merged matrices are computed from the stored parameters when needed and
cached while the parameters are unchanged; `save_pretrained` writes the original, unmerged parameters. Without
autograd, the sum, ReLU and classifier run one band of rows at a time, so that each band stays in cache
(`SegformerDecodeHead._banded_sum_and_classify`; the same numbers up to float rounding). The spatial-reduction
convolutions (kernel = stride) run as one matrix product over the patches in inference (`hf_segmodels.patch_gemm`).
"""

import functools
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers import initialization as init
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import SemanticSegmenterOutput
from transformers.utils import ModelOutput
from transformers.utils.generic import can_return_tuple
from transformers.utils.output_capturing import OutputRecorder, capture_outputs

from ..kernels import active as kernel_active, capturing
from ..layers import DropPath, attend
from ..losses import semantic_cross_entropy
from ..modeling_utils import SegmentationModelMixin, SegmentationPreTrainedModel, check_pixel_values
from ..onednn import Conv2d, Linear
from ..patch_gemm import PatchConv2d
from .configuration_segformer import SegformerConfig


def tokens_to_map(tokens: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(B, h * w, C) tokens -> (B, C, h, w) view with channels-last strides (no copy)."""
    return tokens.unflatten(1, size).permute(0, 3, 1, 2)


def map_to_tokens(feature_map: torch.Tensor) -> torch.Tensor:
    """(B, C, h, w) -> (B, h * w, C); a view when the map is channels-last."""
    return feature_map.permute(0, 2, 3, 1).flatten(1, 2)


class SegformerOverlapPatchEmbeddings(nn.Module):
    """Overlapped patch merging: a conv with kernel `patch_size`, stride `stride` and padding `patch_size // 2`
    (7/4/3 for stage 1, 3/2/1 afterwards), then LayerNorm."""

    def __init__(self, config: SegformerConfig, stage: int):
        super().__init__()
        in_channels = config.num_channels if stage == 0 else config.hidden_sizes[stage - 1]
        patch_size = config.patch_sizes[stage]
        self.proj = nn.Conv2d(
            in_channels,
            config.hidden_sizes[stage],
            kernel_size=patch_size,
            stride=config.strides[stage],
            padding=patch_size // 2,
        )
        self.norm = nn.LayerNorm(config.hidden_sizes[stage], eps=config.embedding_layer_norm_eps)

    def forward(self, feature_map: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        """(B, C_in, H, W) -> tokens (B, h * w, C) and (h, w)."""
        embeddings = self.proj(feature_map)
        size = (embeddings.shape[-2], embeddings.shape[-1])
        return self.norm(map_to_tokens(embeddings)), size


class EfficientSelfAttention(nn.Module):
    """Multi-head self-attention whose keys and values come from a spatially reduced sequence: the token map is
    reduced by a conv with kernel = stride = `sr_ratio` (floor division of odd sizes) and a LayerNorm, which cuts the
    cost from O(N^2) to O(N^2 / R^2). Queries come from all N tokens. Parameters as the original: `q`, `kv` (rows
    keys then values), `proj`, `sr`, `norm`."""

    def __init__(self, config: SegformerConfig, stage: int):
        super().__init__()
        hidden_size = config.hidden_sizes[stage]
        self.config = config
        self.num_heads = config.num_attention_heads[stage]
        self.head_dim = hidden_size // self.num_heads
        self.scaling = self.head_dim**-0.5
        self.is_causal = False
        self.attention_dropout = config.attention_probs_dropout_prob
        self.q = Linear(hidden_size, hidden_size, bias=config.qkv_bias)
        self.kv = Linear(hidden_size, 2 * hidden_size, bias=config.qkv_bias)
        self.proj = Linear(hidden_size, hidden_size)
        self.proj_dropout = nn.Dropout(config.hidden_dropout_prob)
        self.sr_ratio = config.sr_ratios[stage]
        if self.sr_ratio > 1:
            self.sr = PatchConv2d(hidden_size, hidden_size, kernel_size=self.sr_ratio, stride=self.sr_ratio)
            self.norm = nn.LayerNorm(hidden_size, eps=config.embedding_layer_norm_eps)

    def forward(
        self, hidden_states: torch.Tensor, size: tuple[int, int], output_attentions: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(B, N, C) tokens of an (h, w) map -> (B, N, C), and the attention probabilities (B, heads, N, N / R^2)
        when requested (else None)."""
        batch, length, channels = hidden_states.shape
        query = self.q(hidden_states).view(batch, length, self.num_heads, self.head_dim).transpose(1, 2)
        reduced = hidden_states
        if self.sr_ratio > 1:
            reduced = self.norm(map_to_tokens(self.sr(tokens_to_map(hidden_states, size))))
        key, value = self.kv(reduced).view(batch, -1, 2, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        output, weights = attend(self, query, key, value, output_attentions)
        return self.proj_dropout(self.proj(output.reshape(batch, length, channels))), weights


class MixFFN(nn.Module):
    """Mix-FFN: Linear expansion, 3x3 depthwise conv (with bias; it supplies the positional information, so there are
    no position embeddings), activation, Linear projection."""

    def __init__(self, config: SegformerConfig, stage: int):
        super().__init__()
        hidden_size = config.hidden_sizes[stage]
        intermediate_size = int(hidden_size * config.mlp_ratios[stage])
        self.fc1 = Linear(hidden_size, intermediate_size)
        # the activation follows the depthwise conv inside the conv module (fused on the fastest path)
        self.dwconv = Conv2d(intermediate_size, intermediate_size, 3, padding=1, groups=intermediate_size,
                             activation=config.hidden_act)  # fmt: skip
        self.fc2 = Linear(intermediate_size, hidden_size)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, hidden_states: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        """(B, N, C) tokens of an (h, w) map -> (B, N, C)."""
        hidden_states = map_to_tokens(self.dwconv(tokens_to_map(self.fc1(hidden_states), size)))
        return self.dropout(self.fc2(self.dropout(hidden_states)))


class SegformerLayer(GradientCheckpointingLayer):
    """Pre-norm block: x + DropPath(EfficientSelfAttention(LN(x))), then x + DropPath(MixFFN(LN(x)))."""

    def __init__(self, config: SegformerConfig, stage: int, drop_path_rate: float):
        super().__init__()
        hidden_size = config.hidden_sizes[stage]
        self.norm1 = nn.LayerNorm(hidden_size, eps=config.layer_norm_eps)
        self.attn = EfficientSelfAttention(config, stage)
        self.drop_path = DropPath(drop_path_rate)
        self.norm2 = nn.LayerNorm(hidden_size, eps=config.layer_norm_eps)
        self.mlp = MixFFN(config, stage)

    def forward(
        self, hidden_states: torch.Tensor, size: tuple[int, int], output_attentions: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        attention_output, weights = self.attn(self.norm1(hidden_states), size, output_attentions)
        hidden_states = hidden_states + self.drop_path(attention_output)
        hidden_states = hidden_states + self.drop_path(self.mlp(self.norm2(hidden_states), size))
        return hidden_states, weights


class SegformerStage(nn.Module):
    """One encoder stage: overlapped patch merging, `depths[stage]` blocks, LayerNorm."""

    def __init__(self, config: SegformerConfig, stage: int, drop_path_rates: list[float]):
        super().__init__()
        self.patch_embed = SegformerOverlapPatchEmbeddings(config, stage)
        self.blocks = nn.ModuleList(SegformerLayer(config, stage, rate) for rate in drop_path_rates)
        self.norm = nn.LayerNorm(config.hidden_sizes[stage], eps=config.layer_norm_eps)

    def forward(self, feature_map: torch.Tensor, output_attentions: bool = False) -> torch.Tensor:
        """(B, C_in, H, W) -> (B, C, h, w) channels-last feature map."""
        hidden_states, size = self.patch_embed(feature_map)
        for block in self.blocks:
            hidden_states, _ = block(hidden_states, size, output_attentions)
        return tokens_to_map(self.norm(hidden_states), size)


@dataclass
class SegformerModelOutput(ModelOutput):
    """
    last_hidden_state (`torch.FloatTensor` of shape `(B, C_4, H / 32, W / 32)`): the last stage's feature map.
    feature_maps (`tuple[torch.FloatTensor]`): the four stage outputs (after the stage LayerNorms), `(B, C_i, h_i, w_i)`
        at strides 4, 8, 16, 32; always returned (this is what a decoder or a backbone user needs).
    hidden_states (`tuple[torch.FloatTensor]`, *optional*): the same four maps, when `output_hidden_states=True`.
    attentions (`tuple[torch.FloatTensor]`, *optional*): attention probabilities `(B, heads, N, N / sr_ratio^2)` of
        every block, when `output_attentions=True`.

    The maps are channels-last views of the encoder's token tensors; call `.contiguous()` if a consumer needs the
    default memory format.
    """

    last_hidden_state: torch.FloatTensor | None = None
    feature_maps: tuple[torch.FloatTensor, ...] | None = None
    hidden_states: tuple[torch.FloatTensor, ...] | None = None
    attentions: tuple[torch.FloatTensor, ...] | None = None


class SegformerPreTrainedModel(SegmentationPreTrainedModel):
    config: SegformerConfig
    base_model_prefix = "segformer"
    _no_split_modules = ["SegformerLayer"]
    _can_record_outputs = {
        # the stage outputs; stage 0's input is raw pixel values, not an embedding
        "hidden_states": OutputRecorder(SegformerStage, capture_initial_hidden_state=False),
        "attentions": OutputRecorder(EfficientSelfAttention, index=1),
    }

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        # As the original MiT: trunc-normal(0.02) Linear weights with zero biases, unit LayerNorms, convs normal with
        # std sqrt(2 / fan_out) (fan_out = k * k * out_channels / groups) and zero biases. Decoder as mmseg's
        # ConvModule / BaseDecodeHead: Kaiming-normal (fan_out, ReLU) fuse conv, unit BatchNorms, classifier N(0, 0.01).
        if isinstance(module, nn.Linear):
            init.trunc_normal_(module.weight, std=self.config.initializer_range)
            if module.bias is not None:
                init.zeros_(module.bias)
        elif isinstance(module, nn.Conv2d):
            fan_out = module.kernel_size[0] * module.kernel_size[1] * module.out_channels // module.groups
            init.normal_(module.weight, std=(2.0 / fan_out) ** 0.5)
            if module.bias is not None:
                init.zeros_(module.bias)
        elif isinstance(module, (nn.LayerNorm, nn.BatchNorm2d)):
            init.ones_(module.weight)
            init.zeros_(module.bias)
            if isinstance(module, nn.BatchNorm2d):
                init.zeros_(module.running_mean)
                init.ones_(module.running_var)
                init.zeros_(module.num_batches_tracked)
        if isinstance(module, SegformerDecodeHead):
            init.kaiming_normal_(module.linear_fuse.weight, mode="fan_out", nonlinearity="relu")
            init.normal_(module.classifier.weight, std=0.01)
            init.zeros_(module.classifier.bias)


class SegformerModel(SegformerPreTrainedModel):
    """The Mix Transformer (MiT) encoder: four stages of overlapped patch merging + efficient-attention / Mix-FFN
    blocks, returning feature maps at strides 4, 8, 16 and 32 (usable as a backbone: `outputs.feature_maps`,
    channels `config.hidden_sizes`). Any input size works; there are no position embeddings."""

    def __init__(self, config: SegformerConfig):
        super().__init__(config)
        # Stochastic depth grows linearly from 0 to drop_path_rate over all blocks (torch.linspace in the original).
        total = sum(config.depths)
        rates = [config.drop_path_rate * index / max(total - 1, 1) for index in range(total)]
        stages, start = [], 0
        for stage, depth in enumerate(config.depths):
            stages.append(SegformerStage(config, stage, rates[start : start + depth]))
            start += depth
        self.stages = nn.ModuleList(stages)
        self.post_init()

    def _too_small(self, side: int) -> tuple[int, int, int] | None:
        """(stage, map side, sr_ratio) of the first stage whose map is smaller than its reduction conv, or None."""
        config = self.config
        for stage in range(config.num_encoder_blocks):
            kernel, stride = config.patch_sizes[stage], config.strides[stage]
            side = (side + 2 * (kernel // 2) - kernel) // stride + 1
            if side < config.sr_ratios[stage]:
                return stage, side, config.sr_ratios[stage]
        return None

    def _check_input_size(self, size: tuple[int, int]) -> None:
        # The spatial-reduction conv needs a map at least `sr_ratio` tokens wide; the original fails cryptically.
        for side in size:
            problem = self._too_small(side)
            if problem is not None:
                minimum = next(n for n in range(side + 1, 1 << 16) if self._too_small(n) is None)
                stage, map_side, ratio = problem
                raise ValueError(
                    f"Input of size {tuple(size)} is too small for SegFormer: in stage {stage + 1} a side of {side} "
                    f"pixels becomes {map_side} tokens, fewer than the spatial-reduction ratio {ratio}. Resize or pad "
                    f"the image to at least {minimum} pixels per side."
                )

    @capture_outputs(tie_last_hidden_states=False)
    def forward(self, pixel_values: torch.FloatTensor, **kwargs) -> SegformerModelOutput | tuple:
        """pixel_values (B, num_channels, H, W) of any size large enough for the spatial reductions (29 pixels per
        side for the released configurations) -> `SegformerModelOutput`. Keywords `output_hidden_states`,
        `output_attentions`, `return_dict` as in transformers."""
        pixel_values = check_pixel_values(pixel_values, self.config.num_channels, self.dtype)
        self._check_input_size(pixel_values.shape[-2:])
        output_attentions = bool(kwargs.get("output_attentions", self.config.output_attentions))
        # Channels-last from the start: the first patch embedding is then faster on CPU and its output already
        # has the token layout (the later stages receive channels-last views anyway).
        feature_map = pixel_values.contiguous(memory_format=torch.channels_last)
        feature_maps = ()
        for stage in self.stages:
            feature_map = stage(feature_map, output_attentions)
            feature_maps += (feature_map,)
        return SegformerModelOutput(last_hidden_state=feature_map, feature_maps=feature_maps)


class SegformerMLP(nn.Module):
    """The decoder's per-stage projection to `decoder_hidden_size`: a Linear with bias (original), or a 1x1 conv
    without bias + BatchNorm + ReLU (mmsegmentation 1.x), stored as a bias-free Linear and a BatchNorm."""

    def __init__(self, config: SegformerConfig, in_channels: int):
        super().__init__()
        self.with_norm = config.decoder_type == "mmseg"
        self.proj = nn.Linear(in_channels, config.decoder_hidden_size, bias=not self.with_norm)
        if self.with_norm:
            self.batch_norm = nn.BatchNorm2d(config.decoder_hidden_size)

    def forward(self, feature_map: torch.Tensor) -> torch.Tensor:
        """(B, C_i, h, w) -> (B, decoder_hidden_size, h, w) (channels-last)."""
        projected = tokens_to_map(self.proj(map_to_tokens(feature_map)), feature_map.shape[-2:])
        if self.with_norm:
            projected = F.relu(self.batch_norm(projected))
        return projected


def _needs_resize(stage: int, stage_map: torch.Tensor, size: torch.Size) -> bool:
    """Whether the decoder resizes a stage's map to the first stage's `size`. Under torch.export (dynamic shapes)
    every later stage is resized: the size comparison would become an assertion on the input size (resizing to the
    same size returns the map unchanged)."""
    return (stage > 0 and torch.compiler.is_exporting()) or stage_map.shape[-2:] != size


def _batch_norm_scale_shift(batch_norm: nn.BatchNorm2d) -> tuple[torch.Tensor, torch.Tensor]:
    """The eval-mode BatchNorm as y = x * scale + shift (in float32)."""
    scale = batch_norm.weight.float() * torch.rsqrt(batch_norm.running_var.float() + batch_norm.eps)
    return scale, batch_norm.bias.float() - batch_norm.running_mean.float() * scale


# Per stage of the merged decoder: (weight, bias, second weight). The original decoder needs one matmul per stage
# (bias and second weight None); mmsegmentation's needs Linear + ReLU, then the stage's block of the fuse conv.
StageWeights = tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]


class SegformerDecodeHead(nn.Module):
    """The all-MLP decoder: per-stage projections, bilinear upsampling to 1/4 resolution, concatenation, a 1x1 fuse
    conv (no bias) + BatchNorm + ReLU, dropout and a 1x1 classifier. Parameter names as transformers' port:
    `linear_c.{i}`, `linear_fuse`, `batch_norm`, `classifier`.

    Training runs the paper's formulation literally (`forward_concat`). Eval mode runs the algebraically identical
    `forward_merged` (see the module docstring): per stage, one matrix folding projection (original decoder), fuse
    conv block and fuse BatchNorm, applied before the upsampling; the upsampled results are summed.
    """

    def __init__(self, config: SegformerConfig):
        super().__init__()
        self.decoder_type = config.decoder_type
        self.num_stages = config.num_encoder_blocks
        width = config.decoder_hidden_size
        self.linear_c = nn.ModuleList(SegformerMLP(config, channels) for channels in config.hidden_sizes)
        self.linear_fuse = nn.Conv2d(width * self.num_stages, width, kernel_size=1, bias=False)
        self.batch_norm = nn.BatchNorm2d(width)
        self.activation = nn.ReLU()
        self.dropout = nn.Dropout(config.classifier_dropout_prob)
        self.classifier = nn.Conv2d(width, config.num_labels, kernel_size=1)
        self._merged_cache: tuple[tuple, list[StageWeights], torch.Tensor] | None = None

    def _concat_position(self, stage: int) -> int:
        # The original concatenates stages 4, 3, 2, 1; mmsegmentation 1.x concatenates 1, 2, 3, 4.
        return self.num_stages - 1 - stage if self.decoder_type == "original" else stage

    def forward(self, feature_maps: tuple[torch.Tensor, ...]) -> torch.Tensor:
        """Four (B, C_i, h_i, w_i) maps -> logits (B, num_labels, h_1, w_1) at the first map's (1/4) resolution."""
        if self.training or not kernel_active("merged_decoder"):
            return self.forward_concat(feature_maps)
        return self.forward_merged(feature_maps)

    def forward_concat(self, feature_maps: tuple[torch.Tensor, ...]) -> torch.Tensor:
        """The decoder exactly as the paper writes it (used for training)."""
        size = feature_maps[0].shape[-2:]
        projected = [None] * self.num_stages
        for stage, (feature_map, mlp) in enumerate(zip(feature_maps, self.linear_c)):
            stage_map = mlp(feature_map)
            if _needs_resize(stage, stage_map, size):
                stage_map = F.interpolate(stage_map, size=size, mode="bilinear", align_corners=False)
            projected[self._concat_position(stage)] = stage_map
        hidden_states = self.activation(self.batch_norm(self.linear_fuse(torch.cat(projected, dim=1))))
        return self.classifier(self.dropout(hidden_states))

    def _parameter_state(self) -> tuple | None:
        """Identifies the current values of every tensor the merged weights depend on (storage, version counter,
        dtype, device); None when that cannot be tracked (inference tensors have no version counter)."""
        try:
            return tuple(
                (tensor.data_ptr(), tensor._version, tensor.dtype, tensor.device)
                for module in (*self.linear_c, self.linear_fuse, self.batch_norm)
                for tensor in (*module.parameters(), *module.buffers())
            )
        except RuntimeError:
            return None

    def _compute_merged(self) -> tuple[list[StageWeights], torch.Tensor]:
        # Folded in float32 and cast back, so that half-precision models do not round the products twice.
        dtype = self.linear_fuse.weight.dtype
        width = self.linear_fuse.out_channels
        fuse = self.linear_fuse.weight.float().flatten(1)  # (width, stages * width)
        scale, shift = _batch_norm_scale_shift(self.batch_norm)
        stage_weights, bias = [], shift
        for stage, mlp in enumerate(self.linear_c):
            position = self._concat_position(stage)
            block = fuse[:, position * width : (position + 1) * width] * scale[:, None]
            if mlp.with_norm:
                # The stage's own conv + BatchNorm becomes one Linear (ReLU follows it); the fuse block is then
                # applied at the stage's resolution.
                stage_scale, stage_shift = _batch_norm_scale_shift(mlp.batch_norm)
                weight = mlp.proj.weight.float() * stage_scale[:, None]
                stage_weights.append((weight.to(dtype), stage_shift.to(dtype), block.to(dtype)))
            else:
                stage_weights.append(((block @ mlp.proj.weight.float()).to(dtype), None, None))
                bias = bias + block @ mlp.proj.bias.float()
        return stage_weights, bias.to(dtype)

    def merged_parameters(self) -> tuple[list[StageWeights], torch.Tensor]:
        """The per-stage merged weights and the common bias of `forward_merged`, cached while the parameters are
        unchanged and gradients are off (with gradients on they are recomputed, so gradients reach the parameters;
        under torch.compile too)."""
        # While a graph is captured the folding is traced into it (the cache check would break torch.compile; an
        # exporter records the folding of the weights, which runtimes fold into constants).
        if torch.is_grad_enabled() or capturing():
            return self._compute_merged()
        state = self._parameter_state()
        if state is None:
            return self._compute_merged()
        if self._merged_cache is None or self._merged_cache[0] != state:
            self._merged_cache = (state, *self._compute_merged())
        return self._merged_cache[1:]

    def forward_merged(self, feature_maps: tuple[torch.Tensor, ...]) -> torch.Tensor:
        """Eval-mode decoder with the fuse conv and BatchNorms folded in; same result as `forward_concat` in eval
        mode up to float rounding. Everything up to the classifier runs on channels-last (token) layouts."""
        if self.batch_norm.training:
            raise RuntimeError("The merged SegFormer decoder folds BatchNorm statistics; it only runs in eval mode.")
        stage_weights, bias = self.merged_parameters()
        size = feature_maps[0].shape[-2:]
        # The common bias rides on the last stage's matmul, the smallest (1/32 resolution): bilinear upsampling
        # carries a constant through unchanged (its weights sum to one), and the first stage's large product then
        # needs no bias (PyTorch's addmm writes a broadcast bias over its output before the product).
        last = len(stage_weights) - 1
        projected = [
            tokens_to_map(_project(map_to_tokens(feature_map), weights, bias if stage == last else None),
                          feature_map.shape[-2:])
            for stage, (feature_map, weights) in enumerate(zip(feature_maps, stage_weights))
            if stage > 0
        ]  # fmt: skip
        # (not under autocast: the classifier writes into float32 logits band by band, autocast would compute it in
        # lower precision)
        banded = not torch.is_grad_enabled() and not capturing() and not torch.is_autocast_enabled(bias.device.type)
        if banded:
            return self._banded_sum_and_classify(feature_maps[0], stage_weights[0], projected)
        fused = tokens_to_map(_project(map_to_tokens(feature_maps[0]), stage_weights[0], None), size)
        # Without autograd, every upsampled map is written into one reused buffer: fresh multi-megabyte allocations
        # cost page faults that take as long as the upsampling itself (a compiler plans its own buffers).
        reuse_buffer = not torch.is_grad_enabled() and not capturing()
        buffer = None
        for stage, stage_map in enumerate(projected, start=1):
            if reuse_buffer and stage_map.shape[-2:] != size:
                buffer = torch.empty_like(fused) if buffer is None else buffer
                stage_map = torch.ops.aten.upsample_bilinear2d.out(stage_map, list(size), False, None, None, out=buffer)
            elif _needs_resize(stage, stage_map, size):
                stage_map = F.interpolate(stage_map, size=size, mode="bilinear", align_corners=False)
            fused = fused.add_(stage_map)
        # `fused` is the first stage's fresh (B, h * w, width) matmul output seen as a map, so this is a view.
        hidden_states = F.relu_(map_to_tokens(fused))
        # Logits straight into the (B, num_labels, h * w) layout: one batched matmul, no transposing copy.
        classifier = self.classifier.weight.flatten(1)
        logits = torch.baddbmm(
            self.classifier.bias[None, :, None],
            classifier.expand(hidden_states.shape[0], -1, -1),
            hidden_states.transpose(1, 2),
        )
        return logits.view(-1, classifier.shape[0], *size)

    # Rows of the 1/4-resolution sum per band: 8, or fewer where 8 rows would exceed BAND_BYTES (3 MB: 8 rows of 128
    # tokens x 768 channels, B1-B5 at 512x512), so that the band stays in a core's share of the last-level cache
    # between the additions, the ReLU and the classifier (measured best at 512x512 for B0 and B2 alike).
    BAND_ROWS = 8
    BAND_BYTES = 3 << 20

    def _banded_sum_and_classify(
        self, first_map: torch.Tensor, first_weights: StageWeights, projected: list[torch.Tensor]
    ) -> torch.Tensor:
        """Inference without autograd: the sum of the first stage's projection and the upsampled later stages, the
        ReLU and the classifier, one band of rows of the 1/4-resolution map at a time. (B, C_1, h, w) first map and
        (B, width, h_i, w_i) projected later stages -> logits (B, num_labels, h, w).

        Instead of multi-megabyte maps written to memory and read back by every addition, each band's sum stays in
        cache until the classifier has read it. The bilinear upsampling is separable: each later stage's rows that
        the band needs are resized in width only (`F.interpolate`, PyTorch's weights), and the interpolation in
        height, two rows per output row with PyTorch's sampling positions and weights (`_height_weights`), is one
        small matrix product that adds into the band (so there is no upsampled copy to add). Any sizes: the
        positions are those of upsampling the whole map, and the numbers the whole-map path's up to float rounding
        (~1e-7 relative)."""
        batch, _, height, width = first_map.shape
        first_tokens = map_to_tokens(first_map)
        classifier, classifier_bias = self.classifier.weight.flatten(1), self.classifier.bias
        logits = first_tokens.new_empty(batch, classifier.shape[0], height * width)
        channels = classifier.shape[1]
        band_rows = max(1, min(self.BAND_ROWS, self.BAND_BYTES // (width * channels * first_tokens.element_size())))
        for top in range(0, height, band_rows):
            bottom = min(top + band_rows, height)
            tokens = _project(first_tokens[:, top * width : bottom * width], first_weights, None)
            rows = tokens.view(batch, bottom - top, width * channels)
            for stage_map in projected:
                size = stage_map.shape[-2]
                first_row, end_row, weights = _height_weights(top, bottom, size, height)
                resized = F.interpolate(stage_map[:, :, first_row:end_row], size=(end_row - first_row, width),
                                        mode="bilinear", align_corners=False)  # fmt: skip
                resized = map_to_tokens(resized).reshape(batch, end_row - first_row, width * channels)
                weights = weights.to(device=rows.device, dtype=rows.dtype)
                rows.baddbmm_(weights.expand(batch, -1, -1), resized)
            tokens.relu_()
            for index in range(batch):  # (written into the logits' columns of the band directly)
                torch.addmm(classifier_bias[:, None], classifier, tokens[index].t(),
                            out=logits[index, :, top * width : bottom * width])  # fmt: skip
        return logits.view(batch, classifier.shape[0], height, width)


@functools.lru_cache(maxsize=4096)
def _height_weights(top: int, bottom: int, size: int, height: int) -> tuple[int, int, torch.Tensor]:
    """Bilinear upsampling in height (align_corners=False) of a map with `size` rows to `height` rows, for the output
    rows [top, bottom): the input rows it reads, [first_row, end_row), and the (bottom - top, end_row - first_row)
    float32 matrix of its weights, computed as PyTorch's upsampling computes them (source position
    `scale * (row + 0.5) - 0.5` with `scale = size / height` in float32, clamped at 0; the two neighbouring rows,
    the last one repeated at the edge)."""
    scale = torch.tensor(size, dtype=torch.float32) / height
    position = (scale * (torch.arange(top, bottom, dtype=torch.float32) + 0.5) - 0.5).clamp_(min=0)
    lower = position.long()  # (floor: positions are not negative)
    upper = (lower + 1).clamp_(max=size - 1)
    upper_weight = (position - lower).clamp_(0, 1)
    first_row, end_row = int(lower[0]), int(upper[-1]) + 1
    weights = torch.zeros(bottom - top, end_row - first_row)
    output_rows = torch.arange(bottom - top)
    weights.index_put_((output_rows, lower - first_row), 1 - upper_weight, accumulate=True)
    weights.index_put_((output_rows, upper - first_row), upper_weight, accumulate=True)
    return first_row, end_row, weights


def _project(tokens: torch.Tensor, weights: StageWeights, common_bias: torch.Tensor | None) -> torch.Tensor:
    """One stage of the merged decoder on (B, n, C_i) tokens -> (B, n, width)."""
    weight, stage_bias, block = weights
    if block is None:
        return F.linear(tokens, weight, common_bias)
    return F.linear(F.relu(F.linear(tokens, weight, stage_bias)), block, common_bias)


class SegformerForSemanticSegmentation(SegmentationModelMixin, SegformerPreTrainedModel):
    """SegFormer for semantic segmentation: the MiT encoder and the all-MLP decoder.

    Input: `pixel_values` (B, 3, H, W) of any size. Output: `logits` (B, num_labels, ceil(H / 4), ceil(W / 4)) at the
    1/4-resolution of the first stage; `full_resolution_logits` / `hf_segmodels.infer_logits` resize them bilinearly
    to (H, W) as the original `encode_decode` does.
    """

    def __init__(self, config: SegformerConfig):
        super().__init__(config)
        self.segformer = SegformerModel(config)
        self.decode_head = SegformerDecodeHead(config)
        self.post_init()

    @can_return_tuple
    def forward(
        self, pixel_values: torch.FloatTensor, labels: torch.LongTensor | None = None, **kwargs
    ) -> SemanticSegmenterOutput | tuple:
        r"""
        pixel_values (`torch.FloatTensor` of shape `(B, 3, H, W)`): normalised images of any size.
        labels (`torch.LongTensor` of shape `(B, H', W')`, *optional*): class ids in `[0, num_labels)`, 255 ignored.
            The loss is the per-pixel cross-entropy of the logits upsampled bilinearly to the label size.
        output_hidden_states, output_attentions, return_dict (keywords): as in transformers.

        Returns `SemanticSegmenterOutput` with `loss`, `logits` (B, num_labels, H / 4, W / 4), `hidden_states` (the four
        stage feature maps (B, C_i, h_i, w_i)) and `attentions` (every block, (B, heads, N, N / sr_ratio^2)).
        """
        encoder_outputs = self.segformer(pixel_values, **{**kwargs, "return_dict": True})  # (checks pixel_values)
        logits = self.decode_head(encoder_outputs.feature_maps)
        loss = None
        if labels is not None:
            loss = semantic_cross_entropy(logits, labels, self.config.semantic_loss_ignore_index)
        return SemanticSegmenterOutput(
            loss=loss, logits=logits, hidden_states=encoder_outputs.hidden_states, attentions=encoder_outputs.attentions
        )


__all__ = [
    "SegformerDecodeHead",
    "SegformerForSemanticSegmentation",
    "SegformerModel",
    "SegformerModelOutput",
    "SegformerPreTrainedModel",
]
