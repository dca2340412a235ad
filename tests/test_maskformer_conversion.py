"""MaskFormer conversion of original (detectron2) checkpoints: a state dict in the original key names and layouts is
built from a transformers MaskFormer, converted, and must reproduce its outputs; errors name the offending keys."""

import pickle
import re

import numpy as np
import pytest
import torch
from test_maskformer_utils import tiny_transformers_model

import hf_segmodels  # noqa: F401
from hf_segmodels.conversion_utils import ConversionError
from hf_segmodels.maskformer.convert_maskformer import convert_original_checkpoint, convert_transformers_checkpoint


def to_original_state_dict(model) -> dict[str, torch.Tensor]:
    """Our converted state dict -> the key names and layouts of facebookresearch/MaskFormer (detectron2)."""
    state = model.state_dict()
    n = len(model.backbone.channels)
    original = {}
    fused: dict[str, dict[str, torch.Tensor]] = {}
    for key, tensor in state.items():
        if key.endswith("num_batches_tracked") or key.startswith("backbone.model.layernorm"):
            continue  # detectron2's FrozenBN has no counter; the original Swin has no final LayerNorm
        if m := re.fullmatch(r"backbone\.embedder\.embedder\.convolution\.weight", key):
            new = "backbone.stem.conv1.weight"
        elif m := re.fullmatch(r"backbone\.embedder\.embedder\.normalization\.(\w+)", key):
            new = f"backbone.stem.conv1.norm.{m[1]}"
        elif m := re.fullmatch(r"backbone\.encoder\.stages\.(\d+)\.layers\.(\d+)\.layer\.(\d+)\.convolution\.weight", key):
            new = f"backbone.res{int(m[1]) + 2}.{m[2]}.conv{int(m[3]) + 1}.weight"
        elif m := re.fullmatch(r"backbone\.encoder\.stages\.(\d+)\.layers\.(\d+)\.layer\.(\d+)\.normalization\.(\w+)", key):
            new = f"backbone.res{int(m[1]) + 2}.{m[2]}.conv{int(m[3]) + 1}.norm.{m[4]}"
        elif m := re.fullmatch(r"backbone\.encoder\.stages\.(\d+)\.layers\.(\d+)\.shortcut\.convolution\.weight", key):
            new = f"backbone.res{int(m[1]) + 2}.{m[2]}.shortcut.weight"
        elif m := re.fullmatch(r"backbone\.encoder\.stages\.(\d+)\.layers\.(\d+)\.shortcut\.normalization\.(\w+)", key):
            new = f"backbone.res{int(m[1]) + 2}.{m[2]}.shortcut.norm.{m[3]}"
        elif m := re.fullmatch(r"backbone\.model\.embeddings\.patch_embeddings\.projection\.(\w+)", key):
            new = f"backbone.patch_embed.proj.{m[1]}"
        elif m := re.fullmatch(r"backbone\.model\.embeddings\.norm\.(\w+)", key):
            new = f"backbone.patch_embed.norm.{m[1]}"
        elif m := re.fullmatch(r"backbone\.model\.encoder\.layers\.(\d+)\.blocks\.(\d+)\.(.+)\.(\w+)", key):
            prefix = f"backbone.layers.{m[1]}.blocks.{m[2]}."
            part = m[3]
            if part in ("attention.self.query", "attention.self.key", "attention.self.value"):
                fused.setdefault(prefix + f"attn.qkv.{m[4]}", {})[part.rsplit(".", 1)[1]] = tensor
                continue
            names = {"layernorm_before": "norm1", "layernorm_after": "norm2", "attention.output.dense": "attn.proj",
                     "intermediate.dense": "mlp.fc1", "output.dense": "mlp.fc2", "attention.self": "attn"}
            new = prefix + f"{names[part]}.{m[4]}"
        elif m := re.fullmatch(r"backbone\.model\.encoder\.layers\.(\d+)\.downsample\.(.+)", key):
            new = f"backbone.layers.{m[1]}.downsample.{m[2]}"
        elif m := re.fullmatch(r"backbone\.hidden_states_norms\.(\d+)\.(\w+)", key):
            new = f"backbone.norm{m[1]}.{m[2]}"
        elif m := re.fullmatch(r"pixel_decoder\.stem\.(conv|norm)\.(\w+)", key):
            new = f"sem_seg_head.pixel_decoder.layer_{n}." + ("weight" if m[1] == "conv" else f"norm.{m[2]}")
        elif m := re.fullmatch(r"pixel_decoder\.(lateral_convs|output_convs)\.(\d+)\.(conv|norm)\.(\w+)", key):
            kind = "adapter" if m[1] == "lateral_convs" else "layer"
            new = f"sem_seg_head.pixel_decoder.{kind}_{n - 1 - int(m[2])}." + ("weight" if m[3] == "conv" else f"norm.{m[4]}")
        elif m := re.fullmatch(r"pixel_decoder\.mask_projection\.(\w+)", key):
            new = f"sem_seg_head.pixel_decoder.mask_features.{m[1]}"
        elif key == "transformer_decoder.query_position_embeddings.weight":
            new = "sem_seg_head.predictor.query_embed.weight"
        elif m := re.fullmatch(r"transformer_decoder\.input_projection\.(\w+)", key):
            new = f"sem_seg_head.predictor.input_proj.{m[1]}"
        elif m := re.fullmatch(r"transformer_decoder\.layers\.(\d+)\.(self_attn|encoder_attn)\.(q|k|v|o)_proj\.(\w+)", key):
            module = "self_attn" if m[2] == "self_attn" else "multihead_attn"
            prefix = f"sem_seg_head.predictor.transformer.decoder.layers.{m[1]}.{module}."
            if m[3] == "o":
                new = prefix + f"out_proj.{m[4]}"
            else:
                fused.setdefault(prefix + f"in_proj_{m[4]}", {})[m[3]] = tensor
                continue
        elif m := re.fullmatch(r"transformer_decoder\.layers\.(\d+)\.(\w+)\.(weight|bias)", key):
            names = {"fc1": "linear1", "fc2": "linear2", "self_attn_layer_norm": "norm1",
                     "encoder_attn_layer_norm": "norm2", "final_layer_norm": "norm3"}
            new = f"sem_seg_head.predictor.transformer.decoder.layers.{m[1]}.{names[m[2]]}.{m[3]}"
        elif m := re.fullmatch(r"transformer_decoder\.layernorm\.(\w+)", key):
            new = f"sem_seg_head.predictor.transformer.decoder.norm.{m[1]}"
        elif m := re.fullmatch(r"class_predictor\.(\w+)", key):
            new = f"sem_seg_head.predictor.class_embed.{m[1]}"
        elif m := re.fullmatch(r"mask_embedder\.layers\.(\d+)\.(\w+)", key):
            new = f"sem_seg_head.predictor.mask_embed.layers.{m[1]}.{m[2]}"
        else:
            raise AssertionError(f"test mapping misses {key}")
        original[new] = tensor.clone()
    for key, parts in fused.items():
        order = ("query", "key", "value") if "qkv" in key else ("q", "k", "v")
        original[key] = torch.cat([parts[p] for p in order])
    original["criterion.empty_weight"] = torch.ones(6)
    return original


