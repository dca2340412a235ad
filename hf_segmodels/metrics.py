"""Semantic-segmentation metrics from a confusion matrix accumulated in torch (vectorised, mergeable across
processes), with the definitions of the `evaluate` library's `mean_iou` (mIoU, per-class IoU, aAcc, mAcc)."""

import torch


class SegmentationMetric:
    """Accumulates a (num_labels x num_labels) confusion matrix over batches of predictions and labels.

    Pixels whose label is `ignore_index` are skipped. With `reduce_labels=True` the labels are first mapped as
    ADE20K needs (0 -> ignored, k -> k - 1), like `evaluate`'s `mean_iou(reduce_labels=True)`.
    """

    def __init__(self, num_labels: int, ignore_index: int = 255, reduce_labels: bool = False):
        self.num_labels = num_labels
        self.ignore_index = ignore_index
        self.reduce_labels = reduce_labels
        self.confusion = torch.zeros(num_labels, num_labels, dtype=torch.int64)

    def update(self, predictions: torch.Tensor, labels: torch.Tensor) -> None:
        """predictions, labels: integer tensors of the same shape (any number of images)."""
        if predictions.shape != labels.shape:
            raise ValueError(f"predictions {tuple(predictions.shape)} and labels {tuple(labels.shape)} differ in shape.")
        predictions, labels = predictions.flatten().long().cpu(), labels.flatten().long().cpu()
        if self.reduce_labels:
            labels = torch.where(labels == 0, self.ignore_index, labels - 1)
            labels = torch.where(labels == self.ignore_index - 1, self.ignore_index, labels)
        valid = (labels != self.ignore_index) & (labels >= 0) & (labels < self.num_labels)
        index = labels[valid] * self.num_labels + predictions[valid]
        self.confusion += torch.bincount(index, minlength=self.num_labels**2).reshape(self.num_labels, -1)

    def merge(self, other: "SegmentationMetric") -> None:
        self.confusion += other.confusion

    def compute(self) -> dict:
        """Returns `mean_iou`, `mean_accuracy`, `overall_accuracy` (floats; classes absent from both labels and
        predictions are NaN and left out of the means) and `per_category_iou`, `per_category_accuracy` (tensors)."""
        confusion = self.confusion.double()
        intersection = confusion.diag()
        label_area = confusion.sum(dim=1)
        union = label_area + confusion.sum(dim=0) - intersection
        iou = intersection / union
        accuracy = intersection / label_area
        return {
            "mean_iou": torch.nanmean(iou).item(),
            "mean_accuracy": torch.nanmean(accuracy).item(),
            "overall_accuracy": (intersection.sum() / label_area.sum()).item(),
            "per_category_iou": iou,
            "per_category_accuracy": accuracy,
        }
