"""Segmenter image processor."""

from ..image_processing import SegmentationImageProcessorKwargs, SemanticSegmentationImageProcessor


class SegmodelsSegmenterImageProcessor(SemanticSegmentationImageProcessor):
    r"""Image processor of Segmenter (PIL backend, no torchvision).

    Defaults are the original ADE20K test protocol of rstrudel/segmenter with a ViT encoder: the shorter side
    resized to 512 (the longer side at most 2048, keeping the aspect ratio), pixels rescaled to [0, 1] and normalised
    with mean = std = 0.5 ("vit" normalisation). DeiT encoders use ImageNet mean/std
    ((0.485, 0.456, 0.406) / (0.229, 0.224, 0.225)); `SegmenterImageProcessor.for_normalization("deit")` sets them.
    Whole-image or sliding-window inference then runs on the resized image (`hf_segmodels.infer_logits`).
    """

    image_mean = (0.5, 0.5, 0.5)
    image_std = (0.5, 0.5, 0.5)
    size = {"shortest_edge": 512, "longest_edge": 2048}
    resize_backend = "opencv"  # the original test pipeline resizes with mmcv / cv2.INTER_LINEAR

    @classmethod
    def for_normalization(cls, normalization: str, **kwargs) -> "SegmenterImageProcessor":
        """An image processor with the original's "vit" or "deit" normalisation."""
        from .configuration_segmenter import NORMALIZATION

        if normalization not in NORMALIZATION:
            raise ValueError(f"Unknown normalization {normalization!r}; expected one of {sorted(NORMALIZATION)}.")
        mean, std = NORMALIZATION[normalization]
        return cls(image_mean=mean, image_std=std, **kwargs)


# A saved `preprocessor_config.json` names the class in "image_processor_type", and transformers resolves that name
# (its own classes first when hf_segmodels is not imported). The class has a name of its own so that a saved folder
# loads as this class (with hf_segmodels imported, or through `auto_map` with `trust_remote_code=True`) and never as
# a class of the same name that transformers may add; the public name (README, docs/ARCHITECTURE.md) is an alias.
SegmenterImageProcessor = SegmodelsSegmenterImageProcessor
SegmodelsSegmenterImageProcessorKwargs = SegmentationImageProcessorKwargs  # the name transformers looks for


__all__ = ["SegmenterImageProcessor", "SegmodelsSegmenterImageProcessor"]
