"""Conversion of Segmenter checkpoints: the authors' release (`checkpoint.pth` + `variant.yml`) and
mmsegmentation 1.x's port (`checkpoint.pth` + `.py` config)."""

import os
from pathlib import Path

import torch
import yaml

from ..conversion_utils import (
    ConversionError,
    _require_file,
    load_checkpoint,
    load_python_config,
    load_state_dict_strict,
    rename_keys,
)
from ..protocol import apply_test_protocol, mmcv_test_cfg, protocol_from_side_file
from .configuration_segmenter import NORMALIZATION, SegmenterConfig
from .image_processing_segmenter import SegmenterImageProcessor
from .modeling_segmenter import SegmenterForSemanticSegmentation

# Test-time resizing of the original evaluation (mmseg-style keep-ratio scales).
_TEST_SCALES = {"ade20k": (512, 2048), "pascal_context": (520, 520), "cityscapes": (1024, 2048)}

_LAYER_RULES_ORIGINAL = [
    (r"norm1\.(weight|bias)", r"layernorm_before.\1"),
    (r"norm2\.(weight|bias)", r"layernorm_after.\1"),
    (r"attn\.qkv\.(weight|bias)", r"attention.qkv.\1"),
    (r"attn\.proj\.(weight|bias)", r"attention.proj.\1"),
    (r"mlp\.(fc1|fc2)\.(weight|bias)", r"mlp.\1.\2"),
]

_LAYER_RULES_MMSEG = [
    (r"ln1\.(weight|bias)", r"layernorm_before.\1"),
    (r"ln2\.(weight|bias)", r"layernorm_after.\1"),
    (r"attn\.attn\.in_proj_(weight|bias)", r"attention.qkv.\1"),
    (r"attn\.attn\.out_proj\.(weight|bias)", r"attention.proj.\1"),
    (r"ffn\.layers\.0\.0\.(weight|bias)", r"mlp.fc1.\1"),
    (r"ffn\.layers\.1\.(weight|bias)", r"mlp.fc2.\1"),
]


def _layer_rules(source_prefix: str, target_prefix: str, rules) -> list[tuple[str, str]]:
    """Per-layer rules: `<source_prefix>.<i>.<pattern>` -> `<target_prefix>.<i>.<target>`."""
    return [
        (rf"{source_prefix}\.(?P<layer>\d+)\.{pattern}", _shift_groups(rf"{target_prefix}.\g<layer>.{target}"))
        for pattern, target in rules
    ]


def _shift_groups(template: str) -> str:
    # The layer index is the named group; the rule's own groups \1, \2 move to \2, \3.
    for index in (2, 1):
        template = template.replace(f"\\{index}", f"\\g<{index + 1}>")
    return template


def _transposed(target: str):
    def convert(match, tensor):
        return {target: tensor.t().contiguous()}

    return convert


class _TupleLoader(yaml.SafeLoader):
    """Safe YAML loader that also accepts the `!!python/tuple` tag the original training script writes."""


_TupleLoader.add_constructor("tag:yaml.org,2002:python/tuple", lambda loader, node: tuple(loader.construct_sequence(node)))


def read_variant(path: str | os.PathLike) -> dict:
    """Reads the original `variant.yml` (without executing arbitrary YAML tags)."""
    path = _require_file(path, "Variant file (variant.yml)")
    try:
        variant = yaml.load(path.read_text(), Loader=_TupleLoader)
    except yaml.YAMLError as error:
        raise ConversionError(f"Could not parse the variant file {str(path)!r}: {error}") from error
    if not isinstance(variant, dict) or "net_kwargs" not in variant:
        raise ConversionError(f"{str(path)!r} is not a Segmenter variant.yml: it has no 'net_kwargs' section.")
    return variant


def config_from_variant(variant: dict) -> tuple[SegmenterConfig, SegmenterImageProcessor]:
    """SegmenterConfig and image processor described by an original `variant.yml`."""
    net = variant["net_kwargs"]
    decoder = net.get("decoder", {})
    try:
        width = int(net["d_model"])
        config = SegmenterConfig(
            hidden_size=width,
            num_hidden_layers=int(net["n_layers"]),
            num_attention_heads=int(net["n_heads"]),
            intermediate_size=4 * width,
            patch_size=int(net["patch_size"]),
            image_size=tuple(net["image_size"]) if not isinstance(net["image_size"], int) else net["image_size"],
            distilled=bool(net.get("distilled", False)),
            drop_path_rate=float(net.get("drop_path_rate", 0.1)),
            hidden_dropout_prob=float(net.get("dropout", 0.0)),
            decoder_type=decoder["name"],
            decoder_num_hidden_layers=int(decoder.get("n_layers", 2)),
            decoder_dropout=float(decoder.get("dropout", 0.1)),
            decoder_drop_path_rate=float(decoder.get("drop_path_rate", 0.0)),
            num_labels=int(net["n_cls"]),
        )
    except KeyError as error:
        raise ConversionError(f"variant.yml lacks the field {error} in net_kwargs.") from error
    dataset_kwargs = variant.get("dataset_kwargs", {})
    normalization = dataset_kwargs.get("normalization", net.get("normalization", "vit"))
    if normalization not in NORMALIZATION:
        raise ConversionError(f"Unknown normalization {normalization!r} in variant.yml; expected one of {sorted(NORMALIZATION)}.")
    shortest, longest = _TEST_SCALES.get(dataset_kwargs.get("dataset"), (512, 2048))
    processor = SegmenterImageProcessor.for_normalization(
        normalization, size={"shortest_edge": shortest, "longest_edge": longest}
    )
    return config, processor


