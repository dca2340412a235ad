"""SETR: model behaviour, losses, presets, saved configs, image processor, conversion errors (the checks every
architecture shares, Auto API and pipeline included, are in test_common_checks.py)."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
import tiny
import torch
import torch.nn.functional as F
from transformers import AutoConfig, AutoImageProcessor, AutoModelForSemanticSegmentation

import hf_segmodels
from hf_segmodels import SetrConfig, SetrForSemanticSegmentation, SetrImageProcessor, infer_logits
from hf_segmodels.conversion_utils import ConversionError
from hf_segmodels.setr.convert_setr import convert_setr_checkpoint


def tiny_config(decoder_type="pup", **overrides) -> SetrConfig:
    return tiny.tiny_config("setr", decoder_type=decoder_type, **overrides)


def tiny_model(decoder_type="pup", **overrides) -> SetrForSemanticSegmentation:
    return tiny.tiny_model("setr", decoder_type=decoder_type, **overrides)


# (decoder, logits grid of a 45 x 61 input with patch 8: 6 x 8 padded patches times the decoder's upsampling)
SHAPES = [("naive", (24, 32)), ("pup", (96, 128)), ("mla", (24, 32))]


@pytest.mark.parametrize("decoder_type, grid", SHAPES)
def test_forward_shapes_any_input_size(decoder_type, grid):
    model = tiny_model(decoder_type)
    pixel_values = torch.randn(2, 3, 45, 61)  # not multiples of the patch size, not the training size
    outputs = model(pixel_values, output_hidden_states=True, output_attentions=True)
    assert outputs.logits.shape == (2, 4, *grid)
    tokens = 48 + int(decoder_type != "mla")  # MLA has no cls token
    assert len(outputs.hidden_states) == 5 and outputs.hidden_states[-1].shape == (2, tokens, 32)
    assert len(outputs.attentions) == 4 and outputs.attentions[0].shape == (2, 2, tokens, tokens)
    assert infer_logits(model, pixel_values).shape == (2, 4, 45, 61)
    assert model(pixel_values).hidden_states is None


def test_whole_image_output_is_the_resized_logits():
    model = tiny_model("mla")
    pixel_values = torch.randn(1, 3, 37, 50)
    expected = F.interpolate(model(pixel_values).logits, size=(37, 50), mode="bilinear", align_corners=False)
    torch.testing.assert_close(infer_logits(model, pixel_values), expected)


def test_original_pup_classifier_runs_before_the_last_upsampling():
    model = tiny_model("pup", decoder_classifier_before_last_upsample=True, decoder_conv_bias=True)
    head = model.decode_head
    tokens = torch.randn(1, 16, 32)
    hidden = head.layernorm(tokens).transpose(1, 2).reshape(1, 32, 4, 4)
    for index, stage in enumerate(head.stages):
        hidden = stage(hidden)
        if index < 3:
            hidden = F.interpolate(hidden, scale_factor=2, mode="bilinear", align_corners=False)
    expected = F.interpolate(head.classifier(hidden), scale_factor=2, mode="bilinear", align_corners=False)
    torch.testing.assert_close(head(tokens, (4, 4)), expected)
    assert head.stages[0].conv.bias is not None


def _manual_loss(model, pixel_values, labels):
    """Main + 0.4 x auxiliary cross-entropies, each head's logits resized bilinearly to the labels."""
    config = model.config
    hidden = model.encoder(pixel_values, return_layers=tuple(range(config.num_hidden_layers)))
    extra, grid = model.encoder.num_extra_tokens, hidden.grid_size

    def ce(logits):
        logits = F.interpolate(logits, size=labels.shape[-2:], mode="bilinear", align_corners=False)
        return F.cross_entropy(logits, labels, ignore_index=255)

    if config.decoder_type == "mla":
        tokens = [hidden.layer_outputs[layer][:, extra:] for layer in config.mla_layer_indices]
        logits, streams = model.decode_head(tokens, grid)
        auxiliary = [head(streams[config.mla_layer_indices.index(layer)])
                     for head, layer in zip(model.auxiliary_heads, config.auxiliary_layer_indices)]
    else:
        logits = model.decode_head(hidden.layer_outputs[config.decoder_layer_index][:, extra:], grid)
        auxiliary = [head(hidden.layer_outputs[layer][:, extra:], grid)
                     for head, layer in zip(model.auxiliary_heads, config.auxiliary_layer_indices)]
    return ce(logits) + sum(0.4 * ce(aux) for aux in auxiliary)


