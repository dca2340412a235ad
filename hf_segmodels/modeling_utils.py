"""Behaviour shared by the four segmentation models: input checks and the full-resolution prediction that
`infer_logits` builds on."""

import torch
import torch.nn.functional as F
from transformers import PreTrainedModel

from .kernels import capturing
from .remote_code import RemoteCodeModelMixin


def check_pixel_values(
    pixel_values: torch.Tensor, num_channels: int = 3, dtype: torch.dtype | None = None
) -> torch.Tensor:
    """Checks that `pixel_values` is a (batch, num_channels, height, width) float tensor of finite values with at
    least one image of at least one pixel, and returns it cast to `dtype` (the model's parameter dtype), as
    transformers' pipelines cast inputs. Raises a `ValueError` that names the problem otherwise.

    The finiteness check is one sum over the values (its cost against a forward: benchmarks/bench_input_checks.py);
    it is skipped while a graph is captured (torch.compile / export / tracing)."""
    if not isinstance(pixel_values, torch.Tensor):
        hint = " Convert it with torch.from_numpy(...)." if type(pixel_values).__module__ == "numpy" else ""
        raise ValueError(f"`pixel_values` must be a torch.Tensor, got {type(pixel_values).__name__}.{hint}")
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
    if not capturing():  # data-dependent checks step aside while a graph is captured
        if pixel_values.shape[0] == 0:
            raise ValueError("`pixel_values` holds no image (batch size 0).")
        if pixel_values.shape[2] == 0 or pixel_values.shape[3] == 0:
            raise ValueError(f"`pixel_values` has an empty image size {tuple(pixel_values.shape[2:])}.")
        # One sum is much cheaper than an element-wise isfinite and is non-finite whenever any value is; only then
        # (or on an overflow of the sum) are the values checked one by one.
        total = pixel_values.sum(dtype=torch.float32 if pixel_values.element_size() < 4 else None)
        bad = 0 if bool(torch.isfinite(total)) else int((~torch.isfinite(pixel_values)).sum())
        if bad:
            raise ValueError(
                f"`pixel_values` holds {bad} non-finite value(s) (NaN or Inf); every output would be NaN. Check the "
                "image and the processor's normalisation (image_std of 0?)."
            )
    if dtype is not None and pixel_values.dtype != dtype:
        pixel_values = pixel_values.to(dtype)
    return pixel_values


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
