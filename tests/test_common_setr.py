"""transformers' own common tests (ModelTesterMixin, ConfigTester, ImageProcessingTestMixin) on our SETR."""

import unittest

import torch

from transformers_common import import_common

modeling_common = import_common("test_modeling_common")  # (skips this module when transformers' tests are unavailable)
configuration_common = import_common("test_configuration_common")
image_processing_common = import_common("test_image_processing_common")

from common_testers import (  # noqa: E402
    SKIPS_ALL_MODELS,
    SKIPS_IMAGE_PROCESSORS,
    ImageProcessingTester,
    ViTSegmentationModelTester,
    mark_slow_common_tests,
    skip_common_tests,
)
from hf_segmodels import SetrConfig, SetrForSemanticSegmentation, SetrImageProcessor  # noqa: E402


class SetrModelTester(ViTSegmentationModelTester):
    def __init__(self, parent, decoder_type="pup", **kwargs):
        super().__init__(
            parent, SetrConfig, SetrForSemanticSegmentation, decoder_type=decoder_type, decoder_hidden_size=16,
            auxiliary_hidden_size=16, mla_hidden_size=16, mla_head_hidden_size=8, **kwargs,
        )  # fmt: skip


@mark_slow_common_tests
@skip_common_tests(SKIPS_ALL_MODELS)
class SetrModelTest(modeling_common.ModelTesterMixin, unittest.TestCase):
    all_model_classes = (SetrForSemanticSegmentation,)
    test_resize_embeddings = False
    test_can_init_all_missing_weights_before_2023 = True  # our files carry no copyright year; run it

    def setUp(self):
        self.model_tester = SetrModelTester(self)
        self.config_tester = configuration_common.ConfigTester(
            self, config_class=SetrConfig, has_text_modality=False, hidden_size=48
        )

    def test_config(self):
        self.config_tester.run_common_tests()

    def test_for_image_segmentation(self):
        self.model_tester.create_and_check_for_image_segmentation(*self.model_tester.prepare_config_and_inputs())

    def test_for_binary_image_segmentation(self):
        self.model_tester.create_and_check_for_binary_image_segmentation(
            *self.model_tester.prepare_config_and_inputs()
        )

    def test_other_decoders_with_auxiliary_heads(self):
        for decoder_type, auxiliary in (("naive", [0]), ("mla", [0, 1])):
            extra = {"mla_layer_indices": [0, 1]} if decoder_type == "mla" else {}
            tester = SetrModelTester(self, decoder_type=decoder_type, auxiliary_layer_indices=auxiliary, **extra)
            tester.create_and_check_for_image_segmentation(*tester.prepare_config_and_inputs())


class SetrImageProcessingTester(ImageProcessingTester):
    def __init__(self, parent):
        super().__init__(parent, SetrImageProcessor, size={"height": 30, "width": 40}, num_labels=3)


@skip_common_tests(SKIPS_IMAGE_PROCESSORS)
class SetrImageProcessingTest(
    image_processing_common.ImageProcessingTestMixin,
    image_processing_common.PostProcessSemanticSegmentationTestMixin,
    unittest.TestCase,
):
    image_processor_tester_class = SetrImageProcessingTester
