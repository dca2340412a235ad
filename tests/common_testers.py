"""Pieces shared by the test_common_<arch>.py files, which run transformers' common testers on our classes."""

import functools
import re
import unittest

import pytest

from tiny import model_class, tiny_config
from transformers_common import import_common

# (each skips the importing test module, with one line saying why, when transformers' tests are unavailable)
modeling_common = import_common("test_modeling_common")
configuration_common = import_common("test_configuration_common")
image_processing_common = import_common("test_image_processing_common")

# Common tests that do not apply to any of our four architectures, with the reason (one line each).
SKIPS_ALL_MODELS = {
    "test_model_get_set_embeddings": "image models without token embeddings (transformers' SegFormer test skips it too)",
    "test_can_load_with_global_device_set": "needs an accelerator (moves the default device to GPU)",
    "test_can_load_with_device_context_manager": "needs an accelerator (loads under a GPU device context)",
}
SKIPS_IMAGE_PROCESSORS = {
    "test_new_models_require_torchvision_backend": (
        "our processors are PIL-only by design (torchvision cannot be a dependency); the rule is for "
        "processors inside transformers"
    ),
}


def skip_common_tests(reasons: dict[str, str]):
    """Class decorator: replaces each named test of the class (usually inherited from a transformers mixin) by a
    skipped test with its one-line reason."""

    def decorate(cls):
        for name, reason in reasons.items():
            if not hasattr(cls, name):
                raise AttributeError(f"{cls.__name__} has no test {name!r} to skip")

            @unittest.skip(reason)
            def skipped(self):
                pass

            skipped.__name__ = name
            setattr(cls, name, skipped)
        return cls

    return decorate


# Common tests marked `slow` (run with `pytest -m slow`) so that the default suite stays within its time budget on
# CPU: half-precision variants of the eager / SDPA comparison (CPU fp16 / bf16 kernels are slow; the fp32 variants
# run by default), gradient checkpointing with reentrant variants, and the full output-equivalence sweep.
# (`pytest -m slow tests/test_common_*.py` runs them: they pass.)
SLOW_COMMON_TESTS = (
    r"test_eager_matches_sdpa_inference_\d+_(fp16|bf16)_.*",
    # the padding / attention-mask variants are the same computation for image models: fp32 "pad_left" runs
    r"test_eager_matches_sdpa_inference_\d+_fp32_pad_(left_.+|right.*)",
    r"test_training_gradient_checkpointing_use_reentrant_.*",
    r"test_model_outputs_equivalence",
    r"test_bc_torch_dtype",
)


def mark_slow_common_tests(cls):
    """Class decorator: marks the tests of `SLOW_COMMON_TESTS` slow (wrapped, so the mixin itself is unchanged)."""
    for name in dir(cls):
        if name.startswith("test_") and any(re.fullmatch(pattern, name) for pattern in SLOW_COMMON_TESTS):
            test = getattr(cls, name)

            @functools.wraps(test)
            def wrapper(self, *args, _test=test, **kwargs):
                return _test(self, *args, **kwargs)

            setattr(cls, name, pytest.mark.slow(wrapper))
    return cls


class ImageProcessingTester(image_processing_common.ImageProcessingTester):
    """transformers' `ImageProcessingTester` for one of our processors.

    transformers finds the processors under test from the name of the test file's folder (a model type of its own
    tables); ours are registered under our model types instead, so the class under test is given explicitly (our
    processors have one backend, PIL)."""

    def __init__(self, parent, image_processing_class, **kwargs):
        self._image_processing_class = image_processing_class
        kwargs.setdefault("min_resolution", 30)
        kwargs.setdefault("max_resolution", 80)
        super().__init__(parent, **kwargs)

    def _get_image_processing_classes(self):
        return {"pil": self._image_processing_class}


