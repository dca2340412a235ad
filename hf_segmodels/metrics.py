"""Segmentation metrics accumulated in torch and mergeable across processes.

- `SegmentationMetric`: a confusion matrix (vectorised `bincount`, no loop over classes or pixels) giving exactly the
  numbers of the `evaluate` library's `mean_iou` (mIoU, per-class IoU, aAcc, mAcc), including its `ignore_index` and
  `reduce_labels` semantics.
- `PanopticQualityMetric`: PQ / SQ / RQ (Kirillov et al., "Panoptic Segmentation", CVPR 2019) with the matching
  rules of the COCO `panopticapi` (IoU > 0.5 matches, void and crowd regions ignored).

Both keep plain tensors of counts, so per-process states are combined with a sum: `merge` (same process),
`all_reduce` (torch.distributed), or gathering per-image counts with `accelerate`'s `gather_for_metrics` (which
drops the samples duplicated to even out the last batch) and `add_counts`.
"""

import warnings
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist


# `evaluate` modules shipped with the package (no Hub access needed): `evaluate.load(hf_segmodels.metrics.MEAN_IOU)`.
MEAN_IOU = str(Path(__file__).resolve().parent / "evaluate_modules" / "mean_iou")
PANOPTIC_QUALITY = str(Path(__file__).resolve().parent / "evaluate_modules" / "panoptic_quality")


def as_numpy(value) -> np.ndarray:
    """A class or segment-id map (torch tensor, NumPy array or nested lists) as a NumPy array; what the `evaluate`
    modules store."""
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().numpy()
    return np.asarray(value)


def _as_tensor(value) -> torch.Tensor:
    if isinstance(value, torch.Tensor):
        return value
    array = np.asarray(value)
    if array.dtype == object:
        raise ValueError("Class maps must be arrays of one shape; got ragged nested lists.")
    return torch.from_numpy(np.ascontiguousarray(array))


def _all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum of `tensor` over every process of the default process group (the tensor itself when not distributed)."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return tensor
    # NCCL only reduces CUDA tensors; gloo reduces CPU tensors.
    device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")
    reduced = tensor.to(device).clone()
    dist.all_reduce(reduced, op=dist.ReduceOp.SUM)
    return reduced.to(tensor.device)


