"""Segmenter: model behaviour, remote-code saving, pretrained encoders, image processor, conversion errors (the checks
every architecture shares, Auto API and pipeline included, are in test_common_checks.py)."""

import shutil

import numpy as np
import PIL.Image
import pytest
import tiny
import torch
from transformers import AutoImageProcessor, AutoModelForSemanticSegmentation

import hf_segmodels
from hf_segmodels import SegmenterConfig, SegmenterForSemanticSegmentation, SegmenterImageProcessor, infer_logits
from hf_segmodels.conversion_utils import ConversionError
from hf_segmodels.pretrained import load_pretrained_vit
from hf_segmodels.segmenter.convert_segmenter import convert_segmenter_checkpoint


def tiny_model(**overrides) -> SegmenterForSemanticSegmentation:
    return tiny.tiny_model("segmenter", **overrides)


@pytest.mark.parametrize("decoder_type", ["linear", "mask_transformer"])
@pytest.mark.parametrize("distilled", [False, True])
def test_forward_shapes_any_input_size(decoder_type, distilled):
    model = tiny_model(decoder_type=decoder_type, distilled=distilled)
    pixel_values = torch.randn(2, 3, 45, 61)  # not multiples of the patch size, not the training size
    outputs = model(pixel_values, output_hidden_states=True, output_attentions=True)
    assert outputs.logits.shape == (2, 4, 6, 8)  # ceil(45 / 8), ceil(61 / 8)
    tokens = 48 + 1 + int(distilled)
    assert len(outputs.hidden_states) == 3 and outputs.hidden_states[-1].shape == (2, tokens, 32)
    decoder_layers = 2 if decoder_type == "mask_transformer" else 0
    # `attentions`: the encoder's layers; the Mask Transformer's have their own field
    assert len(outputs.attentions) == 2
    assert outputs.attentions[0].shape == (2, 2, tokens, tokens)
    if decoder_layers:
        assert len(outputs.decoder_attentions) == decoder_layers
        assert outputs.decoder_attentions[-1].shape == (2, 2, 48 + 4, 48 + 4)  # patches + class embeddings
    else:
        assert outputs.decoder_attentions is None
    assert infer_logits(model, pixel_values).shape == (2, 4, 45, 61)


def test_image_smaller_than_a_patch_is_padded():
    model = tiny_model()
    assert infer_logits(model, torch.randn(1, 3, 5, 3)).shape == (1, 4, 5, 3)


def test_loss_is_the_cross_entropy_of_the_full_resolution_logits():
    model = tiny_model()
    pixel_values, labels = torch.randn(2, 3, 32, 40), torch.randint(0, 4, (2, 32, 40))
    labels[0, :5] = 255
    outputs = model(pixel_values, labels=labels)
    expected = torch.nn.functional.cross_entropy(model.full_resolution_logits(pixel_values), labels, ignore_index=255)
    torch.testing.assert_close(outputs.loss, expected)


def test_all_ignored_labels_give_zero_loss_not_nan():
    model = tiny_model()
    loss = model(torch.randn(1, 3, 16, 16), labels=torch.full((1, 16, 16), 255)).loss
    assert torch.isfinite(loss) and loss.item() == 0.0


@pytest.mark.parametrize(
    "shape, message",
    [((1, 4, 16, 16), "must have 3 channels"), ((3, 16, 16), r"got \(3, 16, 16\) \(3 dimensions\)"),
     ((1, 1, 16, 16), "must have 3 channels")],
)
def test_bad_pixel_values(shape, message):
    with pytest.raises(ValueError, match=message):
        tiny_model()(torch.randn(*shape))


def test_save_pretrained_writes_auto_map_for_remote_code(tmp_path):
    import json

    tiny_model().save_pretrained(tmp_path)
    SegmenterImageProcessor().save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["auto_map"] == {
        "AutoConfig": "configuration_segmenter.SegmenterConfig",
        "AutoModelForSemanticSegmentation": "modeling_segmenter.SegmenterForSemanticSegmentation",
    }
    processor = json.loads((tmp_path / "preprocessor_config.json").read_text())
    assert processor["auto_map"] == {"AutoImageProcessor": "image_processing_segmenter.SegmodelsSegmenterImageProcessor"}
    for name in ("modeling_segmenter.py", "configuration_segmenter.py", "layers.py", "image_processing.py"):
        code = (tmp_path / name).read_text()
        assert "from .." not in code, name


