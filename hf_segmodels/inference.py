"""Whole-image, sliding-window and multi-scale + flip inference with the semantics of the original code bases."""

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F

from .fast_path import from_environment as fastest_from_environment
from .modeling_utils import check_pixel_values
from .protocol import get_test_protocol


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


def _coverage(starts: torch.Tensor, window: int, size: int) -> torch.Tensor:
    """(size,) number of windows of length `window` starting at `starts` that cover each position."""
    covered = (starts[:, None] + torch.arange(window, device=starts.device)).flatten()
    ones = torch.ones(covered.shape, device=starts.device)
    return torch.zeros(size, device=starts.device).index_add_(0, covered, ones)


def _slide(model, pixel_values: torch.Tensor, window: tuple[int, int], stride: tuple[int, int], batch_size: int):
    batch, channels, height, width = pixel_values.shape
    window_h, window_w = min(window[0], height), min(window[1], width)
    row_list, col_list = _window_starts(height, window_h, stride[0]), _window_starts(width, window_w, stride[1])
    row_starts = torch.tensor(row_list, device=pixel_values.device)
    col_starts = torch.tensor(col_list, device=pixel_values.device)
    # Windows in row-major order, as the originals visit them (the sums below add in that order too): Python ints
    # for the one-window views, a tensor for the batched gather.
    window_origins = [(top, left) for top in row_list for left in col_list]
    tops, lefts = torch.tensor(window_origins, device=pixel_values.device).unbind(1)
    window_rows = torch.arange(window_h, device=pixel_values.device)
    window_cols = torch.arange(window_w, device=pixel_values.device)

    # The windows tile a grid of row x column starts, so the number of windows covering a pixel is the product of the
    # row and column coverage counts: computed once, not accumulated window by window.
    row_count = _coverage(row_starts, window_h, height)
    col_count = _coverage(col_starts, window_w, width)

    summed = None
    for first in range(0, len(tops), batch_size):
        if batch_size == 1:
            # One window per call (the CPU default): the crop is a view and its scores are added in place, which
            # is cheaper than the gather / scatter of the batched path (measured in benchmarks/bench_infer.py).
            top, left = window_origins[first]
            logits = model.full_resolution_logits(pixel_values[:, :, top : top + window_h, left : left + window_w])
        else:
            rows = (tops[first : first + batch_size, None] + window_rows)[:, :, None]  # (n, window_h, 1)
            cols = (lefts[first : first + batch_size, None] + window_cols)[:, None, :]  # (n, 1, window_w)
            # One gather for the whole batch of crops: (B, C, n, h, w) -> (n * B, C, h, w), window-major.
            crops = pixel_values[:, :, rows, cols].permute(2, 0, 1, 3, 4).reshape(-1, channels, window_h, window_w)
            logits = model.full_resolution_logits(crops)
        num_labels = logits.shape[1]
        if summed is None:
            # low-precision (autocast) scores are summed in float32
            dtype = torch.promote_types(logits.dtype, torch.float32)
            summed = logits.new_zeros(batch * num_labels, height * width, dtype=dtype)
        if batch_size == 1:
            image_scores = summed.view(batch, num_labels, height, width)
            image_scores[:, :, top : top + window_h, left : left + window_w] += logits
            continue
        # Every window pixel is added at its flat image position in one `index_add_` (window order preserved).
        logits = logits.unflatten(0, (-1, batch)).permute(1, 2, 0, 3, 4).reshape(batch * num_labels, -1)
        summed.index_add_(1, (rows * width + cols).flatten(), logits.to(summed.dtype))
    count = row_count[:, None] * col_count[None, :]
    return summed.view(batch, -1, height, width).div_(count.to(summed.dtype))


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


def _protocol_window(model) -> tuple:
    """(window, stride) of the model's recorded test protocol; (None, None) for whole-image or no protocol."""
    recorded = get_test_protocol(model)
    return (None, None) if recorded is None else recorded.sliding_window