class SegmentationMetric:
    """Accumulates a confusion matrix over batches of predicted and ground-truth class maps.

    The numbers are those of `evaluate.load("mean_iou").compute(..., num_labels, ignore_index, reduce_labels)`:

    - pixels whose (reduced) label is `ignore_index` are skipped;
    - `reduce_labels=True` maps labels as that function does (0 -> 255, then every label minus one, and 254 -> 255),
      i.e. 0 becomes ignored and k becomes k - 1 for ADE20K-style annotations;
    - a label outside `[0, num_labels)` that is not ignored still counts its pixel's prediction in the predicted
      area (hence in the union) of the predicted class; a prediction outside `[0, num_labels)` counts in no class.

    Internally the matrix is `(num_labels + 1) x (num_labels + 1)`: row / column `num_labels` collects the
    out-of-range labels / predictions so that the rules above hold exactly.
    """

    def __init__(self, num_labels: int, ignore_index: int = 255, reduce_labels: bool = False):
        if num_labels < 1:
            raise ValueError(f"`num_labels` must be >= 1, got {num_labels}.")
        self.num_labels = num_labels
        self.ignore_index = ignore_index
        self.reduce_labels = reduce_labels
        self.confusion = torch.zeros(num_labels + 1, num_labels + 1, dtype=torch.int64)

    def _prepare(self, predictions, labels) -> tuple[torch.Tensor, torch.Tensor]:
        predictions, labels = _as_tensor(predictions), _as_tensor(labels)
        if predictions.shape != labels.shape:
            raise ValueError(f"predictions {tuple(predictions.shape)} and labels {tuple(labels.shape)} differ in shape.")
        if predictions.is_floating_point() or labels.is_floating_point():
            raise ValueError(
                "predictions and labels must be integer class maps (take the argmax of the logits first), got dtypes "
                f"{predictions.dtype} and {labels.dtype}."
            )
        predictions, labels = predictions.long(), labels.long()
        if self.reduce_labels:
            labels = torch.where(labels == 0, 255, labels) - 1
            labels = torch.where(labels == 254, 255, labels)
        return predictions, labels

    def batch_confusion(self, predictions: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Per-image confusion matrices (B, num_labels + 1, num_labels + 1) of `predictions` and `labels` (B, H, W)
        (rows: labels, columns: predictions), for gathering across processes before `add_counts`."""
        predictions, labels = _as_tensor(predictions), _as_tensor(labels)
        if predictions.dim() != 3:
            raise ValueError(f"Expected (batch, height, width) class maps, got shape {tuple(predictions.shape)}.")
        predictions, labels = self._prepare(predictions, labels)
        size = self.num_labels + 1
        batch = predictions.shape[0]
        valid = labels != self.ignore_index
        labels = torch.where((labels >= 0) & (labels < self.num_labels), labels, self.num_labels)
        predictions = torch.where((predictions >= 0) & (predictions < self.num_labels), predictions, self.num_labels)
        image = torch.arange(batch, device=labels.device).view(batch, 1, 1).expand_as(labels)
        index = (image * size + labels) * size + predictions
        counts = torch.bincount(index[valid], minlength=batch * size * size)
        return counts.view(batch, size, size)

    def update(self, predictions, labels) -> None:
        """predictions, labels: integer class maps of the same shape (any number of images), as torch tensors,
        NumPy arrays (what `Trainer`'s `compute_metrics` receives) or nested lists."""
        predictions, labels = _as_tensor(predictions), _as_tensor(labels)
        predictions, labels = predictions.reshape(1, 1, -1), labels.reshape(1, 1, -1)
        self.add_counts(self.batch_confusion(predictions, labels))

    def add_counts(self, confusion: torch.Tensor) -> None:
        """Adds confusion matrices from `batch_confusion`, (num_labels + 1)^2 or a batch (B, ...) of them."""
        size = self.num_labels + 1
        if confusion.shape[-2:] != (size, size):
            raise ValueError(f"Expected ({size}, {size}) confusion matrices, got shape {tuple(confusion.shape)}.")
        self.confusion += confusion.reshape(-1, size, size).sum(dim=0).to(self.confusion)

    def merge(self, other: "SegmentationMetric") -> None:
        if other.num_labels != self.num_labels:
            raise ValueError(f"Cannot merge metrics over {other.num_labels} and {self.num_labels} classes.")
        self.confusion += other.confusion

    def all_reduce(self) -> None:
        """Sums the confusion matrices of every process (call on all processes; a no-op when not distributed)."""
        self.confusion = _all_reduce_sum(self.confusion)

    def compute(self) -> dict:
        """Returns `mean_iou`, `mean_accuracy`, `overall_accuracy` (floats; classes with an empty union / no label
        pixel are NaN and left out of the means) and `per_category_iou`, `per_category_accuracy` (lists of floats):
        plain Python values (`metrics_to_json` in `hf_segmodels.training.evaluation` names the classes)."""
        confusion = self.confusion.double()
        classes = self.num_labels
        intersection = confusion.diagonal()[:classes]
        label_area = confusion[:classes].sum(dim=1)
        predicted_area = confusion[:, :classes].sum(dim=0)
        union = label_area + predicted_area - intersection
        iou = intersection / union
        accuracy = intersection / label_area
        results = {
            "mean_iou": torch.nanmean(iou).item(),
            "mean_accuracy": torch.nanmean(accuracy).item(),
            "overall_accuracy": (intersection.sum() / label_area.sum()).item(),
            "per_category_iou": iou.tolist(),
            "per_category_accuracy": accuracy.tolist(),
        }
        if label_area.sum() == 0:
            reason = (
                "no valid pixel: every label is the ignore index or outside [0, num_labels) (or nothing was added), "
                "so the metrics are undefined (NaN)"
            )
            warnings.warn(f"SegmentationMetric: {reason}.", RuntimeWarning, stacklevel=2)
            results["warning"] = reason
        return results


class PanopticQualityMetric:
    """Panoptic quality PQ = SQ x RQ per class, accumulated over images, with `panopticapi`'s rules:

    - a predicted and a ground-truth segment of the same class match when their IoU > 0.5, where the union leaves
      out the predicted pixels that fall on void (unlabelled) ground truth;
    - ground-truth segments marked `iscrowd` are never matched and never false negatives; an unmatched predicted
      segment is not a false positive when more than half of it lies on void or on a crowd region of its class;
    - PQ_c = sum of matched IoUs / (TP + FP / 2 + FN / 2), SQ_c = sum of IoUs / TP, RQ_c = TP / (TP + FP / 2 +
      FN / 2); the reported values are means over the classes that occur (TP + FP + FN > 0), overall and for
      "things" / "stuff" when `thing_ids` is given.

    Segment maps hold segment ids; `segments_info` lists `{"id", "label_id" (or "category_id"), "iscrowd"
    (optional)}`. Id 0 (and negative ids, which `post_process_panoptic_segmentation` uses when nothing is kept) is
    void.
    """

    def __init__(self, num_labels: int, thing_ids: Iterable[int] | None = None):
        self.num_labels = num_labels
        self.thing_ids = None if thing_ids is None else sorted(set(int(i) for i in thing_ids))
        # columns: true positives, false positives, false negatives, sum of matched IoUs
        self.stats = torch.zeros(num_labels, 4, dtype=torch.float64)

    @staticmethod
    def _segments(segments_info: Sequence[dict], where: str) -> dict[int, tuple[int, bool]]:
        segments = {}
        for info in segments_info:
            label = info.get("label_id", info.get("category_id"))
            if label is None:
                raise ValueError(f"A {where} segment {info!r} has neither 'label_id' nor 'category_id'.")
            segments[int(info["id"])] = (int(label), bool(info.get("iscrowd", False)))
        return segments

    def update(
        self,
        prediction: torch.Tensor,
        prediction_segments: Sequence[dict],
        target: torch.Tensor,
        target_segments: Sequence[dict],
    ) -> None:
        """Adds one image: `prediction` / `target` (H, W) segment-id maps and their `segments_info` lists."""
        if prediction.shape != target.shape:
            raise ValueError(f"prediction {tuple(prediction.shape)} and target {tuple(target.shape)} differ in shape.")
        predicted = self._segments(prediction_segments, "predicted")
        truth = self._segments(target_segments, "ground-truth")
        for where, segments in (("predicted", predicted), ("ground-truth", truth)):
            bad = sorted({label for label, _ in segments.values() if not 0 <= label < self.num_labels})
            if bad:
                raise ValueError(f"{where} segments have class ids {bad} outside [0, {self.num_labels}).")
        prediction = prediction.long().flatten().clamp(min=0)
        target = target.long().flatten().clamp(min=0)
        for where, ids, segments in (("predicted", prediction, predicted), ("ground-truth", target, truth)):
            unknown = sorted(set(torch.unique(ids).tolist()) - set(segments) - {0})
            if unknown:
                raise ValueError(f"The {where} segment map has ids {unknown[:20]} that are not in its segments_info.")

        offset = int(prediction.max().item()) + 1
        pairs, intersections = torch.unique(target * offset + prediction, return_counts=True)
        pair_gt, pair_pred = (pairs // offset).tolist(), (pairs % offset).tolist()
        intersections = intersections.tolist()
        area_pred = dict(zip(*[t.tolist() for t in torch.unique(prediction, return_counts=True)]))
        area_gt = dict(zip(*[t.tolist() for t in torch.unique(target, return_counts=True)]))
        on_void = {p: n for g, p, n in zip(pair_gt, pair_pred, intersections) if g == 0}

        tp, fp, fn, iou_sum = (torch.zeros(self.num_labels, dtype=torch.float64) for _ in range(4))
        matched_gt, matched_pred = set(), set()
        for gt_id, pred_id, intersection in zip(pair_gt, pair_pred, intersections):
            if gt_id == 0 or pred_id == 0:
                continue
            (gt_label, crowd), (pred_label, _) = truth[gt_id], predicted[pred_id]
            if crowd or gt_label != pred_label:
                continue
            union = area_pred[pred_id] + area_gt[gt_id] - intersection - on_void.get(pred_id, 0)
            iou = intersection / union
            if iou > 0.5:
                tp[gt_label] += 1
                iou_sum[gt_label] += iou
                matched_gt.add(gt_id)
                matched_pred.add(pred_id)

        crowd_of_class = {}
        for gt_id, (label, crowd) in truth.items():
            if gt_id in matched_gt:
                continue
            if crowd:
                crowd_of_class[label] = gt_id
            else:
                fn[label] += 1
        pair_area = dict(zip(zip(pair_gt, pair_pred), intersections))
        for pred_id, (label, _) in predicted.items():
            if pred_id in matched_pred or area_pred.get(pred_id, 0) == 0:
                continue
            ignored = on_void.get(pred_id, 0)
            if label in crowd_of_class:
                ignored += pair_area.get((crowd_of_class[label], pred_id), 0)
            if ignored / area_pred[pred_id] > 0.5:
                continue
            fp[label] += 1
        self.stats += torch.stack([tp, fp, fn, iou_sum], dim=1)

    def merge(self, other: "PanopticQualityMetric") -> None:
        self.stats += other.stats

    def all_reduce(self) -> None:
        """Sums the statistics of every process (call on all processes; a no-op when not distributed)."""
        self.stats = _all_reduce_sum(self.stats)

    def _summary(self, classes: torch.Tensor) -> dict:
        tp, fp, fn, iou_sum = self.stats[classes].unbind(dim=1)
        present = (tp + fp + fn) > 0
        denominator = tp + 0.5 * fp + 0.5 * fn
        pq = torch.where(present, iou_sum / denominator.clamp(min=1e-12), 0.0)
        sq = torch.where(tp > 0, iou_sum / tp.clamp(min=1), 0.0)
        rq = torch.where(present, tp / denominator.clamp(min=1e-12), 0.0)
        count = int(present.sum())
        if count == 0:
            reason = "no segment in the ground truth or the predictions (outside void and crowd regions)"
            warnings.warn(f"PanopticQualityMetric: {reason}; PQ / SQ / RQ are undefined (NaN).", RuntimeWarning,
                          stacklevel=2)
            return {"pq": float("nan"), "sq": float("nan"), "rq": float("nan"), "num_classes": 0, "warning": reason}
        return {
            "pq": (pq[present].sum() / count).item(),
            "sq": (sq[present].sum() / count).item(),
            "rq": (rq[present].sum() / count).item(),
            "num_classes": count,
        }

    def compute(self) -> dict:
        """`pq`, `sq`, `rq` (means over the classes that occur), `per_class` {class: {pq, sq, rq}} and, with
        `thing_ids`, `things` / `stuff` summaries."""
        all_classes = torch.arange(self.num_labels)
        results = self._summary(all_classes)
        tp, fp, fn, iou_sum = self.stats.unbind(dim=1)
        per_class = {}
        for label in torch.nonzero((tp + fp + fn) > 0).flatten().tolist():
            denominator = tp[label] + 0.5 * fp[label] + 0.5 * fn[label]
            per_class[label] = {
                "pq": (iou_sum[label] / denominator).item(),
                "sq": (iou_sum[label] / tp[label]).item() if tp[label] > 0 else 0.0,
                "rq": (tp[label] / denominator).item(),
            }
        results["per_class"] = per_class
        if self.thing_ids is not None:
            is_thing = torch.zeros(self.num_labels, dtype=torch.bool)
            is_thing[self.thing_ids] = True
            results["things"] = self._summary(all_classes[is_thing])
            results["stuff"] = self._summary(all_classes[~is_thing])
        return results
