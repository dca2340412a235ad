"""MaskFormer image processor: post-processing equal to transformers' MaskFormerImageProcessorPil, annotation
conversion, and the image-segmentation pipeline."""

import numpy as np
import PIL.Image
import pytest
import torch
from transformers import MaskFormerImageProcessorPil, pipeline
from transformers.utils import ModelOutput

import hf_segmodels  # noqa: F401  (registers the Auto classes)
from hf_segmodels import MaskFormerConfig, MaskFormerForUniversalSegmentation, MaskFormerImageProcessor
from test_maskformer_utils import NUM_LABELS, tiny_backbone, tiny_decoder


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


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("target_sizes", [None, [(37, 50), (23, 31)]])
def test_semantic_post_processing_equals_transformers(seed, target_sizes):
    outputs = random_outputs(seed)
    ours = MaskFormerImageProcessor().post_process_semantic_segmentation(outputs, target_sizes=target_sizes)
    theirs = MaskFormerImageProcessorPil().post_process_semantic_segmentation(outputs, target_sizes=target_sizes)
    for a, b in zip(ours, theirs):
        assert a.dtype == torch.int64
        torch.testing.assert_close(a, b, rtol=0, atol=0)


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
@pytest.mark.parametrize("threshold", [0.0, 0.2, 0.5])
@pytest.mark.parametrize("target_sizes", [None, [(37, 50), (20, 28)]])
def test_instance_post_processing_equals_transformers(seed, threshold, target_sizes):
    outputs = random_outputs(seed)
    kwargs = {"threshold": threshold, "target_sizes": target_sizes}
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


@pytest.mark.parametrize("seed", [0, 1, 2, 3, 4])
@pytest.mark.parametrize(
    "kwargs",
    [
        {},
        {"threshold": 0.3, "mask_threshold": 0.4, "overlap_mask_area_threshold": 0.5},
        {"threshold": 0.8, "overlap_mask_area_threshold": 0.0},
        {"threshold": 0.999},  # nothing kept: -1 everywhere
    ],
)
@pytest.mark.parametrize("target_sizes", [None, [(37, 50), (23, 31)]])
def test_panoptic_post_processing_equals_transformers(seed, kwargs, target_sizes):
    outputs = random_outputs(seed)
    ours = MaskFormerImageProcessor().post_process_panoptic_segmentation(outputs, target_sizes=target_sizes, **kwargs)
    theirs = MaskFormerImageProcessorPil().post_process_panoptic_segmentation(
        outputs, target_sizes=target_sizes, label_ids_to_fuse=set(), **kwargs
    )
    assert_segmentations_equal(ours, theirs)


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
    processor = MaskFormerImageProcessor(size={"height": 16, "width": 24})
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
    assert "labels" not in ours
    torch.testing.assert_close(ours["class_labels"][0], theirs["class_labels"][0])
    assert ours["class_labels"][0].tolist() == [3, 3, 1]
    torch.testing.assert_close(ours["mask_labels"][0], theirs["mask_labels"][0])
    with pytest.raises(ValueError, match=r"Segment ids \[2\]"):
        processor([image], segmentation_maps=[instances], instance_id_to_semantic_id={0: 0, 1: 1, 3: 1})


@pytest.fixture(scope="module")
def pipeline_model_dir(tmp_path_factory):
    torch.manual_seed(0)
    labels = {i: f"class_{i}" for i in range(NUM_LABELS)}
    config = MaskFormerConfig(
        backbone_config=tiny_backbone("swin"), decoder_config=tiny_decoder(), fpn_feature_size=32,
        mask_feature_size=32, id2label=labels, label2id={v: k for k, v in labels.items()},
    )
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


def test_panoptic_post_processing_with_ties_across_query_chunks_equals_transformers():
    """40 kept queries (several chunks of the running arg-max) with saturated masks and equal scores: ties must go to
    the lower query index exactly as transformers' arg-max over the whole stack."""
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
            theirs = MaskFormerImageProcessorPil().post_process_panoptic_segmentation(
                outputs, target_sizes=target_sizes, label_ids_to_fuse=set(), **kwargs)
            if kwargs:
                assert len(ours[0]["segments_info"]) > 8
            assert_segmentations_equal(ours, theirs)
