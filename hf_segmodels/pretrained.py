"""Loading ImageNet-pretrained ViT / DeiT weights into our `ViTEncoder`, as the papers initialise their encoders:
from a transformers checkpoint directory (ViTModel / DeiTModel layout, e.g. google/vit-base-patch16-384,
facebook/deit-base-distilled-patch16-384) or from a timm ViT state dict (`.pth`, `.bin`, `.safetensors`)."""

import math
import os
from pathlib import Path

import torch

from .conversion_utils import ConversionError, load_checkpoint, load_state_dict_strict, rename_keys
from .layers import ViTEncoder, resize_position_embeddings

_TIMM_RULES = [
    (r"cls_token", "embeddings.cls_token"),
    (r"dist_token", "embeddings.distillation_token"),
    (r"pos_embed", "embeddings.position_embeddings"),
    (r"patch_embed\.proj\.(weight|bias)", r"embeddings.patch_embeddings.\1"),
    (r"blocks\.(\d+)\.norm1\.(weight|bias)", r"layers.\1.layernorm_before.\2"),
    (r"blocks\.(\d+)\.norm2\.(weight|bias)", r"layers.\1.layernorm_after.\2"),
    (r"blocks\.(\d+)\.attn\.qkv\.(weight|bias)", r"layers.\1.attention.qkv.\2"),
    (r"blocks\.(\d+)\.attn\.proj\.(weight|bias)", r"layers.\1.attention.proj.\2"),
    (r"blocks\.(\d+)\.mlp\.(fc1|fc2)\.(weight|bias)", r"layers.\1.mlp.\2.\3"),
    (r"norm\.(weight|bias)", r"layernorm.\1"),
]
# ImageNet classifier heads and pooler are not part of a segmentation encoder.
_TIMM_DROP = [r"head\..*", r"head_dist\..*", r"pre_logits\..*", r"fc_norm\..*"]

_TRANSFORMERS_RULES = [
    (r"embeddings\.(cls_token|distillation_token|position_embeddings)", r"embeddings.\1"),
    (r"embeddings\.patch_embeddings\.projection\.(weight|bias)", r"embeddings.patch_embeddings.\1"),
    (r"layers\.(\d+)\.(layernorm_before|layernorm_after)\.(weight|bias)", r"layers.\1.\2.\3"),
    (r"layers\.(\d+)\.attention\.qkv\.(weight|bias)", r"layers.\1.attention.qkv.\2"),
    (r"layers\.(\d+)\.attention\.o_proj\.(weight|bias)", r"layers.\1.attention.proj.\2"),
    (r"layers\.(\d+)\.mlp\.(fc1|fc2)\.(weight|bias)", r"layers.\1.mlp.\2.\3"),
    (r"layernorm\.(weight|bias)", r"layernorm.\1"),
]
_TRANSFORMERS_DROP = [r"pooler\..*", r"embeddings\.mask_token"]


def _fuse_transformers_qkv(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """transformers keeps q_proj / k_proj / v_proj separate; our encoder has one fused `qkv` (rows q, k, v)."""
    fused, rest = {}, {}
    for key, tensor in state_dict.items():
        parts = key.split(".")
        if len(parts) == 5 and parts[0] == "layers" and parts[2] == "attention" and parts[3] in ("q_proj", "k_proj", "v_proj"):
            fused.setdefault((parts[1], parts[4]), {})[parts[3]] = tensor
        else:
            rest[key] = tensor
    for (layer, kind), projections in fused.items():
        if set(projections) != {"q_proj", "k_proj", "v_proj"}:
            raise ConversionError(f"Layer {layer} has incomplete q/k/v {kind}s: {sorted(projections)}.")
        rest[f"layers.{layer}.attention.qkv.{kind}"] = torch.cat(
            [projections["q_proj"], projections["k_proj"], projections["v_proj"]]
        )
    return rest


def _read_source(source) -> tuple[dict[str, torch.Tensor], str]:
    if isinstance(source, dict):
        return source, "timm"
    path = Path(source)
    if path.is_dir():
        from transformers import AutoModel

        if not (path / "config.json").is_file():
            raise ConversionError(f"{str(path)!r} is a directory without config.json; expected a transformers ViT/DeiT.")
        model = AutoModel.from_pretrained(path, add_pooling_layer=False)
        return _fuse_transformers_qkv(model.state_dict()), "transformers"
    if not path.is_file():
        raise ConversionError(f"Pretrained encoder weights not found: {str(path)!r} is neither a directory nor a file.")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(path), "timm"
    state_dict = load_checkpoint(path)
    for key in ("model", "state_dict"):
        if isinstance(state_dict, dict) and isinstance(state_dict.get(key), dict):
            state_dict = state_dict[key]
    return state_dict, "timm"


def load_pretrained_vit(encoder: ViTEncoder, source: str | os.PathLike | dict) -> None:
    """Loads ImageNet-pretrained weights into `encoder`, resizing the position embeddings from the checkpoint's
    (square) grid to the encoder's training grid with the encoder's interpolation mode.

    Raises `ConversionError` naming unknown keys, missing keys or shape mismatches (e.g. a different width).
    """
    state_dict, kind = _read_source(source)
    if kind == "timm":
        converted = rename_keys(state_dict, _TIMM_RULES, _TIMM_DROP, source_name="timm ViT state dict")
    else:
        converted = rename_keys(
            state_dict, _TRANSFORMERS_RULES, _TRANSFORMERS_DROP, source_name="transformers ViT/DeiT checkpoint"
        )
    embeddings = encoder.embeddings
    source_distilled = "embeddings.distillation_token" in converted
    if embeddings.distillation_token is not None and not source_distilled:
        raise ConversionError("The encoder is distilled (DeiT) but the pretrained weights have no distillation token.")
    # Keep the extra positions the encoder has (cls, then distillation), in the checkpoint's order.
    positions = converted.pop("embeddings.position_embeddings")
    source_extra = 1 + int(source_distilled)
    keep = [index for index, present in enumerate((embeddings.cls_token is not None,
                                                    embeddings.distillation_token is not None)) if present]
    positions = torch.cat([positions[:, keep], positions[:, source_extra:]], dim=1)
    grid_tokens = positions.shape[1] - len(keep)
    side = math.isqrt(grid_tokens)
    if side * side != grid_tokens:
        raise ConversionError(f"Pretrained position embeddings with {grid_tokens} grid positions are not a square grid.")
    if (side, side) != embeddings.grid_size:
        positions = resize_position_embeddings(positions, len(keep), (side, side), embeddings.grid_size,
                                               embeddings.interpolation)
    converted["embeddings.position_embeddings"] = positions
    if embeddings.distillation_token is None:
        converted.pop("embeddings.distillation_token", None)
    if embeddings.cls_token is None:
        converted.pop("embeddings.cls_token", None)
    if encoder.layernorm is None:
        converted.pop("layernorm.weight", None)
        converted.pop("layernorm.bias", None)
    load_state_dict_strict(encoder, converted)
