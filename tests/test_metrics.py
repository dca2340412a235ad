"""SegmentationMetric against the `evaluate` library's `mean_iou` definition, and PanopticQualityMetric on hand-made
cases with known PQ.

The `evaluate` metric module cannot be downloaded here (no Hub access), so `reference_mean_iou` below re-implements
its documented code (huggingface/evaluate, metrics/mean_iou/mean_iou.py: `intersect_and_union` with np.histogram
over `range=(0, num_labels - 1)`, `reduce_labels` as 0 -> 255, -1, 254 -> 255) line by line in NumPy.
"""

import math

import numpy as np
import pytest
import torch

from hf_segmodels.metrics import PanopticQualityMetric, SegmentationMetric


def reference_mean_iou(results, gt_seg_maps, num_labels, ignore_index, reduce_labels=False):
    total = np.zeros((4, num_labels))
    for pred_label, label in zip(results, gt_seg_maps):
        pred_label, label = np.array(pred_label), np.array(label)
        if reduce_labels:
            label[label == 0] = 255
            label = label - 1
            label[label == 254] = 255
        mask = np.not_equal(label, ignore_index)
        pred_label, label = pred_label[mask], label[mask]
        intersect = pred_label[pred_label == label]
        area_intersect = np.histogram(intersect, bins=num_labels, range=(0, num_labels - 1))[0]
        area_pred = np.histogram(pred_label, bins=num_labels, range=(0, num_labels - 1))[0]
        area_label = np.histogram(label, bins=num_labels, range=(0, num_labels - 1))[0]
        total += np.stack([area_intersect, area_pred + area_label - area_intersect, area_pred, area_label])
    intersect, union, _, label_area = total
    with np.errstate(divide="ignore", invalid="ignore"):
        iou, acc = intersect / union, intersect / label_area
        return {
            "mean_iou": np.nanmean(iou), "mean_accuracy": np.nanmean(acc),
            "overall_accuracy": intersect.sum() / label_area.sum(), "per_category_iou": iou, "per_category_accuracy": acc,
        }


def assert_same(ours, reference):
    for key in ("mean_iou", "mean_accuracy", "overall_accuracy"):
        assert ours[key] == pytest.approx(float(reference[key]), abs=1e-12), key
    for key in ("per_category_iou", "per_category_accuracy"):
        np.testing.assert_allclose(ours[key].numpy(), reference[key], atol=1e-12, equal_nan=True)


@pytest.mark.parametrize("reduce_labels", [False, True])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_equals_evaluate_mean_iou_on_random_maps(seed, reduce_labels):
    rng = np.random.default_rng(seed)
    num_labels = 7
    # labels include ignore (255), out-of-range ids (7, 9) and, for reduce_labels, 0; predictions include an
    # out-of-range id too; class 5 is never predicted nor labelled in some images (NaN handling).
    labels = [rng.choice([0, 1, 2, 3, 4, 6, 7, 9, 255], size=(13, 17)) for _ in range(5)]
    predictions = [rng.integers(0, num_labels + 1, size=(13, 17)) for _ in range(5)]
    metric = SegmentationMetric(num_labels, ignore_index=255, reduce_labels=reduce_labels)
    for prediction, label in zip(predictions, labels):
        metric.update(torch.from_numpy(prediction), torch.from_numpy(label))
    reference = reference_mean_iou(predictions, [l.copy() for l in labels], num_labels, 255, reduce_labels)
    assert_same(metric.compute(), reference)


def test_batch_confusion_gather_and_merge_equal_one_pass():
    rng = np.random.default_rng(3)
    predictions = torch.from_numpy(rng.integers(0, 4, size=(6, 9, 11)))
    labels = torch.from_numpy(rng.choice([0, 1, 2, 3, 255], size=(6, 9, 11)))
    whole = SegmentationMetric(4)
    whole.update(predictions, labels)
    per_image = SegmentationMetric(4)
    confusion = per_image.batch_confusion(predictions, labels)
    assert confusion.shape == (6, 5, 5)
    per_image.add_counts(confusion[:4])
    rest = SegmentationMetric(4)
    rest.add_counts(confusion[4:])
    per_image.merge(rest)
    per_image.all_reduce()  # not distributed: a no-op
    assert torch.equal(per_image.confusion, whole.confusion)
    assert int(whole.confusion.sum()) == int((labels != 255).sum())


def test_perfect_prediction_and_bad_inputs():
    labels = torch.tensor([[[0, 1], [2, 255]]])
    metric = SegmentationMetric(4)
    metric.update(labels.clamp(max=3), labels)
    results = metric.compute()
    assert results["mean_iou"] == 1.0 and results["overall_accuracy"] == 1.0
    assert math.isnan(results["per_category_iou"][3])  # absent class: NaN, left out of the mean
    with pytest.raises(ValueError, match="differ in shape"):
        metric.update(torch.zeros(2, 2, dtype=torch.long), torch.zeros(3, 2, dtype=torch.long))
    with pytest.raises(ValueError, match="argmax"):
        metric.update(torch.zeros(1, 2, 2), labels)