def test_config_from_original_variant_names():
    large = SegmenterConfig.from_original_variant("seg_large_mask", dataset="ade20k")
    assert (large.hidden_size, large.num_attention_heads, large.num_hidden_layers) == (1024, 16, 24)
    assert (large.decoder_num_attention_heads, large.decoder_intermediate_size) == (16, 4096)
    assert large.num_labels == 150 and large.image_size == 512 and large.patch_size == 16
    small8 = SegmenterConfig.from_original_variant("seg_small_linear_8", dataset="cityscapes")
    assert (small8.patch_size, small8.decoder_type, small8.num_labels, small8.image_size) == (8, "linear", 19, 768)
    deit = SegmenterConfig.from_original_variant("seg_base_deit_mask_32", dataset=None, num_labels=5)
    assert deit.distilled and deit.patch_size == 32 and deit.num_labels == 5
    with pytest.raises(ValueError, match="Unknown Segmenter variant"):
        SegmenterConfig.from_original_variant("seg_huge_mask")


def test_multi_scale_flip_and_window_batching():
    model = tiny_model()
    pixel_values = torch.randn(2, 3, 40, 56)
    one_by_one = infer_logits(model, pixel_values, window=(24, 24), stride=(16, 16), window_batch_size=1)
    batched = infer_logits(model, pixel_values, window=(24, 24), stride=(16, 16), window_batch_size=7)
    torch.testing.assert_close(one_by_one, batched, atol=1e-5, rtol=1e-5)

    merged = infer_logits(model, pixel_values, scales=(0.75, 1.0), flip=True)
    views = []
    for scale in (0.75, 1.0):
        size = (int(40 * scale + 0.5), int(56 * scale + 0.5))
        images = torch.nn.functional.interpolate(pixel_values, size=size, mode="bilinear", align_corners=False)
        for flip in (False, True):
            logits = model.full_resolution_logits(images.flip(-1) if flip else images)
            logits = logits.flip(-1) if flip else logits
            logits = torch.nn.functional.interpolate(logits, size=(40, 56), mode="bilinear", align_corners=False)
            views.append(logits.softmax(1))
    torch.testing.assert_close(merged.softmax(1), torch.stack(views).mean(0), atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="together"):
        infer_logits(model, pixel_values, window=(24, 24))


def test_load_pretrained_transformers_vit_and_deit(tmp_path):
    from transformers import DeiTConfig, DeiTModel, ViTConfig, ViTModel

    for distilled, config_class, model_class in ((False, ViTConfig, ViTModel), (True, DeiTConfig, DeiTModel)):
        torch.manual_seed(1)
        config = tiny.transformers_vit_config(tiny.tiny_config("segmenter"), config_class, layer_norm_eps=1e-5)
        reference = model_class(config, add_pooling_layer=False).eval()
        reference.save_pretrained(tmp_path / model_class.__name__)
        model = tiny_model(distilled=distilled, drop_path_rate=0.0)
        load_pretrained_vit(model.encoder, tmp_path / model_class.__name__)
        pixel_values = torch.randn(1, 3, 32, 32)
        with torch.no_grad():
            torch.testing.assert_close(
                model.encoder(pixel_values).last_hidden_state, reference(pixel_values).last_hidden_state,
                atol=1e-5, rtol=1e-5,
            )


def test_load_pretrained_timm_state_dict_resizes_position_embeddings(tmp_path):
    source = tiny_model()  # a trained-at-32px encoder, written in timm's layout at a 2x2 grid
    state = {"cls_token": torch.randn(1, 1, 32), "pos_embed": torch.randn(1, 5, 32),
             "patch_embed.proj.weight": torch.randn(32, 3, 8, 8), "patch_embed.proj.bias": torch.randn(32),
             "norm.weight": torch.randn(32), "norm.bias": torch.randn(32),
             "head.weight": torch.randn(1000, 32), "head.bias": torch.randn(1000)}
    for i in range(2):
        layer = source.encoder.layers[i]
        state.update({f"blocks.{i}.norm1.weight": layer.layernorm_before.weight, f"blocks.{i}.norm1.bias": layer.layernorm_before.bias,
                      f"blocks.{i}.norm2.weight": layer.layernorm_after.weight, f"blocks.{i}.norm2.bias": layer.layernorm_after.bias,
                      f"blocks.{i}.attn.qkv.weight": layer.attention.qkv.weight, f"blocks.{i}.attn.qkv.bias": layer.attention.qkv.bias,
                      f"blocks.{i}.attn.proj.weight": layer.attention.proj.weight, f"blocks.{i}.attn.proj.bias": layer.attention.proj.bias,
                      f"blocks.{i}.mlp.fc1.weight": layer.mlp.fc1.weight, f"blocks.{i}.mlp.fc1.bias": layer.mlp.fc1.bias,
                      f"blocks.{i}.mlp.fc2.weight": layer.mlp.fc2.weight, f"blocks.{i}.mlp.fc2.bias": layer.mlp.fc2.bias})
    torch.save({k: v.detach().clone() for k, v in state.items()}, tmp_path / "vit.pth")
    model = tiny_model()  # 32 px / patch 8 -> 4x4 grid
    load_pretrained_vit(model.encoder, tmp_path / "vit.pth")
    positions = model.encoder.embeddings.position_embeddings
    assert positions.shape == (1, 17, 32)
    torch.testing.assert_close(positions[:, 0], state["pos_embed"][:, 0])
    grid = state["pos_embed"][:, 1:].reshape(1, 2, 2, 32).permute(0, 3, 1, 2)
    expected = torch.nn.functional.interpolate(grid, size=(4, 4), mode="bilinear", align_corners=False)
    torch.testing.assert_close(positions[:, 1:], expected.permute(0, 2, 3, 1).reshape(1, 16, 32))
    state["blocks.0.attn.unknown"] = torch.zeros(1)
    torch.save(state, tmp_path / "bad.pth")
    with pytest.raises(ConversionError, match="blocks.0.attn.unknown"):
        load_pretrained_vit(model.encoder, tmp_path / "bad.pth")


