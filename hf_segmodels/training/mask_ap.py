"""COCO-style mask AP (the definitions of pycocotools' `COCOeval` for `iouType="segm"`, area range "all", at most
100 detections per image), small enough to run without pycocotools:

- per image and class, detections sorted by score are matched greedily to the unmatched ground truth with the
  highest IoU >= t, for t = 0.50, 0.55, ..., 0.95; ground truth marked `iscrowd` may take any number of
  detections, its IoU is intersection / detection area, and the detections matched to it are ignored;
- per class and threshold, precision is made monotone and read at the 101 recall points 0, 0.01, ..., 1;
  AP is the mean over recall points, classes with ground truth and thresholds (AP50 / AP75: one threshold).
"""

import numpy as np

IOU_THRESHOLDS = np.linspace(0.5, 0.95, 10)
RECALL_POINTS = np.linspace(0.0, 1.0, 101)
MAX_DETECTIONS = 100


def _ious(detections: np.ndarray, truths: np.ndarray, crowd: np.ndarray) -> np.ndarray:
    """(D, P) and (G, P) bool masks -> (D, G) IoU (crowd columns: intersection / detection area)."""
    d, g = detections.astype(np.float64), truths.astype(np.float64)
    intersection = d @ g.T
    area_d, area_g = d.sum(1)[:, None], g.sum(1)[None, :]
    union = np.where(crowd[None, :], area_d, area_d + area_g - intersection)
    return np.where(union > 0, intersection / np.maximum(union, 1e-12), 0.0)


def match_image(pred_masks, pred_scores, pred_classes, gt_masks, gt_classes, gt_crowd) -> dict:
    """One image's detections matched per class and IoU threshold.

    pred_masks (D, H, W) bool, pred_scores (D,), pred_classes (D,); gt_masks (G, H, W) bool, gt_classes (G,),
    gt_crowd (G,) bool. Returns {class: (scores (d,), matched (T, d) bool, ignored (T, d) bool, num_gt)}."""
    pred_masks, gt_masks = np.asarray(pred_masks, dtype=bool), np.asarray(gt_masks, dtype=bool)
    pred_masks = pred_masks.reshape(len(pred_masks), int(np.prod(pred_masks.shape[1:])))
    gt_masks = gt_masks.reshape(len(gt_masks), int(np.prod(gt_masks.shape[1:])))
    pred_scores, pred_classes = np.asarray(pred_scores, dtype=np.float64), np.asarray(pred_classes)
    gt_classes, gt_crowd = np.asarray(gt_classes), np.asarray(gt_crowd, dtype=bool)
    result = {}
    for label in sorted(set(pred_classes.tolist()) | set(gt_classes.tolist())):
        d_index = np.nonzero(pred_classes == label)[0]
        d_index = d_index[np.argsort(-pred_scores[d_index], kind="mergesort")][:MAX_DETECTIONS]
        g_index = np.nonzero(gt_classes == label)[0]
        g_index = g_index[np.argsort(gt_crowd[g_index], kind="mergesort")]  # non-crowd first
        crowd = gt_crowd[g_index]
        ious = _ious(pred_masks[d_index], gt_masks[g_index], crowd) if len(d_index) and len(g_index) else None
        matched = np.zeros((len(IOU_THRESHOLDS), len(d_index)), dtype=bool)
        ignored = np.zeros_like(matched)
        for t, threshold in enumerate(IOU_THRESHOLDS):
            taken = np.zeros(len(g_index), dtype=bool)
            for d in range(len(d_index)):
                best, best_iou = -1, min(threshold, 1 - 1e-10)
                for g in range(len(g_index)):
                    if taken[g] and not crowd[g]:
                        continue
                    if best > -1 and not crowd[best] and crowd[g]:
                        break
                    if ious[d, g] < best_iou:
                        continue
                    best, best_iou = g, ious[d, g]
                if best == -1:
                    continue
                taken[best] = True
                matched[t, d] = True
                ignored[t, d] = crowd[best]
        result[label] = (pred_scores[d_index], matched, ignored, int((~crowd).sum()))
    return result


class MaskAPMetric:
    """Accumulates `match_image` results of many images; `compute()` -> {"ap", "ap50", "ap75", "per_class"}."""

    def __init__(self):
        self.images: list[dict] = []

    def update(self, pred_masks, pred_scores, pred_classes, gt_masks, gt_classes, gt_crowd) -> None:
        self.images.append(match_image(pred_masks, pred_scores, pred_classes, gt_masks, gt_classes, gt_crowd))

    def merge(self, images: list[dict]) -> None:
        self.images.extend(images)

    def compute(self) -> dict:
        per_class = {}
        classes = sorted({label for image in self.images for label in image})
        precision = []  # (classes, T, R)
        for label in classes:
            entries = [image[label] for image in self.images if label in image]
            num_gt = sum(entry[3] for entry in entries)
            if num_gt == 0:
                continue
            scores = np.concatenate([entry[0] for entry in entries])
            order = np.argsort(-scores, kind="mergesort")
            matched = np.concatenate([entry[1] for entry in entries], axis=1)[:, order]
            ignored = np.concatenate([entry[2] for entry in entries], axis=1)[:, order]
            tps = np.cumsum(matched & ~ignored, axis=1).astype(np.float64)
            fps = np.cumsum(~matched & ~ignored, axis=1).astype(np.float64)
            table = np.zeros((len(IOU_THRESHOLDS), len(RECALL_POINTS)))
            for t in range(len(IOU_THRESHOLDS)):
                recall = tps[t] / num_gt
                prec = tps[t] / np.maximum(tps[t] + fps[t], np.spacing(1))
                prec = np.maximum.accumulate(prec[::-1])[::-1] if len(prec) else prec
                points = np.searchsorted(recall, RECALL_POINTS, side="left")
                valid = points < len(prec)
                table[t, valid] = prec[points[valid]]
            precision.append(table)
            per_class[label] = float(table.mean())
        if not precision:
            return {"ap": float("nan"), "ap50": float("nan"), "ap75": float("nan"), "per_class": {},
                    "warning": "no ground-truth instance (outside crowd regions)"}
        stacked = np.stack(precision)
        return {"ap": float(stacked.mean()), "ap50": float(stacked[:, 0].mean()), "ap75": float(stacked[:, 5].mean()),
                "per_class": per_class}