# ------------------------------------------------------------------------------------------------------------------
# Panoptic quality
# ------------------------------------------------------------------------------------------------------------------


def segments(*entries):
    return [{"id": i, "label_id": c, **({"iscrowd": 1} if crowd else {})} for i, c, crowd in entries]


def test_pq_perfect_match():
    target = torch.tensor([[1, 1, 2, 2], [1, 1, 2, 2]])
    metric = PanopticQualityMetric(num_labels=3)
    metric.update(target.clone(), segments((1, 0, False), (2, 2, False)), target, segments((1, 0, False), (2, 2, False)))
    results = metric.compute()
    assert (results["pq"], results["sq"], results["rq"]) == (1.0, 1.0, 1.0)
    assert results["num_classes"] == 2


def test_pq_known_values_with_fp_fn_void_and_crowd():
    # 1 x 10 image. Ground truth: segment 1 (class 0) pixels 0-4, segment 2 (class 1) pixels 5-7, void pixels 8-9.
    target = torch.tensor([[1, 1, 1, 1, 1, 2, 2, 2, 0, 0]])
    # Prediction: segment 7 (class 0) pixels 0-3 and 5 (IoU 4/6 > 0.5, a match); segment 8 (class 1) pixels 6-7
    # (IoU 2/3 with segment 2 ... but segment 2 is class 1: a match); segment 9 (class 1) pixels 4, 8, 9: 2 of 3 pixels
    # on void -> ignored, not a false positive.
    prediction = torch.tensor([[7, 7, 7, 7, 9, 7, 8, 8, 9, 9]])
    metric = PanopticQualityMetric(num_labels=2)
    metric.update(prediction, segments((7, 0, False), (8, 1, False), (9, 1, False)),
                  target, segments((1, 0, False), (2, 1, False)))
    results = metric.compute()
    iou_0, iou_1 = 4 / 6, 2 / 3
    assert results["per_class"][0]["pq"] == pytest.approx(iou_0)
    assert results["per_class"][1]["pq"] == pytest.approx(iou_1)
    assert results["pq"] == pytest.approx((iou_0 + iou_1) / 2)
    assert results["rq"] == pytest.approx(1.0)

    # Now a false positive and a false negative: class 1 predicted on pixels 0-1 (a FP: only 2/5 of ground truth
    # segment 1, wrong class) and nothing predicted for segment 2 (a FN).
    metric = PanopticQualityMetric(num_labels=2)
    prediction = torch.tensor([[3, 3, 4, 4, 4, 0, 0, 0, 0, 0]])
    metric.update(prediction, segments((3, 1, False), (4, 0, False)), target, segments((1, 0, False), (2, 1, False)))
    results = metric.compute()
    # class 0: segment 4 (pixels 2-4) vs segment 1 (0-4): IoU 3/5 -> TP, SQ 0.6, RQ 1; class 1: FP 1, FN 1 -> RQ 0
    assert results["per_class"][0] == pytest.approx({"pq": 0.6, "sq": 0.6, "rq": 1.0})
    assert results["per_class"][1] == pytest.approx({"pq": 0.0, "sq": 0.0, "rq": 0.0})
    assert results["pq"] == pytest.approx(0.3)

    # A crowd region: an unmatched prediction of the crowd's class lying mostly on it is not a false positive, and the
    # crowd segment is not a false negative.
    target = torch.tensor([[5, 5, 5, 5, 6, 6]])
    prediction = torch.tensor([[1, 1, 1, 2, 2, 2]])
    metric = PanopticQualityMetric(num_labels=2, thing_ids=[1])
    metric.update(prediction, segments((1, 1, False), (2, 0, False)), target, segments((5, 1, True), (6, 0, False)))
    results = metric.compute()
    # class 0: pred 2 (pixels 3-5) vs gt 6 (pixels 4-5): IoU 2/3 -> TP; class 1: nothing counted at all
    assert results["per_class"] == {0: pytest.approx({"pq": 2 / 3, "sq": 2 / 3, "rq": 1.0})}
    assert results["things"]["num_classes"] == 0 and results["stuff"]["pq"] == pytest.approx(2 / 3)


def test_pq_merge_and_errors():
    target = torch.tensor([[1, 1, 2, 2]])
    first, second = PanopticQualityMetric(3), PanopticQualityMetric(3)
    first.update(target, segments((1, 0, False), (2, 1, False)), target, segments((1, 0, False), (2, 1, False)))
    second.update(torch.zeros_like(target), [], target, segments((1, 0, False), (2, 1, False)))
    first.merge(second)
    assert first.compute()["rq"] == pytest.approx(2 / 3)  # per class: TP 1, FN 1
    with pytest.raises(ValueError, match=r"ids \[3\] that are not in its segments_info"):
        first.update(torch.tensor([[3, 3, 3, 3]]), [], target, segments((1, 0, False), (2, 1, False)))
    with pytest.raises(ValueError, match=r"class ids \[5\]"):
        first.update(target, segments((1, 5, False), (2, 1, False)), target, segments((1, 0, False), (2, 1, False)))
