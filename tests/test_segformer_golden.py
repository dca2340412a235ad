"""SegFormer conversion: the golden fixtures of the original code (NVlabs/SegFormer) and mmsegmentation 1.x, through
the conversion CLI, plus conversion errors."""

import importlib.util
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import AutoImageProcessor, AutoModelForSemanticSegmentation

import hf_segmodels
from hf_segmodels import infer_logits
from hf_segmodels.conversion_utils import ConversionError
from hf_segmodels.segformer.convert_segformer import convert_segformer_checkpoint

REPO = Path(__file__).resolve().parents[1]
CASES = {"segformer_original_tiny": "original", "segformer_mitb0ish_tiny": "mmseg"}


def cli():
    spec = importlib.util.spec_from_file_location("convert_segformer_cli", REPO / "conversion_scripts" / "convert_segformer.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main


@pytest.fixture(scope="module")
def converted(golden_dir, tmp_path_factory):
    """Every case converted with the CLI, with and without --config (the original and mmseg checkpoints carry their
    config in the meta)."""
    main, folders = cli(), {}
    for case, source in CASES.items():
        for with_config in (True, False):
            output = tmp_path_factory.mktemp("segformer") / f"{case}-{with_config}"
            argv = ["--checkpoint", str(golden_dir / "segformer" / case / "checkpoint.pth"), "--output_dir", str(output),
                    "--source", source, "--model_card"]  # fmt: skip
            if with_config:
                argv += ["--config", str(golden_dir / "segformer" / case / "config.py")]
            main(argv)
            folders[case, with_config] = output
    return folders


def load(folder):
    return AutoModelForSemanticSegmentation.from_pretrained(folder).eval()


@pytest.mark.parametrize("with_config", [True, False])
@pytest.mark.parametrize("case", sorted(CASES))
def test_golden_whole_image(case, with_config, golden_dir, converted):
    folder = golden_dir / "segformer" / case
    model = load(converted[case, with_config])
    assert isinstance(model, hf_segmodels.SegformerForSemanticSegmentation)
    pixel_values = torch.from_numpy(np.load(folder / "input.npy"))
    with torch.no_grad():
        outputs = model(pixel_values, output_hidden_states=True)
        full = infer_logits(model, pixel_values, protocol=False)  # whole image (the side file says slide)
    features = np.load(folder / "features.npz")
    for index, hidden in enumerate(outputs.hidden_states):
        np.testing.assert_allclose(hidden.numpy(), features[f"feat_{index}"], rtol=0, atol=1e-4)
    np.testing.assert_allclose(outputs.logits.numpy(), np.load(folder / "head_logits.npy"), rtol=0, atol=1e-4)
    np.testing.assert_allclose(full.numpy(), np.load(folder / "logits.npy"), rtol=0, atol=1e-4)
    # The eval-mode (merged) decoder and the literal concatenation agree on the golden features too.
    with torch.no_grad():
        reference = model.decode_head.forward_concat(outputs.hidden_states)
    np.testing.assert_allclose(reference.numpy(), np.load(folder / "head_logits.npy"), rtol=0, atol=1e-4)


@pytest.mark.parametrize("case", sorted(CASES))
def test_golden_sliding_window(case, golden_dir, converted):
    folder = golden_dir / "segformer" / case
    meta = json.loads((folder / "meta.json").read_text())
    crop, stride = meta["calls"]["slide_crop_size"], meta["calls"]["slide_stride"]
    model = load(converted[case, True])
    pixel_values = torch.from_numpy(np.load(folder / "slide_input.npy"))
    logits = infer_logits(model, pixel_values, window=tuple(crop), stride=tuple(stride))
    np.testing.assert_allclose(logits.numpy(), np.load(folder / "slide_logits.npy"), rtol=0, atol=1e-4)


def test_converted_folder_contents(converted):
    folder = converted["segformer_mitb0ish_tiny", True]
    assert {"config.json", "model.safetensors", "preprocessor_config.json", "README.md"} <= {
        p.name for p in folder.iterdir()
    }
    config = json.loads((folder / "config.json").read_text())
    assert config["model_type"] == "segmodels_segformer" and config["decoder_type"] == "mmseg"
    assert config["id2label"]["4"] == "class_4" and config["layer_norm_eps"] == config["embedding_layer_norm_eps"] == 1e-6
    original = json.loads((converted["segformer_original_tiny", False] / "config.json").read_text())
    assert original["hidden_sizes"] == [16, 32, 80, 128] and original["depths"] == [2, 2, 2, 2]
    assert original["num_attention_heads"] == [1, 2, 5, 8] and original["decoder_type"] == "original"
    assert (original["layer_norm_eps"], original["embedding_layer_norm_eps"]) == (1e-6, 1e-5)
    processor = AutoImageProcessor.from_pretrained(folder)
    assert list(processor.image_mean) == pytest.approx([0.485, 0.456, 0.406], abs=1e-3)
    assert processor.size.shortest_edge == 512 and processor.size.longest_edge == 2048
    assert "SegFormer" in (folder / "README.md").read_text()


def _checkpoint(golden_dir, case):
    return torch.load(golden_dir / "segformer" / case / "checkpoint.pth", map_location="cpu", weights_only=True)


def test_unknown_keys_are_listed(golden_dir, tmp_path):
    checkpoint = _checkpoint(golden_dir, "segformer_original_tiny")
    checkpoint["state_dict"]["backbone.block1.0.attn.extra.weight"] = torch.zeros(1)
    checkpoint["state_dict"]["decode_head.aux.weight"] = torch.zeros(1)
    torch.save(checkpoint, tmp_path / "bad.pth")
    with pytest.raises(ConversionError, match=r"2 key\(s\).*backbone\.block1\.0\.attn\.extra\.weight.*decode_head\.aux"):
        convert_segformer_checkpoint(tmp_path / "bad.pth", source="original")


def test_missing_keys_are_listed(golden_dir, tmp_path):
    checkpoint = _checkpoint(golden_dir, "segformer_mitb0ish_tiny")
    del checkpoint["state_dict"]["decode_head.convs.2.bn.running_var"]
    torch.save(checkpoint, tmp_path / "bad.pth")
    with pytest.raises(ConversionError, match=r"lacks: \['decode_head\.linear_c\.2\.batch_norm\.running_var'\]"):
        convert_segformer_checkpoint(tmp_path / "bad.pth", golden_dir / "segformer/segformer_mitb0ish_tiny/config.py",
                                     source="mmseg")  # fmt: skip


def test_shape_mismatch_names_keys_and_shapes(golden_dir, tmp_path):
    config = (golden_dir / "segformer/segformer_mitb0ish_tiny/config.py").read_text()
    (tmp_path / "wide.py").write_text(config.replace("channels=32", "channels=48"))
    with pytest.raises(ConversionError, match=r"decode_head\.classifier\.weight: checkpoint \(5, 32, 1, 1\) vs model \(5, 48, 1, 1\)"):
        convert_segformer_checkpoint(golden_dir / "segformer/segformer_mitb0ish_tiny/checkpoint.pth", tmp_path / "wide.py",
                                     source="mmseg")  # fmt: skip


def test_config_naming_a_released_variant_must_match_the_weights(golden_dir, tmp_path):
    config = (golden_dir / "segformer/segformer_original_tiny/config.py").read_text()
    (tmp_path / "b0.py").write_text(config.replace("type='mit_tiny'", "type='mit_b0'"))
    with pytest.raises(ConversionError, match=r"names backbone mit_b0 \(widths \[32, 64, 160, 256\].*widths \[16, 32, 80, 128\]"):
        convert_segformer_checkpoint(golden_dir / "segformer/segformer_original_tiny/checkpoint.pth", tmp_path / "b0.py")


def test_missing_files_and_failed_conversions_write_nothing(golden_dir, tmp_path):
    main = cli()
    output = tmp_path / "out"
    with pytest.raises(SystemExit) as exit_info:
        main(["--checkpoint", str(tmp_path / "nope.pth"), "--output_dir", str(output)])
    assert exit_info.value.code == 2 and not output.exists()
    with pytest.raises(ConversionError, match=r"Config file not found: .*missing\.py"):
        convert_segformer_checkpoint(golden_dir / "segformer/segformer_mitb0ish_tiny/checkpoint.pth",
                                     tmp_path / "missing.py", source="mmseg")  # fmt: skip
    with pytest.raises(ConversionError, match="neither model.safetensors nor pytorch_model.bin"):
        convert_segformer_checkpoint(tmp_path, source="transformers")
    # A mapping error leaves no output directory and no staging folder behind.
    checkpoint = _checkpoint(golden_dir, "segformer_original_tiny")
    checkpoint["state_dict"]["backbone.unknown"] = torch.zeros(1)
    torch.save(checkpoint, tmp_path / "bad.pth")
    with pytest.raises(SystemExit):
        main(["--checkpoint", str(tmp_path / "bad.pth"), "--output_dir", str(output)])
    assert not output.exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".out")]
    # An existing, non-empty output directory is never overwritten.
    output.mkdir()
    (output / "keep.txt").write_text("mine")
    with pytest.raises(SystemExit):
        main(["--checkpoint", str(golden_dir / "segformer/segformer_original_tiny/checkpoint.pth"), "--output_dir",
              str(output)])  # fmt: skip
    assert [p.name for p in output.iterdir()] == ["keep.txt"]
    shutil.rmtree(output)