@pytest.fixture(scope="module", params=["resnet", "swin"])
def converted(request, tmp_path_factory):
    reference = tiny_transformers_model(request.param, seed=7)
    directory = tmp_path_factory.mktemp(f"src_{request.param}")
    reference.save_pretrained(directory)
    model, _ = convert_transformers_checkpoint(directory)
    return reference, model


@pytest.mark.parametrize("file_format", ["pth", "pkl"])
def test_original_checkpoint_reproduces_outputs(converted, tmp_path, file_format):
    from conversion_scripts.convert_maskformer import main
    from transformers import AutoModelForUniversalSegmentation

    reference, model = converted
    state_dict = to_original_state_dict(model)
    path = tmp_path / f"model_final.{file_format}"
    if file_format == "pth":
        torch.save({"model": state_dict}, path)
    else:  # detectron2's release format: a pickle of NumPy arrays
        with path.open("wb") as handle:
            pickle.dump({"model": {k: v.numpy() for k, v in state_dict.items()}, "__author__": "test"}, handle)
    overrides = tmp_path / "overrides.json"
    overrides.write_text('{"decoder_config": {"decoder_attention_heads": 4}}')
    main(["--checkpoint", str(path), "--config", str(overrides), "--output_dir", str(tmp_path / "out")])
    ours = AutoModelForUniversalSegmentation.from_pretrained(tmp_path / "out").eval()
    assert ours.config.num_queries == 8 and ours.config.num_labels == 5
    pixel_values = torch.randn(1, 3, 61, 83)
    with torch.no_grad():
        expected = reference(pixel_values=pixel_values)
        actual = ours(pixel_values=pixel_values)
    torch.testing.assert_close(actual.class_queries_logits, expected.class_queries_logits, atol=1e-4, rtol=0)
    torch.testing.assert_close(actual.masks_queries_logits, expected.masks_queries_logits, atol=1e-4, rtol=0)


def test_conversion_errors_name_keys_and_write_nothing(converted, tmp_path):
    from conversion_scripts.convert_maskformer import main

    _, model = converted
    state_dict = to_original_state_dict(model)
    cases = {
        "unknown": ({**state_dict, "sem_seg_head.pixel_decoder.transformer.encoder.layers.0.linear1.weight": torch.zeros(1)},
                    "sem_seg_head.pixel_decoder.transformer.encoder.layers.0.linear1.weight"),
        "missing": ({k: v for k, v in state_dict.items() if k != "sem_seg_head.predictor.input_proj.bias"},
                    "transformer_decoder.input_projection.bias"),
        "shape": ({**state_dict, "sem_seg_head.predictor.mask_embed.layers.1.bias": torch.zeros(7)},
                  "mask_embedder.layers.1.bias: checkpoint (7,)"),
    }
    for name, (broken, expected) in cases.items():
        path = tmp_path / f"{name}.pth"
        torch.save(broken, path)
        with pytest.raises(ConversionError, match=re.escape(expected)):
            convert_original_checkpoint(path, None)
        with pytest.raises(SystemExit):
            main(["--checkpoint", str(path), "--output_dir", str(tmp_path / f"out_{name}")])
        assert not (tmp_path / f"out_{name}").exists()
        assert not any(p.name.startswith(f".out_{name}") for p in tmp_path.iterdir())
    # a pickle holding anything but arrays is refused
    evil = tmp_path / "evil.pkl"
    evil.write_bytes(pickle.dumps({"model": {"x": np.float64}}))
    with pytest.raises(ConversionError, match="refusing to unpickle"):
        convert_original_checkpoint(evil, None)
    with pytest.raises(ConversionError, match="model_type 'maskformer'"):
        from hf_segmodels.maskformer.convert_maskformer import config_from_transformers

        config_from_transformers({"model_type": "detr"})
