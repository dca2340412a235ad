"""transformers' own common tests (ModelTesterMixin, ConfigTester, ImageProcessingTestMixin) on our SegFormer, with a
tester in the style of transformers' `SegformerModelTester`."""

import unittest

import torch
from common_testers import (
    ImageProcessingTester,
    SegmentationImageProcessingTest,
    SegmentationModelTest,
    configuration_common,
    modeling_common,
)
from tiny import tiny_config

from hf_segmodels import SegformerConfig, SegformerForSemanticSegmentation, SegformerImageProcessor
from hf_segmodels.segformer import SegformerModel

floats_tensor, ids_tensor = modeling_common.floats_tensor, modeling_common.ids_tensor


class SegformerModelTester:
    def __init__(self, parent, batch_size=3, image_size=64):
        self.parent = parent
        self.batch_size = batch_size
        self.image_size = image_size
        config = self.get_config()
        self.num_channels, self.num_encoder_blocks, self.num_labels = (
            config.num_channels, config.num_encoder_blocks, config.num_labels
        )  # fmt: skip
        self.depths, self.sr_ratios = list(config.depths), list(config.sr_ratios)
        self.hidden_sizes, self.num_attention_heads = list(config.hidden_sizes), list(config.num_attention_heads)
        self.is_training = self.use_labels = True

    def get_config(self) -> SegformerConfig:
        return tiny_config(
            "segformer", num_labels=3, depths=[1, 1, 1, 1], sr_ratios=[8, 4, 2, 1], hidden_sizes=[8, 8, 16, 16],
            num_attention_heads=[1, 1, 2, 2], classifier_dropout_prob=0.0, drop_path_rate=0.0,
        )  # fmt: skip

    def prepare_config_and_inputs(self):
        pixel_values = floats_tensor([self.batch_size, self.num_channels, self.image_size, self.image_size])
        labels = ids_tensor([self.batch_size, self.image_size, self.image_size], self.num_labels)
        return self.get_config(), pixel_values, labels

    def prepare_config_and_inputs_for_common(self):
        config, pixel_values, _ = self.prepare_config_and_inputs()
        return config, {"pixel_values": pixel_values}

    def create_and_check_model(self, config, pixel_values, labels):
        model = SegformerModel(config).eval()
        result = model(pixel_values)
        side = self.image_size // 32
        self.parent.assertEqual(result.last_hidden_state.shape, (self.batch_size, self.hidden_sizes[-1], side, side))

    def create_and_check_for_image_segmentation(self, config, pixel_values, labels):
        model = SegformerForSemanticSegmentation(config).eval()
        result = model(pixel_values)
        side = self.image_size // 4
        self.parent.assertEqual(result.logits.shape, (self.batch_size, self.num_labels, side, side))
        result = model(pixel_values, labels=labels)
        self.parent.assertGreater(result.loss, 0.0)

    def create_and_check_for_binary_image_segmentation(self, config, pixel_values, labels):
        config.num_labels = 1
        model = SegformerForSemanticSegmentation(config).eval()
        labels = torch.randint(0, 2, (self.batch_size, self.image_size, self.image_size))
        result = model(pixel_values, labels=labels)
        self.parent.assertEqual(result.logits.shape[1], 1)
        self.parent.assertGreater(result.loss, 0.0)


class SegformerModelTest(SegmentationModelTest, unittest.TestCase):
    all_model_classes = (SegformerModel, SegformerForSemanticSegmentation)
    model_tester_class = SegformerModelTester
    config_tester_kwargs = {"common_properties": ["hidden_sizes", "num_attention_heads", "num_encoder_blocks"]}

    def test_model(self):
        self.model_tester.create_and_check_model(*self.model_tester.prepare_config_and_inputs())

    def test_for_image_segmentation(self):
        self.model_tester.create_and_check_for_image_segmentation(*self.model_tester.prepare_config_and_inputs())

    def test_for_binary_image_segmentation(self):
        self.model_tester.create_and_check_for_binary_image_segmentation(
            *self.model_tester.prepare_config_and_inputs()
        )

    def test_attention_outputs(self):
        # One attention map per block, (B, heads, N, N / sr^2) per stage, as transformers' SegFormer test checks.
        config, inputs_dict = self.model_tester.prepare_config_and_inputs_for_common()
        for model_class in self.all_model_classes:
            inputs_dict["output_attentions"] = True
            inputs_dict["output_hidden_states"] = False
            model = model_class(config).eval()
            with torch.no_grad():
                outputs = model(**self._prepare_for_class(inputs_dict, model_class))
            attentions = outputs.attentions
            self.assertEqual(len(attentions), sum(self.model_tester.depths))
            side = self.model_tester.image_size // 4
            reduced = (side // self.model_tester.sr_ratios[0]) ** 2
            self.assertEqual(
                list(attentions[0].shape[-3:]), [self.model_tester.num_attention_heads[0], side * side, reduced]
            )
            last = self.model_tester.image_size // 32
            self.assertEqual(
                list(attentions[-1].shape[-3:]), [self.model_tester.num_attention_heads[-1], last**2, last**2]
            )

    def test_hidden_states_output(self):
        config, inputs_dict = self.model_tester.prepare_config_and_inputs_for_common()
        for model_class in self.all_model_classes:
            inputs_dict["output_hidden_states"] = True
            model = model_class(config).eval()
            with torch.no_grad():
                outputs = model(**self._prepare_for_class(inputs_dict, model_class))
            self.assertEqual(len(outputs.hidden_states), self.model_tester.num_encoder_blocks)
            side = self.model_tester.image_size // 4
            self.assertEqual(list(outputs.hidden_states[0].shape[-3:]), [self.model_tester.hidden_sizes[0], side, side])


class SegformerConfigTest(unittest.TestCase):
    def test_config(self):
        configuration_common.ConfigTester(
            self, config_class=SegformerConfig, has_text_modality=False, depths=[1, 1, 1, 1], decoder_hidden_size=64,
            common_properties=["hidden_sizes", "num_attention_heads", "num_encoder_blocks"],
        ).run_common_tests()  # fmt: skip


class SegformerImageProcessingTester(ImageProcessingTester):
    def __init__(self, parent):
        super().__init__(parent, SegformerImageProcessor, size={"height": 30, "width": 40}, num_labels=3,
                         do_reduce_labels=False)  # fmt: skip


class SegformerImageProcessingTest(SegmentationImageProcessingTest, unittest.TestCase):
    image_processor_tester_class = SegformerImageProcessingTester