@pytest.mark.parametrize("decoder_type, layers", [("naive", [1, 2]), ("pup", [1, 2, 3]), ("mla", [0, 1, 2, 3])])
def test_loss_is_main_plus_weighted_auxiliary(decoder_type, layers):
    model = tiny_model(decoder_type)
    assert model.config.auxiliary_layer_indices == layers and len(model.auxiliary_heads) == len(layers)
    pixel_values, labels = torch.randn(2, 3, 32, 40), torch.randint(0, 4, (2, 32, 40))
    labels[0, :5] = 255
    with torch.no_grad():
        outputs = model(pixel_values, labels=labels)
        torch.testing.assert_close(outputs.loss, _manual_loss(model, pixel_values, labels))


def test_auxiliary_heads_only_run_with_labels():
    model = tiny_model("pup")
    calls = []
    for head in model.auxiliary_heads:
        head.register_forward_hook(lambda *args: calls.append(1))
    pixel_values = torch.randn(1, 3, 32, 32)
    model(pixel_values)
    infer_logits(model, pixel_values, window=(32, 32), stride=(16, 16))
    assert calls == []
    model(pixel_values, labels=torch.zeros(1, 32, 32, dtype=torch.long))
    assert len(calls) == 3
    # Without auxiliary heads the loss is the decoder's cross-entropy alone.
    plain = tiny_model("pup", auxiliary_layer_indices=[])
    labels = torch.randint(0, 4, (1, 32, 32))
    logits = F.interpolate(plain(pixel_values).logits, size=(32, 32), mode="bilinear", align_corners=False)
    torch.testing.assert_close(plain(pixel_values, labels=labels).loss, F.cross_entropy(logits, labels))


def test_bad_pixel_values_name_the_problem():
    model = tiny_model("mla")
    with pytest.raises(ValueError, match="must have 3 channels"):
        model(torch.randn(1, 4, 16, 16))
    with pytest.raises(ValueError, match=r"got \(3, 16, 16\)"):
        model(torch.randn(3, 16, 16))
    with pytest.raises(ValueError, match="floating point"):
        model(torch.zeros(1, 3, 16, 16, dtype=torch.uint8))


