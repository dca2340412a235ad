"""MaskFormer panoptic / instance training (`examples/train.py --task panoptic|instance`): decoding of panoptic data
(COCO's RGB ids, segments_info as list or dict of lists, instance masks), the original's targets (crowd ignored,
stuff one segment), the joint augmentation and padding, COCO-style mask AP, the step schedule of the COCO panoptic
recipe, and end to end through `accelerate launch` (a few steps + bit-identical resume; convergence in `slow`)."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from hf_segmodels.training import panoptic
from hf_segmodels.training.mask_ap import MaskAPMetric
from hf_segmodels.training.recipes import MASKFORMER_PANOPTIC_RECIPE, poly_factor
from hf_segmodels.training.synthetic import PANOPTIC_CLASSES, PANOPTIC_STUFF, make_panoptic_dataset
from test_training_utils import launch, load_train_module, losses, weights


def rgb(ids: np.ndarray) -> Image.Image:
    return Image.fromarray(np.stack([ids % 256, (ids // 256) % 256, ids // 65536], -1).astype(np.uint8), "RGB")


# ------------------------------------------------------------------------------------------------------------------
# Decoding and targets
# ------------------------------------------------------------------------------------------------------------------


def test_rgb_ids_and_single_channel_maps_decode():
    ids = np.array([[0, 1000], [70300, 140301]], dtype=np.int64)
    np.testing.assert_array_equal(panoptic.decode_panoptic_ids(rgb(ids)), ids)
    np.testing.assert_array_equal(panoptic.decode_panoptic_ids(np.asarray(rgb(ids))), ids)
    np.testing.assert_array_equal(panoptic.decode_panoptic_ids(Image.fromarray(ids.astype(np.int32), "I")), ids)
    np.testing.assert_array_equal(panoptic.decode_panoptic_ids(ids[..., None].astype(np.uint32)), ids)
    with pytest.raises(ValueError, match="integer segment ids"):
        panoptic.decode_panoptic_ids(np.zeros((2, 2), np.float32))


def test_segments_info_as_dict_of_lists_and_category_map():
    as_dict = {"id": [5, 6], "category_id": [11, 12], "iscrowd": [0, 1]}
    listed = panoptic.segments_list(as_dict)
    assert listed == [{"id": 5, "category_id": 11, "iscrowd": 0}, {"id": 6, "category_id": 12, "iscrowd": 1}]
    mapped = panoptic.normalize_segments(listed, num_labels=2, category_map={11: 0, 12: 1})
    assert [s["category_id"] for s in mapped] == [0, 1] and [s["iscrowd"] for s in mapped] == [0, 1]
    with pytest.raises(ValueError, match=r"category_id 11 is outside \[0, 2\).*--category_map"):
        panoptic.normalize_segments(listed, num_labels=2)


def test_targets_ignore_crowd_merge_stuff_and_drop_empty_segments():
    ids = np.array([
        [1, 1, 2, 2],
        [3, 3, 4, 4],
        [5, 5, 5, 0],
    ])
    segments = [
        {"id": 1, "category_id": 0, "iscrowd": 0},  # stuff "wall", first segment
        {"id": 2, "category_id": 0, "iscrowd": 0},  # stuff "wall" again: merged into the first
        {"id": 3, "category_id": 2, "iscrowd": 0},  # thing
        {"id": 4, "category_id": 2, "iscrowd": 0},  # another instance of the same thing class: kept apart
        {"id": 5, "category_id": 3, "iscrowd": 1},  # crowd: no target
        {"id": 9, "category_id": 3, "iscrowd": 0},  # no pixel left (cropped away): dropped
    ]
    masks, classes = panoptic.build_targets(ids, segments, stuff_ids=(0, 1))
    assert classes.tolist() == [0, 2, 2]
    np.testing.assert_array_equal(masks[0], (ids == 1) | (ids == 2))
    np.testing.assert_array_equal(masks[1], ids == 3)
    np.testing.assert_array_equal(masks[2], ids == 4)
    assert not masks[:, 2, :3].any(), "crowd pixels belong to no target"
    # without stuff classes every segment is its own target
    _, classes = panoptic.build_targets(ids, segments, stuff_ids=())
    assert classes.tolist() == [0, 0, 2, 2]
    empty_masks, empty_classes = panoptic.build_targets(ids, [segments[4]])
    assert empty_masks.shape == (0, 3, 4) and empty_classes.shape == (0,)


def test_panoptic_samples_read_every_layout(tmp_path):
    data = make_panoptic_dataset(num_train=2, num_validation=1, seed=0)
    samples = panoptic.PanopticSamples(data["train"], "image", "annotation", 4, "train", segments_column="segments_info")
    image, ids, segments = samples.sample(0)
    assert image.shape == (64, 64, 3) and ids.shape == (64, 64)
    assert {s["id"] for s in segments} == set(np.unique(ids).tolist())
    assert max(s["id"] for s in segments) > 65535, "RGB-encoded ids use all three channels"

    instances = make_panoptic_dataset(num_train=2, num_validation=1, seed=0, layout="instance")
    samples = panoptic.PanopticSamples(instances["train"], "image", "annotation", 4, "train", classes_column="classes")
    _, instance_ids, instance_segments = samples.sample(0)
    things = [s for s in segments if s["category_id"] not in PANOPTIC_STUFF]
    assert [s["category_id"] for s in instance_segments] == [s["category_id"] for s in things]
    for thing, instance in zip(things, instance_segments):
        np.testing.assert_array_equal(ids == thing["id"], instance_ids == instance["id"])

    # an instance-id map (ids 1..N) with one class per instance
    from datasets import Dataset, Features, List, Value
    from datasets import Image as ImageFeature

    id_map = Image.fromarray(instance_ids.astype(np.uint8), "L")
    frame = Dataset.from_dict(
        {"image": [Image.fromarray(image)], "annotation": [id_map], "classes": [[s["category_id"] for s in things]]},
        features=Features({"image": ImageFeature(), "annotation": ImageFeature(), "classes": List(Value("int64"))}),
    )
    samples = panoptic.PanopticSamples(frame, "image", "annotation", 4, "train", classes_column="classes")
    _, read_ids, read_segments = samples.sample(0)
    np.testing.assert_array_equal(read_ids, instance_ids)
    assert read_segments == instance_segments

    bad = frame.map(lambda example: {"classes": example["classes"][:-1]})
    with pytest.raises(ValueError, match="segment ids .* missing from its segments_info"):
        panoptic.PanopticSamples(bad, "image", "annotation", 4, "train", classes_column="classes").sample(0)


def test_augmentation_is_joint_and_seeded_and_batches_pad():
    ids = np.repeat(np.arange(12, dtype=np.int64)[None], 8, axis=0)  # 8 x 12, one id per column
    image = np.stack([ids * 20] * 3, -1).astype(np.uint8)
    flip = panoptic.PanopticAugmentation(image_mean=(0.0,) * 3, image_std=(1.0,) * 3, min_sizes=(8,), max_size=100,
                                         crop_prob=0.0, flip_prob=1.0)
    pixels, out_ids = flip(image, ids, np.random.default_rng(0))
    np.testing.assert_array_equal(out_ids, ids[:, ::-1])
    np.testing.assert_allclose(pixels[0] * 255, ids[:, ::-1] * 20, atol=1e-3)

    augmentation = panoptic.PanopticAugmentation(image_mean=(0.0,) * 3, image_std=(1.0,) * 3, min_sizes=(16, 24),
                                                 max_size=40, crop_min_sizes=(8, 12), crop_size_range=(6, 10))
    for seed in range(8):
        first = augmentation(image, ids, np.random.default_rng(seed))
        second = augmentation(image, ids, np.random.default_rng(seed))
        np.testing.assert_array_equal(first[0], second[0])
        np.testing.assert_array_equal(first[1], second[1])
        assert first[0].shape[1:] == first[1].shape and min(first[1].shape) in (16, 24) or max(first[1].shape) == 40
        # nearest-neighbour ids stay ids; every column of the (axis-aligned) id map keeps one id
        assert set(np.unique(first[1])) <= set(range(12))

    assert panoptic.shortest_edge_size(480, 640, 800, 1333) == (800, 1067)
    assert panoptic.shortest_edge_size(100, 1000, 800, 1333) == (133, 1333)

    examples = [
        {"pixel_values": torch.ones(3, 40, 50), "mask_labels": torch.ones(2, 40, 50), "class_labels": torch.tensor([1, 2])},
        {"pixel_values": torch.ones(3, 64, 33), "mask_labels": torch.ones(0, 64, 33), "class_labels": torch.zeros(0)},
    ]
    batch = panoptic.collate_panoptic(examples, size_divisibility=32)
    assert batch["pixel_values"].shape == (2, 3, 64, 64)
    assert batch["pixel_values"][0, :, 40:].abs().sum() == 0 and batch["pixel_values"][0, :, :40, :50].min() == 1
    assert [m.shape for m in batch["mask_labels"]] == [(2, 64, 64), (0, 64, 64)]
    assert batch["mask_labels"][0][:, 40:].sum() == 0 and batch["class_labels"][0].tolist() == [1, 2]


# ------------------------------------------------------------------------------------------------------------------
# Mask AP, recipe
# ------------------------------------------------------------------------------------------------------------------


def box(y, x, h, w, size=16):
    mask = np.zeros((size, size), dtype=bool)
    mask[y:y + h, x:x + w] = True
    return mask


def test_mask_ap_follows_coco_definitions():
    truth = np.stack([box(0, 0, 4, 4), box(8, 8, 6, 6)])
    perfect = MaskAPMetric()
    perfect.update(truth, [0.9, 0.8], [1, 2], truth, [1, 2], [False, False])
    assert perfect.compute()["ap"] == pytest.approx(1.0)

    # a duplicate with a lower score is a false positive after the true positive: AP stays 1 (precision is only
    # read up to the recall reached); ranked above it, it costs precision at every recall level
    metric = MaskAPMetric()
    metric.update(np.stack([truth[0], truth[0]]), [0.9, 0.5], [1, 1], truth[:1], [1], [False])
    assert metric.compute()["ap"] == pytest.approx(1.0)
    metric = MaskAPMetric()
    metric.update(np.stack([box(4, 4, 4, 4), truth[0]]), [0.9, 0.5], [1, 1], truth[:1], [1], [False])
    assert metric.compute()["ap"] == pytest.approx(0.5)

    # IoU 9 / 16 = 0.5625 counts at thresholds 0.50 and 0.55 only
    metric = MaskAPMetric()
    metric.update(box(0, 0, 3, 3)[None], [0.9], [1], truth[:1], [1], [False])
    result = metric.compute()
    assert result["ap50"] == pytest.approx(1.0) and result["ap75"] == 0.0 and result["ap"] == pytest.approx(0.2)

    # detections on a crowd region are ignored (neither true nor false positives); crowds are not ground truth
    metric = MaskAPMetric()
    metric.update(np.stack([box(8, 8, 3, 3), box(8, 11, 3, 3), truth[0]]), [0.95, 0.9, 0.5], [1, 1, 1],
                  np.stack([truth[0], box(8, 8, 6, 6)]), [1, 1], [False, True])
    assert metric.compute()["ap"] == pytest.approx(1.0)


def test_coco_panoptic_recipe_steps_the_learning_rate_at_two_thirds():
    recipe = MASKFORMER_PANOPTIC_RECIPE
    assert (recipe.optimizer, recipe.learning_rate, recipe.weight_decay) == ("adamw", 1e-4, 1e-4)
    assert (recipe.backbone_lr_multiplier, recipe.max_grad_norm, recipe.warmup_steps) == (0.1, 0.01, 0)
    factors = [poly_factor(step, 554400, 1e-4, recipe) for step in (0, 369599, 369600, 554399)]
    assert factors == pytest.approx([1.0, 1.0, 0.1, 0.1])
    assert "step x0.1" in recipe.describe()


def test_panoptic_card_reports_pq():
    from hf_segmodels.training.model_card import render_training_card

    metrics = {"pq": 0.5, "sq": 0.8, "rq": 0.625, "pq_things": 0.4, "pq_stuff": 0.6,
               "per_class": {"wall": {"pq": 0.7, "sq": 0.8, "rq": 0.875}}}
    card = render_training_card(
        architecture="maskformer", model_name="m", repo_id="org/m", num_labels=4, dataset="org/data",
        split="validation", metrics=metrics, recipe="r", steps=1, batch_size=1, augmentation="a", seed=0,
        command="c", task="panoptic",
    )
    text = str(card)
    assert "panoptic segmentation model" in text and "| PQ | 50.00 |" in text and "| PQ wall | 70.00 |" in text
    assert "type: pq" in text and "AutoModelForUniversalSegmentation" in text


# ------------------------------------------------------------------------------------------------------------------
# End to end through accelerate launch
# ------------------------------------------------------------------------------------------------------------------

# 16 images, batches of 4: 8 steps are 2 epochs; 64-pixel inputs (MaskFormer tiny's stride 32 needs 64).
PANOPTIC_ARGS = [
    "--task", "panoptic", "--model_type", "maskformer", "--config_name", "tiny", "--stuff_classes", "wall", "ground",
    "--min_size_train", "64", "--max_size_train", "96", "--crop_min_sizes", "64", "80", "--crop_size_range", "48", "64",
    "--max_train_steps", "8", "--per_device_train_batch_size", "4", "--checkpointing_steps", "2",
    "--learning_rate", "1e-3", "--max_grad_norm", "1.0", "--seed", "0", "--report_to", "none", "--eval_steps", "4",
]


def panoptic_dir(tmp_path_factory, layout="panoptic"):
    path = tmp_path_factory.mktemp(f"synthetic_{layout}") / "data"
    make_panoptic_dataset(num_train=16, num_validation=4, seed=0, layout=layout).save_to_disk(str(path))
    (path / "id2label.json").write_text(json.dumps(dict(enumerate(PANOPTIC_CLASSES))))
    return path


def test_panoptic_training_runs_evaluates_and_resumes_bit_identically(tmp_path_factory, tmp_path):
    data = str(panoptic_dir(tmp_path_factory))
    uninterrupted = tmp_path / "full"
    launch([*PANOPTIC_ARGS, "--dataset_name", data, "--output_dir", str(uninterrupted)])
    results = json.loads((uninterrupted / "all_results.json").read_text())
    assert results["task"] == "panoptic"
    for key in ("eval_pq", "eval_sq", "eval_rq", "eval_pq_things", "eval_pq_stuff", "eval_per_class"):
        assert key in results, key
    assert [json.loads(line)["step"] for line in (uninterrupted / "eval_log.jsonl").read_text().splitlines()] == [4, 8]
    card = (uninterrupted / "README.md").read_text()
    assert "panoptic segmentation model" in card and f"| PQ | {100 * results['eval_pq']:.2f} |" in card
    config = json.loads((uninterrupted / "config.json").read_text())
    assert config["test_protocol"]["task"] == "panoptic" and config["test_protocol"]["mode"] == "whole"
    assert json.loads((uninterrupted / "preprocessor_config.json").read_text())["label_ids_to_fuse"] == [0, 1]
    history = losses(uninterrupted)
    assert len(history) == 8 and all(np.isfinite(history))

    # step_2 is mid-epoch; the resumed run (with an evaluation at step 4 on the way) ends with the same weights
    resumed = tmp_path / "resumed"
    launch([*PANOPTIC_ARGS, "--dataset_name", data, "--output_dir", str(resumed),
            "--resume_from_checkpoint", str(uninterrupted / "step_2")])
    first, second = weights(uninterrupted), weights(resumed)
    assert first.keys() == second.keys()
    for key in first:
        torch.testing.assert_close(first[key], second[key], atol=0, rtol=0, msg=key)
    assert losses(resumed) == history[2:]


def test_instance_training_from_instance_masks_reports_mask_ap(tmp_path_factory, tmp_path):
    data = str(panoptic_dir(tmp_path_factory, "instance"))
    output = tmp_path / "instance"
    args = [a for a in PANOPTIC_ARGS if a not in ("wall", "ground", "--stuff_classes")]
    args[args.index("panoptic")] = "instance"
    args[args.index("--max_train_steps") + 1] = "2"
    launch([*args, "--dataset_name", data, "--output_dir", str(output)])
    results = json.loads((output / "all_results.json").read_text())
    assert results["task"] == "instance" and {"eval_mask_ap", "eval_mask_ap50", "eval_mask_ap75"} <= set(results)
    assert set(results["eval_per_class_ap"]) == {"disc", "square"}
    assert "mask AP" in (output / "README.md").read_text()


def test_task_flags_fail_clearly(tmp_path_factory, tmp_path):
    train = load_train_module()
    data = str(panoptic_dir(tmp_path_factory))
    with pytest.raises(SystemExit):
        train.parse_args(["--task", "panoptic", "--model_type", "segformer", "--dataset_name", data,
                          "--output_dir", str(tmp_path)])
    with pytest.raises(SystemExit):
        train.parse_args(["--task", "panoptic", "--model_type", "maskformer", "--streaming", "--max_train_steps", "1",
                          "--dataset_name", data, "--output_dir", str(tmp_path)])
    base = [*PANOPTIC_ARGS, "--dataset_name", data, "--max_train_steps", "1"]
    with pytest.raises(ValueError, match="no column --segments_info_column 'segments'"):
        train.main([*base, "--segments_info_column", "segments", "--output_dir", str(tmp_path / "a")])
    with pytest.raises(ValueError, match="Unknown class 'sky'"):
        train.main([*base, "--stuff_classes", "sky", "--output_dir", str(tmp_path / "b")])


# ------------------------------------------------------------------------------------------------------------------
# Convergence (slow)
# ------------------------------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_tiny_maskformer_reaches_pq_half_on_synthetic_panoptic_data(tmp_path):
    data = tmp_path / "data"
    make_panoptic_dataset(num_train=400, num_validation=50, seed=0).save_to_disk(str(data))
    (data / "id2label.json").write_text(json.dumps(dict(enumerate(PANOPTIC_CLASSES))))
    output = tmp_path / "out"
    launch(CONVERGENCE_ARGS + ["--dataset_name", str(data), "--output_dir", str(output)], timeout=3600)
    results = json.loads((output / "all_results.json").read_text())
    assert results["eval_pq"] >= 0.5, results


# The COCO recipe is tuned for 554k steps at batch 64; a CPU run of 1200 steps needs AdamW at a higher rate with the
# whole model at that rate, and 64-pixel images (the COCO sizes scaled down). After so short a run the tiny model's
# class probabilities rarely exceed the COCO config's OBJECT_MASK_THRESHOLD 0.8 (measured: PQ 0.23 at 0.8, 0.57 at
# 0.5, the stuff classes most affected), so the queries are kept from probability 0.5 on.
CONVERGENCE_ARGS = [
    "--task", "panoptic", "--model_type", "maskformer", "--config_name", "tiny", "--stuff_classes", "wall", "ground",
    "--min_size_train", "64", "--max_size_train", "64", "--crop_min_sizes", "64", "--crop_size_range", "48", "64",
    "--max_train_steps", "1200", "--per_device_train_batch_size", "8", "--learning_rate", "1e-3",
    "--backbone_lr_multiplier", "1", "--max_grad_norm", "1.0", "--seed", "0", "--report_to", "none",
    "--object_mask_threshold", "0.5",
]