# --- image processor -------------------------------------------------------------------------------------------


def test_image_processor_modes_and_layouts():
    processor = SegmenterImageProcessor(size={"height": 16, "width": 24})
    rgb = np.random.RandomState(0).randint(0, 256, (20, 30, 3), dtype=np.uint8)
    reference = processor(PIL.Image.fromarray(rgb), return_tensors="pt")["pixel_values"]
    assert reference.shape == (1, 3, 16, 24)
    torch.testing.assert_close(processor(rgb, return_tensors="pt")["pixel_values"], reference)
    torch.testing.assert_close(processor(rgb.transpose(2, 0, 1).copy(), return_tensors="pt")["pixel_values"], reference)
    rgba = np.concatenate([rgb, np.full((20, 30, 1), 255, np.uint8)], axis=-1)
    torch.testing.assert_close(processor(PIL.Image.fromarray(rgba), return_tensors="pt")["pixel_values"], reference)

    gray = rgb[..., 0]
    gray_out = processor(PIL.Image.fromarray(gray), return_tensors="pt")["pixel_values"]
    assert gray_out.shape == (1, 3, 16, 24)
    torch.testing.assert_close(gray_out[:, 0], gray_out[:, 1])
    # A 16-bit image holding the same picture scaled by 257 is processed like the 8-bit one.
    gray16 = PIL.Image.fromarray(gray.astype(np.uint16) * 257)
    assert gray16.mode.startswith("I;16")
    torch.testing.assert_close(processor(gray16, return_tensors="pt")["pixel_values"], gray_out, atol=2e-2, rtol=0)
    torch.testing.assert_close(
        processor(gray.astype(np.uint16) * 257, return_tensors="pt")["pixel_values"], gray_out, atol=2e-2, rtol=0
    )
    assert gray_out.min() >= -1.0 and gray_out.max() <= 1.0


def test_image_processor_labels_and_reduce_labels():
    processor = SegmenterImageProcessor(size={"height": 4, "width": 4}, do_reduce_labels=True)
    image = np.zeros((4, 4, 3), np.uint8)
    label = np.array([[0, 1, 2, 255]] * 4, dtype=np.uint8)
    batch = processor(image, segmentation_maps=PIL.Image.fromarray(label), return_tensors="pt")
    assert batch["labels"].dtype == torch.int64
    assert batch["labels"][0, 0].tolist() == [255, 0, 1, 255]
    with pytest.raises(ValueError, match="segmentation maps"):
        processor([image, image], segmentation_maps=[label])


def test_image_processor_keep_ratio_resize_like_mmseg():
    processor = SegmenterImageProcessor()  # shorter side 512, longer at most 2048
    assert processor(np.zeros((300, 450, 3), np.uint8))["pixel_values"][0].shape == (3, 512, 768)
    assert processor(np.zeros((100, 1000, 3), np.uint8))["pixel_values"][0].shape == (3, 205, 2048)


