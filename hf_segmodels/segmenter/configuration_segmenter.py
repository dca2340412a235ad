"""Segmenter configuration (arXiv 2105.05633, rstrudel/segmenter)."""

from huggingface_hub.dataclasses import strict
from transformers import PreTrainedConfig

from ..configuration_utils import check_choices, check_id2label, check_vit_encoder
from ..presets import VIT_SIZES, PresetConfigMixin, Release
from ..protocol import normalize_test_protocol
from ..remote_code import RemoteCodeConfigMixin

# Encoders of rstrudel/segmenter's `segm/config.yml`: ViT-Ti / S / B / L, head size 64, MLP 4x the width.
ENCODER_SIZES = {name: VIT_SIZES[name] for name in ("tiny", "small", "base", "large")}

# Dataset defaults of the original training / evaluation (segm/config.yml): classes, crop = window, stride.
DATASETS = {
    "ade20k": {"num_labels": 150, "crop_size": 512, "window_stride": 512},
    "pascal_context": {"num_labels": 59, "crop_size": 480, "window_stride": 320},
    "cityscapes": {"num_labels": 19, "crop_size": 768, "window_stride": 512},
}

NORMALIZATION = {
    "vit": ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),
    "deit": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
}

# The released models (hf_segmodels/zoo/zoo.json) by their zoo names: the original variant and dataset of each, and
# where the release differs from them. The ADE20K ViT-L run is `seg_large_mask_640` (640 crops); the Pascal Context
# release predicts 60 classes (`n_cls = 60` in segm/data/pascal_context.py: 59 + background; `DATASETS` keeps its 59
# for the original names, which give what they always gave).
SEGMENTER_RELEASES = {
    "segmenter-t16-ade": Release("seg_tiny_mask", {"dataset": "ade20k"}),
    "segmenter-s16-ade": Release("seg_small_mask", {"dataset": "ade20k"}),
    "segmenter-b16-ade": Release("seg_base_mask", {"dataset": "ade20k"}),
    "segmenter-b8-linear-ade": Release("seg_base_linear_8", {"dataset": "ade20k"}),
    "segmenter-l16-ade": Release("seg_large_mask", {"dataset": "ade20k", "image_size": 640}),
    "segmenter-b16-deit-linear-ade": Release("seg_base_deit_linear", {"dataset": "ade20k"}),
    "segmenter-b16-deit-ade": Release("seg_base_deit_mask", {"dataset": "ade20k"}),
    "segmenter-l16-pascal-context": Release("seg_large_mask", {"dataset": "pascal_context", "num_labels": 60}),
    "segmenter-l16-cityscapes": Release("seg_large_mask", {"dataset": "cityscapes"}),
}