def test_encoder_equals_transformers_vit_on_identical_weights(tmp_path):
    """Our encoder (with patch-embedding bias, as the original) is transformers' ViT without its final LayerNorm."""
    from transformers import ViTConfig, ViTModel

    from hf_segmodels.pretrained import load_pretrained_vit

    torch.manual_seed(3)
    config = tiny.transformers_vit_config(tiny_config(), ViTConfig, layer_norm_eps=1e-6)
    reference = ViTModel(config, add_pooling_layer=False).eval()
    reference.save_pretrained(tmp_path)
    model = tiny_model("pup", patch_embeddings_bias=True)
    load_pretrained_vit(model.encoder, tmp_path)
    pixel_values = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        ours = model.encoder(pixel_values, return_layers=(0, 3)).layer_outputs
        theirs = reference(pixel_values, output_hidden_states=True).hidden_states
    for layer, index in enumerate((1, 4)):
        torch.testing.assert_close(ours[layer], theirs[index], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("decoder_type", ["pup", "mla"])
def test_deit_initialisation_drops_the_distillation_token(tmp_path, decoder_type):
    """SETR-DeiT starts from (distilled) DeiT-B weights; SETR's encoder keeps the cls token (naive / PUP) or no
    extra token at all (MLA), so the distillation token and its position are dropped."""
    from transformers import DeiTConfig, DeiTModel

    from hf_segmodels.pretrained import load_pretrained_vit

    torch.manual_seed(4)
    deit = DeiTModel(tiny.transformers_vit_config(tiny_config(), DeiTConfig, layer_norm_eps=1e-6),
                     add_pooling_layer=False)
    deit.save_pretrained(tmp_path)
    model = tiny_model(decoder_type, patch_embeddings_bias=True)
    load_pretrained_vit(model.encoder, tmp_path)
    positions = deit.embeddings.position_embeddings.detach()
    expected = positions[:, 2:] if decoder_type == "mla" else torch.cat([positions[:, :1], positions[:, 2:]], dim=1)
    torch.testing.assert_close(model.encoder.embeddings.position_embeddings.detach(), expected)
    state = deit.state_dict()
    torch.testing.assert_close(
        model.encoder.layers[3].attention.qkv.weight.detach(),
        torch.cat([state[f"layers.3.attention.{name}_proj.weight"] for name in "qkv"]),
    )


def test_batchnorm_converts_to_syncbn():
    model = tiny_model("mla")
    converted = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    assert not any(type(m) is torch.nn.BatchNorm2d for m in converted.modules())
    assert sum(isinstance(m, torch.nn.SyncBatchNorm) for m in converted.modules()) == 4 * 2 + 4 * 2


def test_init_weights_follow_the_paper():
    model = SetrForSemanticSegmentation(tiny_config("pup", hidden_size=64, intermediate_size=256))
    qkv = model.encoder.layers[0].attention.qkv
    assert abs(qkv.weight.std().item() - 0.02) < 0.004 and qkv.bias.abs().max() == 0
    classifier = model.decode_head.classifier
    assert abs(classifier.weight.std().item() - 0.01) < 0.004 and classifier.bias.abs().max() == 0
    conv = model.decode_head.stages[1].conv.weight  # Kaiming normal, fan_out, ReLU gain: std sqrt(2 / (16 * 9))
    assert abs(conv.std().item() - (2 / (16 * 9)) ** 0.5) < 0.03
    norm = model.decode_head.stages[0].norm
    assert norm.weight.eq(1).all() and norm.running_var.eq(1).all()


# --- config and presets -------------------------------------------------------------------------------------------


def test_presets():
    pup = SetrConfig.from_preset("setr_pup_large_cityscapes")
    assert (pup.hidden_size, pup.num_hidden_layers, pup.num_attention_heads, pup.intermediate_size) == (1024, 24, 16,
                                                                                                       4096)
    assert (pup.num_labels, pup.image_size, pup.decoder_layer_index) == (19, 768, 23)
    assert pup.auxiliary_layer_indices == [9, 14, 19, 23] and pup.auxiliary_loss_weight == 0.4
    assert pup.decoder_classifier_before_last_upsample and pup.decoder_conv_bias and pup.patch_embeddings_bias
    naive = SetrConfig.from_preset("setr_naive_base_cityscapes")
    assert (naive.hidden_size, naive.num_hidden_layers, naive.auxiliary_layer_indices) == (768, 12, [2, 5, 8])
    assert (naive.decoder_num_convs, naive.decoder_kernel_size, naive.decoder_up_scale) == (1, 1, 1)
    mla = SetrConfig.from_preset("setr_mla_deit_ade20k")
    assert mla.mla_layer_indices == [2, 5, 8, 11] and mla.auxiliary_layer_indices == [2, 5, 8, 11]
    assert (mla.num_labels, mla.image_size, mla.use_cls_token) == (150, 512, False)
    assert mla.mla_classifier_kernel_size == 3 and mla.mla_align_corners and not mla.auxiliary_classifier_bias
    assert SetrConfig.from_preset("setr_pup_deit_pascal_context").auxiliary_layer_indices == [4, 7, 9, 11]
    port = SetrConfig.from_preset("setr_pup_large_ade20k", implementation="mmseg", num_labels=5)
    assert port.num_labels == 5 and port.auxiliary_layer_indices == [9, 14, 19] and not port.decoder_conv_bias
    assert SetrConfig.from_preset("setr_mla_large_ade20k", implementation="mmseg").mla_classifier_kernel_size == 1
    assert len(SetrConfig.preset_aliases()) == 27 and len(SetrConfig.preset_names()) == 15  # zoo names
    with pytest.raises(ValueError, match="Unknown SETR preset"):
        SetrConfig.from_preset("setr_pup_huge_ade20k")
    with pytest.raises(ValueError, match="implementation"):
        SetrConfig.from_preset("setr_pup_large_ade20k", implementation="timm")


def test_auxiliary_layers_scale_with_depth():
    assert tiny_config("pup", num_hidden_layers=6).auxiliary_layer_indices == [2, 3, 4, 5]
    assert tiny_config("mla", num_hidden_layers=8).mla_layer_indices == [1, 3, 5, 7]
    naive = tiny_config("naive")
    assert (naive.decoder_num_convs, naive.decoder_kernel_size, naive.decoder_up_scale) == (1, 1, 4)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(decoder_type="fpn"), "decoder_type"),
        (dict(decoder_type="mla", mla_layer_indices=[1, 3], auxiliary_layer_indices=[0, 1]), r"\[0\] are not in"),
        (dict(auxiliary_layer_indices=[0, 4]), "must be encoder layers"),
        (dict(decoder_layer_index=7), "decoder_layer_index"),
        (dict(decoder_type="mla", mla_layer_indices=[3, 1]), "increasing"),
        (dict(image_size=36), "multiple of `patch_size`"),
        (dict(decoder_kernel_size=5), "decoder_kernel_size"),
    ],
)
def test_invalid_configs_are_rejected(kwargs, message):
    from huggingface_hub.errors import StrictDataclassClassValidationError

    with pytest.raises((ValueError, StrictDataclassClassValidationError), match=message):
        tiny_config(**kwargs)


