"""transformers' own common tests (ModelTesterMixin, ConfigTester, ImageProcessingTestMixin) on our SETR."""

import unittest

from common_testers import (
    ImageProcessingTester,
    SegmentationImageProcessingTest,
    ViTSegmentationModelTest,
    ViTSegmentationModelTester,
)

from hf_segmodels import SetrForSemanticSegmentation, SetrImageProcessor


class SetrModelTester(ViTSegmentationModelTester):
    def __init__(self, parent, decoder_type="pup", **overrides):
        super().__init__(parent, "setr", num_hidden_layers=2, decoder_type=decoder_type, **overrides)


class SetrModelTest(ViTSegmentationModelTest, unittest.TestCase):
    all_model_classes = (SetrForSemanticSegmentation,)
    model_tester_class = SetrModelTester

    def test_other_decoders_with_auxiliary_heads(self):
        for decoder_type, auxiliary in (("naive", [0]), ("mla", [0, 1])):
            extra = {"mla_layer_indices": [0, 1]} if decoder_type == "mla" else {}
            tester = SetrModelTester(self, decoder_type=decoder_type, auxiliary_layer_indices=auxiliary, **extra)
            tester.create_and_check_for_image_segmentation(*tester.prepare_config_and_inputs())


class SetrImageProcessingTester(ImageProcessingTester):
    def __init__(self, parent):
        super().__init__(parent, SetrImageProcessor, size={"height": 30, "width": 40}, num_labels=3)


class SetrImageProcessingTest(SegmentationImageProcessingTest, unittest.TestCase):
    image_processor_tester_class = SetrImageProcessingTester