def convert_original_state_dict(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Maps the keys of the original `Segmenter` state dict to ours (see the golden README for the source list)."""
    rules = [
        (r"encoder\.cls_token", "encoder.embeddings.cls_token"),
        (r"encoder\.dist_token", "encoder.embeddings.distillation_token"),
        (r"encoder\.pos_embed", "encoder.embeddings.position_embeddings"),
        (r"encoder\.patch_embed\.proj\.(weight|bias)", r"encoder.embeddings.patch_embeddings.\1"),
        (r"encoder\.norm\.(weight|bias)", r"encoder.layernorm.\1"),
        *_layer_rules(r"encoder\.blocks", "encoder.layers", _LAYER_RULES_ORIGINAL),
        *_layer_rules(r"decoder\.blocks", "decoder.layers", _LAYER_RULES_ORIGINAL),
        (r"decoder\.head\.(weight|bias)", r"decoder.head.\1"),
        (r"decoder\.cls_emb", "decoder.cls_emb"),
        (r"decoder\.proj_dec\.(weight|bias)", r"decoder.proj_dec.\1"),
        (r"decoder\.proj_patch", _transposed("decoder.proj_patch.weight")),
        (r"decoder\.proj_classes", _transposed("decoder.proj_classes.weight")),
        (r"decoder\.(decoder_norm|mask_norm)\.(weight|bias)", r"decoder.\1.\2"),
    ]
    # The ImageNet classification heads of the encoder are unused for segmentation.
    drop = [r"encoder\.head\.(weight|bias)", r"encoder\.head_dist\.(weight|bias)"]
    return rename_keys(state_dict, rules, drop, source_name="original Segmenter checkpoint")


def config_from_mmseg(cfg: dict) -> tuple[SegmenterConfig, SegmenterImageProcessor]:
    """SegmenterConfig and image processor described by an mmsegmentation 1.x Segmenter config."""
    try:
        model = cfg["model"]
        backbone, head = model["backbone"], model["decode_head"]
    except KeyError as error:
        raise ConversionError(f"The mmseg config has no {error} entry; is it a Segmenter config?") from error
    head_type = head.get("type")
    if head_type not in ("SegmenterMaskTransformerHead", "FCNHead"):
        raise ConversionError(f"Unsupported decode head {head_type!r}: expected SegmenterMaskTransformerHead or FCNHead.")
    width = int(backbone.get("embed_dims", 768))
    img_size = backbone.get("img_size", 224)
    mlp_ratio = backbone.get("mlp_ratio", 4)
    values = dict(
        hidden_size=width,
        num_hidden_layers=int(backbone.get("num_layers", 12)),
        num_attention_heads=int(backbone.get("num_heads", 12)),
        intermediate_size=int(mlp_ratio * width),
        patch_size=int(backbone.get("patch_size", 16)),
        image_size=tuple(img_size) if not isinstance(img_size, int) else img_size,
        qkv_bias=bool(backbone.get("qkv_bias", True)),
        layer_norm_eps=float(backbone.get("norm_cfg", {}).get("eps", 1e-6)),
        drop_path_rate=float(backbone.get("drop_path_rate", 0.1)),
        hidden_dropout_prob=float(backbone.get("drop_rate", 0.0)),
        attention_probs_dropout_prob=float(backbone.get("attn_drop_rate", 0.0)),
        use_cls_token=True,
        patch_embeddings_bias=False,
        use_final_layer_norm=bool(backbone.get("final_norm", False)),
        position_embedding_interpolation=backbone.get("interpolate_mode", "bicubic"),
        output_upsampling="resize",
        num_labels=int(head["num_classes"]),
    )
    if not backbone.get("with_cls_token", True):
        raise ConversionError("Segmenter configs with `with_cls_token=False` are not supported.")
    if head_type == "SegmenterMaskTransformerHead":
        decoder_width = int(head.get("embed_dims", width))
        values.update(
            decoder_type="mask_transformer",
            decoder_hidden_size=decoder_width,
            decoder_num_hidden_layers=int(head.get("num_layers", 2)),
            decoder_num_attention_heads=int(head.get("num_heads", max(decoder_width // 64, 1))),
            decoder_intermediate_size=int(head.get("mlp_ratio", 4) * decoder_width),
            decoder_dropout=float(head.get("dropout_ratio", 0.0)),
            decoder_drop_path_rate=float(head.get("drop_path_rate", 0.1)),
            decoder_layer_norm_eps=float(head.get("norm_cfg", {}).get("eps", 1e-5)),
        )
    else:
        if head.get("num_convs", 2) != 0:
            raise ConversionError("Only FCNHead with num_convs=0 (Segmenter's linear decoder) is supported.")
        values.update(decoder_type="linear")
    preprocessor = cfg.get("data_preprocessor", model.get("data_preprocessor", {}))
    mean = [m / 255.0 for m in preprocessor.get("mean", [127.5] * 3)]
    std = [s / 255.0 for s in preprocessor.get("std", [127.5] * 3)]
    size = {"shortest_edge": 512, "longest_edge": 2048}
    for step in cfg.get("test_pipeline", []):
        if step.get("type") == "Resize" and step.get("keep_ratio", False):
            longest, shortest = max(step["scale"]), min(step["scale"])
            size = {"shortest_edge": shortest, "longest_edge": longest}
    return SegmenterConfig(**values), SegmenterImageProcessor(image_mean=mean, image_std=std, size=size)


def convert_mmseg_state_dict(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Maps mmsegmentation 1.x's Segmenter keys (`backbone.*`, `decode_head.*`) to ours."""
    rules = [
        (r"backbone\.cls_token", "encoder.embeddings.cls_token"),
        (r"backbone\.pos_embed", "encoder.embeddings.position_embeddings"),
        (r"backbone\.patch_embed\.projection\.(weight|bias)", r"encoder.embeddings.patch_embeddings.\1"),
        (r"backbone\.ln1\.(weight|bias)", r"encoder.layernorm.\1"),
        *_layer_rules(r"backbone\.layers", "encoder.layers", _LAYER_RULES_MMSEG),
        *_layer_rules(r"decode_head\.layers", "decoder.layers", _LAYER_RULES_MMSEG),
        (r"decode_head\.cls_emb", "decoder.cls_emb"),
        (r"decode_head\.dec_proj\.(weight|bias)", r"decoder.proj_dec.\1"),
        (r"decode_head\.patch_proj\.weight", "decoder.proj_patch.weight"),
        (r"decode_head\.classes_proj\.weight", "decoder.proj_classes.weight"),
        (r"decode_head\.(decoder_norm|mask_norm)\.(weight|bias)", r"decoder.\1.\2"),
        (r"decode_head\.conv_seg\.weight", lambda match, tensor: {"decoder.head.weight": tensor.flatten(1)}),
        (r"decode_head\.conv_seg\.bias", "decoder.head.bias"),
    ]
    return rename_keys(state_dict, rules, source_name="mmsegmentation Segmenter checkpoint")


def convert_segmenter_checkpoint(
    checkpoint_path: str | os.PathLike,
    config_path: str | os.PathLike,
    source: str = "original",
    allow_unsafe_pickle: bool = False,
) -> tuple[SegmenterForSemanticSegmentation, SegmenterImageProcessor]:
    """Builds our model (eval mode) and image processor from a Segmenter checkpoint.

    `source="original"`: rstrudel/segmenter's `checkpoint.pth` (a dict with `model`) + `variant.yml`.
    `source="mmseg"`: mmsegmentation 1.x's `{'meta', 'state_dict'}` checkpoint + its `.py` config.
    """
    if config_path is None:
        expected = "variant.yml" if source == "original" else "the mmseg .py config"
        raise ConversionError(f"--config is required for --source {source} ({expected}).")
    if source == "original":
        variant = read_variant(config_path)
        config, processor = config_from_variant(variant)
        inference = variant.get("inference_kwargs") or {}
        test_cfg = ({"mode": "slide", "crop_size": inference["window_size"], "stride": inference["window_stride"]}
                    if inference.get("window_size") and inference.get("window_stride") else None)
        checkpoint = load_checkpoint(checkpoint_path, allow_unsafe_pickle=allow_unsafe_pickle)
        state_dict = checkpoint.get("model", checkpoint) if isinstance(checkpoint, dict) else None
        converted = convert_original_state_dict(state_dict)
    elif source == "mmseg":
        cfg = load_python_config(config_path)
        config, processor = config_from_mmseg(cfg)
        test_cfg = mmcv_test_cfg(cfg)
        checkpoint = load_checkpoint(checkpoint_path, allow_unsafe_pickle=allow_unsafe_pickle)
        state_dict = checkpoint.get("state_dict", checkpoint) if isinstance(checkpoint, dict) else None
        classes = (checkpoint.get("meta") or {}).get("dataset_meta", {}).get("classes")
        if classes and len(classes) == config.num_labels:
            config.id2label = dict(enumerate(classes))
            config.label2id = {name: index for index, name in enumerate(classes)}
        converted = convert_mmseg_state_dict(state_dict)
    else:
        raise ConversionError(f"Unknown --source {source!r} for Segmenter; expected 'original' or 'mmseg'.")
    model = SegmenterForSemanticSegmentation(config)
    load_state_dict_strict(model, converted)
    apply_test_protocol(model, processor, protocol_from_side_file(test_cfg, processor, f"{Path(config_path).name}"))
    return model.eval(), processor


__all__ = ["convert_segmenter_checkpoint", "config_from_variant", "config_from_mmseg", "read_variant"]
