"""Segmenter configuration (arXiv 2105.05633, rstrudel/segmenter)."""

from huggingface_hub.dataclasses import strict
from transformers import PreTrainedConfig

from ..configuration_utils import check_choices, check_id2label, check_vit_encoder
from ..protocol import normalize_test_protocol
from ..remote_code import RemoteCodeConfigMixin

# Encoders of rstrudel/segmenter's `segm/config.yml` (width, heads, layers); MLP size is 4x width, head size 64.
ENCODER_SIZES = {
    "tiny": (192, 3, 12),
    "small": (384, 6, 12),
    "base": (768, 12, 12),
    "large": (1024, 16, 24),
}

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


@strict
class SegmenterConfig(RemoteCodeConfigMixin, PreTrainedConfig):
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

    Example:

    ```python
    >>> from hf_segmodels import SegmenterConfig, SegmenterForSemanticSegmentation
    >>> config = SegmenterConfig.from_original_variant("seg_base_mask", dataset="ade20k")
    >>> model = SegmenterForSemanticSegmentation(config)
    ```"""

    model_type = "segmodels_segmenter"

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

        `dataset` ("ade20k", "pascal_context", "cityscapes" or None) sets `num_labels` and the crop size; `kwargs`
        override any field (e.g. `num_labels=5`).
        """
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
        width, heads, layers = ENCODER_SIZES[parts[1]]
        values = {
            "hidden_size": width,
            "num_attention_heads": heads,
            "num_hidden_layers": layers,
            "intermediate_size": 4 * width,
            "patch_size": patch_size,
            "distilled": distilled,
            "decoder_type": "mask_transformer" if parts[2] == "mask" else "linear",
        }
        if dataset is not None:
            if dataset not in DATASETS:
                raise ValueError(f"Unknown dataset {dataset!r}; known: {sorted(DATASETS)} (or None).")
            values["num_labels"] = DATASETS[dataset]["num_labels"]
            values["image_size"] = DATASETS[dataset]["crop_size"]
        values.update(kwargs)
        return cls(**values)


__all__ = ["SegmenterConfig"]
