"""MaskFormer image processor: post-processing equal to transformers' MaskFormerImageProcessorPil, annotation
conversion, and the image-segmentation pipeline."""

import numpy as np
import PIL.Image
import pytest
import torch
from tiny import NUM_LABELS, tiny_config, tiny_maskformer_backbone
from transformers import MaskFormerImageProcessorPil, pipeline
from transformers.utils import ModelOutput

import hf_segmodels  # noqa: F401  (registers the Auto classes)
from hf_segmodels import MaskFormerForUniversalSegmentation, MaskFormerImageProcessor


def random_outputs(seed: int, batch: int = 2, queries: int = 12, labels: int = 6, size=(20, 28), sharp: float = 4.0):
    generator = torch.Generator().manual_seed(seed)
    class_logits = sharp * torch.randn(batch, queries, labels + 1, generator=generator)
    mask_logits = 3 * torch.randn(batch, queries, *size, generator=generator)
    return ModelOutput(class_queries_logits=class_logits, masks_queries_logits=mask_logits)


def assert_segmentations_equal(ours, theirs):
    assert len(ours) == len(theirs)
    for a, b in zip(ours, theirs):
        assert a["segments_info"] == b["segments_info"]
        torch.testing.assert_close(a["segmentation"].long(), b["segmentation"].long(), rtol=0, atol=0)


def with_recorded_sizes(outputs, image_sizes, padded_size):
    """The outputs as our model returns them for a padded batch: each image's own size and the padded input size."""
    batch = outputs.class_queries_logits.shape[0]
    return ModelOutput(
        class_queries_logits=outputs.class_queries_logits, masks_queries_logits=outputs.masks_queries_logits,
        image_sizes=torch.tensor(image_sizes), padded_sizes=torch.tensor([padded_size] * batch),
    )


def original_resize(masks, image_size, padded_size, target_size):
    """detectron2 / MaskFormer: F.interpolate to the padded input, crop (`sem_seg_postprocess`), resize to the output."""
    masks = torch.nn.functional.interpolate(masks[None], size=padded_size, mode="bilinear", align_corners=False)[0]
    masks = masks[:, : image_size[0], : image_size[1]]
    if target_size is not None:
        masks = torch.nn.functional.interpolate(masks[None], size=target_size, mode="bilinear", align_corners=False)[0]
    return masks


def original_semantic(class_logits, mask_logits, image_size, padded_size, target_size, before_inference):
    """MaskFormer.forward (eval) + semantic_inference, as the original orders them; returns the argmax."""
    classes = class_logits.softmax(-1)[:, :-1]
    if before_inference:
        masks = original_resize(mask_logits, image_size, padded_size, target_size)
        return torch.einsum("qc,qhw->chw", classes, masks.sigmoid()).argmax(0)
    masks = torch.nn.functional.interpolate(mask_logits[None], size=padded_size, mode="bilinear", align_corners=False)[0]
    scores = torch.einsum("qc,qhw->chw", classes, masks.sigmoid())[:, : image_size[0], : image_size[1]]
    if target_size is not None:
        scores = torch.nn.functional.interpolate(scores[None], size=target_size, mode="bilinear", align_corners=False)[0]
    return scores.argmax(0)


def original_panoptic(class_logits, mask_logits, object_mask_threshold, overlap_threshold, stuff):
    """A literal port of MaskFormer's `panoptic_inference` on (already resized) mask logits."""
    scores, labels = class_logits.softmax(-1).max(-1)
    mask_pred = mask_logits.sigmoid()
    keep = labels.ne(class_logits.shape[-1] - 1) & (scores > object_mask_threshold)
    cur_scores, cur_classes, cur_masks = scores[keep], labels[keep], mask_pred[keep]
    cur_prob_masks = cur_scores.view(-1, 1, 1) * cur_masks
    panoptic_seg = torch.zeros(mask_pred.shape[-2:], dtype=torch.int32)
    segments_info = []
    current_segment_id = 0
    if cur_masks.shape[0] == 0:
        return panoptic_seg, segments_info
    cur_mask_ids = cur_prob_masks.argmax(0)
    stuff_memory_list = {}
    for k in range(cur_classes.shape[0]):
        pred_class = cur_classes[k].item()
        isthing = pred_class not in stuff
        mask = cur_mask_ids == k
        mask_area = mask.sum().item()
        original_area = (cur_masks[k] >= 0.5).sum().item()
        if mask_area > 0 and original_area > 0:
            if mask_area / original_area < overlap_threshold:
                continue
            if not isthing:
                if int(pred_class) in stuff_memory_list:
                    panoptic_seg[mask] = stuff_memory_list[int(pred_class)]
                    continue
                stuff_memory_list[int(pred_class)] = current_segment_id + 1
            current_segment_id += 1
            panoptic_seg[mask] = current_segment_id
            segments_info.append({"id": current_segment_id, "isthing": bool(isthing), "category_id": int(pred_class)})
    return panoptic_seg, segments_info