@torch.no_grad()
def infer_logits(
    model,
    pixel_values: torch.FloatTensor,
    *,
    window: Sequence[int] | int | None = None,
    stride: Sequence[int] | int | None = None,
    scales: Sequence[float] = (1.0,),
    flip: bool = False,
    window_batch_size: int | None = None,
    protocol: bool = True,
) -> torch.FloatTensor:
    """Full-resolution class scores of any of our segmentation models.

    Args:
        model: a `...ForSemanticSegmentation` / `MaskFormerForUniversalSegmentation` of this package (in eval mode).
        pixel_values (`torch.FloatTensor` of shape `(B, 3, H, W)`): already normalised images.
        window / stride: both `None` (the default): the checkpoint's test protocol (`config.test_protocol`, see
            `hf_segmodels.protocol`): sliding windows when it says `mode="slide"`, else whole-image inference.
            Whole-image inference is exactly as the original implementation (e.g. Segmenter pads to a multiple of the
            patch size and crops back). A `(h, w)` window and stride run sliding-window
            inference with the original semantics: windows start at the multiples of the stride below
            `size - window` plus one flush with the border, each goes through the whole-image path, and scores are
            averaged where windows overlap. Windows are run `window_batch_size` at a time; the default (None) is 1
            on the CPU, where larger batches measured slower (they fall out of the caches; see
            benchmarks/bench_infer.py), and 8 on accelerators.
        scales: test-time scales; the image is resized bilinearly to `int(size * scale + 0.5)`, and the scores are
            resized back to `(H, W)`.
        flip: also run every scale on the horizontally flipped image (scores flipped back).
        protocol: `False` ignores the checkpoint's test protocol: with no window, plain whole-image inference.

    Returns:
        `torch.FloatTensor` of shape `(B, num_labels, H, W)`. With one view (one scale, no flip) these are the
        (window-averaged) logits of the original implementation. With several views they are the logarithm of the
        mean of the views' softmax probabilities, which is how mmsegmentation and Segmenter merge augmented views:
        `softmax` of the result gives exactly the original's averaged probabilities and `argmax` its prediction.
    """
    num_channels = pixel_values.shape[1] if isinstance(pixel_values, torch.Tensor) and pixel_values.dim() == 4 else 3
    check_pixel_values(pixel_values, num_channels)
    if pixel_values.device.type == "cpu":
        model = fastest_from_environment(model)  # the switch HF_SEGMODELS_FASTEST (fast_path.py)
    if protocol and window is None and stride is None:
        window, stride = _protocol_window(model)
    if (window is None) != (stride is None):
        raise ValueError("`window` and `stride` must be given together (sliding window) or both left as None.")
    if window is not None:
        window, stride = _pair(window, "window"), _pair(stride, "stride")
        if stride[0] > window[0] or stride[1] > window[1]:
            # The windows would leave gaps that no window covers (mmsegmentation asserts against it, too).
            raise ValueError(
                f"`stride` {stride} is larger than `window` {window}: pixels between the windows would get no "
                "prediction. Use a stride no larger than the window."
            )
    if window_batch_size is None:
        window_batch_size = 1 if pixel_values.device.type == "cpu" else 8
    if window_batch_size < 1:
        raise ValueError(f"`window_batch_size` must be >= 1, got {window_batch_size}.")
    scales = tuple(scales)
    if not scales or any(not isinstance(s, (int, float)) or not math.isfinite(s) or s <= 0 for s in scales):
        raise ValueError(f"`scales` must be a non-empty sequence of finite positive ratios, got {scales!r}.")
    height, width = pixel_values.shape[-2:]
    for scale in scales:
        if int(height * scale + 0.5) < 1 or int(width * scale + 0.5) < 1:
            raise ValueError(
                f"scale {scale} shrinks the {height}x{width} input to less than one pixel; use a larger scale."
            )

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
