"""Tiny configurations of the four architectures: the one definition used by the tests, by the `tiny` preset of
`examples/train.py` (smoke runs and CPU experiments) and by the benchmarks.

    from hf_segmodels.testing_utils import tiny_config, tiny_model

    config = tiny_config("setr", num_labels=3, decoder_type="naive")   # any config field can be overridden
    model = tiny_model("segformer")                                    # seeded, in eval mode

Each tiny model runs a forward pass on a 32 x 32 (ViTs, patch 8) or 64 x 64 image in milliseconds. MaskFormer's
backbone and transformer decoder are transformers configs of their own (`tiny_maskformer_backbone`,
`tiny_maskformer_decoder`): pass `backbone_config=` / `decoder_config=` to change them.

Also here: `naive_sliding_window`, the one-window-at-a-time loop of mmsegmentation's `slide_inference`, the reference
that tests and benchmarks compare `infer_logits(window=...)` with.
"""

import torch
from transformers import PreTrainedConfig

ARCHITECTURES = ("segformer", "segmenter", "setr", "maskformer")
MASKFORMER_STAGES = ["stage1", "stage2", "stage3", "stage4"]
DEFAULT_NUM_LABELS = 4

# A plain ViT of 2 x 32-wide layers in 8 x 8 patches (Segmenter, SETR).
_VIT = dict(
    hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, image_size=32, patch_size=8
)
_TINY = {
    "segformer": dict(hidden_sizes=[8, 16, 24, 32], num_attention_heads=[1, 2, 3, 4], depths=[1, 2, 1, 1],
                      decoder_hidden_size=16),
    "segmenter": dict(**_VIT, decoder_hidden_size=32, decoder_num_attention_heads=2, decoder_num_hidden_layers=2),
    # 4 layers: room for SETR's auxiliary heads / MLA streams at distinct depths
    "setr": dict(**{**_VIT, "num_hidden_layers": 4}, decoder_type="pup", decoder_hidden_size=16,
                 auxiliary_hidden_size=16, mla_hidden_size=16, mla_head_hidden_size=8),
    "maskformer": dict(fpn_feature_size=32, mask_feature_size=32),
}  # fmt: skip


def tiny_maskformer_backbone(kind: str = "resnet", **overrides) -> PreTrainedConfig:
    """A 4-stage ResNet (`kind="resnet"`) or Swin (`kind="swin"`) backbone config for a tiny MaskFormer."""
    from transformers import ResNetConfig, SwinConfig

    if kind == "resnet":
        values = dict(embedding_size=16, hidden_sizes=[16, 32, 48, 64], depths=[1, 2, 1, 1])
        return ResNetConfig(**{**values, "out_features": MASKFORMER_STAGES, **overrides})
    if kind == "swin":
        values = dict(embed_dim=16, depths=[1, 2, 1, 1], num_heads=[1, 2, 2, 4], window_size=4, image_size=64)
        return SwinConfig(**{**values, "out_features": MASKFORMER_STAGES, **overrides})
    raise ValueError(f"Unknown tiny MaskFormer backbone {kind!r}; expected 'resnet' or 'swin'.")


def tiny_maskformer_decoder(num_queries: int = 8, **overrides) -> PreTrainedConfig:
    """A 3-layer, 32-wide DETR decoder config with `num_queries` queries for a tiny MaskFormer."""
    from transformers import DetrConfig

    values = dict(d_model=32, decoder_layers=3, decoder_attention_heads=4, decoder_ffn_dim=64, use_timm_backbone=False)
    return DetrConfig(**{**values, "num_queries": num_queries, **overrides})


def _config_class(architecture: str) -> type:
    if architecture == "segformer":
        from .segformer import SegformerConfig

        return SegformerConfig
    if architecture == "segmenter":
        from .segmenter import SegmenterConfig

        return SegmenterConfig
    if architecture == "setr":
        from .setr import SetrConfig

        return SetrConfig
    if architecture == "maskformer":
        from .maskformer import MaskFormerConfig

        return MaskFormerConfig
    raise ValueError(f"Unknown architecture {architecture!r}; expected one of {ARCHITECTURES}.")


def tiny_config(architecture: str, num_labels: int = DEFAULT_NUM_LABELS, **overrides) -> PreTrainedConfig:
    """The tiny config of `architecture` ("segformer", "segmenter", "setr" or "maskformer") with `num_labels` classes;
    `overrides` replace or add config fields (MaskFormer: `backbone_config` defaults to `tiny_maskformer_backbone()`,
    `decoder_config` to `tiny_maskformer_decoder()`)."""
    config_class = _config_class(architecture)
    values = {**_TINY[architecture], "num_labels": num_labels, **overrides}
    if architecture == "maskformer":
        values.setdefault("backbone_config", tiny_maskformer_backbone())
        values.setdefault("decoder_config", tiny_maskformer_decoder())
    return config_class(**values)


def model_class(architecture: str) -> type:
    """The segmentation model class of `architecture`."""
    from . import (
        MaskFormerForUniversalSegmentation,
        SegformerForSemanticSegmentation,
        SegmenterForSemanticSegmentation,
        SetrForSemanticSegmentation,
    )

    classes = {
        "segformer": SegformerForSemanticSegmentation,
        "segmenter": SegmenterForSemanticSegmentation,
        "setr": SetrForSemanticSegmentation,
        "maskformer": MaskFormerForUniversalSegmentation,
    }
    if architecture not in classes:
        raise ValueError(f"Unknown architecture {architecture!r}; expected one of {ARCHITECTURES}.")
    return classes[architecture]


def tiny_model(architecture: str, num_labels: int = DEFAULT_NUM_LABELS, seed: int = 0, **overrides) -> torch.nn.Module:
    """A randomly initialised (`torch.manual_seed(seed)`) model of `tiny_config(architecture, ...)`, in eval mode."""
    config = tiny_config(architecture, num_labels, **overrides)
    torch.manual_seed(seed)
    return model_class(architecture)(config).eval()


def naive_sliding_window(model, pixel_values: torch.Tensor, window: tuple[int, int], stride: tuple[int, int]):
    """The loop of mmsegmentation's `slide_inference`: one window per `model.full_resolution_logits` call, scores and
    counts added window by window (the reference of `infer_logits(window=..., stride=...)`)."""
    from .inference import _window_starts

    batch, _, height, width = pixel_values.shape
    window_h, window_w = min(window[0], height), min(window[1], width)
    summed = count = None
    for top in _window_starts(height, window_h, stride[0]):
        for left in _window_starts(width, window_w, stride[1]):
            logits = model.full_resolution_logits(pixel_values[:, :, top : top + window_h, left : left + window_w])
            if summed is None:
                summed = logits.new_zeros(batch, logits.shape[1], height, width)
                count = logits.new_zeros(1, 1, height, width)
            summed[:, :, top : top + window_h, left : left + window_w] += logits
            count[:, :, top : top + window_h, left : left + window_w] += 1
    return summed / count


__all__ = [
    "ARCHITECTURES",
    "model_class",
    "naive_sliding_window",
    "tiny_config",
    "tiny_maskformer_backbone",
    "tiny_maskformer_decoder",
    "tiny_model",
]
