"""transformers' own common tests (ModelTesterMixin, ConfigTester, ImageProcessingTestMixin) on our Segmenter."""

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
from hf_segmodels import SegmenterConfig, SegmenterForSemanticSegmentation, SegmenterImageProcessor  # noqa: E402


class SegmenterModelTester(ViTSegmentationModelTester):
    def __init__(self, parent, decoder_type="mask_transformer"):
        super().__init__(
            parent, SegmenterConfig, SegmenterForSemanticSegmentation, decoder_type=decoder_type,
            decoder_num_hidden_layers=1, decoder_hidden_size=32, decoder_num_attention_heads=4, decoder_dropout=0.0,
        )  # fmt: skip


@mark_slow_common_tests
@skip_common_tests(SKIPS_ALL_MODELS)
class SegmenterModelTest(modeling_common.ModelTesterMixin, unittest.TestCase):
    all_model_classes = (SegmenterForSemanticSegmentation,)
    test_resize_embeddings = False
    test_can_init_all_missing_weights_before_2023 = True  # our files carry no copyright year; run it

    def setUp(self):
        self.model_tester = SegmenterModelTester(self)
        self.config_tester = configuration_common.ConfigTester(
            self, config_class=SegmenterConfig, has_text_modality=False, hidden_size=48
        )

    def test_config(self):
        self.config_tester.run_common_tests()

    def test_for_image_segmentation(self):
        self.model_tester.create_and_check_for_image_segmentation(*self.model_tester.prepare_config_and_inputs())

    def test_for_binary_image_segmentation(self):
        self.model_tester.create_and_check_for_binary_image_segmentation(
            *self.model_tester.prepare_config_and_inputs()
        )

    def test_linear_decoder(self):
        tester = SegmenterModelTester(self, decoder_type="linear")
        tester.create_and_check_for_image_segmentation(*tester.prepare_config_and_inputs())

    def test_decoder_attentions_have_their_own_field(self):
        config, inputs = self.model_tester.prepare_config_and_inputs_for_common()
        model = SegmenterForSemanticSegmentation(config).eval()
        with torch.no_grad():
            outputs = model(**inputs, output_attentions=True)
        self.assertEqual(len(outputs.attentions), config.num_hidden_layers)
        tokens = self.model_tester.seq_length - 1 + config.num_labels
        self.assertEqual(len(outputs.decoder_attentions), config.decoder_num_hidden_layers)
        self.assertEqual(outputs.decoder_attentions[0].shape[-2:], (tokens, tokens))


class SegmenterImageProcessingTester(ImageProcessingTester):
    def __init__(self, parent):
        super().__init__(parent, SegmenterImageProcessor, size={"height": 30, "width": 40}, num_labels=3)


@skip_common_tests(SKIPS_IMAGE_PROCESSORS)
class SegmenterImageProcessingTest(
    image_processing_common.ImageProcessingTestMixin,
    image_processing_common.PostProcessSemanticSegmentationTestMixin,
    unittest.TestCase,
):
    image_processor_tester_class = SegmenterImageProcessingTester