def _to_original_layout(state_dict: dict) -> dict:
    """Our keys -> NVlabs/SegFormer keys (the inverse of the converter, written out independently)."""
    import re

    rules = [
        (r"segformer\.stages\.(\d)\.patch_embed\.(proj|norm)\.(.*)", lambda m: f"backbone.patch_embed{int(m[1]) + 1}.{m[2]}.{m[3]}"),
        (r"segformer\.stages\.(\d)\.norm\.(.*)", lambda m: f"backbone.norm{int(m[1]) + 1}.{m[2]}"),
        (r"segformer\.stages\.(\d)\.blocks\.(\d+)\.mlp\.dwconv\.(.*)", lambda m: f"backbone.block{int(m[1]) + 1}.{m[2]}.mlp.dwconv.dwconv.{m[3]}"),
        (r"segformer\.stages\.(\d)\.blocks\.(\d+)\.(.*)", lambda m: f"backbone.block{int(m[1]) + 1}.{m[2]}.{m[3]}"),
        (r"decode_head\.linear_c\.(\d)\.proj\.(.*)", lambda m: f"decode_head.linear_c{int(m[1]) + 1}.proj.{m[2]}"),
        (r"decode_head\.linear_fuse\.weight", lambda m: "decode_head.linear_fuse.conv.weight"),
        (r"decode_head\.batch_norm\.(.*)", lambda m: f"decode_head.linear_fuse.bn.{m[1]}"),
        (r"decode_head\.classifier\.(.*)", lambda m: f"decode_head.linear_pred.{m[1]}"),
    ]  # fmt: skip
    converted = {}
    for key, value in state_dict.items():
        match = next((m, target) for pattern, target in rules if (m := re.fullmatch(pattern, key)))
        converted[match[1](match[0])] = value
    return converted