# --- saved configs, image processor -------------------------------------------------------------------------------


def test_saved_mla_config_and_remote_code(tmp_path):
    tiny_model("mla").save_pretrained(tmp_path)
    config = AutoConfig.from_pretrained(tmp_path)
    assert config.mla_layer_indices == [0, 1, 2, 3] and not config.use_cls_token
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["auto_map"]["AutoModelForSemanticSegmentation"] == "modeling_setr.SetrForSemanticSegmentation"
    assert "from .." not in (tmp_path / "modeling_setr.py").read_text()


def test_image_processor_normalisation_sizes_and_labels():
    processor = SetrImageProcessor()
    assert processor.image_mean == pytest.approx((0.485, 0.456, 0.406))
    image = np.full((300, 450, 3), 255, np.uint8)
    pixel_values = processor(image, return_tensors="pt")["pixel_values"]
    assert pixel_values.shape == (1, 3, 512, 768)
    torch.testing.assert_close(pixel_values[0, :, 0, 0], (1 - torch.tensor([0.485, 0.456, 0.406])) / torch.tensor(
        [0.229, 0.224, 0.225]))
    cityscapes = SetrImageProcessor.for_dataset("cityscapes")
    assert cityscapes(np.zeros((1024, 2048, 3), np.uint8))["pixel_values"][0].shape == (3, 768, 1536)
    assert not cityscapes.do_reduce_labels
    context = SetrImageProcessor.for_dataset("pascal_context")
    assert context(np.zeros((375, 500, 3), np.uint8))["pixel_values"][0].shape == (3, 480, 640)
    ade = SetrImageProcessor.for_dataset("ade20k", size={"height": 4, "width": 4})
    label = np.array([[0, 1, 2, 255]] * 4, dtype=np.uint8)
    batch = ade(np.zeros((4, 4, 3), np.uint8), segmentation_maps=PIL.Image.fromarray(label), return_tensors="pt")
    assert batch["labels"][0, 0].tolist() == [255, 0, 1, 255]
    with pytest.raises(ValueError, match="Unknown dataset"):
        SetrImageProcessor.for_dataset("coco")


def test_post_processing_semantic_and_panoptic():
    model = tiny_model("pup")
    processor = SetrImageProcessor()
    with torch.no_grad():
        outputs = model(torch.randn(2, 3, 32, 32))  # patch 8, PUP x16: (2, 4, 64, 64)
    semantic = processor.post_process_semantic_segmentation(outputs, target_sizes=[(20, 30), (64, 64)])
    assert semantic[0].shape == (20, 30) and semantic[1].shape == (64, 64)
    torch.testing.assert_close(semantic[1], outputs.logits[1].argmax(0))
    panoptic = processor.post_process_panoptic_segmentation(outputs, target_sizes=[(20, 30), (64, 64)])
    segments = panoptic[1]["segments_info"]
    assert sorted(s["label_id"] for s in segments) == sorted(torch.unique(semantic[1]).tolist())
    for segment in segments:
        mask = panoptic[1]["segmentation"] == segment["id"]
        assert semantic[1][mask].eq(segment["label_id"]).all()


