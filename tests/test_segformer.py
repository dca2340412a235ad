"""SegFormer: model behaviour, merged decoder, presets, serialisation, image processor, post-processing, errors (the
checks every architecture shares, Auto API and pipeline included, are in test_common_checks.py)."""

import numpy as np
import PIL.Image
import pytest
import tiny
import torch
import torch.nn.functional as F
from huggingface_hub.errors import StrictDataclassClassValidationError, StrictDataclassFieldValidationError
from safetensors.torch import load_file
from transformers import AutoImageProcessor, AutoModel, AutoModelForSemanticSegmentation

import hf_segmodels
from hf_segmodels import SegformerConfig, SegformerForSemanticSegmentation, SegformerImageProcessor, infer_logits
from hf_segmodels.segformer import SEGFORMER_PRESETS, SegformerModel


def tiny_config(**overrides) -> SegformerConfig:
    return tiny.tiny_config("segformer", **{"num_labels": 5, **overrides})


def tiny_model(**overrides) -> SegformerForSemanticSegmentation:
    """The tiny SegFormer (5 classes) with non-trivial BatchNorm statistics, so that the merged decoder's folding of
    its BatchNorm is exercised."""
    return tiny.randomize_batch_norms(tiny.tiny_model("segformer", **{"num_labels": 5, **overrides}))


@pytest.mark.parametrize("attn_implementation", ["sdpa", "eager"])
def test_forward_shapes_any_input_size(attn_implementation):
    model = tiny_model()
    model.config._attn_implementation = attn_implementation
    pixel_values = torch.randn(2, 3, 45, 61)
    outputs = model(pixel_values, output_hidden_states=True, output_attentions=True)
    assert outputs.logits.shape == (2, 5, 12, 16)  # the 1/4-resolution map of the first stage: ceil(45 / 4)
    assert [tuple(h.shape) for h in outputs.hidden_states] == [
        (2, 8, 12, 16), (2, 16, 6, 8), (2, 24, 3, 4), (2, 32, 2, 2)
    ]  # fmt: skip
    assert len(outputs.attentions) == 5  # one per block
    # Stage 1: 12 x 16 tokens attend to the map reduced 8x (floor: 1 x 2).
    assert outputs.attentions[0].shape == (2, 1, 192, 2)
    assert outputs.attentions[-1].shape == (2, 4, 4, 4)
    torch.testing.assert_close(outputs.attentions[0].sum(-1), torch.ones(2, 1, 192))
    assert infer_logits(model, pixel_values).shape == (2, 5, 45, 61)


@pytest.mark.parametrize("decoder_type", ["original", "mmseg"])
def test_merged_decoder_equals_concatenation(decoder_type):
    model = tiny_model(decoder_type=decoder_type)
    pixel_values = torch.randn(2, 3, 52, 37)
    with torch.no_grad():
        features = model.segformer(pixel_values).feature_maps
        merged = model.decode_head.forward_merged(features)
        reference = model.decode_head.forward_concat(features)
        logits = model(pixel_values).logits
    assert merged.shape == reference.shape == (2, 5, 13, 10)
    torch.testing.assert_close(merged, reference, atol=1e-5, rtol=0)
    torch.testing.assert_close(logits, merged)
    assert logits.is_contiguous()
    # The reference must not be trivially insensitive to the fuse conv's column order.
    assert (reference - model.decode_head.classifier.bias[:, None, None]).abs().max() > 1e-2