@strict
class SegmenterConfig(PresetConfigMixin, RemoteCodeConfigMixin, PreTrainedConfig):
    r"""
    Configuration of [`SegmenterForSemanticSegmentation`]: a plain ViT encoder (optionally DeiT-distilled) and a
    linear or Mask-Transformer decoder. Encoder fields use transformers' `ViTConfig` names.

    Args:
        hidden_size, num_hidden_layers, num_attention_heads, intermediate_size, hidden_act, layer_norm_eps,
        qkv_bias, image_size, patch_size, num_channels, hidden_dropout_prob, attention_probs_dropout_prob,
        initializer_range: the ViT encoder, as in `ViTConfig`. `image_size` (int or (height, width)) is the training
            crop: the position embeddings cover `image_size // patch_size` and are resized for other inputs.
        drop_path_rate (`float`, defaults to 0.1): stochastic depth of the encoder (linearly increasing per layer).
        distilled (`bool`): DeiT-distilled encoder with an extra distillation token after the cls token.
        use_cls_token / patch_embeddings_bias / use_final_layer_norm: encoder details (all `True` in the original;
            mmsegmentation's port has no patch-embedding bias).
        position_embedding_interpolation (`str`, "bilinear" or "bicubic"): how position embeddings are resized
            (original: bilinear; mmsegmentation's port: bicubic).
        decoder_type (`str`): "linear" or "mask_transformer".
        decoder_num_hidden_layers, decoder_hidden_size, decoder_num_attention_heads, decoder_intermediate_size:
            the Mask Transformer (original: 2 layers, width = encoder width, `width // 64` heads, MLP 4x).
        decoder_dropout, decoder_drop_path_rate, decoder_layer_norm_eps: decoder regularisation and LayerNorm eps.
        output_upsampling (`str`): "pad_crop" (original: the decoder output is upsampled to the zero-padded input
            size and cropped) or "resize" (mmsegmentation's port: resized straight to the input size).
        semantic_loss_ignore_index (`int`, defaults to 255): label ignored by the loss.
        test_protocol (`dict`, *optional*): the test protocol the checkpoint was evaluated with (resize, whole or
            sliding-window inference, multi-scale + flip setting); see `hf_segmodels.protocol`. `infer_logits` and
            `pipeline("image-segmentation")` follow it. None (the default) means whole-image inference.

    `SegmenterConfig.from_preset(name)` gives a released model by its zoo name (`preset_names()`, e.g.
    `"segmenter-l16-ade"`: its dataset's classes, crop and test protocol); the original names
    (`preset_aliases()`, e.g. `"seg_large_mask"`, as `from_original_variant`) are accepted as aliases.

    Example:

    ```python
    >>> from hf_segmodels import SegmenterConfig, SegmenterForSemanticSegmentation
    >>> config = SegmenterConfig.from_preset("segmenter-b16-ade")
    >>> model = SegmenterForSemanticSegmentation(config)
    ```"""

    model_type = "segmodels_segmenter"
    _PRESET_KIND = "Segmenter"
    _RELEASES = SEGMENTER_RELEASES
    _ALIAS_HINT = (
        "'seg_<tiny|small|base|large>[_deit]_<mask|linear>[_8|_32]' (e.g. 'seg_large_mask', with `dataset=` "
        "'ade20k' (default), 'pascal_context', 'cityscapes' or None), as `from_original_variant`"
    )

    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    hidden_act: str = "gelu"
    hidden_dropout_prob: float | int = 0.0
    attention_probs_dropout_prob: float | int = 0.0
    drop_path_rate: float | int = 0.1
    initializer_range: float | int = 0.02
    layer_norm_eps: float | int = 1e-5
    image_size: int | list[int] | tuple[int, int] = 512
    patch_size: int = 16
    num_channels: int = 3
    qkv_bias: bool = True
    distilled: bool = False
    use_cls_token: bool = True
    patch_embeddings_bias: bool = True
    use_final_layer_norm: bool = True
    position_embedding_interpolation: str = "bilinear"
    decoder_type: str = "mask_transformer"
    decoder_num_hidden_layers: int = 2
    decoder_hidden_size: int | None = None
    decoder_num_attention_heads: int | None = None
    decoder_intermediate_size: int | None = None
    decoder_dropout: float | int = 0.1
    decoder_drop_path_rate: float | int = 0.0
    decoder_layer_norm_eps: float | int = 1e-5
    output_upsampling: str = "pad_crop"
    semantic_loss_ignore_index: int = 255
    test_protocol: dict | None = None

    def __post_init__(self, **kwargs):
        self.test_protocol = normalize_test_protocol(self.test_protocol)
        if self.decoder_hidden_size is None:
            self.decoder_hidden_size = self.hidden_size
        if self.decoder_num_attention_heads is None:
            # The original factory derives the decoder's heads from its width, not from the encoder.
            self.decoder_num_attention_heads = max(self.decoder_hidden_size // 64, 1)
        if self.decoder_intermediate_size is None:
            self.decoder_intermediate_size = 4 * self.decoder_hidden_size
        if isinstance(self.image_size, list):
            self.image_size = tuple(self.image_size)
        super().__post_init__(**kwargs)

    def validate_architecture(self):
        super().validate_architecture()
        check_id2label(self)
        choices = {
            "decoder_type": ("linear", "mask_transformer"),
            "output_upsampling": ("pad_crop", "resize"),
            "position_embedding_interpolation": ("bilinear", "bicubic"),
        }
        check_choices(self, choices)
        check_vit_encoder(self)

    @classmethod
    def from_original_variant(cls, name: str, dataset: str | None = "ade20k", **kwargs) -> "SegmenterConfig":
        """Config of a model of the original repository by its name: `seg_{tiny,small,base,large}_{mask,linear}`
        with optional patch-size suffix `_8` / `_32` (default 16), e.g. `seg_large_mask`, `seg_base_linear_8`,
        `seg_small_mask_32`; `seg_base_deit_mask` / `seg_tiny_deit_linear` ... for the DeiT-distilled encoders.
        These names are the aliases of `from_preset`, whose zoo names (`"segmenter-l16-ade"`) give the released
        models with their dataset, crop and test protocol.

        `dataset` ("ade20k", "pascal_context", "cityscapes" or None) sets `num_labels` and the crop size; `kwargs`
        override any field (e.g. `num_labels=5`).
        """
        return cls._from_variant_fields(_variant_fields(name), dataset, **kwargs)

    @classmethod
    def _alias_names(cls) -> list[str]:
        return [
            "_".join(["seg", size, *(["deit"] if deit else []), decoder, *([str(patch)] if patch != 16 else [])])
            for size in ENCODER_SIZES
            for deit in (False, True)
            for decoder in ("mask", "linear")
            for patch in (16, 8, 32)
        ]

    @classmethod
    def _from_alias(cls, name: str, dataset: str | None = "ade20k", **kwargs) -> "SegmenterConfig | None":
        try:
            fields = _variant_fields(name)
        except ValueError:
            return None
        return cls._from_variant_fields(fields, dataset, **kwargs)

    @classmethod
    def _from_variant_fields(cls, fields: dict, dataset: str | None, **kwargs) -> "SegmenterConfig":
        values = dict(fields)
        if dataset is not None:
            if dataset not in DATASETS:
                raise ValueError(f"Unknown dataset {dataset!r}; known: {sorted(DATASETS)} (or None).")
            values["num_labels"] = DATASETS[dataset]["num_labels"]
            values["image_size"] = DATASETS[dataset]["crop_size"]
        values.update(kwargs)
        return cls(**values)


def _variant_fields(name: str) -> dict:
    """The config fields an original variant name sets (raises `ValueError` for other names)."""
    parts = name.split("_")
    if len(parts) < 3 or parts[0] != "seg":
        raise ValueError(f"Unknown Segmenter variant {name!r}; expected e.g. 'seg_base_mask' or 'seg_large_linear_8'.")
    patch_size = 16
    if parts[-1].isdigit():
        patch_size = int(parts.pop())
    distilled = "deit" in parts
    parts = [p for p in parts if p != "deit"]
    if len(parts) != 3 or parts[1] not in ENCODER_SIZES or parts[2] not in ("mask", "linear"):
        raise ValueError(
            f"Unknown Segmenter variant {name!r}: size must be one of {sorted(ENCODER_SIZES)} and the decoder "
            "'mask' or 'linear'."
        )
    if patch_size not in (8, 16, 32):
        raise ValueError(f"Segmenter variants use patch size 8, 16 or 32, got {patch_size} in {name!r}.")
    return {
        **ENCODER_SIZES[parts[1]].config_fields(),
        "patch_size": patch_size,
        "distilled": distilled,
        "decoder_type": "mask_transformer" if parts[2] == "mask" else "linear",
    }


__all__ = ["SegmenterConfig"]