# --- conversion errors --------------------------------------------------------------------------------------------


def _case(golden_dir, name="setr_pup_tiny"):
    return golden_dir / "setr" / name


def test_conversion_missing_files(golden_dir, tmp_path):
    folder = _case(golden_dir)
    with pytest.raises(ConversionError, match="nope.py"):
        convert_setr_checkpoint(folder / "checkpoint.pth", tmp_path / "nope.py", source="mmseg")
    with pytest.raises(ConversionError, match="missing.pth"):
        convert_setr_checkpoint(tmp_path / "missing.pth", folder / "config.py", source="mmseg")
    with pytest.raises(ConversionError, match="--config is required"):
        convert_setr_checkpoint(folder / "checkpoint.pth", None, source="mmseg")
    with pytest.raises(ConversionError, match="Unknown --source"):
        convert_setr_checkpoint(folder / "checkpoint.pth", folder / "config.py", source="timm")


def test_conversion_unknown_and_missing_keys(golden_dir, tmp_path):
    folder = _case(golden_dir)
    checkpoint = torch.load(folder / "checkpoint.pth", weights_only=True)
    checkpoint["state_dict"]["decode_head.extra.weight"] = torch.zeros(3)
    del checkpoint["state_dict"]["decode_head.up_convs.2.0.bn.running_mean"]
    torch.save(checkpoint, tmp_path / "bad.pth")
    with pytest.raises(ConversionError, match=r"decode_head\.extra\.weight"):
        convert_setr_checkpoint(tmp_path / "bad.pth", folder / "config.py", source="mmseg")
    del checkpoint["state_dict"]["decode_head.extra.weight"]
    torch.save(checkpoint, tmp_path / "bad.pth")
    with pytest.raises(ConversionError, match=r"lacks.*decode_head\.stages\.2\.norm\.running_mean"):
        convert_setr_checkpoint(tmp_path / "bad.pth", folder / "config.py", source="mmseg")
    # The wrong --source is reported through the keys it does not know.
    with pytest.raises(ConversionError, match="not known to this converter"):
        convert_setr_checkpoint(folder / "checkpoint.pth", _case(golden_dir, "setr_original_pup_tiny") / "config.py")


def test_conversion_config_that_does_not_match_the_checkpoint(golden_dir, tmp_path):
    folder = _case(golden_dir)
    config = (folder / "config.py").read_text()
    (tmp_path / "wide.py").write_text(config.replace("channels=32", "channels=48"))
    with pytest.raises(ConversionError, match=r"decode_head\.stages\.0\.conv\.weight: checkpoint \(32, 64, 3, 3\) "
                                              r"vs model \(48, 64, 3, 3\)"):
        convert_setr_checkpoint(folder / "checkpoint.pth", tmp_path / "wide.py", source="mmseg")
    (tmp_path / "naive.py").write_text(config.replace("num_convs=4", "num_convs=3"))
    with pytest.raises(ConversionError, match=r"model does not have: \['decode_head\.stages\.3\.conv\.weight"):
        convert_setr_checkpoint(folder / "checkpoint.pth", tmp_path / "naive.py", source="mmseg")
    (tmp_path / "unet.py").write_text(config.replace("type='SETRUPHead',\n        up_scale=2", "type='UNetHead',\n"
                                                                                                  "        up_scale=2"))
    with pytest.raises(ConversionError, match="Unsupported decode head 'UNetHead'"):
        convert_setr_checkpoint(folder / "checkpoint.pth", tmp_path / "unet.py", source="mmseg")
    original = (_case(golden_dir, "setr_original_pup_tiny") / "config.py").read_text()
    (tmp_path / "odd.py").write_text(original.replace("num_upsampe_layer=4", "num_upsampe_layer=3"))
    with pytest.raises(ConversionError, match="num_conv=4, num_upsampe_layer=3 is not a SETR head"):
        convert_setr_checkpoint(_case(golden_dir, "setr_original_pup_tiny") / "checkpoint.pth", tmp_path / "odd.py")


