"""SegFormer image processor (PIL backend, no torchvision)."""

import numpy as np
from transformers.image_utils import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD, SizeDict
from transformers.processing_utils import Unpack

from ..image_processing import SegmentationImageProcessorKwargs, SemanticSegmentationImageProcessor
from ..presets import release_test_protocol, unknown_preset_error
from .configuration_segformer import SEGFORMER_PRESETS, SEGFORMER_RELEASES


class SegformerImageProcessorKwargs(SegmentationImageProcessorKwargs, total=False):
    r"""
    size_divisor (`int`, *optional*, defaults to `self.size_divisor`):
        After the keep-ratio resize, round both sides up to a multiple of this (the original ADE20K test pipeline's
        `AlignedResize(size_divisor=32)`); `None` or 0 keeps the keep-ratio size.
    """

    size_divisor: int | None


class SegmodelsSegformerImageProcessor(SemanticSegmentationImageProcessor):
    r"""Image processor of SegFormer (PIL backend, no torchvision).

    Defaults are the original ADE20K test protocol of NVlabs/SegFormer (`local_configs/_base_/datasets/
    ade20k_repeat.py`): keep-ratio resize to a shorter side of 512 with the longer side at most 2048
    (`img_scale=(2048, 512)`), both sides then rounded up to a multiple of 32 (`AlignedResize`), pixels rescaled to
    [0, 1] and normalised with the ImageNet mean/std (123.675, 116.28, 103.53) / (58.395, 57.12, 57.375) on the
    0-255 scale. Images are resized like the original's (OpenCV-style bilinear, twice: keep-ratio, then aligned).
    `SegformerImageProcessor.from_preset("segformer-b0-cityscapes")` gives the Cityscapes protocol (shorter side 1024,
    longer at most 2048, no alignment, labels not reduced). Set `do_reduce_labels=True` for ADE20K label maps (0 is
    "other"); the ADE20K presets do.
    """

    valid_kwargs = SegformerImageProcessorKwargs
    image_mean = IMAGENET_DEFAULT_MEAN
    image_std = IMAGENET_DEFAULT_STD
    size = {"shortest_edge": 512, "longest_edge": 2048}
    resize_backend = "opencv"  # the original test pipeline resizes with mmcv / cv2.INTER_LINEAR
    size_divisor = 32
    # `size=512` means 512 x 512, as in transformers' SegformerImageProcessor (the keep-ratio protocol is the dict).
    default_to_square = True

    def __init__(self, **kwargs: Unpack[SegformerImageProcessorKwargs]):
        super().__init__(**kwargs)

    @classmethod
    def from_preset(cls, name: str, **kwargs) -> "SegformerImageProcessor":
        """The test-time preprocessing of a released model, by its zoo name (`"segformer-b0-ade"`,
        `"segformer-b0-512x1024-cityscapes"`: the resize of the test protocol the zoo records) or its original name
        (`"b0-ade-512"` ... `"b5-cityscapes-1024"`); `kwargs` override any argument."""
        release = SEGFORMER_RELEASES.get(name)
        original_name = name if release is None else release.variant
        if original_name not in SEGFORMER_PRESETS:
            raise unknown_preset_error(
                "SegFormer", name, list(SEGFORMER_RELEASES), f"the original names {', '.join(SEGFORMER_PRESETS)}"
            )
        preset = SEGFORMER_PRESETS[original_name]
        ade = preset["dataset"] == "ade20k"
        defaults = {
            "size": {"shortest_edge": preset["test_size"], "longest_edge": 2048},
            "size_divisor": 32 if ade else None,
            "do_reduce_labels": ade,
        }
        if release is not None:
            protocol = release_test_protocol(name)
            defaults.update(size=protocol["resize"], size_divisor=protocol["size_divisor"])
        return cls(**{**defaults, **kwargs})

    def _preprocess(self, images: list[np.ndarray], do_resize: bool, size: SizeDict, resample, size_divisor=None,
                    **kwargs) -> list[np.ndarray]:  # fmt: skip
        if do_resize and size_divisor and size.shortest_edge:
            # `AlignedResize`: the keep-ratio resize, then a second resize to the sides rounded up to a multiple of
            # `size_divisor` (two interpolations, as the original).
            resized = []
            for image in images:
                image = self.resize(image, size, resample)
                aligned = [-(-side // size_divisor) * size_divisor for side in image.shape[-2:]]
                resized.append(self.resize(image, SizeDict(height=aligned[0], width=aligned[1]), resample))
            images, do_resize = resized, False
        return super()._preprocess(images, do_resize=do_resize, size=size, resample=resample, **kwargs)


# A saved `preprocessor_config.json` names the class in "image_processor_type", and transformers resolves that name
# (its own classes first when hf_segmodels is not imported). The class has a name of its own so that a saved folder
# loads as this class (with hf_segmodels imported, or through `auto_map` with `trust_remote_code=True`) and never as
# transformers' `SegformerImageProcessor`; the public name (README, docs/ARCHITECTURE.md) is an alias.
SegformerImageProcessor = SegmodelsSegformerImageProcessor
SegmodelsSegformerImageProcessorKwargs = SegformerImageProcessorKwargs  # the name transformers looks for


__all__ = ["SegformerImageProcessor", "SegmodelsSegformerImageProcessor"]
