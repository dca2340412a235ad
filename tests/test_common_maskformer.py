"""transformers' own common tests (ModelTesterMixin, ConfigTester, ImageProcessingTestMixin) on our MaskFormer, with
a tester in the style of transformers' `MaskFormerModelTester`."""

import unittest

import torch
from common_testers import (
    ImageProcessingTester,
    SegmentationImageProcessingTest,
    SegmentationModelTest,
    skip_common_tests,
)
from tiny import tiny_config, tiny_maskformer_decoder

from hf_segmodels import MaskFormerConfig, MaskFormerForUniversalSegmentation, MaskFormerImageProcessor


class MaskFormerModelTester:
    def __init__(self, parent, batch_size=2, num_queries=8, num_labels=4, image_size=64, num_channels=3):
        self.parent = parent
        self.batch_size = batch_size
        self.num_queries = num_queries
        self.num_labels = num_labels
        self.image_size = image_size
        self.num_channels = num_channels
        self.is_training = True
        self.decoder_layers = 3

    def get_config(self) -> MaskFormerConfig:
        decoder = tiny_maskformer_decoder(self.num_queries, decoder_layers=self.decoder_layers)
        return tiny_config("maskformer", self.num_labels, decoder_config=decoder)

    def prepare_config_and_inputs(self):
        pixel_values = torch.randn(self.batch_size, self.num_channels, self.image_size, self.image_size)
        pixel_mask = torch.ones(self.batch_size, self.image_size, self.image_size, dtype=torch.long)
        ids = torch.randint(0, 3, (self.batch_size, self.image_size, self.image_size))
        mask_labels = [torch.stack([(m == i).float() for i in range(3)]) for m in ids]
        class_labels = [torch.randperm(self.num_labels)[:3] for _ in range(self.batch_size)]
        return self.get_config(), pixel_values, pixel_mask, mask_labels, class_labels

    def prepare_config_and_inputs_for_common(self):
        config, pixel_values, pixel_mask, _, _ = self.prepare_config_and_inputs()
        return config, {"pixel_values": pixel_values, "pixel_mask": pixel_mask}

    def create_and_check_maskformer_instance_segmentation_head_model(
        self, config, pixel_values, pixel_mask, mask_labels, class_labels
    ):
        model = MaskFormerForUniversalSegmentation(config).eval()
        side = self.image_size // 4
        with torch.no_grad():
            result = model(pixel_values=pixel_values, pixel_mask=pixel_mask)
        self.parent.assertEqual(result.masks_queries_logits.shape, (self.batch_size, self.num_queries, side, side))
        self.parent.assertEqual(result.class_queries_logits.shape, (self.batch_size, self.num_queries, self.num_labels + 1))
        self.parent.assertEqual(result.pixel_decoder_last_hidden_state.shape[1], config.mask_feature_size)
        result = model(pixel_values=pixel_values, pixel_mask=pixel_mask, mask_labels=mask_labels,
                       class_labels=class_labels)  # fmt: skip
        self.parent.assertGreater(result.loss, 0.0)
        # transformers' auxiliary fields: one entry per decoder layer, L + 1 decoder hidden states
        result = model(pixel_values=pixel_values, output_auxiliary_logits=True, output_hidden_states=True)
        self.parent.assertEqual(len(result.auxiliary_logits), self.decoder_layers)
        self.parent.assertEqual(len(result.transformer_decoder_hidden_states), self.decoder_layers + 1)


@skip_common_tests(
    {
        "test_attention_outputs": (
            "checked by test_maskformer_attention_outputs (decoder self / cross attentions, as transformers' own "
            "MaskFormer test overrides it)"
        ),
    }
)
class MaskFormerModelTest(SegmentationModelTest, unittest.TestCase):
    all_model_classes = (MaskFormerForUniversalSegmentation,)
    model_tester_class = MaskFormerModelTester

    def test_maskformer_instance_segmentation_head_model(self):
        self.model_tester.create_and_check_maskformer_instance_segmentation_head_model(
            *self.model_tester.prepare_config_and_inputs()
        )

    def test_maskformer_attention_outputs(self):
        config, inputs = self.model_tester.prepare_config_and_inputs_for_common()
        model = MaskFormerForUniversalSegmentation(config).eval()
        with torch.no_grad():
            outputs = model(**inputs, output_attentions=True)
        queries = self.model_tester.num_queries
        self.assertEqual(len(outputs.attentions), self.model_tester.decoder_layers)
        self.assertEqual(outputs.attentions[0].shape[-2:], (queries, queries))
        self.assertEqual(len(outputs.cross_attentions), self.model_tester.decoder_layers)

    def test_hidden_states_output(self):
        # as transformers' MaskFormer test: backbone stages, FPN levels and L + 1 decoder states
        config, inputs = self.model_tester.prepare_config_and_inputs_for_common()
        model = MaskFormerForUniversalSegmentation(config).eval()
        with torch.no_grad():
            outputs = model(**inputs, output_hidden_states=True)
        self.assertEqual(len(outputs.encoder_hidden_states), 4)
        self.assertEqual(len(outputs.pixel_decoder_hidden_states), 4)
        self.assertEqual(len(outputs.transformer_decoder_hidden_states), self.model_tester.decoder_layers + 1)
        self.assertEqual(len(outputs.hidden_states), 4 + 4 + self.model_tester.decoder_layers + 1)

    def test_training_with_semantic_labels(self):
        config, inputs = self.model_tester.prepare_config_and_inputs_for_common()
        model = MaskFormerForUniversalSegmentation(config).train()
        labels = torch.randint(0, self.model_tester.num_labels, inputs["pixel_mask"].shape)
        loss = model(**inputs, labels=labels, num_items_in_batch=torch.tensor(7)).loss
        loss.backward()
        self.assertTrue(torch.isfinite(loss))


class MaskFormerImageProcessingTester(ImageProcessingTester):
    def __init__(self, parent):
        super().__init__(parent, MaskFormerImageProcessor, size={"shortest_edge": 32, "longest_edge": 64},
                         size_divisor=0, num_labels=4)  # fmt: skip

    def expected_output_image_shape(self, images):
        # The original (detectron2's ResizeShortestEdge) rounds the resized sides half up; transformers' MaskFormer
        # processor truncates. The processor follows the original (golden fixtures), so the expected shapes do too.
        # Then the batch is padded to its largest size (size_divisor=0: no further rounding).
        sizes = []
        for image in images:
            if hasattr(image, "size") and not hasattr(image, "shape"):
                width, height = image.size
            elif isinstance(image, torch.Tensor):
                height, width = image.shape[1:3]
            else:
                height, width = image.shape[:2]
            scale = min(self.size["longest_edge"] / max(height, width), self.size["shortest_edge"] / min(height, width))
            sizes.append((int(height * scale + 0.5), int(width * scale + 0.5)))
        return self.num_channels, max(h for h, _ in sizes), max(w for _, w in sizes)

    def prepare_post_process_semantic_segmentation_inputs(self):
        from hf_segmodels.maskformer.modeling_maskformer import MaskFormerForUniversalSegmentationOutput

        outputs = MaskFormerForUniversalSegmentationOutput(
            class_queries_logits=torch.randn(self.batch_size, 6, self.num_labels + 1),
            masks_queries_logits=torch.randn(self.batch_size, 6, 12, 16),
        )
        return {"outputs": outputs}, {"num_labels": self.num_labels, "height": 12, "width": 16}


class MaskFormerImageProcessingTest(SegmentationImageProcessingTest, unittest.TestCase):
    image_processor_tester_class = MaskFormerImageProcessingTester
