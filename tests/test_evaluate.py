"""examples/evaluate.py: whole / slide / ms modes, --num_samples, JSON output, panoptic quality end to end."""

import json

import numpy as np
import pytest
import torch
from datasets import Dataset, DatasetDict, Features, Image, Value, load_from_disk
from transformers import AutoImageProcessor, AutoModelForSemanticSegmentation

from test_training_utils import dataset_dir, run_evaluate, trained

from hf_segmodels import infer_logits
from hf_segmodels.metrics import SegmentationMetric


def direct_metrics(output, data, count, **infer_kwargs) -> dict:
    """The evaluation by hand: processor -> infer_logits -> bilinear resize to the 64 x 64 label -> argmax -> metric."""
    model = AutoModelForSemanticSegmentation.from_pretrained(output).eval()
    processor = AutoImageProcessor.from_pretrained(output)
    metric = SegmentationMetric(4)
    for example in load_from_disk(str(data))["validation"].select(range(count)):
        pixel_values = processor(example["image"], return_tensors="pt")["pixel_values"]
        assert pixel_values.shape[-2:] == (32, 32)  # the test size is the 32-pixel training crop
        logits = torch.nn.functional.interpolate(infer_logits(model, pixel_values, **infer_kwargs), size=(64, 64),
                                                 mode="bilinear", align_corners=False)
        metric.update(logits.argmax(1), torch.from_numpy(np.array(example["annotation"]))[None])
    return metric.compute()


def assert_matches(result, expected):
    assert result["mean_iou"] == pytest.approx(expected["mean_iou"], abs=1e-12)
    assert result["overall_accuracy"] == pytest.approx(expected["overall_accuracy"], abs=1e-12)
    obtained = [float("nan") if v is None else v for v in result["per_category_iou"].values()]  # JSON: NaN -> null
    assert obtained == pytest.approx(
        expected["per_category_iou"], abs=1e-12, nan_ok=True
    )


@pytest.mark.parametrize("name", ["segmenter", "segformer"])
def test_modes_match_a_direct_computation(name, tmp_path_factory, tmp_path):
    output = trained(name, tmp_path_factory)
    data = dataset_dir(tmp_path_factory)

    def evaluate(*extra):
        return run_evaluate(["--model_name_or_path", str(output), "--dataset_name", str(data), "--num_samples", "3",
                             *extra, "--output_json", str(tmp_path / f"{len(extra)}.json")])

    # the default is the checkpoint's protocol: train.py records sliding windows of the training crop
    default = evaluate()
    assert default["num_samples"] == 3 and default["mode"]["mode"] == "slide"
    assert default["mode"]["window"] == [32, 32] and default["mode"]["stride"] == [21, 21]
    assert set(default["per_category_iou"]) == {"background", "disc", "square", "triangle"}
    assert_matches(default, direct_metrics(output, data, 3))
    assert_matches(evaluate("--fastest"), direct_metrics(output, data, 3))  # hf_segmodels.fastest: same numbers
    whole = evaluate("--mode", "whole")
    assert whole["mode"]["window"] is None
    assert_matches(whole, direct_metrics(output, data, 3, protocol=False))
    if name == "segmenter":
        ms = evaluate("--mode", "ms")
        scales = [0.5, 0.75, 1.0, 1.25, 1.5, 1.75]  # the papers' ratios
    else:  # SegFormer's spatial reduction needs >= 29 pixels: no 0.5 x 32
        ms = evaluate("--mode", "ms", "--scales", "1.0", "1.5")
        scales = [1.0, 1.5]
    assert ms["mode"]["scales"] == scales and ms["mode"]["flip"] is True
    assert_matches(ms, direct_metrics(output, data, 3, scales=tuple(scales), flip=True))
    # a window covering the whole (32 x 32) test image is whole-image inference
    assert_matches(evaluate("--mode", "slide", "--window", "32", "--stride", "32"), direct_metrics(output, data, 3))
    if name == "segmenter":
        small = evaluate("--mode", "slide", "--window", "16", "--stride", "8")
        assert_matches(small, direct_metrics(output, data, 3, window=(16, 16), stride=(8, 8)))
        # the default window is the training crop (config.image_size), the default stride 2/3 of it
        default = evaluate("--mode", "slide")
        assert default["mode"]["window"] == [32, 32] and default["mode"]["stride"] == [21, 21]
        with pytest.raises(ValueError, match="--stride needs a sliding window"):
            evaluate("--mode", "whole", "--stride", "8")
    else:  # SegFormer's config has no image_size: the window comes from the recorded protocol
        default = evaluate("--mode", "slide")
        assert default["mode"]["window"] == [32, 32] and default["mode"]["stride"] == [21, 21]


def test_panoptic_quality_of_the_models_own_segments_is_one(tmp_path_factory, tmp_path):
    """Ground truth made from the model's own panoptic output (COCO RGB encoding, `category_id`) must give PQ 1."""
    output = trained("segmenter", tmp_path_factory)
    model = AutoModelForSemanticSegmentation.from_pretrained(output).eval()
    processor = AutoImageProcessor.from_pretrained(output)
    images = [example["image"] for example in load_from_disk(str(dataset_dir(tmp_path_factory)))["validation"]]
    labels, infos = [], []
    for image in images:
        with torch.no_grad():
            outputs = model(**processor(image, return_tensors="pt"))
        panoptic = processor.post_process_panoptic_segmentation(outputs, target_sizes=[(64, 64)])[0]
        ids = panoptic["segmentation"].numpy().astype(np.int64)
        rgb = np.stack([ids % 256, (ids // 256) % 256, ids // 65536], axis=-1).astype(np.uint8)
        labels.append(rgb)
        infos.append([{"id": s["id"], "category_id": s["label_id"], "iscrowd": 0} for s in panoptic["segments_info"]])
    features = Features({"image": Image(), "panoptic": Image(),
                         "segments_info": [{"id": Value("int64"), "category_id": Value("int64"),
                                            "iscrowd": Value("int64")}]})
    DatasetDict({"validation": Dataset.from_dict({"image": images, "panoptic": labels, "segments_info": infos},
                                                 features=features)}).save_to_disk(str(tmp_path / "panoptic"))
    result = run_evaluate(["--model_name_or_path", str(output), "--dataset_name", str(tmp_path / "panoptic"),
                           "--task", "panoptic", "--label_column", "panoptic", "--output_json",
                           str(tmp_path / "pq.json")])
    assert result["pq"] == pytest.approx(1.0) and result["sq"] == pytest.approx(1.0) and result["rq"] == 1.0
    assert json.loads((tmp_path / "pq.json").read_text())["task"] == "panoptic"