def assert_panoptic_equals_original(ours, outputs, sizes, threshold, overlap, stuff):
    for index, result in enumerate(ours):
        image_size, padded_size, target_size = sizes[index]
        masks = outputs.masks_queries_logits[index]
        if padded_size is None:
            masks = masks if target_size is None else torch.nn.functional.interpolate(
                masks[None], size=target_size, mode="bilinear", align_corners=False)[0]
        else:
            masks = original_resize(masks, image_size, padded_size, target_size)
        expected, info = original_panoptic(outputs.class_queries_logits[index], masks, threshold, overlap, stuff)
        torch.testing.assert_close(result["segmentation"].long(), expected.long(), rtol=0, atol=0)
        assert [(s["id"], s["label_id"], s["was_fused"]) for s in result["segments_info"]] == [
            (s["id"], s["category_id"], not s["isthing"]) for s in info
        ]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_semantic_post_processing_without_recorded_sizes_or_target_equals_transformers(seed):
    outputs = random_outputs(seed)
    ours = MaskFormerImageProcessor().post_process_semantic_segmentation(outputs)
    theirs = MaskFormerImageProcessorPil().post_process_semantic_segmentation(outputs)
    for a, b in zip(ours, theirs):
        assert a.dtype == torch.int64
        torch.testing.assert_close(a, b, rtol=0, atol=0)


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("before_inference", [False, True])
@pytest.mark.parametrize("target_sizes", [None, [(37, 50), (23, 31)]])
def test_semantic_post_processing_follows_the_original_order(seed, before_inference, target_sizes):
    """Upsample to the padded input, crop each image, then combine + resize (semantic releases) or resize + combine
    (PANOPTIC_ON), exactly as the original."""
    image_sizes, padded = [(70, 101), (61, 88)], (80, 112)
    outputs = with_recorded_sizes(random_outputs(seed), image_sizes, padded)
    processor = MaskFormerImageProcessor(sem_seg_postprocessing_before_inference=before_inference)
    ours = processor.post_process_semantic_segmentation(outputs, target_sizes=target_sizes)
    for index, result in enumerate(ours):
        target = None if target_sizes is None else target_sizes[index]
        expected = original_semantic(outputs.class_queries_logits[index], outputs.masks_queries_logits[index],
                                     image_sizes[index], padded, target, before_inference)  # fmt: skip
        assert result.shape == (target or image_sizes[index])
        torch.testing.assert_close(result, expected, rtol=0, atol=0)


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
@pytest.mark.parametrize("threshold", [0.0, 0.2, 0.5])
def test_instance_post_processing_equals_transformers_at_mask_resolution(seed, threshold):
    outputs = random_outputs(seed)
    kwargs = {"threshold": threshold}
    ours = MaskFormerImageProcessor().post_process_instance_segmentation(outputs, **kwargs)
    theirs = MaskFormerImageProcessorPil().post_process_instance_segmentation(outputs, **kwargs)
    assert_segmentations_equal(ours, theirs)
    binary_ours = MaskFormerImageProcessor().post_process_instance_segmentation(outputs, return_binary_maps=True, **kwargs)
    binary_theirs = MaskFormerImageProcessorPil().post_process_instance_segmentation(
        outputs, return_binary_maps=True, **kwargs
    )
    for a, b in zip(binary_ours, binary_theirs):
        torch.testing.assert_close(a["segmentation"].float(), b["segmentation"].float(), rtol=0, atol=0)
    rle_ours = MaskFormerImageProcessor().post_process_instance_segmentation(outputs, return_coco_annotation=True, **kwargs)
    rle_theirs = MaskFormerImageProcessorPil().post_process_instance_segmentation(
        outputs, return_coco_annotation=True, **kwargs
    )
    for a, b in zip(rle_ours, rle_theirs):
        assert a["segmentation"] == [[int(v) for v in runs] for runs in b["segmentation"]]


