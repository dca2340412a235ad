"""Conversion of SETR checkpoints: the authors' release (fudan-zvg/SETR, mmseg-0.x based: `state_dict` + `.py`
config) and mmsegmentation 1.x's port (`{'meta', 'state_dict'}` + `.py` config).

Key layout of our model: `encoder.*` (the shared ViT), `decode_head.*` and `auxiliary_heads.<k>.*`. The MLA streams
are kept shallow-first (stream i aggregates layers i..M-1, as the original `mla_p2..mla_p5`); mmsegmentation orders
its neck outputs deepest-first, so its `feat_extract.j` / `up_convs.j` become our stream M-1-j and the input
channels of its classifier are reordered accordingly.
"""

import os
from pathlib import Path

import torch

from ..conversion_utils import (
    ConversionError,
    load_checkpoint,
    load_python_config,
    load_state_dict_strict,
    rename_keys,
)
from ..protocol import apply_test_protocol, mmcv_test_cfg, protocol_from_side_file
from .configuration_setr import SetrConfig
from .image_processing_setr import SetrImageProcessor
from .modeling_setr import SetrForSemanticSegmentation

_BN = r"(weight|bias|running_mean|running_var|num_batches_tracked)"

_ENCODER_LAYER_RULES = {
    "original": [
        (r"norm1\.(weight|bias)", r"layernorm_before.\1"),
        (r"norm2\.(weight|bias)", r"layernorm_after.\1"),
        (r"attn\.qkv\.(weight|bias)", r"attention.qkv.\1"),
        (r"attn\.proj\.(weight|bias)", r"attention.proj.\1"),
        (r"mlp\.(fc1|fc2)\.(weight|bias)", r"mlp.\1.\2"),
    ],
    "mmseg": [
        (r"ln1\.(weight|bias)", r"layernorm_before.\1"),
        (r"ln2\.(weight|bias)", r"layernorm_after.\1"),
        (r"attn\.attn\.in_proj_(weight|bias)", r"attention.qkv.\1"),
        (r"attn\.attn\.out_proj\.(weight|bias)", r"attention.proj.\1"),
        (r"ffn\.layers\.0\.0\.(weight|bias)", r"mlp.fc1.\1"),
        (r"ffn\.layers\.1\.(weight|bias)", r"mlp.fc2.\1"),
    ],
}


def _rule(pattern: str, target):
    """`target` is a template, or a function of the match returning the new key (for index arithmetic)."""
    if callable(target):
        return pattern, lambda match, tensor: {target(match): tensor}
    return pattern, target


def _cls_free_position_embeddings(match, tensor):
    # With the cls token dropped right after the position embedding is added, its position has no effect.
    return {"encoder.embeddings.position_embeddings": tensor[:, 1:]}


def _encoder_rules(source: str, prefix: str, layers: str, patch: str, use_cls_token: bool) -> tuple[list, list]:
    rules = [
        (rf"{prefix}\.pos_embed",
         "encoder.embeddings.position_embeddings" if use_cls_token else _cls_free_position_embeddings),
        (rf"{prefix}\.patch_embed\.{patch}\.(weight|bias)", r"encoder.embeddings.patch_embeddings.\1"),
    ]
    drop = []
    if use_cls_token:
        rules.append((rf"{prefix}\.cls_token", "encoder.embeddings.cls_token"))
    else:
        drop.append(rf"{prefix}\.cls_token")
    for pattern, target in _ENCODER_LAYER_RULES[source]:
        target = target.replace(r"\2", r"\g<3>").replace(r"\1", r"\g<2>")
        rules.append((rf"{prefix}\.{layers}\.(\d+)\.{pattern}", r"encoder.layers.\1." + target))
    return rules, drop


def _dataset_labels(config: SetrConfig, classes) -> None:
    if classes and len(classes) == config.num_labels:
        config.id2label = dict(enumerate(str(name) for name in classes))
        config.label2id = {name: index for index, name in config.id2label.items()}


def _single(values: list, what: str):
    distinct = {repr(value) for value in values}
    if len(distinct) > 1:
        raise ConversionError(f"The auxiliary heads differ in {what} ({sorted(distinct)}); our model shares one setting.")
    return values[0]


