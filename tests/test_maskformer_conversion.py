"""MaskFormer conversion of original (detectron2) checkpoints: a state dict in the original key names and layouts is
built from a transformers MaskFormer, converted, and must reproduce its outputs; errors name the offending keys."""

import pickle
import re

import numpy as np
import pytest
import torch
from tiny import NUM_LABELS, perturb_, tiny_config, tiny_maskformer_backbone, tiny_transformers_model

import hf_segmodels  # noqa: F401
from hf_segmodels.conversion_utils import ConversionError
from hf_segmodels import MaskFormerForUniversalSegmentation
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
        elif m := re.fullmatch(r"backbone\.embedder\.embedder\.(\d)\.convolution\.weight", key):  # DeepLab stem
            new = f"backbone.stem.conv{int(m[1]) + 1}.weight"
        elif m := re.fullmatch(r"backbone\.embedder\.embedder\.(\d)\.normalization\.(\w+)", key):
            new = f"backbone.stem.conv{int(m[1]) + 1}.norm.{m[2]}"
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
        elif m := re.fullmatch(r"pixel_decoder\.input_projection\.(\w+)", key):  # TransformerEncoderPixelDecoder
            new = f"sem_seg_head.pixel_decoder.input_proj.{m[1]}"
        elif m := re.fullmatch(r"pixel_decoder\.encoder_layers\.(\d+)\.self_attn\.(q|k|v|o)_proj\.(\w+)", key):
            prefix = f"sem_seg_head.pixel_decoder.transformer.encoder.layers.{m[1]}.self_attn."
            if m[2] == "o":
                new = prefix + f"out_proj.{m[3]}"
            else:
                fused.setdefault(prefix + f"in_proj_{m[3]}", {})[m[2]] = tensor
                continue
        elif m := re.fullmatch(r"pixel_decoder\.encoder_layers\.(\d+)\.(\w+)\.(weight|bias)", key):
            names = {"fc1": "linear1", "fc2": "linear2", "self_attn_layer_norm": "norm1", "final_layer_norm": "norm2"}
            new = f"sem_seg_head.pixel_decoder.transformer.encoder.layers.{m[1]}.{names[m[2]]}.{m[3]}"
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
        # transformer-encoder layers in the predictor (ENC_LAYERS > 0) are used by no release and not converted
        "unknown": ({**state_dict, "sem_seg_head.predictor.transformer.encoder.layers.0.linear1.weight": torch.zeros(1)},
                    "sem_seg_head.predictor.transformer.encoder.layers.0.linear1.weight"),
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


# ----------------------------------------------------------------------------------------------------------------
# Variants without a transformers counterpart: checked against references written from the original code's forward
# ----------------------------------------------------------------------------------------------------------------


def convert_via_cli(model, tmp_path):
    """Writes `model` in the original layout (detectron2 .pkl), converts it with the CLI and loads the result."""
    from conversion_scripts.convert_maskformer import main
    from transformers import AutoModelForUniversalSegmentation

    path = tmp_path / "model_final.pkl"
    with path.open("wb") as handle:
        pickle.dump({"model": {k: v.numpy() for k, v in to_original_state_dict(model).items()}}, handle)
    overrides = tmp_path / "overrides.json"
    overrides.write_text('{"decoder_config": {"decoder_attention_heads": 4}}')
    main(["--checkpoint", str(path), "--config", str(overrides), "--output_dir", str(tmp_path / "out")])
    return AutoModelForUniversalSegmentation.from_pretrained(tmp_path / "out").eval()