def test_instance_post_processing_crops_the_padding_and_resizes_logits_first():
    outputs = with_recorded_sizes(random_outputs(0), [(70, 101), (61, 88)], (80, 112))
    results = MaskFormerImageProcessor().post_process_instance_segmentation(
        outputs, threshold=0.0, target_sizes=[(37, 50), (61, 88)], return_binary_maps=True
    )
    for index, (result, target) in enumerate(zip(results, [(37, 50), (61, 88)])):
        assert result["segmentation"].shape[-2:] == target
        masks = original_resize(outputs.masks_queries_logits[index], [(70, 101), (61, 88)][index], (80, 112), target)
        binary = masks.sigmoid() > 0.5
        assert any(torch.equal(result["segmentation"][0].bool(), b) for b in binary)


@pytest.mark.parametrize("seed", [0, 1, 2, 3, 4])
@pytest.mark.parametrize(
    "kwargs",
    [
        {},
        {"threshold": 0.3, "overlap_mask_area_threshold": 0.5, "label_ids_to_fuse": {1, 3}},
        {"threshold": 0.8, "overlap_mask_area_threshold": 0.0, "label_ids_to_fuse": {0, 2, 4}},
        {"threshold": 0.999},  # nothing kept: 0 everywhere, no segment
    ],
)
@pytest.mark.parametrize("sizes", ["none", "target", "recorded", "recorded+target"])
def test_panoptic_post_processing_equals_the_original(seed, kwargs, sizes):
    outputs = random_outputs(seed)
    image_sizes, padded, targets = [(70, 101), (61, 88)], (80, 112), [(37, 50), (23, 31)]
    if sizes.startswith("recorded"):
        outputs = with_recorded_sizes(outputs, image_sizes, padded)
    target_sizes = targets if sizes.endswith("target") else None
    ours = MaskFormerImageProcessor().post_process_panoptic_segmentation(outputs, target_sizes=target_sizes, **kwargs)
    per_image = [
        (image_sizes[i] if sizes.startswith("recorded") else None, padded if sizes.startswith("recorded") else None,
         targets[i] if target_sizes else None)
        for i in range(2)
    ]  # fmt: skip
    assert_panoptic_equals_original(ours, outputs, per_image, kwargs.get("threshold", 0.5),
                                    kwargs.get("overlap_mask_area_threshold", 0.8),
                                    kwargs.get("label_ids_to_fuse", set()))  # fmt: skip


def test_panoptic_label_ids_to_fuse_default_to_the_processors_stuff_classes():
    outputs = fused_outputs()
    processor = MaskFormerImageProcessor(label_ids_to_fuse=[1])
    ours = processor.post_process_panoptic_segmentation(outputs)[0]
    assert [(s["id"], s["label_id"], s["was_fused"]) for s in ours["segments_info"]] == [
        (1, 1, True), (2, 3, False), (3, 0, False)
    ]
    assert MaskFormerImageProcessor.from_dict(processor.to_dict()).label_ids_to_fuse == [1]


def fused_outputs():
    """Queries 0 and 2 predict class 1 (to fuse), query 1 class 3 and query 3 class 0, on disjoint quarters."""
    class_logits = torch.full((1, 5, 5), -10.0)
    for query, label in enumerate([1, 3, 1, 0]):
        class_logits[0, query, label] = 10.0
    class_logits[0, 4, -1] = 10.0  # no object
    mask_logits = torch.full((1, 5, 8, 8), -10.0)
    for query, (rows, cols) in enumerate([(slice(0, 4), slice(0, 4)), (slice(0, 4), slice(4, 8)),
                                          (slice(4, 8), slice(0, 4)), (slice(4, 8), slice(4, 8))]):
        mask_logits[0, query, rows, cols] = 10.0
    return ModelOutput(class_queries_logits=class_logits, masks_queries_logits=mask_logits)