def _check_loss(head: dict, name: str, weight: float | None = None) -> float:
    loss = head.get("loss_decode", {"type": "CrossEntropyLoss", "loss_weight": 1.0})
    if not isinstance(loss, dict) or loss.get("type") != "CrossEntropyLoss" or loss.get("use_sigmoid", False):
        raise ConversionError(f"{name}: only a softmax CrossEntropyLoss is supported, got loss_decode={loss!r}.")
    if loss.get("class_weight") is not None:
        raise ConversionError(f"{name}: class-weighted cross-entropy is not supported.")
    loss_weight = float(loss.get("loss_weight", 1.0))
    if weight is not None and loss_weight != weight:
        raise ConversionError(f"{name}: loss weight {loss_weight} is not supported (expected {weight}).")
    return loss_weight


def _auxiliary_list(model: dict) -> tuple[list[dict], bool]:
    """The auxiliary head configs and whether their keys carry an index (`auxiliary_head.<k>.`)."""
    auxiliary = model.get("auxiliary_head")
    if auxiliary is None:
        return [], True
    if isinstance(auxiliary, dict):
        return [auxiliary], False
    return list(auxiliary), True


def _aux_prefix(index: int, indexed: bool) -> str:
    return rf"auxiliary_head\.{index}" if indexed else r"auxiliary_head"


def _processor_from(cfg: dict, model: dict) -> SetrImageProcessor:
    preprocessor = cfg.get("data_preprocessor", model.get("data_preprocessor")) or {}
    norm = cfg.get("img_norm_cfg") or preprocessor
    mean = [m / 255.0 for m in norm.get("mean", [123.675, 116.28, 103.53])]
    std = [s / 255.0 for s in norm.get("std", [58.395, 57.12, 57.375])]
    kwargs = {"image_mean": mean, "image_std": std}
    # The keep-ratio test scale: mmseg 1.x `Resize(scale=..., keep_ratio=True)`, or the original (mmseg 0.x)
    # `MultiScaleFlipAug(img_scale=..., transforms=[Resize(keep_ratio=True), ...])`.
    for step in cfg.get("test_pipeline", []):
        if not isinstance(step, dict):
            continue
        scale = None
        if step.get("type") == "Resize" and step.get("keep_ratio", False):
            scale = step.get("scale")
        elif step.get("type") == "MultiScaleFlipAug" and any(
            t.get("type") == "Resize" and t.get("keep_ratio", False) for t in step.get("transforms", [])
        ):
            scale = step.get("img_scale")
        if isinstance(scale, (list, tuple)) and len(scale) == 2 and all(isinstance(v, int) for v in scale):
            kwargs["size"] = {"shortest_edge": min(scale), "longest_edge": max(scale)}
    return SetrImageProcessor(**kwargs)


# --------------------------------------------------------------------------------------------------------------------
# mmsegmentation 1.x
# --------------------------------------------------------------------------------------------------------------------


