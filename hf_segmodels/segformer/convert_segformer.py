"""Conversion of SegFormer checkpoints: the authors' release (NVlabs/SegFormer, mmseg 0.x based), mmsegmentation 1.x's
port (`backbone.layers.*`) and transformers' port (the `nvidia/segformer-*` Hub checkpoints).

Every source key is mapped or explicitly dropped; the three layouts differ as follows (ours on the right):

- patch embeddings: `backbone.patch_embed{i+1}.{proj,norm}` / `backbone.layers.{i}.0.{projection,norm}` /
  `segformer.encoder.patch_embeddings.{i}.{proj,layer_norm}` -> `segformer.stages.{i}.patch_embed.{proj,norm}`
- attention: `attn.q` + `attn.kv` / `attn.attn.in_proj_*` (rows q, k, v) + `attn.attn.out_proj` /
  `attention.self.{query,key,value}` + `attention.output.dense` -> `attn.q`, `attn.kv` (rows k, v), `attn.proj`
- Mix-FFN: Linear `mlp.fc1/fc2` / 1x1 convs `ffn.layers.{0,4}` / `mlp.dense1/dense2` -> Linear `mlp.fc1/fc2`
- decoder: `decode_head.linear_c{i+1}.proj`, `linear_fuse.{conv,bn}`, `linear_pred` / `decode_head.convs.{i}.{conv,bn}`,
  `fusion_conv.{conv,bn}`, `conv_seg` / `decode_head.linear_c.{i}.proj`, `linear_fuse`, `batch_norm`, `classifier`.
"""

import ast
import json
import os
import re
from pathlib import Path

import torch
from safetensors.torch import load_file

from ..conversion_utils import (
    ConversionError,
    load_checkpoint,
    load_python_config,
    load_python_config_text,
    load_state_dict_strict,
    rename_keys,
)
from ..protocol import apply_test_protocol, mmcv_test_cfg, protocol_from_side_file
from .configuration_segformer import MIT_ENCODERS, SegformerConfig
from .image_processing_segformer import SegformerImageProcessor
from .modeling_segformer import SegformerForSemanticSegmentation

SOURCES = ("original", "mmseg", "transformers")

# Heads, MLP ratios and reduction ratios shared by every released MiT variant (and the golden `mit_tiny`).
_MIT_SHARED = {"num_attention_heads": [1, 2, 5, 8], "mlp_ratios": [4, 4, 4, 4], "sr_ratios": [8, 4, 2, 1]}

