"""SETR image processor."""

from ..image_processing import SegmentationImageProcessorKwargs, SemanticSegmentationImageProcessor

# Shorter side of the test images per dataset (the training crop size); the longer side is capped at 4x that.
TEST_SIZES = {"ade20k": 512, "pascal_context": 480, "cityscapes": 768}


class SegmodelsSetrImageProcessor(SemanticSegmentationImageProcessor):
    r"""Image processor of SETR (PIL backend, no torchvision).

    SETR normalises with the ImageNet mean / std of its configs (mean (123.675, 116.28, 103.53), std (58.395, 57.12,
    57.375) on 0-255 RGB pixels, i.e. (0.485, 0.456, 0.406) / (0.229, 0.224, 0.225) after rescaling to [0, 1]).
    Defaults are the ADE20K test size: the shorter side resized to 512 (the longer side at most 2048, aspect ratio
    kept). `SetrImageProcessor.for_dataset("pascal_context")` (480) and `("cityscapes")` (768) set the other
    datasets' sizes. Whole-image or sliding-window inference (`hf_segmodels.infer_logits` with the training crop as
    window) then runs on the resized image. `do_reduce_labels=True` maps ADE20K's 0 ("other") to 255 (ignored) and
    shifts the other labels down by one.

    Post-processing: `post_process_semantic_segmentation` gives argmax maps; `post_process_panoptic_segmentation`
    derives one segment per predicted class from the semantic prediction (SETR predicts no instances).
    """

    image_mean = (0.485, 0.456, 0.406)
    image_std = (0.229, 0.224, 0.225)
    size = {"shortest_edge": 512, "longest_edge": 2048}
    resize_backend = "opencv"  # the original test pipeline resizes with mmcv / cv2.INTER_LINEAR

    @classmethod
    def for_dataset(cls, dataset: str, **kwargs) -> "SetrImageProcessor":
        """An image processor with the test size of `dataset` ("ade20k", "pascal_context" or "cityscapes");
        ADE20K also gets `do_reduce_labels=True` (its label maps use 0 for "other")."""
        if dataset not in TEST_SIZES:
            raise ValueError(f"Unknown dataset {dataset!r}; expected one of {sorted(TEST_SIZES)}.")
        shortest = TEST_SIZES[dataset]
        kwargs.setdefault("size", {"shortest_edge": shortest, "longest_edge": 4 * shortest})
        kwargs.setdefault("do_reduce_labels", dataset == "ade20k")
        return cls(**kwargs)


# A saved `preprocessor_config.json` names the class in "image_processor_type", and transformers resolves that name
# (its own classes first when hf_segmodels is not imported). The class has a name of its own so that a saved folder
# loads as this class (with hf_segmodels imported, or through `auto_map` with `trust_remote_code=True`) and never as
# a class of the same name that transformers may add; the public name (README, docs/ARCHITECTURE.md) is an alias.
SetrImageProcessor = SegmodelsSetrImageProcessor
SegmodelsSetrImageProcessorKwargs = SegmentationImageProcessorKwargs  # the name transformers looks for


__all__ = ["SetrImageProcessor", "SegmodelsSetrImageProcessor"]