def reference_deeplab_resnet(state: dict, pixel_values: torch.Tensor, depths, dilations) -> list[torch.Tensor]:
    """detectron2's DeepLab ResNet (projects/DeepLab `DeepLabStem` + `BottleneckBlock`s with FrozenBN, res5 multi-grid
    dilations) written out with functional ops on the ORIGINAL state dict."""
    F = torch.nn.functional

    def conv_bn(x, prefix, stride=1, padding=0, dilation=1, relu=True):
        x = F.conv2d(x, state[prefix + ".weight"], stride=stride, padding=padding, dilation=dilation)
        scale = state[prefix + ".norm.weight"] / torch.sqrt(state[prefix + ".norm.running_var"] + 1e-5)
        x = x * scale[:, None, None] + (state[prefix + ".norm.bias"] - state[prefix + ".norm.running_mean"] * scale)[:, None, None]
        return F.relu(x) if relu else x

    x = conv_bn(pixel_values, "backbone.stem.conv1", stride=2, padding=1)
    x = conv_bn(x, "backbone.stem.conv2", padding=1)
    x = conv_bn(x, "backbone.stem.conv3", padding=1)
    x = F.max_pool2d(x, kernel_size=3, stride=2, padding=1)
    outputs = []
    for stage, depth in enumerate(depths):
        for block in range(depth):
            prefix = f"backbone.res{stage + 2}.{block}"
            stride = 2 if block == 0 and stage > 0 else 1
            dilation = dilations[block] if stage == len(depths) - 1 else 1
            out = conv_bn(x, prefix + ".conv1")
            out = conv_bn(out, prefix + ".conv2", stride=stride, padding=dilation, dilation=dilation)
            out = conv_bn(out, prefix + ".conv3", relu=False)
            shortcut = conv_bn(x, prefix + ".shortcut", stride=stride, relu=False) if prefix + ".shortcut.weight" in state else x
            x = F.relu(out + shortcut)
        outputs.append(x)
    return outputs


