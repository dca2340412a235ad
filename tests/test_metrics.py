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
        np.testing.assert_allclose(ours[key], reference[key], atol=1e-12, equal_nan=True)


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


# ------------------------------------------------------------------------------------------------------------------
# The evaluate modules shipped with the package
# ------------------------------------------------------------------------------------------------------------------


def reference_with_label_map(predictions, labels, num_labels, ignore_index, label_map, reduce_labels, nan_to_num):
    """The Hub module's `mean_iou` wrapper: label_map applied to the references first, nan_to_num on every value."""
    mapped = []
    for label in labels:
        label = np.array(label)
        if label_map is not None:
            for old_id, new_id in label_map.items():
                label[label == old_id] = new_id
        mapped.append(label)
    metrics = reference_mean_iou(predictions, mapped, num_labels, ignore_index, reduce_labels)
    if nan_to_num is not None:
        metrics = {key: np.nan_to_num(value, nan=nan_to_num) for key, value in metrics.items()}
    return metrics


@pytest.mark.parametrize(
    "options",
    [
        {},
        {"reduce_labels": True},
        {"nan_to_num": 0.0},
        {"label_map": {1: 2, 2: 1}, "reduce_labels": True},
        {"ignore_index": 0},
    ],
)
def test_mean_iou_evaluate_module_equals_the_hub_definition(options):
    import evaluate

    from hf_segmodels.metrics import MEAN_IOU

    rng = np.random.default_rng(7)
    num_labels, ignore_index = 6, options.get("ignore_index", 255)
    labels = [rng.choice([0, 1, 2, 3, 5, 6, 255], size=(11, 14)) for _ in range(4)]
    predictions = [rng.integers(0, num_labels, size=(11, 14)) for _ in range(4)]
    kwargs = {"num_labels": num_labels, "ignore_index": ignore_index, "reduce_labels": options.get("reduce_labels",
              False), "nan_to_num": options.get("nan_to_num"), "label_map": options.get("label_map")}
    metric = evaluate.load(MEAN_IOU)
    # NumPy, torch and a mix, as compute() and as add_batch() + compute()
    ours = metric.compute(predictions=predictions, references=[torch.from_numpy(l) for l in labels], **kwargs)
    metric.add_batch(predictions=[torch.from_numpy(p) for p in predictions[:2]], references=labels[:2])
    metric.add_batch(predictions=np.stack(predictions[2:]), references=np.stack(labels[2:]))
    batched = metric.compute(**kwargs)
    expected = reference_with_label_map(predictions, labels, **kwargs)
    for result in (ours, batched):
        assert set(result) == set(expected)
        for key, value in expected.items():
            np.testing.assert_allclose(result[key], value, atol=1e-12, equal_nan=True, err_msg=key)
        assert isinstance(result["per_category_iou"], np.ndarray) and isinstance(result["mean_iou"], float)


def test_mean_iou_edge_cases_and_trainer_compute_metrics():
    import evaluate

    from hf_segmodels.metrics import MEAN_IOU

    metric = evaluate.load(MEAN_IOU)
    # everything ignored: NaN everywhere, as the Hub module
    with pytest.warns(RuntimeWarning):
        empty = metric.compute(predictions=[np.zeros((3, 3), int)], references=[np.full((3, 3), 255)], num_labels=2,
                               ignore_index=255)
    assert np.isnan(empty["mean_iou"]) and np.isnan(empty["per_category_iou"]).all()
    with pytest.raises(ValueError, match="shape"):
        metric.compute(predictions=[np.zeros((3, 3), int)], references=[np.zeros((3, 4), int)], num_labels=2,
                       ignore_index=255)

    # What a Trainer hands compute_metrics: NumPy logits (B, C, h, w) and labels (B, H, W).
    def compute_metrics(eval_pred):
        logits, labels = eval_pred
        logits = torch.nn.functional.interpolate(torch.from_numpy(logits), size=labels.shape[-2:], mode="bilinear")
        result = metric.compute(predictions=logits.argmax(1).numpy(), references=labels, num_labels=3,
                                ignore_index=255)
        return {key: value.tolist() for key, value in result.items()}

    rng = np.random.default_rng(0)
    result = compute_metrics((rng.normal(size=(2, 3, 4, 4)).astype(np.float32), rng.integers(0, 3, (2, 8, 8))))
    import json

    json.dumps(result)
    assert 0 <= result["mean_iou"] <= 1 and len(result["per_category_iou"]) == 3


def test_panoptic_quality_evaluate_module_equals_the_metric():
    import evaluate

    from hf_segmodels.metrics import PANOPTIC_QUALITY

    target = torch.tensor([[1, 1, 1, 1, 1, 2, 2, 2, 0, 0]])
    prediction = torch.tensor([[7, 7, 7, 7, 9, 7, 8, 8, 9, 9]])
    predicted = [{"id": 7, "label_id": 0, "score": 0.9, "was_fused": False}, {"id": 8, "label_id": 1},
                 {"id": 9, "label_id": 1}]
    truth = [{"id": 1, "category_id": 0, "iscrowd": 0, "bbox": [0, 0, 5, 1]}, {"id": 2, "category_id": 1}]
    expected = PanopticQualityMetric(num_labels=2, thing_ids=[1])
    expected.update(prediction, predicted, target, truth)
    metric = evaluate.load(PANOPTIC_QUALITY)
    metric.add(prediction=prediction, reference=target.numpy(), prediction_segments_info=predicted,
               reference_segments_info=truth)
    result, reference = metric.compute(num_labels=2, thing_ids=[1]), expected.compute()
    assert result["pq"] == pytest.approx((4 / 6 + 2 / 3) / 2)
    for key in ("pq", "sq", "rq", "num_classes"):
        assert result[key] == reference[key] and result["things"][key] == reference["things"][key]
    assert result["per_class"] == reference["per_class"]


def test_evaluate_modules_load_with_the_hub_unreachable(tmp_path):
    import subprocess
    import sys

    code = (
        "import evaluate, numpy as np, hf_segmodels\n"
        "m = evaluate.load(hf_segmodels.metrics.MEAN_IOU)\n"
        "r = m.compute(predictions=[np.eye(3, dtype=int)], references=[np.eye(3, dtype=int)], num_labels=2, "
        "ignore_index=255)\n"
        "assert r['mean_iou'] == 1.0\n"
        "evaluate.load(hf_segmodels.metrics.PANOPTIC_QUALITY)\n"
        "print('ok')\n"
    )
    env = {**__import__("os").environ, "HF_HUB_OFFLINE": "1", "HF_EVALUATE_OFFLINE": "1",
           "HF_ENDPOINT": "http://127.0.0.1:9", "HF_HOME": str(tmp_path / "hf_home")}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr[-3000:]
