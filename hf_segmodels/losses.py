"""Losses shared by the per-pixel models, and the label checks every model runs before computing a loss."""

import torch
import torch.nn.functional as F


def check_semantic_labels(labels: torch.Tensor, num_labels: int, ignore_index: int = 255) -> None:
    """Raises a `ValueError` naming the offending values when `labels` holds a class id outside
    `[0, num_labels)` other than `ignore_index`, or when it is not a (batch, height, width) integer map."""
    if labels.dim() != 3:
        raise ValueError(f"`labels` must have shape (batch_size, height, width), got {tuple(labels.shape)}.")
    if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
        raise ValueError(f"`labels` must be an integer tensor of class ids, got dtype {labels.dtype}.")
    invalid = ((labels < 0) | (labels >= num_labels)) & (labels != ignore_index)
    if invalid.any():
        bad_values = torch.unique(labels[invalid]).tolist()
        shown = bad_values[:20]
        raise ValueError(
            f"`labels` contains class ids {shown}{' ...' if len(bad_values) > 20 else ''} outside [0, {num_labels}) "
            f"(num_labels={num_labels}); only {ignore_index} is allowed as the ignore index. "
            "If your dataset uses 0 for 'background/unlabelled' (e.g. ADE20K), preprocess with do_reduce_labels=True."
        )


def semantic_cross_entropy(
    logits: torch.Tensor, labels: torch.Tensor, ignore_index: int = 255
) -> torch.Tensor:
    """Per-pixel cross-entropy of `logits` (B, C, h, w) against `labels` (B, H, W).

    The logits are upsampled bilinearly (`align_corners=False`) to the label size first, as the original training
    code of Segmenter, SETR and SegFormer does. An image whose pixels are all `ignore_index` contributes nothing; a
    batch with no valid pixel at all returns a zero loss that still has a gradient path, instead of NaN.

    One channel (`num_labels=1`, binary segmentation) means a sigmoid / binary cross-entropy loss, exactly as
    transformers' `SegformerForSemanticSegmentation` computes it: labels 0 / 1, `ignore_index` pixels masked out of
    the per-pixel BCE, which is then averaged over all pixels.
    """
    binary = logits.shape[1] == 1
    check_semantic_labels(labels, 2 if binary else logits.shape[1], ignore_index)
    if logits.shape[-2:] != labels.shape[-2:]:
        logits = F.interpolate(logits, size=labels.shape[-2:], mode="bilinear", align_corners=False)
    labels = labels.long()
    if not (labels != ignore_index).any():
        return logits.sum() * 0.0
    if binary:
        valid = (labels != ignore_index).to(logits.dtype)
        loss = F.binary_cross_entropy_with_logits(logits[:, 0], labels.to(logits.dtype), reduction="none")
        return (loss * valid).mean()
    return F.cross_entropy(logits, labels, ignore_index=ignore_index)
