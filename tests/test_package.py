"""The public contract of DESIGN.md: names, model types, Auto registration of all four architectures."""

import subprocess
import sys

import pytest
from transformers import (
    AutoConfig,
    AutoModelForInstanceSegmentation,
    AutoModelForSemanticSegmentation,
    AutoModelForUniversalSegmentation,
)
from transformers.models.auto.image_processing_auto import IMAGE_PROCESSOR_MAPPING

import hf_segmodels

ARCHITECTURES = [
    ("segmodels_segmenter", "SegmenterConfig", "SegmenterForSemanticSegmentation", "SegmenterImageProcessor"),
    ("segmodels_setr", "SetrConfig", "SetrForSemanticSegmentation", "SetrImageProcessor"),
    ("segmodels_segformer", "SegformerConfig", "SegformerForSemanticSegmentation", "SegformerImageProcessor"),
    ("segmodels_maskformer", "MaskFormerConfig", "MaskFormerForUniversalSegmentation", "MaskFormerImageProcessor"),
]


@pytest.mark.parametrize("model_type, config_name, model_name, processor_name", ARCHITECTURES)
def test_public_names_and_auto_registration(model_type, config_name, model_name, processor_name):
    config_class = getattr(hf_segmodels, config_name)
    model_class = getattr(hf_segmodels, model_name)
    processor_class = getattr(hf_segmodels, processor_name)
    assert config_class.model_type == model_type
    assert type(AutoConfig.for_model(model_type)) is config_class
    assert AutoModelForSemanticSegmentation._model_mapping[config_class] is model_class
    # Only our processor: never transformers' class of the same name (SegformerConfig / MaskFormerConfig collide
    # by name with transformers' own configs).
    assert IMAGE_PROCESSOR_MAPPING[config_class] == {"pil": processor_class}
    assert config_class._auto_class == "AutoConfig"
    assert model_class._auto_class == "AutoModelForSemanticSegmentation"
    assert processor_class._auto_class == "AutoImageProcessor"


def test_maskformer_is_also_a_universal_and_instance_segmentation_model():
    config_class, model_class = hf_segmodels.MaskFormerConfig, hf_segmodels.MaskFormerForUniversalSegmentation
    assert AutoModelForUniversalSegmentation._model_mapping[config_class] is model_class
    assert AutoModelForInstanceSegmentation._model_mapping[config_class] is model_class


def test_import_is_quiet():
    done = subprocess.run([sys.executable, "-c", "import hf_segmodels"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and done.stdout == "" and "torchvision" not in done.stderr, done.stderr