def test_panoptic_fusion():
    outputs = fused_outputs()
    ours = MaskFormerImageProcessor().post_process_panoptic_segmentation(outputs, label_ids_to_fuse={1})[0]
    expected = torch.tensor([[1, 2], [1, 3]]).repeat_interleave(4, 0).repeat_interleave(4, 1)
    torch.testing.assert_close(ours["segmentation"].long(), expected)
    assert [(s["id"], s["label_id"], s["was_fused"]) for s in ours["segments_info"]] == [
        (1, 1, True), (2, 3, False), (3, 0, False)
    ]
    # transformers reuses id 2 for the last segment after the fused one (and lists the fused class twice); without
    # fusion both agree
    theirs = MaskFormerImageProcessorPil().post_process_panoptic_segmentation(outputs, label_ids_to_fuse={1})[0]
    assert theirs["segmentation"].max() == 2
    assert_segmentations_equal(
        MaskFormerImageProcessor().post_process_panoptic_segmentation(outputs),
        MaskFormerImageProcessorPil().post_process_panoptic_segmentation(outputs, label_ids_to_fuse=set()),
    )


def test_semantic_annotations_become_labels_and_instance_maps_mask_labels():
    processor = MaskFormerImageProcessor(size={"height": 16, "width": 24}, size_divisor=0)
    image = np.random.default_rng(0).integers(0, 255, (32, 48, 3), dtype=np.uint8)
    semantic = np.zeros((32, 48), dtype=np.uint8)
    semantic[:, 24:] = 3
    semantic[:8] = 255
    encoded = processor(image, segmentation_maps=semantic, return_tensors="pt")
    assert encoded["pixel_values"].shape == (1, 3, 16, 24) and encoded["labels"].shape == (1, 16, 24)
    assert set(encoded["labels"].unique().tolist()) == {0, 3, 255}

    instances = np.zeros((32, 48), dtype=np.uint8)  # 0 = unlabelled (reduced to 255)
    instances[8:, :16], instances[8:, 16:32], instances[8:, 32:] = 1, 2, 3
    mapping = {1: 4, 2: 4, 3: 2}  # two instances of class 4 (3 after reduction), one of class 2 (1)
    theirs = MaskFormerImageProcessorPil(size={"height": 16, "width": 24}, size_divisor=0, ignore_index=255,
                                         do_reduce_labels=True)(
        [image], segmentation_maps=[instances], instance_id_to_semantic_id=mapping, return_tensors="pt"
    )
    ours = processor([image], segmentation_maps=[instances], instance_id_to_semantic_id=mapping,
                     do_reduce_labels=True, return_tensors="pt")
    # `labels`: the semantic map of the same annotation (what Trainer's compute_metrics receives), 255 unlabelled
    assert ours["labels"].shape == (1, 16, 24) and set(ours["labels"].unique().tolist()) == {1, 3, 255}
    torch.testing.assert_close(ours["class_labels"][0], theirs["class_labels"][0])
    assert ours["class_labels"][0].tolist() == [3, 3, 1]
    torch.testing.assert_close(ours["mask_labels"][0], theirs["mask_labels"][0])
    with pytest.raises(ValueError, match=r"Segment ids \[2\]"):
        processor([image], segmentation_maps=[instances], instance_id_to_semantic_id={0: 0, 1: 1, 3: 1})