def test_conversion_cli_writes_complete_output_or_nothing(golden_dir, tmp_path):
    script = Path(hf_segmodels.__file__).resolve().parents[1] / "conversion_scripts" / "convert_setr.py"
    folder = _case(golden_dir, "setr_naive_tiny")
    output = tmp_path / "converted"
    command = [sys.executable, str(script), "--source", "mmseg", "--checkpoint", str(folder / "checkpoint.pth"),
               "--config", str(folder / "config.py"), "--output_dir", str(output), "--model_card",
               "--drop_auxiliary_heads"]
    done = subprocess.run(command, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    for name in ("config.json", "model.safetensors", "preprocessor_config.json", "README.md"):
        assert (output / name).is_file(), name
    assert "SETR" in (output / "README.md").read_text()
    model = AutoModelForSemanticSegmentation.from_pretrained(output).eval()
    assert model.config.auxiliary_layer_indices == [] and len(model.auxiliary_heads) == 0
    pixel_values = torch.from_numpy(np.load(folder / "input.npy"))
    # whole image (the converted checkpoint records its config's sliding windows as the default protocol)
    np.testing.assert_allclose(infer_logits(model, pixel_values, protocol=False).numpy(), np.load(folder / "logits.npy"),
                               atol=1e-4)
    assert AutoImageProcessor.from_pretrained(output).image_mean == pytest.approx((0.485, 0.456, 0.406))

    bad = tmp_path / "bad.pth"
    checkpoint = torch.load(folder / "checkpoint.pth", weights_only=True)
    del checkpoint["state_dict"]["decode_head.norm.bias"]
    torch.save(checkpoint, bad)
    failed = subprocess.run(
        [sys.executable, str(script), "--source", "mmseg", "--checkpoint", str(bad), "--config", str(folder / "config.py"),
         "--output_dir", str(tmp_path / "failed")],
        capture_output=True, text=True,
    )
    assert failed.returncode == 2 and "decode_head.layernorm.bias" in failed.stderr
    assert not (tmp_path / "failed").exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".failed")] == []


# --- slow: released sizes, remote code ----------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("name, grid", [("setr_naive_large_ade20k", 32), ("setr_pup_large_ade20k", 512),
                                        ("setr_mla_large_ade20k", 128)])
def test_released_sizes_forward(name, grid):
    model = SetrForSemanticSegmentation(SetrConfig.from_preset(name)).eval()
    with torch.no_grad():
        logits = model(torch.randn(1, 3, 512, 512)).logits
    assert logits.shape == (1, 150, grid, grid) and torch.isfinite(logits).all()


@pytest.mark.slow
def test_trust_remote_code_without_the_package(tmp_path):
    model = tiny_model("mla")
    model.save_pretrained(tmp_path)
    SetrImageProcessor(size={"height": 32, "width": 32}).save_pretrained(tmp_path)
    image = np.random.RandomState(0).randint(0, 256, (32, 32, 3), dtype=np.uint8)
    np.save(tmp_path / "image.npy", image)
    with torch.no_grad():
        expected = model(**SetrImageProcessor(size={"height": 32, "width": 32})(image, return_tensors="pt")).logits
    np.save(tmp_path / "expected.npy", expected.numpy())
    done = tiny.run_without_package(f"""
        import sys
        import numpy as np, torch
        from transformers import AutoImageProcessor, AutoModelForSemanticSegmentation
        folder = {str(tmp_path)!r}
        model = AutoModelForSemanticSegmentation.from_pretrained(folder, trust_remote_code=True).eval()
        processor = AutoImageProcessor.from_pretrained(folder, trust_remote_code=True)
        assert "hf_segmodels" not in sys.modules
        with torch.no_grad():
            logits = model(**processor(np.load(folder + "/image.npy"), return_tensors="pt")).logits
        np.testing.assert_allclose(logits.numpy(), np.load(folder + "/expected.npy"), atol=1e-5)
        print("OK", type(model).__name__)
    """, tmp_path, timeout=600)
    assert done.returncode == 0 and "OK SetrForSemanticSegmentation" in done.stdout, done.stderr[-3000:]