def test_post_processing_semantic_and_panoptic():
    processor = SegmenterImageProcessor()
    logits = torch.full((2, 3, 4, 4), -5.0)
    logits[0, 1, :, :2] = 5.0
    logits[0, 2, :, 2:] = 5.0
    logits[1, 0] = 5.0

    class Outputs:
        pass

    outputs = Outputs()
    outputs.logits = logits
    semantic = processor.post_process_semantic_segmentation(outputs, target_sizes=[(8, 8), (4, 6)])
    assert semantic[0].shape == (8, 8) and semantic[0].dtype == torch.int64
    assert semantic[0][:, :4].eq(1).all() and semantic[0][:, 4:].eq(2).all() and semantic[1].eq(0).all()
    panoptic = processor.post_process_panoptic_segmentation(outputs, target_sizes=[(8, 8), (4, 6)])
    info = panoptic[0]["segments_info"]
    assert [(s["id"], s["label_id"]) for s in info] == [(1, 1), (2, 2)]
    assert all(isinstance(s["score"], float) and 0.99 < s["score"] <= 1.0 for s in info)
    segmentation = panoptic[0]["segmentation"]
    assert segmentation[:, :4].eq(1).all() and segmentation[:, 4:].eq(2).all()
    assert [s["label_id"] for s in panoptic[1]["segments_info"]] == [0]


# --- conversion errors --------------------------------------------------------------------------------------------


def test_conversion_missing_variant_file(golden_dir, tmp_path):
    folder = golden_dir / "segmenter" / "mask_tiny"
    with pytest.raises(ConversionError, match="variant.yml.*not found|not found.*nope.yml"):
        convert_segmenter_checkpoint(folder / "checkpoint.pth", tmp_path / "nope.yml")
    with pytest.raises(ConversionError, match="missing.pth"):
        convert_segmenter_checkpoint(tmp_path / "missing.pth", folder / "variant.yml")


def test_conversion_unknown_keys_and_shape_mismatch(golden_dir, tmp_path):
    folder = golden_dir / "segmenter" / "mask_tiny"
    checkpoint = torch.load(folder / "checkpoint.pth", weights_only=True)
    checkpoint["model"]["decoder.extra_layer.weight"] = torch.zeros(3)
    torch.save(checkpoint, tmp_path / "unknown.pth")
    with pytest.raises(ConversionError, match=r"decoder\.extra_layer\.weight"):
        convert_segmenter_checkpoint(tmp_path / "unknown.pth", folder / "variant.yml")

    # A variant that does not match the checkpoint (wider model) -> the mismatching shapes are named.
    variant = (folder / "variant.yml").read_text().replace("d_model: 64", "d_model: 128")
    (tmp_path / "variant.yml").write_text(variant)
    with pytest.raises(ConversionError, match=r"encoder\.embeddings\.cls_token: checkpoint \(1, 1, 64\) vs model \(1, 1, 128\)"):
        convert_segmenter_checkpoint(folder / "checkpoint.pth", tmp_path / "variant.yml")


def test_conversion_cli_writes_complete_output_or_nothing(golden_dir, tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    script = Path(hf_segmodels.__file__).resolve().parents[1] / "conversion_scripts" / "convert_segmenter.py"
    folder = golden_dir / "segmenter" / "mask_distilled_tiny"
    output = tmp_path / "converted"
    done = subprocess.run(
        [sys.executable, str(script), "--checkpoint", str(folder / "checkpoint.pth"), "--config",
         str(folder / "variant.yml"), "--output_dir", str(output), "--model_card"],
        capture_output=True, text=True,
    )
    assert done.returncode == 0, done.stderr
    for name in ("config.json", "model.safetensors", "preprocessor_config.json", "README.md"):
        assert (output / name).is_file(), name
    model = AutoModelForSemanticSegmentation.from_pretrained(output).eval()
    processor = AutoImageProcessor.from_pretrained(output)
    assert processor.image_mean == pytest.approx((0.485, 0.456, 0.406))  # DeiT normalisation from variant.yml
    pixel_values = torch.from_numpy(np.load(folder / "input.npy"))
    np.testing.assert_allclose(infer_logits(model, pixel_values, protocol=False).numpy(), np.load(folder / "logits.npy"),
                               atol=1e-4)  # whole image; the converted checkpoint records variant.yml's windows

    bad = tmp_path / "bad.pth"
    checkpoint = torch.load(folder / "checkpoint.pth", weights_only=True)
    del checkpoint["model"]["decoder.mask_norm.bias"]
    torch.save(checkpoint, bad)
    failed = subprocess.run(
        [sys.executable, str(script), "--checkpoint", str(bad), "--config", str(folder / "variant.yml"),
         "--output_dir", str(tmp_path / "failed")],
        capture_output=True, text=True,
    )
    assert failed.returncode == 2 and "decoder.mask_norm.bias" in failed.stderr
    assert not (tmp_path / "failed").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".failed")]
    shutil.rmtree(output)
