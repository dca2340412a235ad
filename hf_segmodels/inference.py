"""Whole-image, sliding-window and multi-scale + flip inference with the semantics of the original code bases."""

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from .modeling_utils import check_pixel_values


def _pair(value, name: str) -> tuple[int, int]:
    if isinstance(value, int):
        value = (value, value)
    if len(value) != 2 or any(int(v) <= 0 for v in value):
        raise ValueError(f"`{name}` must be a positive int or a (height, width) pair, got {value!r}.")
    return int(value[0]), int(value[1])


def _window_starts(size: int, window: int, stride: int) -> list[int]:
    # Both mmsegmentation's `slide_inference` and Segmenter's `sliding_window` start windows at the multiples of the
    # stride that lie strictly below `size - window`, plus one last window flush with the border.
    last = max(size - window, 0)
    return [start for start in range(0, size, stride) if start < last] + [last]


def _slide(model, pixel_values: torch.Tensor, window: tuple[int, int], stride: tuple[int, int], batch_size: int):
    batch, _, height, width = pixel_values.shape
    window_h, window_w = min(window[0], height), min(window[1], width)
    anchors = [
        (top, left)
        for top in _window_starts(height, window_h, stride[0])
        for left in _window_starts(width, window_w, stride[1])
    ]
    # (num_windows * batch, C, window_h, window_w), window-major so that one model call sees several windows.
    crops = torch.cat([pixel_values[:, :, t : t + window_h, l : l + window_w] for t, l in anchors])
    window_logits = torch.cat(
        [model.full_resolution_logits(crops[i : i + batch_size]) for i in range(0, len(crops), batch_size)]
    ).unflatten(0, (len(anchors), batch))

    summed = window_logits.new_zeros(batch, window_logits.shape[2], height, width)
    count = window_logits.new_zeros(1, 1, height, width)
    for (top, left), logits in zip(anchors, window_logits):
        summed[:, :, top : top + window_h, left : left + window_w] += logits
        count[:, :, top : top + window_h, left : left + window_w] += 1
    return summed / count


def _single_view(model, pixel_values, window, stride, batch_size):
    if window is None:
        return model.full_resolution_logits(pixel_values)
    height, width = pixel_values.shape[-2:]
    if getattr(model, "sliding_window_resizes_small_images", False) and min(height, width) < min(window):
        # Segmenter's `resize`: the shorter side is enlarged to the window size, the aspect ratio kept (truncated).
        short = min(window)
        if height < width:
            size = (short, int(width / height * short))
        else:
            size = (int(height / width * short), short)
        enlarged = F.interpolate(pixel_values, size=size, mode="bilinear", align_corners=False)
        logits = _slide(model, enlarged, window, stride, batch_size)
        return F.interpolate(logits, size=(height, width), mode="bilinear", align_corners=False)
    return _slide(model, pixel_values, window, stride, batch_size)


@torch.no_grad()
def infer_logits(
    model,
    pixel_values: torch.FloatTensor,
    *,
    window: Sequence[int] | int | None = None,
    stride: Sequence[int] | int | None = None,
    scales: Sequence[float] = (1.0,),
    flip: bool = False,
    window_batch_size: int = 8,
) -> torch.FloatTensor:
    """Full-resolution class scores of any of our segmentation models.

    Args:
        model: a `...ForSemanticSegmentation` / `MaskFormerForUniversalSegmentation` of this package (in eval mode).
        pixel_values (`torch.FloatTensor` of shape `(B, 3, H, W)`): already normalised images.
        window / stride: `None` for whole-image inference exactly as the original implementation (e.g. Segmenter
            pads to a multiple of the patch size and crops back). A `(h, w)` window and stride run sliding-window
            inference with the original semantics: windows start at the multiples of the stride below
            `size - window` plus one flush with the border, each goes through the whole-image path, and scores are
            averaged where windows overlap. Windows are run `window_batch_size` at a time.
        scales: test-time scales; the image is resized bilinearly to `int(size * scale + 0.5)`, and the scores are
            resized back to `(H, W)`.
        flip: also run every scale on the horizontally flipped image (scores flipped back).

    Returns:
        `torch.FloatTensor` of shape `(B, num_labels, H, W)`. With one view (one scale, no flip) these are the
        (window-averaged) logits of the original implementation. With several views they are the logarithm of the
        mean of the views' softmax probabilities, which is how mmsegmentation and Segmenter merge augmented views:
        `softmax` of the result gives exactly the original's averaged probabilities and `argmax` its prediction.
    """
    check_pixel_values(pixel_values, pixel_values.shape[1] if pixel_values.dim() == 4 else 3)
    if (window is None) != (stride is None):
        raise ValueError("`window` and `stride` must be given together (sliding window) or both left as None.")
    if window is not None:
        window, stride = _pair(window, "window"), _pair(stride, "stride")
    if window_batch_size < 1:
        raise ValueError(f"`window_batch_size` must be >= 1, got {window_batch_size}.")
    scales = tuple(scales)
    if not scales or any(s <= 0 for s in scales):
        raise ValueError(f"`scales` must be a non-empty sequence of positive ratios, got {scales!r}.")

    height, width = pixel_values.shape[-2:]
    views = [(scale, flipped) for scale in scales for flipped in ((False, True) if flip else (False,))]
    merged = None
    for scale, flipped in views:
        images = pixel_values
        if scale != 1.0:
            size = (int(height * scale + 0.5), int(width * scale + 0.5))
            images = F.interpolate(images, size=size, mode="bilinear", align_corners=False)
        if flipped:
            images = images.flip(-1)
        logits = _single_view(model, images, window, stride, window_batch_size)
        if flipped:
            logits = logits.flip(-1)
        if logits.shape[-2:] != (height, width):
            logits = F.interpolate(logits, size=(height, width), mode="bilinear", align_corners=False)
        if len(views) == 1:
            return logits
        probabilities = logits.float().softmax(dim=1)
        merged = probabilities if merged is None else merged + probabilities
    return (merged / len(views)).log()