def config_from_mmseg(cfg: dict, keep_auxiliary_heads: bool = True) -> tuple[SetrConfig, SetrImageProcessor, dict]:
    """SetrConfig, image processor and key-mapping plan described by an mmsegmentation 1.x SETR config."""
    try:
        model = cfg["model"]
        backbone, head = model["backbone"], model["decode_head"]
    except KeyError as error:
        raise ConversionError(f"The mmseg config has no {error} entry; is it a SETR config?") from error
    if backbone.get("type") != "VisionTransformer":
        raise ConversionError(f"Unsupported backbone {backbone.get('type')!r}: SETR uses mmseg's VisionTransformer.")
    for flag, expected in (("final_norm", False), ("pre_norm", False)):
        if bool(backbone.get(flag, expected)) != expected:
            raise ConversionError(f"Backbones with {flag}={backbone[flag]!r} are not SETR's encoder (not supported).")
    width = int(backbone.get("embed_dims", 768))
    num_layers = int(backbone.get("num_layers", 12))
    out_indices = backbone.get("out_indices", num_layers - 1)
    out_indices = [out_indices] if isinstance(out_indices, int) else list(out_indices)
    out_indices = [index % num_layers for index in out_indices]
    img_size = backbone.get("img_size", 224)
    eps = float(backbone.get("norm_cfg", {}).get("eps", 1e-6))
    values = dict(
        hidden_size=width,
        num_hidden_layers=num_layers,
        num_attention_heads=int(backbone.get("num_heads", 12)),
        intermediate_size=int(backbone.get("mlp_ratio", 4) * width),
        patch_size=int(backbone.get("patch_size", 16)),
        image_size=tuple(img_size) if not isinstance(img_size, int) else img_size,
        num_channels=int(backbone.get("in_channels", 3)),
        qkv_bias=bool(backbone.get("qkv_bias", True)),
        layer_norm_eps=eps,
        hidden_dropout_prob=float(backbone.get("drop_rate", 0.0)),
        attention_probs_dropout_prob=float(backbone.get("attn_drop_rate", 0.0)),
        drop_path_rate=float(backbone.get("drop_path_rate", 0.0)),
        use_cls_token=bool(backbone.get("with_cls_token", True)),
        position_embedding_interpolation=backbone.get("interpolate_mode", "bicubic"),
        num_labels=int(head["num_classes"]),
    )
    _check_loss(head, "decode_head", weight=1.0)
    if head.get("align_corners", False):
        raise ConversionError("decode_head.align_corners=True is not supported (SETR configs use False).")
    head_type = head.get("type")
    plan = {"source": "mmseg", "head_type": head_type, "out_indices": out_indices}
    auxiliary, plan["aux_indexed"] = _auxiliary_list(model)
    if not keep_auxiliary_heads:
        auxiliary = []
    plan["num_aux"] = len(auxiliary)
    if head_type == "SETRUPHead":
        num_convs = int(head.get("num_convs", 1))
        values.update(
            decoder_type="naive" if num_convs == 1 and head.get("kernel_size", 3) == 1 else "pup",
            decoder_layer_index=out_indices[int(head.get("in_index", -1))],
            decoder_hidden_size=int(head["channels"]),
            decoder_num_convs=num_convs,
            decoder_kernel_size=int(head.get("kernel_size", 3)),
            decoder_up_scale=int(head.get("up_scale", 4)),
            decoder_dropout=float(head.get("dropout_ratio", 0.1)),
        )
        if float(head.get("norm_layer", {}).get("eps", 1e-6)) != eps:
            raise ConversionError("The head LayerNorm eps differs from the backbone's; not supported.")
        layers = []
        for k, aux in enumerate(auxiliary):
            if aux.get("type") != "SETRUPHead":
                raise ConversionError(f"auxiliary_head[{k}] is a {aux.get('type')!r}; SETR-naive/PUP use SETRUPHead.")
            layers.append(out_indices[int(aux.get("in_index", -1))])
        if auxiliary:
            values.update(
                auxiliary_hidden_size=int(_single([a["channels"] for a in auxiliary], "channels")),
                auxiliary_num_convs=int(_single([a.get("num_convs", 1) for a in auxiliary], "num_convs")),
                auxiliary_kernel_size=int(_single([a.get("kernel_size", 3) for a in auxiliary], "kernel_size")),
                auxiliary_up_scale=int(_single([a.get("up_scale", 4) for a in auxiliary], "up_scale")),
                auxiliary_dropout=float(_single([a.get("dropout_ratio", 0.1) for a in auxiliary], "dropout_ratio")),
            )
    elif head_type == "SETRMLAHead":
        neck = model.get("neck") or {}
        if neck.get("type") != "MLANeck":
            raise ConversionError(f"SETRMLAHead needs an MLANeck, the config has neck={neck.get('type')!r}.")
        in_index = head.get("in_index", list(range(len(out_indices))))
        if list(in_index) != list(range(len(out_indices))) or len(neck.get("in_channels", [])) != len(out_indices):
            raise ConversionError("Only MLA heads reading every neck output in order are supported.")
        if int(head.get("up_scale", 4)) != 4:
            raise ConversionError(f"SETRMLAHead up_scale={head['up_scale']} is not supported (SETR uses 4).")
        if float(neck.get("norm_layer", {}).get("eps", 1e-6)) != eps:
            raise ConversionError("The MLA neck LayerNorm eps differs from the backbone's; not supported.")
        num_streams = len(out_indices)
        values.update(
            decoder_type="mla",
            mla_layer_indices=out_indices,
            mla_hidden_size=int(neck["out_channels"]),
            mla_head_hidden_size=int(head.get("mla_channels", 128)),
            mla_classifier_kernel_size=1,
            mla_align_corners=False,
            decoder_dropout=float(head.get("dropout_ratio", 0.1)),
        )
        layers = []
        for k, aux in enumerate(auxiliary):
            if aux.get("type") != "FCNHead" or aux.get("num_convs", 2) != 0 or aux.get("concat_input", True):
                raise ConversionError(
                    f"auxiliary_head[{k}]: SETR-MLA auxiliary heads are FCNHead(num_convs=0, concat_input=False)."
                )
            # mmseg's neck output j is our stream M-1-j.
            layers.append(out_indices[num_streams - 1 - int(aux.get("in_index", -1)) % num_streams])
        if auxiliary:
            values.update(
                auxiliary_classifier_bias=True,
                auxiliary_dropout=float(_single([a.get("dropout_ratio", 0.1) for a in auxiliary], "dropout_ratio")),
            )
    else:
        raise ConversionError(f"Unsupported decode head {head_type!r}: expected SETRUPHead or SETRMLAHead.")
    if auxiliary:
        for k, aux in enumerate(auxiliary):
            if aux.get("align_corners", False):
                raise ConversionError(f"auxiliary_head[{k}].align_corners=True is not supported.")
        weights = [_check_loss(aux, f"auxiliary_head[{k}]") for k, aux in enumerate(auxiliary)]
        values["auxiliary_loss_weight"] = _single(weights, "loss weight")
    values["auxiliary_layer_indices"] = layers
    try:
        config = SetrConfig(**values)
    except (ValueError, TypeError) as error:
        raise ConversionError(f"The mmseg config does not describe a supported SETR model: {error}") from error
    return config, _processor_from(cfg, model), plan


