"""Behaviour shared by the four segmentation models: input checks and the full-resolution prediction that
`infer_logits` builds on."""

import torch
import torch.nn.functional as F
from transformers import PreTrainedModel

from .remote_code import RemoteCodeModelMixin


def check_pixel_values(pixel_values: torch.Tensor, num_channels: int = 3) -> None:
    """Raises a `ValueError` when `pixel_values` is not a (batch, num_channels, height, width) float tensor."""
    if not isinstance(pixel_values, torch.Tensor):
        raise ValueError(f"`pixel_values` must be a torch.Tensor, got {type(pixel_values).__name__}.")
    if pixel_values.dim() != 4:
        raise ValueError(
            f"`pixel_values` must have shape (batch_size, {num_channels}, height, width), got "
            f"{tuple(pixel_values.shape)} ({pixel_values.dim()} dimensions). Use the image processor to batch images."
        )
    if pixel_values.shape[1] != num_channels:
        raise ValueError(
            f"`pixel_values` must have {num_channels} channels in dimension 1, got shape {tuple(pixel_values.shape)}. "
            "Convert grayscale/RGBA images to RGB (the image processor does) and use channels-first layout."
        )
    if not pixel_values.is_floating_point():
        raise ValueError(
            f"`pixel_values` must be a floating point tensor of normalised pixels, got dtype {pixel_values.dtype}."
        )


class SegmentationPreTrainedModel(RemoteCodeModelMixin, PreTrainedModel):
    """Base of the four architectures' `...PreTrainedModel` classes: image input, transformers' attention backends
    (`attn_implementation="sdpa"`, "eager", ...), gradient checkpointing and remote-code saving."""

    main_input_name = "pixel_values"
    input_modalities = ("image",)
    supports_gradient_checkpointing = True
    _supports_sdpa = True
    _supports_flash_attn = True
    _supports_flex_attn = True
    _supports_attention_backend = True

    def _output_flags(self, output_hidden_states, output_attentions, return_dict) -> tuple[bool, bool, bool]:
        """The forward's `output_hidden_states`, `output_attentions`, `return_dict`, each defaulting to the config."""
        config = self.config
        return (
            output_hidden_states if output_hidden_states is not None else config.output_hidden_states,
            output_attentions if output_attentions is not None else config.output_attentions,
            return_dict if return_dict is not None else config.return_dict,
        )


class SegmentationModelMixin:
    """Mixed into every `...ForSemanticSegmentation` model.

    `full_resolution_logits` is the whole-image prediction of the original implementation at the input's size; the
    sliding-window, multi-scale and flip inference of `hf_segmodels.infer_logits` is built on it.
    """

    # The original Segmenter enlarges an image whose shorter side is below the sliding window before sliding over it;
    # mmsegmentation-based code runs a window clipped to the image instead.
    sliding_window_resizes_small_images: bool = False

    def full_resolution_logits(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Class scores (B, num_labels, H, W) for `pixel_values` (B, 3, H, W): the model's logits resized
        bilinearly (`align_corners=False`) to the input size, as mmsegmentation's `encode_decode` does."""
        logits = self(pixel_values=pixel_values).logits
        if logits.shape[-2:] == pixel_values.shape[-2:]:
            return logits
        return F.interpolate(logits, size=pixel_values.shape[-2:], mode="bilinear", align_corners=False)