@pytest.mark.parametrize("size_divisor", [0, 32])
def test_batches_are_padded_like_the_original_and_transformers(size_divisor):
    """Images of different sizes: zero-padded (after normalisation) bottom / right to the largest size rounded up to
    `size_divisor`, with `pixel_mask`; labels padded with 255 (as transformers' processor with the same settings)."""
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 255, (37, 50, 3), dtype=np.uint8), rng.integers(0, 255, (45, 29, 3), dtype=np.uint8)]
    maps = [rng.integers(0, 5, image.shape[:2], dtype=np.uint8) for image in images]
    ours = MaskFormerImageProcessor(do_resize=False, size_divisor=size_divisor)(
        images, segmentation_maps=maps, return_tensors="pt")
    theirs = MaskFormerImageProcessorPil(do_resize=False, size_divisor=size_divisor, ignore_index=255)(
        images, segmentation_maps=maps, return_tensors="pt")
    expected = (45, 50) if size_divisor == 0 else (64, 64)
    assert tuple(ours["pixel_values"].shape) == (2, 3, *expected)
    if size_divisor == 0:  # (transformers rounds the RESIZED size to size_divisor; the original pads to it)
        torch.testing.assert_close(ours["pixel_mask"], theirs["pixel_mask"].long(), rtol=0, atol=0)
        torch.testing.assert_close(ours["pixel_values"], theirs["pixel_values"], rtol=0, atol=1e-5)
    assert ours["pixel_mask"][0].sum() == 37 * 50 and ours["pixel_mask"][1, :45, :29].all()
    assert (ours["pixel_values"][1, :, :, 29:] == 0).all() and (ours["labels"][1, :, 29:] == 255).all()
    assert (ours["labels"][0, :37, :50] == torch.from_numpy(maps[0]).long()).all()
    model_input = MaskFormerImageProcessor(do_resize=False, do_pad=False)(images[:1], return_tensors="pt")
    assert "pixel_mask" not in model_input and tuple(model_input["pixel_values"].shape) == (1, 3, 37, 50)


@pytest.fixture(scope="module")
def pipeline_model_dir(tmp_path_factory):
    torch.manual_seed(0)
    labels = {i: f"class_{i}" for i in range(NUM_LABELS)}
    config = tiny_config("maskformer", NUM_LABELS, backbone_config=tiny_maskformer_backbone("swin"), id2label=labels,
                         label2id={v: k for k, v in labels.items()})  # fmt: skip
    model = MaskFormerForUniversalSegmentation(config).eval()
    with torch.no_grad():
        # every query: class 0 with probability ~0.67 (never "no object"), a mask covering the whole image
        model.class_predictor.weight.zero_()
        bias = torch.full((NUM_LABELS + 1,), -20.0)
        bias[:3] = torch.tensor([20.0, 19.0, 18.0])
        model.class_predictor.bias.copy_(bias)
        model.pixel_decoder.mask_projection.weight.zero_()
        model.pixel_decoder.mask_projection.bias.fill_(1.0)
        model.mask_embedder.layers[-1].weight.zero_()
        model.mask_embedder.layers[-1].bias.fill_(10.0 / 32)
    directory = tmp_path_factory.mktemp("maskformer_pipeline")
    model.save_pretrained(directory)
    MaskFormerImageProcessor(size={"height": 64, "width": 64}).save_pretrained(directory)
    return directory


@pytest.mark.parametrize("subtask", [None, "panoptic", "instance", "semantic"])
def test_pipeline(pipeline_model_dir, subtask):
    segmenter = pipeline("image-segmentation", model=str(pipeline_model_dir), trust_remote_code=False)
    image = PIL.Image.fromarray(np.random.default_rng(1).integers(0, 255, (40, 56, 3), dtype=np.uint8))
    kwargs = {} if subtask is None else {"subtask": subtask}
    if subtask in (None, "panoptic", "instance"):
        kwargs["threshold"] = 0.5
    annotations = segmenter(image, **kwargs)
    assert annotations, f"no segment for subtask {subtask}"
    for annotation in annotations:
        assert annotation["label"].startswith("class_")
        assert annotation["mask"].size == (56, 40)
        if subtask != "semantic":
            assert isinstance(annotation["score"], float)
    if subtask in (None, "panoptic"):
        assert [(a["label"], round(a["score"], 2)) for a in annotations] == [("class_0", 0.67)]
        assert np.array(annotations[0]["mask"]).min() == 255