def _mla_classifier_reversed(num_streams: int, target: str):
    def convert(match, tensor):
        # mmseg concatenates its up_convs deepest stream first; ours are shallowest first.
        blocks = tensor.chunk(num_streams, dim=1)
        return {target: torch.cat(blocks[::-1], dim=1)}

    return convert


def convert_mmseg_state_dict(state_dict: dict[str, torch.Tensor], config: SetrConfig, plan: dict) -> dict:
    """Maps mmsegmentation 1.x's SETR keys (`backbone.*`, `neck.*`, `decode_head.*`, `auxiliary_head.*`) to ours."""
    rules, drop = _encoder_rules("mmseg", r"backbone", "layers", "projection", config.use_cls_token)
    if plan["head_type"] == "SETRUPHead":
        rules += [
            (r"decode_head\.norm\.(weight|bias)", r"decode_head.layernorm.\1"),
            (r"decode_head\.up_convs\.(\d+)\.0\.conv\.(weight|bias)", r"decode_head.stages.\1.conv.\2"),
            (rf"decode_head\.up_convs\.(\d+)\.0\.bn\.{_BN}", r"decode_head.stages.\1.norm.\2"),
            (r"decode_head\.conv_seg\.(weight|bias)", r"decode_head.classifier.\1"),
        ]
    else:
        streams = len(config.mla_layer_indices)
        last = streams - 1
        rules += [
            (r"neck\.norm\.(\d+)\.(weight|bias)", r"decode_head.aggregation.layernorms.\1.\2"),
            (r"neck\.mla\.channel_proj\.(\d+)\.conv\.weight", r"decode_head.aggregation.projections.\1.conv.weight"),
            (rf"neck\.mla\.channel_proj\.(\d+)\.bn\.{_BN}", r"decode_head.aggregation.projections.\1.norm.\2"),
            _rule(r"neck\.mla\.feat_extract\.(\d+)\.conv\.weight",
                  lambda m: f"decode_head.aggregation.aggregations.{last - int(m[1])}.conv.weight"),
            _rule(rf"neck\.mla\.feat_extract\.(\d+)\.bn\.{_BN}",
                  lambda m: f"decode_head.aggregation.aggregations.{last - int(m[1])}.norm.{m[2]}"),
            _rule(r"decode_head\.up_convs\.(\d+)\.([01])\.conv\.weight",
                  lambda m: f"decode_head.stream_heads.{last - int(m[1])}.{m[2]}.conv.weight"),
            _rule(rf"decode_head\.up_convs\.(\d+)\.([01])\.bn\.{_BN}",
                  lambda m: f"decode_head.stream_heads.{last - int(m[1])}.{m[2]}.norm.{m[3]}"),
            (r"decode_head\.conv_seg\.weight", _mla_classifier_reversed(streams, "decode_head.classifier.weight")),
            (r"decode_head\.conv_seg\.bias", "decode_head.classifier.bias"),
        ]
    for k in range(plan["num_aux"]):
        source = _aux_prefix(k, plan["aux_indexed"])
        if plan["head_type"] == "SETRUPHead":
            rules += [
                (rf"{source}\.norm\.(weight|bias)", rf"auxiliary_heads.{k}.layernorm.\1"),
                (rf"{source}\.up_convs\.(\d+)\.0\.conv\.(weight|bias)", rf"auxiliary_heads.{k}.stages.\1.conv.\2"),
                (rf"{source}\.up_convs\.(\d+)\.0\.bn\.{_BN}", rf"auxiliary_heads.{k}.stages.\1.norm.\2"),
                (rf"{source}\.conv_seg\.(weight|bias)", rf"auxiliary_heads.{k}.classifier.\1"),
            ]
        else:
            rules.append((rf"{source}\.conv_seg\.(weight|bias)", rf"auxiliary_heads.{k}.classifier.\1"))
    if plan["num_aux"] == 0:
        drop.append(r"auxiliary_head\..*")
    return rename_keys(state_dict, rules, drop, source_name="mmsegmentation SETR checkpoint")