def convert_original_state_dict(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """NVlabs/SegFormer (`MixVisionTransformer` + `SegFormerHead`) keys -> ours."""

    def stage_key(template):
        # Stage numbers are 1-based in the original.
        def convert(match, tensor):
            groups = [str(int(match.group(1)) - 1), *match.groups()[1:]]
            return {template.format(*groups): tensor}

        return convert

    rules = [
        (r"backbone\.patch_embed(\d)\.proj\.(weight|bias)", stage_key("segformer.stages.{0}.patch_embed.proj.{1}")),
        (r"backbone\.patch_embed(\d)\.norm\.(weight|bias)", stage_key("segformer.stages.{0}.patch_embed.norm.{1}")),
        (r"backbone\.norm(\d)\.(weight|bias)", stage_key("segformer.stages.{0}.norm.{1}")),
        (r"backbone\.block(\d)\.(\d+)\.(norm1|norm2)\.(weight|bias)",
         stage_key("segformer.stages.{0}.blocks.{1}.{2}.{3}")),
        (r"backbone\.block(\d)\.(\d+)\.attn\.(q|kv|proj|sr|norm)\.(weight|bias)",
         stage_key("segformer.stages.{0}.blocks.{1}.attn.{2}.{3}")),
        (r"backbone\.block(\d)\.(\d+)\.mlp\.(fc1|fc2)\.(weight|bias)",
         stage_key("segformer.stages.{0}.blocks.{1}.mlp.{2}.{3}")),
        (r"backbone\.block(\d)\.(\d+)\.mlp\.dwconv\.dwconv\.(weight|bias)",
         stage_key("segformer.stages.{0}.blocks.{1}.mlp.dwconv.{2}")),
        (r"decode_head\.linear_c(\d)\.proj\.(weight|bias)", stage_key("decode_head.linear_c.{0}.proj.{1}")),
        (r"decode_head\.linear_fuse\.conv\.weight", "decode_head.linear_fuse.weight"),
        (r"decode_head\.linear_fuse\.bn\.(weight|bias|running_mean|running_var|num_batches_tracked)",
         r"decode_head.batch_norm.\1"),
        (r"decode_head\.linear_pred\.(weight|bias)", r"decode_head.classifier.\1"),
    ]  # fmt: skip
    # `conv_seg` is created by mmseg's BaseDecodeHead but never used by SegFormerHead (it predicts with linear_pred).
    drop = [r"decode_head\.conv_seg\.(weight|bias)"]
    return rename_keys(state_dict, rules, drop, source_name="original SegFormer checkpoint")


def convert_mmseg_state_dict(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """mmsegmentation 1.x (`MixVisionTransformer` + `SegformerHead`) keys -> ours."""

    def squeeze_1x1(target):
        def convert(match, tensor):
            return {match.expand(target): tensor.flatten(1)}

        return convert

    rules = [
        (r"backbone\.layers\.(\d)\.0\.projection\.(weight|bias)", r"segformer.stages.\1.patch_embed.proj.\2"),
        (r"backbone\.layers\.(\d)\.0\.norm\.(weight|bias)", r"segformer.stages.\1.patch_embed.norm.\2"),
        (r"backbone\.layers\.(\d)\.2\.(weight|bias)", r"segformer.stages.\1.norm.\2"),
        (r"backbone\.layers\.(\d)\.1\.(\d+)\.(norm1|norm2)\.(weight|bias)", r"segformer.stages.\1.blocks.\2.\3.\4"),
        (r"backbone\.layers\.(\d)\.1\.(\d+)\.attn\.attn\.in_proj_(weight|bias)", _split_in_proj),
        (r"backbone\.layers\.(\d)\.1\.(\d+)\.attn\.attn\.out_proj\.(weight|bias)",
         r"segformer.stages.\1.blocks.\2.attn.proj.\3"),
        (r"backbone\.layers\.(\d)\.1\.(\d+)\.attn\.(sr|norm)\.(weight|bias)",
         r"segformer.stages.\1.blocks.\2.attn.\3.\4"),
        (r"backbone\.layers\.(\d)\.1\.(\d+)\.ffn\.layers\.0\.weight",
         squeeze_1x1(r"segformer.stages.\1.blocks.\2.mlp.fc1.weight")),
        (r"backbone\.layers\.(\d)\.1\.(\d+)\.ffn\.layers\.0\.bias", r"segformer.stages.\1.blocks.\2.mlp.fc1.bias"),
        (r"backbone\.layers\.(\d)\.1\.(\d+)\.ffn\.layers\.1\.(weight|bias)",
         r"segformer.stages.\1.blocks.\2.mlp.dwconv.\3"),
        (r"backbone\.layers\.(\d)\.1\.(\d+)\.ffn\.layers\.4\.weight",
         squeeze_1x1(r"segformer.stages.\1.blocks.\2.mlp.fc2.weight")),
        (r"backbone\.layers\.(\d)\.1\.(\d+)\.ffn\.layers\.4\.bias", r"segformer.stages.\1.blocks.\2.mlp.fc2.bias"),
        (r"decode_head\.convs\.(\d)\.conv\.weight", squeeze_1x1(r"decode_head.linear_c.\1.proj.weight")),
        (r"decode_head\.convs\.(\d)\.bn\.(weight|bias|running_mean|running_var|num_batches_tracked)",
         r"decode_head.linear_c.\1.batch_norm.\2"),
        (r"decode_head\.fusion_conv\.conv\.weight", "decode_head.linear_fuse.weight"),
        (r"decode_head\.fusion_conv\.bn\.(weight|bias|running_mean|running_var|num_batches_tracked)",
         r"decode_head.batch_norm.\1"),
        (r"decode_head\.conv_seg\.(weight|bias)", r"decode_head.classifier.\1"),
    ]  # fmt: skip
    return rename_keys(state_dict, rules, source_name="mmsegmentation SegFormer checkpoint")


def _split_in_proj(match: re.Match, tensor: torch.Tensor) -> dict[str, torch.Tensor]:
    # nn.MultiheadAttention stacks the q, k, v projections row-wise; ours keeps q and the (k, v) pair, as the original.
    prefix = f"segformer.stages.{match.group(1)}.blocks.{match.group(2)}.attn"
    width = tensor.shape[0] // 3
    return {f"{prefix}.q.{match.group(3)}": tensor[:width], f"{prefix}.kv.{match.group(3)}": tensor[width:]}


def convert_transformers_state_dict(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """transformers' `SegformerForSemanticSegmentation` keys -> ours. Accepts the Hub layout
    (`segformer.encoder.block.*.attention.self.query`, what `save_pretrained` writes) and the module names of
    transformers >= 5 (`segformer.stages.*.blocks.*.attention.q_proj`); separate key/value projections are stacked
    into our `kv`."""
    state_dict = dict(state_dict)
    key_value = re.compile(r"(.*)\.(?:attention\.self\.key|attention\.k_proj)\.(weight|bias)")
    for key in [k for k in state_dict if key_value.fullmatch(k)]:
        prefix, kind = key_value.fullmatch(key).groups()
        value_key = next(
            (f"{prefix}.{name}.{kind}" for name in ("attention.self.value", "attention.v_proj")
             if f"{prefix}.{name}.{kind}" in state_dict),
            None,
        )  # fmt: skip
        if value_key is None:
            raise ConversionError(f"The transformers checkpoint has {key!r} but no matching value projection.")
        state_dict[f"{prefix}.kv.{kind}"] = torch.cat([state_dict.pop(key), state_dict.pop(value_key)])

    block = r"segformer\.(?:encoder\.block\.(\d)|stages\.(\d)\.blocks)\.(\d+)"

    def block_rule(pattern, target):
        def convert(match, tensor):
            stage = match.group(1) or match.group(2)
            rest = [g for g in match.groups()[3:]]
            return {f"segformer.stages.{stage}.blocks.{match.group(3)}." + target.format(*rest): tensor}

        return (rf"{block}\.{pattern}", convert)

    rules = [
        (r"segformer\.(?:encoder\.patch_embeddings\.(\d)|stages\.(\d)\.patch_embeddings)\.proj\.(weight|bias)",
         lambda m, t: {f"segformer.stages.{m.group(1) or m.group(2)}.patch_embed.proj.{m.group(3)}": t}),
        (r"segformer\.(?:encoder\.patch_embeddings\.(\d)|stages\.(\d)\.patch_embeddings)\.layer_norm\.(weight|bias)",
         lambda m, t: {f"segformer.stages.{m.group(1) or m.group(2)}.patch_embed.norm.{m.group(3)}": t}),
        (r"segformer\.(?:encoder\.layer_norm\.(\d)|stages\.(\d)\.layer_norm)\.(weight|bias)",
         lambda m, t: {f"segformer.stages.{m.group(1) or m.group(2)}.norm.{m.group(3)}": t}),
        block_rule(r"(?:layer_norm_1|layernorm_before)\.(weight|bias)", "norm1.{0}"),
        block_rule(r"(?:layer_norm_2|layernorm_after)\.(weight|bias)", "norm2.{0}"),
        block_rule(r"(?:attention\.self\.query|attention\.q_proj)\.(weight|bias)", "attn.q.{0}"),
        block_rule(r"kv\.(weight|bias)", "attn.kv.{0}"),
        block_rule(r"(?:attention\.self\.sr|attention\.sequence_reduction\.sequence_reduction)\.(weight|bias)",
                   "attn.sr.{0}"),
        block_rule(r"(?:attention\.self\.layer_norm|attention\.sequence_reduction\.layer_norm)\.(weight|bias)",
                   "attn.norm.{0}"),
        block_rule(r"(?:attention\.output\.dense|attention\.o_proj)\.(weight|bias)", "attn.proj.{0}"),
        block_rule(r"mlp\.(?:dense1|fc1)\.(weight|bias)", "mlp.fc1.{0}"),
        block_rule(r"mlp\.(?:dense2|fc2)\.(weight|bias)", "mlp.fc2.{0}"),
        block_rule(r"mlp\.dwconv\.dwconv\.(weight|bias)", "mlp.dwconv.{0}"),
        (r"decode_head\.(?:linear_c|linear_projections)\.(\d)\.proj\.(weight|bias)",
         r"decode_head.linear_c.\1.proj.\2"),
        (r"decode_head\.linear_fuse\.weight", "decode_head.linear_fuse.weight"),
        (r"decode_head\.batch_norm\.(weight|bias|running_mean|running_var|num_batches_tracked)",
         r"decode_head.batch_norm.\1"),
        (r"decode_head\.classifier\.(weight|bias)", r"decode_head.classifier.\1"),
    ]  # fmt: skip
    return rename_keys(state_dict, rules, source_name="transformers SegFormer checkpoint")


def _class_names(value) -> list[str] | None:
    if isinstance(value, str):
        try:
            value = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            return None
    if isinstance(value, (list, tuple)) and all(isinstance(name, str) for name in value):
        return list(value)
    return None


def _set_labels(config: SegformerConfig, classes: list[str] | None) -> None:
    if classes and len(classes) == config.num_labels:
        config.id2label = dict(enumerate(classes))
        config.label2id = {name: index for index, name in enumerate(classes)}


def _shape(state_dict: dict, key: str, source: str) -> torch.Size:
    if key not in state_dict:
        raise ConversionError(f"The {source} checkpoint lacks {key!r}; is it a SegFormer segmentation checkpoint?")
    return state_dict[key].shape


def config_from_original(state_dict: dict[str, torch.Tensor], cfg: dict | None) -> SegformerConfig:
    """SegformerConfig of an original NVlabs/SegFormer checkpoint. The original code defines each backbone
    (`mit_b0` ... `mit_b5`) as a class with fixed hyper-parameters and ignores the config's backbone arguments, so
    widths, depths, MLP ratios and reduction ratios are read off the weights (and checked against the named variant
    when the config gives one); heads are (1, 2, 5, 8) in every variant."""
    source = "original SegFormer"
    num_stages = 4
    embeddings = [_shape(state_dict, f"backbone.patch_embed{i + 1}.proj.weight", source) for i in range(num_stages)]
    widths, patch_sizes = [shape[0] for shape in embeddings], [shape[-1] for shape in embeddings]
    depths = []
    for stage in range(num_stages):
        indices = {int(m.group(1)) for k in state_dict if (m := re.match(rf"backbone\.block{stage + 1}\.(\d+)\.", k))}
        if not indices:
            raise ConversionError(
                f"The {source} checkpoint has no blocks for stage {stage + 1} (backbone.block{stage + 1}.*)."
            )
        depths.append(max(indices) + 1)
    sr_ratios = [
        state_dict[key].shape[-1] if (key := f"backbone.block{i + 1}.0.attn.sr.weight") in state_dict else 1
        for i in range(num_stages)
    ]
    mlp_ratios = [
        _shape(state_dict, f"backbone.block{i + 1}.0.mlp.fc1.weight", source)[0] // widths[i] for i in range(num_stages)
    ]
    head = (cfg or {}).get("model", {}).get("decode_head", {})
    backbone_type = (cfg or {}).get("model", {}).get("backbone", {}).get("type")
    if backbone_type is not None and backbone_type.startswith("mit_b"):
        name = backbone_type.replace("_", "-")
        if name not in MIT_ENCODERS:
            raise ConversionError(f"Unknown backbone type {backbone_type!r} in the config.")
        expected = MIT_ENCODERS[name]
        if list(expected["hidden_sizes"]) != widths or list(expected["depths"]) != depths:
            raise ConversionError(
                f"The config names backbone {backbone_type} (widths {list(expected['hidden_sizes'])}, depths "
                f"{list(expected['depths'])}) but the checkpoint has widths {widths} and depths {depths}."
            )
    if head and head.get("align_corners", False):
        raise ConversionError("Decode heads with align_corners=True are not supported (SegFormer uses False).")
    decoder_width = _shape(state_dict, "decode_head.linear_c1.proj.weight", source)[0]
    num_labels = _shape(state_dict, "decode_head.linear_pred.weight", source)[0]
    if head and int(head.get("num_classes", num_labels)) != num_labels:
        raise ConversionError(
            f"The config says num_classes={head['num_classes']} but decode_head.linear_pred has {num_labels} outputs."
        )
    return SegformerConfig(
        hidden_sizes=widths,
        depths=depths,
        patch_sizes=patch_sizes,
        strides=[4, 2, 2, 2],
        sr_ratios=sr_ratios,
        mlp_ratios=mlp_ratios,
        num_attention_heads=list(_MIT_SHARED["num_attention_heads"]),
        layer_norm_eps=1e-6,
        embedding_layer_norm_eps=1e-5,
        drop_path_rate=0.1,
        decoder_hidden_size=decoder_width,
        decoder_type="original",
        classifier_dropout_prob=float(head.get("dropout_ratio", 0.1)),
        num_labels=num_labels,
    )


def config_from_mmseg(cfg: dict) -> SegformerConfig:
    """SegformerConfig of an mmsegmentation 1.x `EncoderDecoder` with `MixVisionTransformer` + `SegformerHead`."""
    try:
        backbone, head = cfg["model"]["backbone"], cfg["model"]["decode_head"]
    except KeyError as error:
        raise ConversionError(f"The mmseg config has no {error} entry; is it a SegFormer config?") from error
    if backbone.get("type") != "MixVisionTransformer" or head.get("type") != "SegformerHead":
        raise ConversionError(
            f"Expected a MixVisionTransformer backbone and a SegformerHead, got {backbone.get('type')!r} and "
            f"{head.get('type')!r}."
        )
    if head.get("align_corners", False) or head.get("interpolate_mode", "bilinear") != "bilinear":
        raise ConversionError("Only SegformerHead with bilinear, align_corners=False upsampling is supported.")
    num_stages = int(backbone.get("num_stages", 4))
    heads = list(backbone.get("num_heads", [1, 2, 4, 8]))
    embed_dims = int(backbone.get("embed_dims", 64))
    widths = [embed_dims * h for h in heads]
    in_channels = list(head.get("in_channels", widths))
    if in_channels != widths:
        raise ConversionError(f"decode_head.in_channels {in_channels} differ from the backbone widths {widths}.")
    eps = float(backbone.get("norm_cfg", {}).get("eps", 1e-6))
    mlp_ratio = backbone.get("mlp_ratio", 4)
    return SegformerConfig(
        num_channels=int(backbone.get("in_channels", 3)),
        num_encoder_blocks=num_stages,
        hidden_sizes=widths,
        depths=list(backbone.get("num_layers", [3, 4, 6, 3])),
        num_attention_heads=heads,
        patch_sizes=list(backbone.get("patch_sizes", [7, 3, 3, 3])),
        strides=list(backbone.get("strides", [4, 2, 2, 2])),
        sr_ratios=list(backbone.get("sr_ratios", [8, 4, 2, 1])),
        mlp_ratios=[int(mlp_ratio)] * num_stages,
        qkv_bias=bool(backbone.get("qkv_bias", True)),
        layer_norm_eps=eps,
        embedding_layer_norm_eps=eps,
        drop_path_rate=float(backbone.get("drop_path_rate", 0.1)),
        hidden_dropout_prob=float(backbone.get("drop_rate", 0.0)),
        attention_probs_dropout_prob=float(backbone.get("attn_drop_rate", 0.0)),
        decoder_hidden_size=int(head["channels"]),
        decoder_type="mmseg",
        classifier_dropout_prob=float(head.get("dropout_ratio", 0.1)),
        num_labels=int(head["num_classes"]),
    )


def config_from_transformers(config_dict: dict) -> SegformerConfig:
    """SegformerConfig reproducing transformers' `SegformerForSemanticSegmentation` for its `config.json`.

    transformers builds every LayerNorm with PyTorch's default eps (1e-5) whatever `layer_norm_eps` says, so both our
    eps fields are 1e-5 here (the original weights were trained with 1e-6 in the blocks; the difference is far below
    float32 noise for real checkpoints)."""
    if config_dict.get("model_type") != "segformer":
        raise ConversionError(f"config.json has model_type {config_dict.get('model_type')!r}, expected 'segformer'.")
    fields = ("num_channels", "num_encoder_blocks", "depths", "sr_ratios", "hidden_sizes", "patch_sizes", "strides",
              "num_attention_heads", "mlp_ratios", "hidden_act", "hidden_dropout_prob", "attention_probs_dropout_prob",
              "classifier_dropout_prob", "initializer_range", "drop_path_rate", "decoder_hidden_size",
              "semantic_loss_ignore_index", "id2label", "label2id")  # fmt: skip
    values = {name: config_dict[name] for name in fields if name in config_dict}
    if "id2label" not in values and "num_labels" in config_dict:
        values["num_labels"] = config_dict["num_labels"]
    return SegformerConfig(**values, layer_norm_eps=1e-5, embedding_layer_norm_eps=1e-5, decoder_type="original")


def image_processor_from_mmseg_config(cfg: dict | None, num_labels: int) -> SegformerImageProcessor:
    """The test-time preprocessing described by an mmseg 0.x / 1.x config (keep-ratio scale, `AlignedResize`'s
    size divisor, mean / std, `reduce_zero_label`); without a pipeline, the protocol of the matching released models
    (150 classes: ADE20K, 19: Cityscapes), else the ADE20K-style default without label reduction."""
    cfg = cfg or {}
    pipeline = list(cfg.get("test_pipeline", [])) or list(cfg.get("data", {}).get("test", {}).get("pipeline", []))
    train_pipeline = list(cfg.get("train_pipeline", []))
    if not pipeline:
        if num_labels == 150:
            return SegformerImageProcessor.from_preset("segformer-b0-ade")
        if num_labels == 19:
            return SegformerImageProcessor.from_preset("segformer-b0-cityscapes")
        return SegformerImageProcessor()
    kwargs: dict = {"size_divisor": None}
    steps = []
    for step in pipeline:
        steps.append(step)
        steps.extend(step.get("transforms", []))
    for step in steps:
        scale = step.get("scale") or step.get("img_scale")
        if step.get("type") in ("Resize", "AlignedResize", "MultiScaleFlipAug") and scale:
            if isinstance(scale, list):
                scale = scale[0]
            kwargs["size"] = {"shortest_edge": int(min(scale)), "longest_edge": int(max(scale))}
        if step.get("type") == "AlignedResize":
            kwargs["size_divisor"] = int(step.get("size_divisor", 32))
    for step in steps + train_pipeline:
        if step.get("type") == "LoadAnnotations" and "reduce_zero_label" in step:
            kwargs["do_reduce_labels"] = bool(step["reduce_zero_label"])
    norm = cfg.get("img_norm_cfg") or cfg.get("data_preprocessor") or cfg.get("model", {}).get("data_preprocessor")
    if norm and "mean" in norm and "std" in norm:
        kwargs["image_mean"] = [m / 255.0 for m in norm["mean"]]
        kwargs["image_std"] = [s / 255.0 for s in norm["std"]]
    return SegformerImageProcessor(**kwargs)


def _load_transformers_source(
    checkpoint: Path, config_path, allow_unsafe_pickle: bool
) -> tuple[dict, dict, Path | None]:
    """(state dict, config.json dict, folder holding preprocessor_config.json) of a transformers checkpoint given as
    a folder (config.json + model.safetensors / pytorch_model.bin) or as a weights file with `--config`."""
    folder = checkpoint if checkpoint.is_dir() else None
    if folder is not None:
        weights = next((folder / name for name in ("model.safetensors", "pytorch_model.bin")
                        if (folder / name).is_file()), None)  # fmt: skip
        if weights is None:
            raise ConversionError(
                f"{str(folder)!r} holds neither model.safetensors nor pytorch_model.bin (sharded checkpoints are not "
                "supported; SegFormer checkpoints fit in one file)."
            )
    else:
        weights = checkpoint
    if config_path is None:
        if folder is None:
            raise ConversionError("--config (transformers config.json or its folder) is required with a weights file.")
        config_path = folder / "config.json"
    config_path = Path(config_path)
    if config_path.is_dir():
        config_path = config_path / "config.json"
    if not config_path.is_file():
        raise ConversionError(f"transformers config not found: {str(config_path)!r} does not exist.")
    try:
        config_dict = json.loads(config_path.read_text())
    except json.JSONDecodeError as error:
        raise ConversionError(f"{str(config_path)!r} is not valid JSON: {error}") from error
    if weights.suffix == ".safetensors":
        if not weights.is_file():
            raise ConversionError(f"Checkpoint not found: {str(weights)!r} does not exist or is not a file.")
        state_dict = load_file(str(weights))
    else:
        state_dict = load_checkpoint(weights, allow_unsafe_pickle=allow_unsafe_pickle)
    return state_dict, config_dict, folder or config_path.parent


def _image_processor_from_transformers(folder: Path | None) -> SegformerImageProcessor:
    path = folder / "preprocessor_config.json" if folder is not None else None
    if path is None or not path.is_file():
        return SegformerImageProcessor()
    values = json.loads(path.read_text())
    kwargs = {name: values[name] for name in ("image_mean", "image_std", "do_reduce_labels", "size") if name in values}
    if "reduce_labels" in values:
        kwargs.setdefault("do_reduce_labels", values["reduce_labels"])
    return SegformerImageProcessor(size_divisor=None, **kwargs)


def guess_source(state_dict: dict) -> str | None:
    """Which release format a SegFormer state dict looks like: "original" (NVlabs `backbone.patch_embed1.*`),
    "mmseg" (mmsegmentation 1.x `backbone.layers.*`) or "transformers" (`segformer.encoder.*`); None if unknown."""
    keys = list(state_dict)
    if any(key.startswith("backbone.patch_embed1.") for key in keys):
        return "original"
    if any(key.startswith("backbone.layers.") for key in keys):
        return "mmseg"
    if any(key.startswith("segformer.encoder.") for key in keys):
        return "transformers"
    return None


def _state_dict_of(checkpoint, source: str) -> dict[str, torch.Tensor]:
    if not isinstance(checkpoint, dict):
        raise ConversionError(f"The {source} checkpoint is a {type(checkpoint).__name__}, expected a dict.")
    state_dict = checkpoint.get("state_dict", checkpoint)
    if not all(isinstance(value, torch.Tensor) for value in state_dict.values()):
        bad = sorted(key for key, value in state_dict.items() if not isinstance(value, torch.Tensor))
        raise ConversionError(f"The {source} checkpoint's state dict holds non-tensor entries: {bad[:10]}")
    return state_dict


def convert_segformer_checkpoint(
    checkpoint_path: str | os.PathLike,
    config_path: str | os.PathLike | None = None,
    source: str = "original",
    allow_unsafe_pickle: bool = False,
) -> tuple[SegformerForSemanticSegmentation, SegformerImageProcessor]:
    """Builds our model (eval mode) and image processor from a SegFormer checkpoint.

    `source="original"`: NVlabs/SegFormer's `{'meta', 'state_dict'}` checkpoint; `config_path` (its `.py` config) is
    optional (the meta's embedded config is used otherwise; hyper-parameters are read off the weights).
    `source="mmseg"`: mmsegmentation 1.x's checkpoint + `.py` config (or the config embedded in the meta).
    `source="transformers"`: a folder with config.json + model.safetensors / pytorch_model.bin (a Hub snapshot of
    `nvidia/segformer-*`), or a weights file with `config_path` pointing to config.json.
    """
    if source not in SOURCES:
        raise ConversionError(f"Unknown --source {source!r} for SegFormer; expected one of {SOURCES}.")
    checkpoint_path = Path(checkpoint_path)
    if source == "transformers":
        if not checkpoint_path.exists():
            raise ConversionError(f"Checkpoint not found: {str(checkpoint_path)!r} does not exist.")
        state_dict, config_dict, folder = _load_transformers_source(checkpoint_path, config_path, allow_unsafe_pickle)
        config = config_from_transformers(config_dict)
        converted = convert_transformers_state_dict(state_dict)
        processor = _image_processor_from_transformers(folder)
    else:
        checkpoint = load_checkpoint(checkpoint_path, allow_unsafe_pickle=allow_unsafe_pickle)
        state_dict = _state_dict_of(checkpoint, source)
        guessed = guess_source(state_dict)
        if guessed is not None and guessed != source:
            names = {"original": "an NVlabs/SegFormer (original)", "mmseg": "an mmsegmentation 1.x",
                     "transformers": "a transformers"}
            raise ConversionError(
                f"{checkpoint_path.name} looks like {names[guessed]} checkpoint, not --source {source}; convert it "
                f"with --source {guessed}."
            )
        meta = checkpoint.get("meta") or {}
        if config_path is not None:
            cfg = load_python_config(config_path)
        else:
            text = meta.get("config" if source == "original" else "cfg")
            cfg = load_python_config_text(text, f"{checkpoint_path.name}'s meta") if isinstance(text, str) else None
        if source == "original":
            config = config_from_original(state_dict, cfg)
            converted = convert_original_state_dict(state_dict)
            classes = _class_names(meta.get("CLASSES"))
        else:
            if cfg is None:
                raise ConversionError(
                    "--config (the mmseg .py config) is required: the checkpoint's meta holds no config ('cfg')."
                )
            config = config_from_mmseg(cfg)
            converted = convert_mmseg_state_dict(state_dict)
            dataset_meta = meta.get("dataset_meta") or {}
            if isinstance(dataset_meta, str):
                try:
                    dataset_meta = ast.literal_eval(dataset_meta)
                except (ValueError, SyntaxError):
                    dataset_meta = {}
            classes = _class_names(dataset_meta.get("classes"))
        _set_labels(config, classes)
        processor = image_processor_from_mmseg_config(cfg, config.num_labels)
    model = SegformerForSemanticSegmentation(config)
    load_state_dict_strict(model, converted)
    if source != "transformers" and cfg is not None:
        test_cfg = mmcv_test_cfg(cfg)
        where = Path(config_path).name if config_path is not None else f"{checkpoint_path.name}'s meta"
        apply_test_protocol(model, processor, protocol_from_side_file(test_cfg, processor, f"test_cfg of {where}"))
    return model.eval(), processor


__all__ = [
    "SOURCES",
    "config_from_mmseg",
    "config_from_original",
    "config_from_transformers",
    "convert_mmseg_state_dict",
    "convert_original_state_dict",
    "convert_segformer_checkpoint",
    "convert_transformers_state_dict",
]
