"""Pieces shared by the test_common_<arch>.py files, which run transformers' common testers on our classes."""

import unittest

from transformers_common import import_common

image_processing_common = import_common("test_image_processing_common")

# Common tests that do not apply to any of our four architectures, with the reason (one line each).
SKIPS_ALL_MODELS = {
    "test_model_get_set_embeddings": "image models without token embeddings (transformers' SegFormer test skips it too)",
    "test_can_load_with_global_device_set": "needs an accelerator (moves the default device to GPU)",
    "test_can_load_with_device_context_manager": "needs an accelerator (loads under a GPU device context)",
}
SKIPS_IMAGE_PROCESSORS = {
    "test_new_models_require_torchvision_backend": (
        "our processors are PIL-only by design (DESIGN.md: torchvision cannot be installed); the rule is for "
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