# --------------------------------------------------------------------------------------------------------------------
# Original fudan-zvg/SETR
# --------------------------------------------------------------------------------------------------------------------


def _original_up_head(head: dict, name: str) -> dict:
    """Our head fields for a `VisionTransformerUpHead` (num_conv / num_upsampe_layer / conv3x3_conv1x1)."""
    if head.get("type") != "VisionTransformerUpHead":
        raise ConversionError(f"{name} is a {head.get('type')!r}; SETR-naive/PUP use VisionTransformerUpHead.")
    if head.get("upsampling_method", "bilinear") != "bilinear" or head.get("align_corners", False):
        raise ConversionError(f"{name}: only bilinear upsampling with align_corners=False is supported.")
    num_conv, num_up = int(head.get("num_conv", 1)), int(head.get("num_upsampe_layer", 1))
    kernel = 3 if head.get("conv3x3_conv1x1", True) else 1
    if num_conv == 2 and num_up in (1, 2):
        # conv_0 -> BN -> ReLU [-> x4] -> conv_1 (classifier) -> resize to img_size.
        return {"num_convs": 1, "kernel_size": kernel, "up_scale": 4 if num_up == 2 else 1, "before_last": False}
    if num_conv == 4 and num_up == 4:
        # PUP: 4 x (3x3 conv -> BN -> ReLU), x2 after the first three, conv_4 (classifier), then the last x2.
        return {"num_convs": 4, "kernel_size": 3, "up_scale": 2, "before_last": True}
    raise ConversionError(
        f"{name}: VisionTransformerUpHead with num_conv={num_conv}, num_upsampe_layer={num_up} is not a SETR head "
        "(supported: num_conv=2 with num_upsampe_layer 1 or 2, num_conv=4 with num_upsampe_layer=4)."
    )


# The original heads' hidden width is fixed in its code.
_ORIGINAL_HIDDEN = 256


