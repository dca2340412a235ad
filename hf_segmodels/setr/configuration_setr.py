"""SETR configuration (arXiv 2012.15840, fudan-zvg/SETR; also ported by mmsegmentation 1.x)."""

from huggingface_hub.dataclasses import strict
from transformers import PreTrainedConfig

from ..configuration_utils import check_choices, check_id2label, check_vit_encoder
from ..presets import VIT_SIZES, PresetConfigMixin, Release
from ..protocol import normalize_test_protocol
from ..remote_code import RemoteCodeConfigMixin

# Encoders of the released models: T-Base and T-Large are ViT-B and ViT-L; "deit" is T-Base initialised from DeiT-B
# (the DeiT distillation token is not used by SETR: its encoder has the cls token only).
ENCODER_SIZES = {"base": VIT_SIZES["base"], "large": VIT_SIZES["large"], "deit": VIT_SIZES["base"]}

# Classes, training crop (= sliding window) and sliding-window stride of the released configs.
DATASETS = {
    "ade20k": {"num_labels": 150, "crop_size": 512, "window_stride": 341},
    # The original release predicts 60 classes (59 + background); mmsegmentation's Pascal Context 59 has 59.
    "pascal_context": {"num_labels": 60, "crop_size": 480, "window_stride": 320},
    "cityscapes": {"num_labels": 19, "crop_size": 768, "window_stride": 512},
}

# Encoder layers (0-based: Z10 is index 9) feeding the auxiliary heads (and MLA's streams) in the released configs:
# the paper's T-Large choices and the released 12-layer (T-Base / DeiT) ones.
_RELEASED_LAYERS = {
    ("naive", 24): (9, 14, 19),
    ("pup", 24): (9, 14, 19, 23),
    ("mla", 24): (5, 11, 17, 23),
    ("naive", 12): (2, 5, 8),
    ("pup", 12): (4, 7, 9, 11),
    ("mla", 12): (2, 5, 8, 11),
}


_HEAD_DEFAULTS = {
    "naive": {"decoder_num_convs": 1, "decoder_kernel_size": 1, "decoder_up_scale": 4,
              "auxiliary_num_convs": 1, "auxiliary_kernel_size": 1, "auxiliary_up_scale": 4},
    "pup": {"decoder_num_convs": 4, "decoder_kernel_size": 3, "decoder_up_scale": 2,
            "auxiliary_num_convs": 1, "auxiliary_kernel_size": 3, "auxiliary_up_scale": 4},
}

# The released models (hf_segmodels/zoo/zoo.json) by their zoo names, with their original names: the 40k / 80k
# Cityscapes runs and the batch-8 / 16 Pascal Context MLA runs share an architecture.
SETR_RELEASES = {
    **{
        f"setr-{decoder}-{iterations}-cityscapes": Release(f"setr_{decoder}_large_cityscapes")
        for decoder in ("naive", "mla", "pup")
        for iterations in ("40k", "80k")
    },
    "setr-naive-base-40k-cityscapes": Release("setr_naive_base_cityscapes"),
    "setr-naive-base-80k-cityscapes": Release("setr_naive_base_cityscapes"),
    "setr-naive-ade": Release("setr_naive_large_ade20k"),
    "setr-mla-ade": Release("setr_mla_large_ade20k"),
    "setr-pup-ade": Release("setr_pup_large_ade20k"),
    "setr-naive-pascal-context": Release("setr_naive_large_pascal_context"),
    "setr-mla-bs8-pascal-context": Release("setr_mla_large_pascal_context"),
    "setr-mla-pascal-context": Release("setr_mla_large_pascal_context"),
    "setr-pup-pascal-context": Release("setr_pup_large_pascal_context"),
}


def default_layer_indices(decoder_type: str, num_hidden_layers: int) -> list[int]:
    """The auxiliary (and MLA) layers of the released configs; for other depths the paper's T-Large layers
    (Z10/Z15/Z20[/Z24] or Z6/Z12/Z18/Z24) scaled to `num_hidden_layers` (rounded, kept distinct and in range)."""
    released = _RELEASED_LAYERS.get((decoder_type, num_hidden_layers))
    if released is not None:
        return list(released)
    scaled = []
    for index in _RELEASED_LAYERS[(decoder_type, 24)]:
        layer = min(max(int((index + 1) * num_hidden_layers / 24 + 0.5), 1), num_hidden_layers) - 1
        if layer not in scaled:
            scaled.append(layer)
    return scaled


