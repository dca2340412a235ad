"""transformers' own common tests (ModelTesterMixin, ConfigTester, ImageProcessingTestMixin) on our Segmenter."""

import unittest

import torch
from common_testers import (
    ImageProcessingTester,
    SegmentationImageProcessingTest,
    ViTSegmentationModelTest,
    ViTSegmentationModelTester,
)

from hf_segmodels import SegmenterForSemanticSegmentation, SegmenterImageProcessor


class SegmenterModelTester(ViTSegmentationModelTester):
    def __init__(self, parent, decoder_type="mask_transformer"):
        super().__init__(
            parent, "segmenter", decoder_type=decoder_type, decoder_num_hidden_layers=1, decoder_num_attention_heads=4,
            decoder_dropout=0.0,
        )  # fmt: skip


class SegmenterModelTest(ViTSegmentationModelTest, unittest.TestCase):
    all_model_classes = (SegmenterForSemanticSegmentation,)
    model_tester_class = SegmenterModelTester

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


class SegmenterImageProcessingTest(SegmentationImageProcessingTest, unittest.TestCase):
    image_processor_tester_class = SegmenterImageProcessingTester