@pytest.mark.parametrize("decoder_type", ["original", "mmseg"])
@pytest.mark.parametrize("height, width", [(64, 64), (64, 52), (52, 37), (96, 40)])
def test_banded_decoder_equals_the_whole_map_decoder(decoder_type, height, width):
    """Inference without autograd runs the decoder's sum, ReLU and classifier one band of rows at a time, upsampling
    in width then in height (a small product with PyTorch's weights); several bands here (3 rows each), bands whose
    rows need the neighbouring input rows, sizes that are not multiples of the later stages' sizes."""
    model = tiny_model(decoder_type=decoder_type)
    head = model.decode_head
    head.BAND_BYTES = 3 * -(-width // 4) * model.config.decoder_hidden_size * 4  # 3 rows of the 1/4-resolution map
    calls = []
    banded = head._banded_sum_and_classify
    head._banded_sum_and_classify = lambda *args: calls.append(1) or banded(*args)
    pixel_values = torch.randn(2, 3, height, width)
    with torch.no_grad():
        features = model.segformer(pixel_values).feature_maps
        assert features[0].shape[-2] >= 3 * 3
        result = head(features)
        reference = head.forward_concat(features)
    assert calls == [1]
    with torch.enable_grad():  # the whole-map path
        whole_map = head(features)
    assert calls == [1] and result.shape == whole_map.shape == (2, 5, -(-height // 4), -(-width // 4))
    assert result.is_contiguous()
    torch.testing.assert_close(result, whole_map, atol=2e-6, rtol=1e-6)
    torch.testing.assert_close(result, reference, atol=1e-5, rtol=0)


def test_banded_decoder_only_without_autograd_or_autocast():
    model = tiny_model()
    calls = []
    banded = model.decode_head._banded_sum_and_classify
    model.decode_head._banded_sum_and_classify = lambda *args: calls.append(1) or banded(*args)
    model(torch.randn(1, 3, 64, 64))  # gradients on: the whole-map decoder
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        assert model(torch.randn(1, 3, 64, 64)).logits.dtype == torch.bfloat16  # autocast: the whole-map decoder
    assert calls == []
    with torch.inference_mode():
        model(torch.randn(1, 3, 52, 37))
    assert calls == [1]


def test_height_weights_are_pytorch_upsampling_weights():
    """`_height_weights` reproduces `F.interpolate`'s bilinear weights in height for any band of output rows."""
    from hf_segmodels.segformer.modeling_segformer import _height_weights

    for size, height in [(7, 13), (4, 16), (16, 128), (5, 5), (3, 17)]:
        # (row i of the upsampled identity: the weights of output row i on every input row, float32 as PyTorch's)
        identity = torch.eye(size)[None, :, :, None]  # channel j = input row indicator j
        expected = F.interpolate(identity, size=(height, 1), mode="bilinear", align_corners=False)[0, :, :, 0].t()
        for top, bottom in [(0, height), (0, 3), (height // 2, height), (2, min(height, 9))]:
            first_row, end_row, weights = _height_weights(top, bottom, size, height)
            assert 0 <= first_row < end_row <= size and weights.shape == (bottom - top, end_row - first_row)
            torch.testing.assert_close(weights, expected[top:bottom, first_row:end_row], atol=3e-7, rtol=0)  # (1-2 ulp)
            assert expected[top:bottom, :first_row].abs().sum() == expected[top:bottom, end_row:].abs().sum() == 0


def test_merged_weights_follow_parameter_changes():
    model = tiny_model()
    pixel_values = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        features = model.segformer(pixel_values).feature_maps
        model.decode_head(features)  # fills the cache
        model.decode_head.linear_fuse.weight.mul_(-0.5)
        model.decode_head.batch_norm.running_var.add_(1.0)
        torch.testing.assert_close(
            model.decode_head(features), model.decode_head.forward_concat(features), atol=1e-5, rtol=0
        )
        other = tiny_model()
        with torch.no_grad():
            other.decode_head.linear_c[2].proj.weight.normal_()
        model.load_state_dict(other.state_dict())
        torch.testing.assert_close(
            model.decode_head(features), other.decode_head.forward_concat(features), atol=1e-5, rtol=1e-5
        )


def test_merged_decoder_passes_gradients_to_the_stored_parameters():
    model = tiny_model()
    features = [f.detach() for f in model.segformer(torch.randn(1, 3, 32, 32)).feature_maps]
    model.decode_head.forward_merged(features).square().sum().backward()
    merged_grads = {n: p.grad.clone() for n, p in model.decode_head.named_parameters()}
    model.zero_grad()
    model.decode_head.forward_concat(features).square().sum().backward()
    for name, parameter in model.decode_head.named_parameters():
        torch.testing.assert_close(merged_grads[name], parameter.grad, atol=1e-5, rtol=1e-4)


def test_training_mode_uses_batch_statistics_and_updates_running_stats():
    model = tiny_model(classifier_dropout_prob=0.0, drop_path_rate=0.0).train()
    running_mean = model.decode_head.batch_norm.running_mean.clone()
    pixel_values = torch.randn(2, 3, 32, 32)
    logits = model(pixel_values).logits
    assert not torch.equal(running_mean, model.decode_head.batch_norm.running_mean)
    model.eval()
    with torch.no_grad():
        assert (logits - model(pixel_values).logits).abs().max() > 1e-3  # batch statistics differ from running ones


def test_loss_is_the_cross_entropy_of_the_upsampled_logits():
    model = tiny_model()
    pixel_values, labels = torch.randn(2, 3, 32, 40), torch.randint(0, 5, (2, 32, 40))
    labels[0, :5] = 255
    outputs = model(pixel_values, labels=labels)
    upsampled = F.interpolate(outputs.logits, size=(32, 40), mode="bilinear", align_corners=False)
    torch.testing.assert_close(outputs.loss, F.cross_entropy(upsampled, labels, ignore_index=255))


@pytest.mark.parametrize(
    "pixel_values, message",
    [
        (torch.randn(3, 32, 32), "4 dimensions|dimensions"),
        (torch.randn(1, 4, 32, 32), "3 channels"),
        (torch.randint(0, 255, (1, 3, 32, 32)), "floating point"),
        (torch.randn(1, 3, 20, 64), r"too small.*stage 1 a side of 20 pixels becomes 5 tokens.*at least 29 pixels"),
    ],
)
def test_bad_pixel_values_raise_clear_errors(pixel_values, message):
    with pytest.raises(ValueError, match=message):
        tiny_model()(pixel_values)


def test_encoder_is_a_backbone_with_four_feature_maps():
    torch.manual_seed(0)
    backbone = SegformerModel(tiny_config()).eval()
    outputs = backbone(torch.randn(1, 3, 64, 96))
    assert [tuple(f.shape) for f in outputs.feature_maps] == [(1, 8, 16, 24), (1, 16, 8, 12), (1, 24, 4, 6),
                                                            (1, 32, 2, 3)]  # fmt: skip
    assert outputs.last_hidden_state is outputs.feature_maps[-1]
    assert outputs.hidden_states is None and outputs.attentions is None


# Total parameters (millions, 150 ADE20K classes) of the released models, from the paper's Table 1 / released logs.
PAPER_PARAMS_M = {"b0": 3.8, "b1": 13.7, "b2": 27.5, "b3": 47.3, "b4": 64.1, "b5": 84.7}


@pytest.mark.parametrize("variant", sorted(PAPER_PARAMS_M))
def test_presets_match_the_released_models(variant):
    name = f"{variant}-ade-640" if variant == "b5" else f"{variant}-ade-512"
    config = SegformerConfig.from_preset(name)
    assert config.num_labels == 150 and config.id2label[0] == "wall" and config.id2label[149] == "flag"
    assert list(config.num_attention_heads) == [1, 2, 5, 8] and list(config.sr_ratios) == [8, 4, 2, 1]
    assert list(config.patch_sizes) == [7, 3, 3, 3] and list(config.strides) == [4, 2, 2, 2]
    assert config.decoder_hidden_size == (256 if variant in ("b0", "b1") else 768)
    with torch.device("meta"):
        model = SegformerForSemanticSegmentation(config)
    params = sum(p.numel() for p in model.parameters()) / 1e6
    assert abs(params - PAPER_PARAMS_M[variant]) < 0.06, params
    cityscapes = SegformerConfig.from_preset(f"{variant}-cityscapes-1024")
    assert cityscapes.num_labels == 19 and cityscapes.id2label[18] == "bicycle"


def test_unknown_preset_and_inconsistent_config_are_errors():
    with pytest.raises(ValueError, match="Unknown SegFormer preset 'b9'"):
        SegformerConfig.from_preset("b9")
    with pytest.raises(StrictDataclassClassValidationError, match=r"`depths` must have one entry per encoder stage"):
        tiny_config(depths=[1, 1, 1])
    with pytest.raises(StrictDataclassClassValidationError, match="hidden size 8 is not divisible by its 3"):
        tiny_config(num_attention_heads=[3, 2, 3, 4])
    with pytest.raises(StrictDataclassFieldValidationError, match="decoder_type.*expected one of"):
        tiny_config(decoder_type="fpn")


def test_saved_parameters_are_the_unmerged_ones_and_auto_model_is_the_encoder(tmp_path):
    model = tiny_model()
    with torch.no_grad():
        expected = model(torch.ones(1, 3, 32, 32)).logits  # also fills the merged-weight cache
    model.save_pretrained(tmp_path)
    SegformerImageProcessor.from_preset("b0-ade-512").save_pretrained(tmp_path)
    saved = load_file(tmp_path / "model.safetensors")
    # The original (unmerged) parameters are what is stored, under their own names.
    assert set(saved) == set(model.state_dict())
    for key, value in model.state_dict().items():
        assert torch.equal(saved[key], value), key
    loaded = AutoModelForSemanticSegmentation.from_pretrained(tmp_path).eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded(torch.ones(1, 3, 32, 32)).logits, expected)
    assert isinstance(AutoModel.from_pretrained(tmp_path), SegformerModel)
    processor = AutoImageProcessor.from_pretrained(tmp_path)
    assert isinstance(processor, SegformerImageProcessor) and processor.do_reduce_labels and processor.size_divisor == 32


def test_image_processor_follows_the_original_test_protocol():
    processor = SegformerImageProcessor()
    image = PIL.Image.fromarray(np.full((375, 500, 3), (124, 116, 104), dtype=np.uint8))
    pixel_values = processor(image, return_tensors="pt").pixel_values
    # Keep ratio to a short side of 512 (683 x 512), then both sides up to multiples of 32.
    assert pixel_values.shape == (1, 3, 512, 704)
    expected = (torch.tensor([124, 116, 104]) / 255 - torch.tensor([0.485, 0.456, 0.406])) / torch.tensor(
        [0.229, 0.224, 0.225]
    )
    torch.testing.assert_close(pixel_values[0, :, 100, 100], expected, atol=1e-5, rtol=0)
    cityscapes = SegformerImageProcessor.from_preset("b0-cityscapes-1024")
    assert cityscapes(PIL.Image.new("RGB", (2048, 1024)), return_tensors="pt").pixel_values.shape == (1, 3, 1024, 2048)
    assert not cityscapes.do_reduce_labels and cityscapes.size_divisor is None


def test_image_processor_reduces_ade_labels_and_keeps_them_aligned():
    processor = SegformerImageProcessor.from_preset("b0-ade-512")
    image = np.zeros((40, 60, 3), dtype=np.uint8)
    label_map = np.zeros((40, 60), dtype=np.uint8)
    label_map[:, 30:] = 3
    label_map[:5, :5] = 255
    outputs = processor(image, segmentation_maps=label_map, return_tensors="pt")
    assert outputs.pixel_values.shape[-2:] == outputs.labels.shape[-2:] == (512, 768)
    assert outputs.labels.dtype == torch.int64
    assert set(outputs.labels.unique().tolist()) == {255, 2}
    assert outputs.labels[0, 256, 700] == 2 and outputs.labels[0, 256, 10] == 255


def test_post_processing_semantic_and_panoptic():
    model = tiny_model(num_labels=3, id2label={0: "road", 1: "sky", 2: "car"}, label2id={"road": 0, "sky": 1, "car": 2})
    with torch.no_grad():
        model.decode_head.classifier.bias.copy_(torch.tensor([0.0, 5.0, 5.5]))
    processor = SegformerImageProcessor(size={"height": 64, "width": 64})
    image = PIL.Image.fromarray((np.random.default_rng(0).random((50, 70, 3)) * 255).astype(np.uint8))
    with torch.no_grad():
        outputs = model(**processor(image, return_tensors="pt"))
    semantic = processor.post_process_semantic_segmentation(outputs, target_sizes=[(50, 70)])[0]
    assert semantic.shape == (50, 70) and semantic.dtype == torch.int64
    panoptic = processor.post_process_panoptic_segmentation(outputs, target_sizes=[(50, 70)])[0]
    present = sorted(semantic.unique().tolist())
    assert sorted(info["label_id"] for info in panoptic["segments_info"]) == present
    for info in panoptic["segments_info"]:
        assert torch.equal(panoptic["segmentation"] == info["id"], semantic == info["label_id"])


def test_registered_with_the_package():
    assert hf_segmodels.SegformerConfig is SegformerConfig
    assert SegformerConfig.model_type == "segmodels_segformer"
    assert set(SEGFORMER_PRESETS) >= {"b0-ade-512", "b2-ade-512", "b5-ade-640", "b0-cityscapes-1024"}



@pytest.mark.parametrize("decoder_type", ["original", "mmseg"])
def test_exported_graph_keeps_the_merged_decoder(decoder_type, tmp_path):
    """The merged decoder is standard operators and stays on while a graph is captured: the exported graph has no
    concatenation of the stage maps and no 1x1 fuse convolution at 1/4 resolution, and it reproduces the model."""
    onnx = pytest.importorskip("onnx", reason="needs the deploy extra (pip install hf-segmodels[deploy])")
    from hf_segmodels import kernels
    from hf_segmodels.export import _Outputs

    torch.manual_seed(0)
    model = SegformerForSemanticSegmentation(tiny.tiny_config("segformer", decoder_type=decoder_type)).eval()
    pixel_values = torch.randn(1, 3, 64, 96)
    logits = _Outputs(model, ("logits",)).eval()  # (pixel_values -> (logits,)), the export entry point's wrapper

    def exported_ops(path):
        with torch.no_grad():
            torch.onnx.export(logits, (pixel_values,), str(path), dynamo=False, opset_version=17)
        return [node.op_type for node in onnx.load(str(path)).graph.node]

    merged = exported_ops(tmp_path / "merged.onnx")
    with kernels.disabled("merged_decoder"):
        concatenated = exported_ops(tmp_path / "concat.onnx")
        with torch.no_grad():
            expected = model(pixel_values=pixel_values).logits
    assert "Concat" in concatenated and concatenated.count("Conv") == merged.count("Conv") + 2  # fuse + classifier
    with torch.no_grad():
        traced = torch.jit.trace(logits, pixel_values, check_trace=False)
        torch.testing.assert_close(traced(pixel_values)[0], expected, atol=1e-5, rtol=0)
    onnxruntime = pytest.importorskip("onnxruntime")
    session = onnxruntime.InferenceSession(str(tmp_path / "merged.onnx"), providers=["CPUExecutionProvider"])
    obtained = session.run(None, {session.get_inputs()[0].name: pixel_values.numpy()})[0]
    np.testing.assert_allclose(obtained, expected.numpy(), atol=1e-5, rtol=0)