def config_from_original(cfg: dict, keep_auxiliary_heads: bool = True) -> tuple[SetrConfig, SetrImageProcessor, dict]:
    """SetrConfig, image processor and key-mapping plan described by an original SETR config."""
    try:
        model = cfg["model"]
        backbone, head = model["backbone"], model["decode_head"]
    except KeyError as error:
        raise ConversionError(f"The SETR config has no {error} entry; is it a SETR config?") from error
    backbone_type = backbone.get("type")
    if backbone_type not in ("VisionTransformer", "VIT_MLA"):
        raise ConversionError(f"Unsupported backbone {backbone_type!r}: expected VisionTransformer or VIT_MLA.")
    if backbone.get("hybrid_backbone") is not None:
        raise ConversionError("Hybrid (CNN + ViT) backbones are not supported.")
    width = int(backbone.get("embed_dim", 1024))
    num_layers = int(backbone.get("depth", 24))
    values = dict(
        hidden_size=width,
        num_hidden_layers=num_layers,
        num_attention_heads=int(backbone.get("num_heads", 16)),
        intermediate_size=int(backbone.get("mlp_ratio", 4.0) * width),
        patch_size=int(backbone.get("patch_size", 16)),
        image_size=int(backbone.get("img_size", 384)),
        num_channels=int(backbone.get("in_chans", 3)),
        qkv_bias=bool(backbone.get("qkv_bias", True)),
        layer_norm_eps=1e-6,
        hidden_dropout_prob=float(backbone.get("drop_rate", 0.1)),
        attention_probs_dropout_prob=float(backbone.get("attn_drop_rate", 0.0)),
        drop_path_rate=float(backbone.get("drop_path_rate", 0.0)),
        patch_embeddings_bias=True,
        decoder_conv_bias=True,
        position_embedding_interpolation="bilinear",
        num_labels=int(head["num_classes"]),
    )
    if backbone.get("qk_scale") is not None:
        raise ConversionError("A custom qk_scale is not supported.")
    _check_loss(head, "decode_head", weight=1.0)
    auxiliary, indexed = _auxiliary_list(model)
    if not keep_auxiliary_heads:
        auxiliary = []
    plan = {"source": "original", "aux_indexed": indexed, "num_aux": len(auxiliary)}
    if backbone_type == "VisionTransformer":
        up = _original_up_head(head, "decode_head")
        plan.update(head_type="up", decoder_convs=up["num_convs"])
        values.update(
            use_cls_token=True,
            decoder_type="pup" if up["num_convs"] == 4 else "naive",
            decoder_layer_index=int(head.get("in_index", -1)) % num_layers,
            decoder_hidden_size=_ORIGINAL_HIDDEN,
            decoder_num_convs=up["num_convs"],
            decoder_kernel_size=up["kernel_size"],
            decoder_up_scale=up["up_scale"],
            decoder_classifier_before_last_upsample=up["before_last"],
        )
        aux_heads = [_original_up_head(aux, f"auxiliary_head[{k}]") for k, aux in enumerate(auxiliary)]
        plan["aux_convs"] = [aux["num_convs"] for aux in aux_heads]
        layers = [int(aux.get("in_index", -1)) % num_layers for aux in auxiliary]
        if aux_heads:
            if any(aux["before_last"] for aux in aux_heads):
                raise ConversionError("PUP-style auxiliary heads (num_conv=4) are not supported.")
            values.update(
                auxiliary_hidden_size=_ORIGINAL_HIDDEN,
                auxiliary_num_convs=1,
                auxiliary_kernel_size=_single([aux["kernel_size"] for aux in aux_heads], "kernel size"),
                auxiliary_up_scale=_single([aux["up_scale"] for aux in aux_heads], "upsampling"),
            )
    else:
        if head.get("type") != "VIT_MLAHead":
            raise ConversionError(f"A VIT_MLA backbone needs a VIT_MLAHead, the config has {head.get('type')!r}.")
        mla_index = [int(index) % num_layers for index in backbone.get("mla_index", (5, 11, 17, 23))]
        if len(mla_index) != 4:
            raise ConversionError(f"The original MLA aggregates exactly 4 layers, mla_index={mla_index}.")
        mla_channels = int(backbone.get("mla_channels", 256))
        if int(head.get("mla_channels", 256)) != mla_channels:
            raise ConversionError("decode_head.mla_channels differs from backbone.mla_channels.")
        plan.update(head_type="mla")
        values.update(
            use_cls_token=False,
            decoder_type="mla",
            mla_layer_indices=mla_index,
            mla_hidden_size=mla_channels,
            mla_head_hidden_size=int(head.get("mlahead_channels", 128)),
            mla_classifier_kernel_size=3,
            mla_align_corners=True,
        )
        layers = []
        for k, aux in enumerate(auxiliary):
            if aux.get("type") != "VIT_MLA_AUXIHead" or int(aux.get("in_channels", 256)) != mla_channels:
                raise ConversionError(
                    f"auxiliary_head[{k}]: only VIT_MLA_AUXIHead on the MLA outputs (in_channels={mla_channels}) "
                    "is supported."
                )
            layers.append(mla_index[int(aux.get("in_index", 0)) % 4])
        if auxiliary:
            values["auxiliary_classifier_bias"] = False
    for k, aux in enumerate(auxiliary):
        if aux.get("align_corners", False):
            raise ConversionError(f"auxiliary_head[{k}].align_corners=True is not supported.")
    if auxiliary:
        values["auxiliary_loss_weight"] = _single(
            [_check_loss(aux, f"auxiliary_head[{k}]") for k, aux in enumerate(auxiliary)], "loss weight"
        )
    values["auxiliary_layer_indices"] = layers
    try:
        config = SetrConfig(**values)
    except (ValueError, TypeError) as error:
        raise ConversionError(f"The SETR config does not describe a supported model: {error}") from error
    return config, _processor_from(cfg, model), plan