@mark_slow_common_tests
@skip_common_tests(SKIPS_ALL_MODELS)
class SegmentationModelTest(modeling_common.ModelTesterMixin):
    """transformers' `ModelTesterMixin` set up for one of our models: `model_tester_class(self)` gives the inputs,
    `config_tester_kwargs` the arguments of transformers' `ConfigTester` (with `has_text_modality=False`).
    A test class derives from it and `unittest.TestCase` (the skips and slow marks of every model apply)."""

    test_resize_embeddings = False
    test_can_init_all_missing_weights_before_2023 = True  # our files carry no copyright year; run it
    model_tester_class: type
    config_tester_kwargs: dict = {}

    def setUp(self):
        self.model_tester = self.model_tester_class(self)
        config_class = type(self.model_tester.get_config())
        self.config_tester = configuration_common.ConfigTester(
            self, config_class=config_class, has_text_modality=False, **self.config_tester_kwargs
        )

    def test_config(self):
        self.config_tester.run_common_tests()


@skip_common_tests(SKIPS_IMAGE_PROCESSORS)
class SegmentationImageProcessingTest(
    image_processing_common.ImageProcessingTestMixin, image_processing_common.PostProcessSemanticSegmentationTestMixin
):
    """transformers' image-processor tests (`image_processor_tester_class`) for one of our processors; a test class
    derives from it and `unittest.TestCase`."""


class ViTSegmentationModelTester:
    """A tester in the style of transformers' `ViTModelTester` for our two plain-ViT models (Segmenter, SETR): the
    tiny config of `architecture` with transformers' tester sizes (4 heads, MLP width 37, no stochastic depth, 3
    classes) and `overrides`; 32 x 32 images in 8 x 8 patches, a CLS token (sequence of 16 + 1 tokens)."""

    def __init__(self, parent, architecture, batch_size=4, **overrides):
        self.parent = parent
        self.architecture, self.model_class = architecture, model_class(architecture)
        self.batch_size = batch_size
        self.overrides = dict(num_labels=3, num_attention_heads=4, intermediate_size=37, drop_path_rate=0.0, **overrides)
        config = self.get_config()
        for name in ("image_size", "patch_size", "num_channels", "hidden_size", "num_hidden_layers",
                     "num_attention_heads", "intermediate_size", "num_labels"):  # fmt: skip
            setattr(self, name, getattr(config, name))
        self.is_training = True
        self.seq_length = (self.image_size // self.patch_size) ** 2 + 1  # patches + CLS

    def get_config(self):
        return tiny_config(self.architecture, **self.overrides)

    def prepare_config_and_inputs(self):
        import torch

        pixel_values = torch.randn(self.batch_size, self.num_channels, self.image_size, self.image_size)
        labels = torch.randint(0, self.num_labels, (self.batch_size, self.image_size, self.image_size))
        return self.get_config(), pixel_values, labels

    def prepare_config_and_inputs_for_common(self):
        config, pixel_values, _ = self.prepare_config_and_inputs()
        return config, {"pixel_values": pixel_values}

    def create_and_check_for_image_segmentation(self, config, pixel_values, labels):
        model = self.model_class(config).eval()
        result = model(pixel_values, labels=labels)
        self.parent.assertEqual(result.logits.shape[:2], (self.batch_size, self.num_labels))
        self.parent.assertGreater(result.loss, 0.0)

    def create_and_check_for_binary_image_segmentation(self, config, pixel_values, labels):
        import torch

        config.num_labels = 1
        model = self.model_class(config).eval()
        labels = torch.randint(0, 2, (self.batch_size, self.image_size, self.image_size))
        labels[:, :2] = 255
        result = model(pixel_values, labels=labels)
        self.parent.assertEqual(result.logits.shape[1], 1)
        self.parent.assertGreater(result.loss, 0.0)


class ViTSegmentationModelTest(SegmentationModelTest):
    """`SegmentationModelTest` of a plain-ViT model (`model_tester_class`: a `ViTSegmentationModelTester`)."""

    config_tester_kwargs = {"hidden_size": 48}

    def test_for_image_segmentation(self):
        self.model_tester.create_and_check_for_image_segmentation(*self.model_tester.prepare_config_and_inputs())

    def test_for_binary_image_segmentation(self):
        self.model_tester.create_and_check_for_binary_image_segmentation(
            *self.model_tester.prepare_config_and_inputs()
        )
