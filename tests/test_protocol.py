"""Test protocols recorded in checkpoints (`config.test_protocol`): infer_logits and pipeline() follow them, every
zoo release's conversion records its original test settings, and images are resized like the original pipelines."""

from pathlib import Path

import numpy as np
import PIL.Image
import pytest
import torch

import hf_segmodels
from hf_segmodels.image_processing import opencv_bilinear_resize
from hf_segmodels.protocol import TestProtocol, get_test_protocol, protocol_from_original_test_cfg

DATA = Path(__file__).parent / "data"


# ------------------------------------------------------------------------------------------------ resize
@pytest.mark.parametrize("size", [(173, 260), (97, 146)])
@pytest.mark.parametrize(
    "processor_class",
    [hf_segmodels.SegmenterImageProcessor, hf_segmodels.SetrImageProcessor, hf_segmodels.SegformerImageProcessor],
)
def test_mmseg_processors_resize_like_opencv_on_a_photo(processor_class, size):
    """tests/data/rocket_crop_cv2_*.png are `cv2.resize(INTER_LINEAR)` (opencv-python-headless 5.0.0) of a crop of
    scikit-image's `rocket.jpg` (NASA, public domain): what mmsegmentation's test pipeline feeds the originals."""
    photo = PIL.Image.open(DATA / "rocket_crop.png")
    reference = np.asarray(PIL.Image.open(DATA / f"rocket_crop_cv2_{size[0]}x{size[1]}.png")).astype(np.int32)
    processor = processor_class(size={"height": size[0], "width": size[1]}, do_rescale=False, do_normalize=False,
                                size_divisor=None) if processor_class is hf_segmodels.SegformerImageProcessor else \
        processor_class(size={"height": size[0], "width": size[1]}, do_rescale=False, do_normalize=False)
    ours = processor(photo, return_tensors="np")["pixel_values"][0]
    difference = np.abs(np.moveaxis(ours, 0, -1).astype(np.int32) - reference)
    assert difference.max() <= 1
    # PIL's antialiasing bilinear filter, the resize used before, is far off when shrinking.
    pil = np.asarray(photo.resize(size[::-1], PIL.Image.BILINEAR)).astype(np.int32)
    assert np.abs(pil - reference).max() > 10


def test_opencv_resize_is_identity_at_the_same_size_and_handles_float_images():
    image = np.random.default_rng(0).integers(0, 256, (3, 20, 30), dtype=np.uint8)
    assert np.array_equal(opencv_bilinear_resize(image, (20, 30)), image)
    as_float = opencv_bilinear_resize(image.astype(np.float32), (11, 17))
    as_uint8 = opencv_bilinear_resize(image, (11, 17))
    assert as_float.dtype == np.float32 and np.abs(as_float - as_uint8).max() <= 1


def test_maskformer_keeps_pil_resize_as_detectron2():
    assert hf_segmodels.MaskFormerImageProcessor.resize_backend == "pil"