@strict
class SetrConfig(PresetConfigMixin, RemoteCodeConfigMixin, PreTrainedConfig):
    r"""
    Configuration of [`SetrForSemanticSegmentation`]: a plain ViT encoder (no downsampling beyond the 16x16 patch
    embedding, no final LayerNorm) and one of SETR's three decoders, plus the auxiliary heads used for training.
    Encoder fields use transformers' `ViTConfig` names. Layer indices are 0-based (the paper's Z10 is index 9).

    Args:
        hidden_size, num_hidden_layers, num_attention_heads, intermediate_size, hidden_act, layer_norm_eps,
        qkv_bias, image_size, patch_size, num_channels, hidden_dropout_prob, attention_probs_dropout_prob,
        initializer_range: the ViT encoder, as in `ViTConfig` (T-Base: 768 / 12 / 12, T-Large: 1024 / 24 / 16,
            MLP 4x width, LayerNorm eps 1e-6). `image_size` (int or (height, width)) is the training crop: the
            position embeddings cover `image_size // patch_size` and are resized bilinearly for other inputs, as
            mmsegmentation does (the original code only accepts inputs of exactly `image_size`).
        drop_path_rate (`float`): stochastic depth of the encoder (0 in every released config).
        use_cls_token (`bool`, *optional*): whether the cls token goes through the transformer (default: yes for
            naive / PUP). SETR-MLA drops it right after adding the position embeddings, which is the same as having
            none (the default for "mla").
        patch_embeddings_bias (`bool`): bias of the patch-embedding conv (original: yes, mmsegmentation: no).
        position_embedding_interpolation (`str`): "bilinear" (SETR) or "bicubic".
        decoder_type (`str`): "naive", "pup" or "mla".
        decoder_layer_index (`int`, *optional*): encoder layer read by the naive / PUP decoder (default: the last).
        decoder_hidden_size, decoder_num_convs, decoder_kernel_size, decoder_up_scale: the naive / PUP head:
            LayerNorm, then `decoder_num_convs` x [conv k x k, BatchNorm, ReLU, bilinear x`decoder_up_scale`], then a
            1x1 classifier. Unset, they follow `decoder_type`: naive 1 conv 1x1 with x4, PUP 4 convs 3x3 with x2
            each (mmsegmentation's base configs).
        decoder_classifier_before_last_upsample (`bool`): the original PUP head applies its classifier before the
            last x2 upsampling (conv_4 then x2) instead of after it.
        decoder_conv_bias (`bool`): whether the head convs (before BatchNorm) have biases (original: yes, mmseg: no);
            applies to the auxiliary heads too.
        decoder_dropout (`float`): `Dropout2d` before the decoder's classifier.
        mla_layer_indices (`list[int]`, *optional*): the M encoder layers aggregated by MLA (default: Z6/Z12/Z18/Z24
            scaled to the depth).
        mla_hidden_size (`int`): channels of MLA's per-stream 1x1 projections and 3x3 aggregation convs.
        mla_head_hidden_size (`int`): channels of each stream's two 3x3 convs before the x4 upsampling.
        mla_classifier_kernel_size (`int`): MLA's classifier over the concatenated streams (original 3, mmseg 1).
        mla_align_corners (`bool`): `align_corners` of the per-stream x4 upsampling (original: True, mmseg: False).
        auxiliary_layer_indices (`list[int]`, *optional*): encoder layers with an auxiliary head, used for the
            training loss only (default: the paper's Z10/Z15/Z20 (naive), Z10/Z15/Z20/Z24 (PUP), Z6/Z12/Z18/Z24
            (MLA), scaled to the depth; an empty list for none). For MLA every entry must be one of
            `mla_layer_indices` and the head reads that layer's aggregated stream.
        auxiliary_hidden_size, auxiliary_num_convs, auxiliary_kernel_size, auxiliary_up_scale: naive / PUP auxiliary
            heads (same structure as the decoder, classifier after the last upsampling; unset: 1 conv, 1x1 for
            naive and 3x3 for PUP, x4).
        auxiliary_classifier_bias (`bool`): bias of the MLA auxiliary heads' 1x1 classifier (original: no).
        auxiliary_dropout (`float`): `Dropout2d` before every auxiliary classifier.
        auxiliary_loss_weight (`float`): weight of each auxiliary cross-entropy (0.4 in every released config).
        semantic_loss_ignore_index (`int`): label ignored by the losses.
        test_protocol (`dict`, *optional*): the test protocol the checkpoint was evaluated with (resize, whole or
            sliding-window inference, multi-scale + flip setting); see `hf_segmodels.protocol`. `infer_logits` and
            `pipeline("image-segmentation")` follow it. None (the default) means whole-image inference.

    Example:

    ```python
    >>> from hf_segmodels import SetrConfig, SetrForSemanticSegmentation
    >>> config = SetrConfig.from_preset("setr-pup-ade")
    >>> model = SetrForSemanticSegmentation(config)
    ```"""

    model_type = "segmodels_setr"
    _PRESET_KIND = "SETR"
    _RELEASES = SETR_RELEASES
    _ALIAS_HINT = (
        "'setr_<naive|pup|mla>_<base|large|deit>_<ade20k|cityscapes|pascal_context>' (e.g. 'setr_pup_large_ade20k'), "
        "with `implementation=` 'original' (default) or 'mmseg'"
    )

    # Read by the shared ViTEncoder; SETR's encoder never has them.
    distilled = False
    use_final_layer_norm = False

    hidden_size: int = 1024
    num_hidden_layers: int = 24
    num_attention_heads: int = 16
    intermediate_size: int = 4096
    hidden_act: str = "gelu"
    hidden_dropout_prob: float | int = 0.0
    attention_probs_dropout_prob: float | int = 0.0
    drop_path_rate: float | int = 0.0
    initializer_range: float | int = 0.02
    layer_norm_eps: float | int = 1e-6
    image_size: int | list[int] | tuple[int, int] = 512
    patch_size: int = 16
    num_channels: int = 3
    qkv_bias: bool = True
    use_cls_token: bool | None = None
    patch_embeddings_bias: bool = False
    position_embedding_interpolation: str = "bilinear"
    decoder_type: str = "pup"
    decoder_layer_index: int | None = None
    decoder_hidden_size: int = 256
    decoder_num_convs: int | None = None
    decoder_kernel_size: int | None = None
    decoder_up_scale: int | None = None
    decoder_classifier_before_last_upsample: bool = False
    decoder_conv_bias: bool = False
    decoder_dropout: float | int = 0.0
    mla_layer_indices: list[int] | tuple[int, ...] | None = None
    mla_hidden_size: int = 256
    mla_head_hidden_size: int = 128
    mla_classifier_kernel_size: int = 1
    mla_align_corners: bool = False
    auxiliary_layer_indices: list[int] | tuple[int, ...] | None = None
    auxiliary_hidden_size: int = 256
    auxiliary_num_convs: int | None = None
    auxiliary_kernel_size: int | None = None
    auxiliary_up_scale: int | None = None
    auxiliary_classifier_bias: bool = True
    auxiliary_dropout: float | int = 0.0
    auxiliary_loss_weight: float | int = 0.4
    semantic_loss_ignore_index: int = 255
    test_protocol: dict | None = None

    def __post_init__(self, **kwargs):
        self.test_protocol = normalize_test_protocol(self.test_protocol)
        if isinstance(self.image_size, list):
            self.image_size = tuple(self.image_size)
        # Unset naive / PUP head fields take mmsegmentation's base-config values for the decoder type.
        defaults = _HEAD_DEFAULTS.get(self.decoder_type, _HEAD_DEFAULTS["pup"])
        for name, value in defaults.items():
            if getattr(self, name) is None:
                setattr(self, name, value)
        if self.use_cls_token is None:
            self.use_cls_token = self.decoder_type != "mla"
        if self.decoder_layer_index is None:
            self.decoder_layer_index = self.num_hidden_layers - 1
        if self.mla_layer_indices is None and self.decoder_type == "mla":
            self.mla_layer_indices = default_layer_indices("mla", self.num_hidden_layers)
        if self.auxiliary_layer_indices is None and self.decoder_type in ("naive", "pup", "mla"):
            self.auxiliary_layer_indices = default_layer_indices(self.decoder_type, self.num_hidden_layers)
        for name in ("mla_layer_indices", "auxiliary_layer_indices"):
            if getattr(self, name) is not None:
                setattr(self, name, [int(index) for index in getattr(self, name)])
        super().__post_init__(**kwargs)

    def validate_architecture(self):
        super().validate_architecture()
        check_id2label(self)
        choices = {
            "decoder_type": ("naive", "pup", "mla"),
            "position_embedding_interpolation": ("bilinear", "bicubic"),
            "decoder_kernel_size": (1, 3),
            "auxiliary_kernel_size": (1, 3),
            "mla_classifier_kernel_size": (1, 3),
        }
        check_choices(self, choices)
        check_vit_encoder(self)
        for name in ("decoder_num_convs", "auxiliary_num_convs", "decoder_up_scale", "auxiliary_up_scale"):
            if getattr(self, name) < 1:
                raise ValueError(f"`{name}` must be >= 1, got {getattr(self, name)}.")
        layers = range(self.num_hidden_layers)
        if self.decoder_layer_index not in layers:
            raise ValueError(
                f"`decoder_layer_index` {self.decoder_layer_index} is not an encoder layer (0..{self.num_hidden_layers - 1})."
            )
        auxiliary = self.auxiliary_layer_indices or []
        if self.decoder_type == "mla":
            mla = self.mla_layer_indices or []
            if len(mla) < 1 or any(index not in layers for index in mla) or sorted(set(mla)) != list(mla):
                raise ValueError(
                    f"`mla_layer_indices` must be increasing encoder layers in 0..{self.num_hidden_layers - 1}, "
                    f"got {self.mla_layer_indices}."
                )
            unknown = [index for index in auxiliary if index not in mla]
            if unknown:
                raise ValueError(
                    f"MLA auxiliary heads read MLA streams: `auxiliary_layer_indices` {unknown} are not in "
                    f"`mla_layer_indices` {mla}."
                )
        elif any(index not in layers for index in auxiliary):
            raise ValueError(
                f"`auxiliary_layer_indices` {auxiliary} must be encoder layers in 0..{self.num_hidden_layers - 1}."
            )
        if len(set(auxiliary)) != len(auxiliary):
            raise ValueError(f"`auxiliary_layer_indices` has duplicates: {auxiliary}.")

    @property
    def num_auxiliary_heads(self) -> int:
        return len(self.auxiliary_layer_indices or [])

    @classmethod
    def from_preset(cls, name: str, implementation: str = "original", **kwargs) -> "SetrConfig":
        """Config of a released SETR model by its zoo name (`preset_names()`, e.g. `"setr-pup-ade"`,
        `"setr-naive-base-40k-cityscapes"`: the release's architecture, classes, crop size and test protocol), or by
        an original name (an alias, `preset_aliases()`): `setr_{naive,pup,mla}_{base,large,deit}_{ade20k,cityscapes,
        pascal_context}`, e.g. `setr_pup_large_cityscapes`, `setr_mla_deit_ade20k`, `setr_naive_base_cityscapes`.

        `implementation="original"` gives the heads of fudan-zvg/SETR (256-wide convs with biases, PUP classifier
        before the last x2, MLA classifier 3x3 and `align_corners=True`, MLA auxiliary classifiers without bias);
        `"mmseg"` gives mmsegmentation 1.x's port (bias-free convs, 1x1 classifiers, naive head x4, auxiliary heads
        with two convs). Both use the released auxiliary layers and loss weights (0.4), the dataset's classes and
        crop size. `kwargs` override any field (e.g. `num_labels=5`).
        """
        return super().from_preset(name, implementation=implementation, **kwargs)

    @classmethod
    def _alias_names(cls) -> list[str]:
        return [
            f"setr_{decoder}_{encoder}_{dataset}"
            for decoder in ("naive", "pup", "mla")
            for encoder in ENCODER_SIZES
            for dataset in DATASETS
        ]

    @classmethod
    def _from_alias(cls, name: str, implementation: str = "original", **kwargs) -> "SetrConfig | None":
        parts = name.split("_", 3)
        if len(parts) != 4 or parts[0] != "setr" or parts[1] not in ("naive", "pup", "mla") \
                or parts[2] not in ENCODER_SIZES or parts[3] not in DATASETS:
            return None
        if implementation not in ("original", "mmseg"):
            raise ValueError(f"`implementation` must be 'original' or 'mmseg', got {implementation!r}.")
        _, decoder, encoder, dataset = parts
        size = ENCODER_SIZES[encoder]
        values = {
            **size.config_fields(),
            "image_size": DATASETS[dataset]["crop_size"],
            "num_labels": DATASETS[dataset]["num_labels"],
            "decoder_type": decoder,
            "use_cls_token": decoder != "mla",
        }
        original = implementation == "original"
        values.update(patch_embeddings_bias=original, decoder_conv_bias=original)
        if decoder == "naive":
            values.update(
                decoder_num_convs=1, decoder_kernel_size=1, decoder_up_scale=1 if original else 4,
                auxiliary_num_convs=1 if original else 2, auxiliary_kernel_size=1, auxiliary_up_scale=1 if original else 4,
            )
        elif decoder == "pup":
            values.update(
                decoder_num_convs=4, decoder_kernel_size=3, decoder_up_scale=2,
                decoder_classifier_before_last_upsample=original,
                auxiliary_num_convs=1 if original else 2, auxiliary_kernel_size=3, auxiliary_up_scale=4,
            )
            if not original and size.num_hidden_layers == 24:
                # mmsegmentation's T-Large PUP configs have no auxiliary head on the last layer.
                values["auxiliary_layer_indices"] = [9, 14, 19]
        else:
            values.update(
                mla_classifier_kernel_size=3 if original else 1,
                mla_align_corners=original,
                auxiliary_classifier_bias=not original,
            )
        values.update(kwargs)
        return cls(**values)


__all__ = ["SetrConfig"]