def _original_up_head_rules(source: str, target: str, num_convs: int) -> list:
    return [
        (rf"{source}\.norm\.(weight|bias)", rf"{target}.layernorm.\1"),
        *[(rf"{source}\.conv_{i}\.(weight|bias)", rf"{target}.stages.{i}.conv.\1") for i in range(num_convs)],
        *[(rf"{source}\.syncbn_fc_{i}\.{_BN}", rf"{target}.stages.{i}.norm.\1") for i in range(num_convs)],
        (rf"{source}\.conv_{num_convs}\.(weight|bias)", rf"{target}.classifier.\1"),
    ]


def convert_original_state_dict(state_dict: dict[str, torch.Tensor], config: SetrConfig, plan: dict) -> dict:
    """Maps the original SETR keys (`backbone.blocks.*`, `backbone.mla.*`, `decode_head.conv_<i>` ...) to ours."""
    rules, drop = _encoder_rules("original", r"backbone", "blocks", "proj", config.use_cls_token)
    # BaseDecodeHead creates `conv_seg` in every head, but SETR's heads never call it.
    drop += [r"decode_head\.conv_seg\.(weight|bias)", r"auxiliary_head(\.\d+)?\.conv_seg\.(weight|bias)"]
    if plan["head_type"] == "up":
        rules += _original_up_head_rules(r"decode_head", "decode_head", plan["decoder_convs"])
        for k in range(plan["num_aux"]):
            rules += _original_up_head_rules(_aux_prefix(k, plan["aux_indexed"]), f"auxiliary_heads.{k}",
                                             plan["aux_convs"][k])
    else:
        # mla_p2..mla_p5 hold layers mla_index[0..3]; mla_p<k> is our stream k-2.
        rules += [
            _rule(r"backbone\.norm_(\d)\.(weight|bias)", lambda m: f"decode_head.aggregation.layernorms.{m[1]}.{m[2]}"),
            _rule(r"backbone\.mla\.mla_p([2-5])_1x1\.0\.weight",
                  lambda m: f"decode_head.aggregation.projections.{int(m[1]) - 2}.conv.weight"),
            _rule(rf"backbone\.mla\.mla_p([2-5])_1x1\.1\.{_BN}",
                  lambda m: f"decode_head.aggregation.projections.{int(m[1]) - 2}.norm.{m[2]}"),
            _rule(r"backbone\.mla\.mla_p([2-5])\.0\.weight",
                  lambda m: f"decode_head.aggregation.aggregations.{int(m[1]) - 2}.conv.weight"),
            _rule(rf"backbone\.mla\.mla_p([2-5])\.1\.{_BN}",
                  lambda m: f"decode_head.aggregation.aggregations.{int(m[1]) - 2}.norm.{m[2]}"),
            _rule(r"decode_head\.mlahead\.head([2-5])\.([03])\.weight",
                  lambda m: f"decode_head.stream_heads.{int(m[1]) - 2}.{int(m[2]) // 3}.conv.weight"),
            _rule(rf"decode_head\.mlahead\.head([2-5])\.([14])\.{_BN}",
                  lambda m: f"decode_head.stream_heads.{int(m[1]) - 2}.{int(m[2]) // 3}.norm.{m[3]}"),
            (r"decode_head\.cls\.(weight|bias)", r"decode_head.classifier.\1"),
        ]
        for k in range(plan["num_aux"]):
            rules.append((rf"{_aux_prefix(k, plan['aux_indexed'])}\.aux\.weight", f"auxiliary_heads.{k}.classifier.weight"))
    if plan["num_aux"] == 0:
        drop.append(r"auxiliary_head\..*")
    return rename_keys(state_dict, rules, drop, source_name="original SETR checkpoint")