def test_released_variant_b0_in_the_original_format(tmp_path):
    """A full MiT-B0 ADE20K model written in the original layout converts back to the same model; the config's
    `mit_b0` is checked against the weights and 150 classes get the ADE20K test protocol."""
    torch.manual_seed(0)
    model = hf_segmodels.SegformerForSemanticSegmentation(hf_segmodels.SegformerConfig.from_preset("b0-ade-512")).eval()
    state_dict = _to_original_layout(model.state_dict())
    state_dict["decode_head.conv_seg.weight"] = torch.zeros(150, 128, 1, 1)
    state_dict["decode_head.conv_seg.bias"] = torch.zeros(150)
    config = ("model = dict(type='EncoderDecoder', backbone=dict(type='mit_b0', style='pytorch'), decode_head=dict("
              "type='SegFormerHead', in_channels=[32, 64, 160, 256], channels=128, num_classes=150, "
              "align_corners=False, decoder_params=dict(embed_dim=256)))\n")  # fmt: skip
    torch.save({"meta": {"config": config, "CLASSES": tuple(model.config.id2label.values())},
                "state_dict": state_dict}, tmp_path / "b0.pth")  # fmt: skip
    converted, processor = convert_segformer_checkpoint(tmp_path / "b0.pth")
    assert converted.config.to_dict()["hidden_sizes"] == [32, 64, 160, 256]
    assert converted.config.id2label[0] == "wall" and processor.do_reduce_labels and processor.size_divisor == 32
    pixel_values = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        torch.testing.assert_close(converted(pixel_values).logits, model(pixel_values).logits, rtol=0, atol=0)
