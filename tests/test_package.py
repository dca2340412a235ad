"""The public contract (README, docs/ARCHITECTURE.md): names, model types, Auto registration of the four models."""

import subprocess
import sys

import pytest
from transformers import (
    AutoConfig,
    AutoModelForInstanceSegmentation,
    AutoModelForSemanticSegmentation,
    AutoModelForUniversalSegmentation,
)
from transformers.models.auto import modeling_auto
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
    assert IMAGE_PROCESSOR_MAPPING[config_class]["pil"] is processor_class
    # ... plus a never-instantiated subclass under the pre-rename class name, for folders saved with that name
    legacy = IMAGE_PROCESSOR_MAPPING[config_class]["legacy_name"]
    assert legacy.__name__ == processor_name and issubclass(legacy, processor_class)
    assert processor_class.__name__ == "Segmodels" + processor_name
    # pipeline("image-segmentation") recognises the model (no "not supported" message), and the lazy Auto mapping
    # still iterates without trying to import our model types from transformers.
    assert modeling_auto.MODEL_FOR_SEMANTIC_SEGMENTATION_MAPPING_NAMES[model_type] == model_name
    assert config_class in AutoModelForSemanticSegmentation._model_mapping.keys()
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


def test_pipeline_on_a_saved_folder_never_prompts_for_remote_code(tmp_path, monkeypatch):
    """save_pretrained writes an `auto_map` (for trust_remote_code users); with the package installed, the pipeline
    must use the local classes without asking (transformers would otherwise look for a video processor)."""
    import builtins

    import numpy as np
    import PIL.Image
    from transformers import pipeline

    prompts = []

    def record_prompt(*args, **kwargs):
        prompts.append(args)
        return "n"

    monkeypatch.setattr(builtins, "input", record_prompt)
    from tiny import tiny_image_processor, tiny_model

    tiny_model("segmenter", num_labels=3, num_hidden_layers=1).save_pretrained(tmp_path)
    tiny_image_processor("segmenter").save_pretrained(tmp_path)
    segments = pipeline("image-segmentation", model=str(tmp_path))(PIL.Image.fromarray(np.zeros((20, 24, 3), np.uint8)))
    assert segments and all(s["score"] is None and s["label"].startswith("LABEL_") for s in segments)
    assert prompts == []