# --------------------------------------------------------------------------------------------------------------------


def convert_setr_checkpoint(
    checkpoint_path: str | os.PathLike,
    config_path: str | os.PathLike,
    source: str = "original",
    allow_unsafe_pickle: bool = False,
    keep_auxiliary_heads: bool = True,
) -> tuple[SetrForSemanticSegmentation, SetrImageProcessor]:
    """Builds our model (eval mode) and image processor from a SETR checkpoint and its `.py` config.

    `source="original"`: a fudan-zvg/SETR checkpoint (`{'meta', 'state_dict'}` as mmcv 1.x saves it, keys
    `backbone.blocks.*`, `decode_head.conv_0` ...) with its config. `source="mmseg"`: an mmsegmentation 1.x checkpoint
    with its config. The auxiliary heads are converted too (they are part of the trained model and used by the
    training loss) unless `keep_auxiliary_heads=False`, which drops their weights and sets
    `auxiliary_layer_indices=[]`. Every other key must be mapped; unknown or missing keys and shape mismatches raise
    `ConversionError` naming them.
    """
    if source not in ("original", "mmseg"):
        raise ConversionError(f"Unknown --source {source!r} for SETR; expected 'original' or 'mmseg'.")
    if config_path is None:
        raise ConversionError(f"--config is required for --source {source} (the model's .py config).")
    cfg = load_python_config(config_path)
    reader = config_from_original if source == "original" else config_from_mmseg
    config, processor, plan = reader(cfg, keep_auxiliary_heads=keep_auxiliary_heads)
    checkpoint = load_checkpoint(checkpoint_path, allow_unsafe_pickle=allow_unsafe_pickle)
    if not isinstance(checkpoint, dict):
        raise ConversionError(f"{str(checkpoint_path)!r} does not hold a state dict (got {type(checkpoint).__name__}).")
    state_dict = checkpoint.get("state_dict", checkpoint)
    if not isinstance(state_dict, dict) or not all(isinstance(v, torch.Tensor) for v in state_dict.values()):
        raise ConversionError(f"{str(checkpoint_path)!r} has no tensor `state_dict`.")
    # Training wrappers (DataParallel / DistributedDataParallel) prefix every key with `module.`.
    if state_dict and all(key.startswith("module.") for key in state_dict):
        state_dict = {key[len("module."):]: value for key, value in state_dict.items()}
    meta = checkpoint.get("meta") or {}
    classes = meta.get("dataset_meta", {}).get("classes") if source == "mmseg" else meta.get("CLASSES")
    _dataset_labels(config, classes)
    if source == "original":
        converted = convert_original_state_dict(state_dict, config, plan)
    else:
        if config.patch_embeddings_bias != ("backbone.patch_embed.projection.bias" in state_dict):
            config.patch_embeddings_bias = not config.patch_embeddings_bias
        converted = convert_mmseg_state_dict(state_dict, config, plan)
    model = SetrForSemanticSegmentation(config)
    load_state_dict_strict(model, converted)
    test_cfg = mmcv_test_cfg(cfg)
    protocol = protocol_from_side_file(test_cfg, processor, f"test_cfg of {Path(config_path).name}")
    apply_test_protocol(model, processor, protocol)
    return model.eval(), processor


__all__ = [
    "convert_setr_checkpoint",
    "config_from_mmseg",
    "config_from_original",
    "convert_mmseg_state_dict",
    "convert_original_state_dict",
]