def test_panoptic_post_processing_with_ties_across_query_chunks_equals_the_original():
    """40 kept queries (several chunks of the running arg-max) with saturated masks and equal scores: ties must go to
    the lower query index exactly as the original's arg-max over the whole stack."""
    generator = torch.Generator().manual_seed(0)
    queries, labels = 40, 5
    class_logits = torch.full((1, queries, labels + 1), -20.0)
    class_logits[0, torch.arange(queries), torch.arange(queries) % labels] = 20.0  # equal scores for all queries
    blocks = torch.randint(0, 4, (1, queries, 6, 7), generator=generator)
    mask_logits = torch.where(blocks == 0, 60.0, -60.0)  # sigmoid saturates to exactly 1.0: many ties
    mask_logits = torch.nn.functional.interpolate(mask_logits, size=(12, 14), mode="nearest")
    outputs = ModelOutput(class_queries_logits=class_logits, masks_queries_logits=mask_logits)
    for target_sizes in (None, [(25, 30)]):
        for kwargs in ({}, {"overlap_mask_area_threshold": 0.0}):
            ours = MaskFormerImageProcessor().post_process_panoptic_segmentation(
                outputs, target_sizes=target_sizes, **kwargs)
            if kwargs:
                assert len(ours[0]["segments_info"]) > 8
            sizes = [(None, None, None if target_sizes is None else target_sizes[0])]
            assert_panoptic_equals_original(ours, outputs, sizes, 0.5, kwargs.get("overlap_mask_area_threshold", 0.8),
                                            set())


def test_semantic_pipeline_takes_the_map_without_the_scores_when_the_image_is_not_resized(monkeypatch):
    """A 64x64 image processed at 64x64: the pipeline's semantic answer comes from `full_resolution_semantic_map`
    (no (num_labels, H, W) scores) and equals the argmax of `full_resolution_logits`; a 40x56 image (resized to
    64x64, scores resized back) goes through the scores."""
    torch.manual_seed(0)
    labels = {i: f"class_{i}" for i in range(NUM_LABELS)}
    config = tiny_config("maskformer", NUM_LABELS, id2label=labels, label2id={v: k for k, v in labels.items()},
                         test_protocol={"task": "semantic", "mode": "whole"})  # fmt: skip
    model = MaskFormerForUniversalSegmentation(config).eval()
    classify = MaskFormerForUniversalSegmentation.mask_classification

    def varied(self, *args, **kwargs):  # a tiny random model predicts one class everywhere: fixed varied predictions
        class_logits, mask_logits, embeddings = classify(self, *args, **kwargs)
        generator = torch.Generator().manual_seed(0)
        class_logits = 5 * torch.randn(class_logits.shape, generator=generator)
        return class_logits, 5 * torch.randn(mask_logits.shape, generator=generator), embeddings

    monkeypatch.setattr(MaskFormerForUniversalSegmentation, "mask_classification", varied)
    processor = MaskFormerImageProcessor(size={"height": 64, "width": 64})
    segmenter = pipeline("image-segmentation", model=model, image_processor=processor)
    calls = []
    original = MaskFormerForUniversalSegmentation.full_resolution_semantic_map
    monkeypatch.setattr(MaskFormerForUniversalSegmentation, "full_resolution_semantic_map",
                        lambda self, pixel_values: calls.append(pixel_values.shape) or original(self, pixel_values))
    for shape, direct in (((64, 64, 3), True), ((40, 56, 3), False)):
        calls.clear()
        image = PIL.Image.fromarray(np.random.default_rng(2).integers(0, 255, shape, dtype=np.uint8))
        annotations = segmenter(image)
        assert bool(calls) == direct
        pixel_values = processor(image, return_tensors="pt")["pixel_values"]
        with torch.no_grad():
            scores = model.full_resolution_logits(pixel_values)
            if not direct:
                scores = torch.nn.functional.interpolate(scores, size=shape[:2], mode="bilinear", align_corners=False)
        expected = scores[0].argmax(0).numpy()
        obtained = np.full(shape[:2], -1)
        for annotation in annotations:
            assert annotation["score"] is None
            obtained[np.array(annotation["mask"]) == 255] = config.label2id[annotation["label"]]
        assert len(annotations) > 1 and (obtained == expected).all()