def test_r101c_deeplab_stem_and_multigrid_match_the_detectron2_reference(tmp_path):
    depths = [1, 2, 1, 3]
    config = tiny_config("maskformer", NUM_LABELS, backbone_config=tiny_maskformer_backbone(depths=depths),
                         backbone_deep_stem=True, backbone_last_stage_dilations=[1, 2, 4])  # fmt: skip
    torch.manual_seed(0)
    source = perturb_(MaskFormerForUniversalSegmentation(config).eval(), seed=3)
    assert source.backbone.encoder.stages[-1].layers[2].layer[1].convolution.dilation == (4, 4)
    ours = convert_via_cli(source, tmp_path)
    # the converter reads the DeepLab stem from the weights and applies the released multi-grid
    assert ours.config.backbone_deep_stem and ours.config.backbone_last_stage_dilations == [1, 2, 4]
    assert ours.config.backbone_config.embedding_size == 16

    from hf_segmodels.maskformer.backbones import folded_resnet_feature_maps, supports_folded_resnet

    pixel_values = torch.randn(2, 3, 70, 90)
    with torch.no_grad():
        expected = reference_deeplab_resnet(to_original_state_dict(source), pixel_values, depths, [1, 2, 4])
        module_maps = ours.backbone(pixel_values).feature_maps
        assert supports_folded_resnet(ours.backbone)
        folded_maps = folded_resnet_feature_maps(ours.backbone, pixel_values)
        for reference_map, module_map, folded_map in zip(expected, module_maps, folded_maps):
            torch.testing.assert_close(module_map, reference_map, atol=1e-4, rtol=1e-4)
            torch.testing.assert_close(folded_map, reference_map, atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(ours(pixel_values=pixel_values).masks_queries_logits,
                                   source(pixel_values=pixel_values).masks_queries_logits, atol=1e-4, rtol=0)


def reference_transformer_encoder(state: dict, feature: torch.Tensor, num_layers: int, heads: int) -> torch.Tensor:
    """The original `TransformerEncoderPixelDecoder`'s encoding of its last feature map (`input_proj`, then
    `TransformerEncoderOnly`: post-norm layers, q = k = src + pos, v = src, ReLU FFN, (HW, N, C) layout) with
    torch's nn.MultiheadAttention loaded from the ORIGINAL state dict."""
    from hf_segmodels.maskformer.modeling_maskformer import sine_position_embedding

    F = torch.nn.functional
    prefix = "sem_seg_head.pixel_decoder."
    src = F.conv2d(feature, state[prefix + "input_proj.weight"], state[prefix + "input_proj.bias"])
    batch, channels, height, width = src.shape
    pos = sine_position_embedding(height, width, channels // 2, src.device, src.dtype)[:, None, :]  # (HW, 1, C)
    src = src.flatten(2).permute(2, 0, 1)
    for index in range(num_layers):
        layer = f"{prefix}transformer.encoder.layers.{index}."
        attention = torch.nn.MultiheadAttention(channels, heads).eval()
        attention.load_state_dict({
            "in_proj_weight": state[layer + "self_attn.in_proj_weight"], "in_proj_bias": state[layer + "self_attn.in_proj_bias"],
            "out_proj.weight": state[layer + "self_attn.out_proj.weight"], "out_proj.bias": state[layer + "self_attn.out_proj.bias"],
        })
        query = src + pos
        src = src + attention(query, query, value=src)[0]
        src = F.layer_norm(src, (channels,), state[layer + "norm1.weight"], state[layer + "norm1.bias"])
        hidden = F.relu(F.linear(src, state[layer + "linear1.weight"], state[layer + "linear1.bias"]))
        src = src + F.linear(hidden, state[layer + "linear2.weight"], state[layer + "linear2.bias"])
        src = F.layer_norm(src, (channels,), state[layer + "norm2.weight"], state[layer + "norm2.bias"])
    return src.permute(1, 2, 0).reshape(batch, channels, height, width)


@pytest.mark.parametrize("kind", ["resnet", "swin"])
def test_transformer_encoder_pixel_decoder_matches_the_original_reference(kind, tmp_path):
    """The R50 / R101 panoptic releases: 6 transformer-encoder layers in the pixel decoder, whose output is also the
    transformer decoder's memory (256 channels = d_model: no input projection in the predictor)."""
    config = tiny_config("maskformer", NUM_LABELS, backbone_config=tiny_maskformer_backbone(kind),
                         pixel_decoder_encoder_layers=2)  # fmt: skip
    torch.manual_seed(0)
    source = perturb_(MaskFormerForUniversalSegmentation(config).eval(), seed=5)
    assert source.transformer_decoder.input_projection is None
    original = to_original_state_dict(source)
    assert "sem_seg_head.predictor.input_proj.weight" not in original
    ours = convert_via_cli(source, tmp_path)
    assert ours.config.pixel_decoder_encoder_layers == 2

    pixel_values = torch.randn(2, 3, 64, 96)
    with torch.no_grad():
        features = list(ours.backbone(pixel_values).feature_maps)
        expected = reference_transformer_encoder(original, features[-1], num_layers=2, heads=4)
        torch.testing.assert_close(ours.pixel_decoder.encode(features[-1]), expected, atol=1e-5, rtol=1e-5)
        actual = ours(pixel_values=pixel_values, output_attentions=True)
        torch.testing.assert_close(actual.masks_queries_logits, source(pixel_values=pixel_values).masks_queries_logits,
                                   atol=1e-4, rtol=0)
    # the decoder attends to the encoded map (h/32 * w/32 keys), not to the backbone's
    assert actual.cross_attentions[0].shape[-1] == features[-1].shape[-2] * features[-1].shape[-1]


@pytest.mark.parametrize("use_auxiliary_loss", [False, True])
def test_transformers_source_keeps_use_auxiliary_loss_and_the_loss(use_auxiliary_loss, tmp_path):
    """facebook/maskformer-* configs have use_auxiliary_loss False: the converted model must compute the same loss."""
    reference = tiny_transformers_model("resnet", seed=3)
    reference.config.use_auxiliary_loss = use_auxiliary_loss
    reference.save_pretrained(tmp_path)
    model, _ = convert_transformers_checkpoint(tmp_path)
    assert model.config.use_auxiliary_loss is use_auxiliary_loss
    if use_auxiliary_loss:
        return  # (the auxiliary terms are weighted differently by transformers; the flag is what must carry over)
    reference = type(reference).from_pretrained(tmp_path).eval()
    pixel_values = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    masks = [(torch.rand(2, 64, 64, generator=torch.Generator().manual_seed(1)) > 0.5).float()]
    classes = [torch.tensor([1, 3])]
    with torch.no_grad():
        ours = model(pixel_values=pixel_values, mask_labels=masks, class_labels=classes).loss
        theirs = reference(pixel_values=pixel_values, mask_labels=masks, class_labels=classes).loss
    torch.testing.assert_close(ours, theirs, rtol=1e-3, atol=1e-4)
