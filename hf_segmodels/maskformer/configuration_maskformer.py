"""MaskFormer configuration (arXiv 2107.06278, facebookresearch/MaskFormer)."""

from dataclasses import dataclass

from huggingface_hub.dataclasses import strict
from transformers import AutoConfig, DetrConfig, MaskFormerSwinConfig, PreTrainedConfig, ResNetConfig
from transformers.configuration_utils import SubConfigSpec

from ..configuration_utils import check_id2label
from ..presets import PresetConfigMixin, Release
from ..protocol import normalize_test_protocol
from ..remote_code import RemoteCodeConfigMixin

# The original's Swin (`D2SwinTransformer`) pads inputs to the window size inside every stage and normalises each
# output stage; transformers implements exactly that as "maskformer-swin". A plain "swin" backbone config is
# converted to it, as transformers' own MaskFormer does.
_SWIN_MODEL_TYPES = ("swin", "maskformer-swin")
# Our own encoders usable as backbones: SegFormer's MiT, and the plain ViT of Segmenter / SETR with a simple feature
# pyramid (see `backbones.build_backbone`).
OWN_ENCODERS = ("segmodels_segformer", "segmodels_segmenter", "segmodels_setr")

# Contiguous ids of the "stuff" classes of the panoptic datasets, as the original's metadata defines them
# (`thing_dataset_id_to_contiguous_id`): COCO panoptic (detectron2 `COCO_CATEGORIES`: 80 things, then 53 stuff) and
# ADE20K panoptic (MaskFormer `register_ade20k_panoptic.py`, `isthing` of `ADE20K_150_CATEGORIES`).
COCO_PANOPTIC_STUFF_IDS = tuple(range(80, 133))
ADE20K_PANOPTIC_STUFF_IDS = (
    0, 1, 2, 3, 4, 5, 6, 9, 11, 13, 16, 17, 21, 25, 26, 28, 29, 34, 40, 46, 48, 51, 52, 54, 59, 60, 61, 63, 68, 77, 79,
    84, 91, 94, 96, 99, 100, 101, 105, 106, 109, 113, 114, 117, 122, 128, 131, 140, 141, 145,
)

# What a release's config sets, per dataset of hf_segmodels/zoo/zoo.json: the classes (MODEL.SEM_SEG_HEAD.NUM_CLASSES)
# and what its weights cannot tell, which the converter uses when no config.yaml is given:
# MASK_FORMER.SIZE_DIVISIBILITY (32 for the semantic releases, 0 for the panoptic ones), PANOPTIC_ON (which makes the
# original resize the mask logits before the semantic / panoptic inference), the stuff classes of the panoptic
# metadata and the test resize (INPUT.MIN_SIZE_TEST / MAX_SIZE_TEST).
RELEASE_SETTINGS = {
    "ade20k": {"num_labels": 150, "size_divisibility": 32, "panoptic": False, "size": (512, 2048)},
    "ade20k-full": {"num_labels": 847, "size_divisibility": 32, "panoptic": False},
    "coco-stuff-10k": {"num_labels": 171, "size_divisibility": 32, "panoptic": False},
    "cityscapes": {"num_labels": 19, "size_divisibility": 32, "panoptic": False},
    "mapillary-vistas": {"num_labels": 65, "size_divisibility": 32, "panoptic": False},
    "coco-panoptic": {
        "num_labels": 133, "size_divisibility": 0, "panoptic": True, "stuff": COCO_PANOPTIC_STUFF_IDS,
        "size": (800, 1333),
    },
    "ade20k-panoptic": {
        "num_labels": 150, "size_divisibility": 0, "panoptic": True, "stuff": ADE20K_PANOPTIC_STUFF_IDS,
        "size": (640, 2560),
    },
}


@dataclass(frozen=True)
class ResNetSize:
    """A ResNet backbone of the releases (detectron2's, bottleneck blocks, widths 256 ... 2048), in transformers'
    `ResNetConfig` field names. `deep_stem`: the DeepLab stem of three 3x3 convolutions (to `embedding_size`) and the
    multi-grid dilations (1, 2, 4) of the last stage (R101c)."""

    depths: tuple[int, ...]
    embedding_size: int = 64
    deep_stem: bool = False


@dataclass(frozen=True)
class SwinSize:
    """A Swin backbone of the releases (patch 4, MLP ratio 4, drop path 0.3), in transformers' `SwinConfig` field
    names."""

    embed_dim: int
    depths: tuple[int, ...]
    num_heads: tuple[int, ...]
    window_size: int


# The backbones of the released models (MODEL.RESNETS / MODEL.SWIN of their configs): Swin-B / L are the ImageNet-22k
# 384 models (window 12), Swin-T / S the ImageNet-1k 224 ones (window 7).
MASKFORMER_BACKBONES = {
    "r50": ResNetSize(depths=(3, 4, 6, 3)),
    "r101": ResNetSize(depths=(3, 4, 23, 3)),
    "r101c": ResNetSize(depths=(3, 4, 23, 3), embedding_size=128, deep_stem=True),
    "swin-t": SwinSize(embed_dim=96, depths=(2, 2, 6, 2), num_heads=(3, 6, 12, 24), window_size=7),
    "swin-s": SwinSize(embed_dim=96, depths=(2, 2, 18, 2), num_heads=(3, 6, 12, 24), window_size=7),
    "swin-b": SwinSize(embed_dim=128, depths=(2, 2, 18, 2), num_heads=(4, 8, 16, 32), window_size=12),
    "swin-l": SwinSize(embed_dim=192, depths=(2, 2, 18, 2), num_heads=(6, 12, 24, 48), window_size=12),
}


def _release(backbone: str, dataset: str, **overrides) -> Release:
    settings = RELEASE_SETTINGS[dataset]
    return Release(
        backbone,
        {"num_labels": settings["num_labels"], "size_divisibility": settings["size_divisibility"], **overrides},
    )


# The R50 / R101 panoptic releases use the TransformerEncoderPixelDecoder (6 transformer-encoder layers on the 1/32
# map, whose 256-wide output the transformer decoder reads without an input projection); every other release has the
# plain FPN and an input projection of the backbone's last map in its weights.
_ENCODER_PIXEL_DECODER = {"pixel_decoder_encoder_layers": 6, "enforce_input_projection": False}

_RESNETS, _SWINS = ("r50", "r101", "r101c"), ("swin-t", "swin-s", "swin-b", "swin-l")

# The released models (hf_segmodels/zoo/zoo.json) by their zoo names: backbone and dataset.
MASKFORMER_RELEASES = {
    **{f"maskformer-{b}-ade": _release(b, "ade20k") for b in _RESNETS + _SWINS},
    **{f"maskformer-{b}-coco-stuff-10k": _release(b, "coco-stuff-10k") for b in _RESNETS},
    **{f"maskformer-{b}-ade-full": _release(b, "ade20k-full") for b in _RESNETS},
    **{f"maskformer-{b}-cityscapes": _release(b, "cityscapes") for b in ("r101", "r101c")},
    "maskformer-r50-mapillary-vistas": _release("r50", "mapillary-vistas"),
    **{
        f"maskformer-{b}-coco-panoptic": _release(b, "coco-panoptic", **_ENCODER_PIXEL_DECODER) for b in ("r50", "r101")
    },
    **{f"maskformer-{b}-coco-panoptic": _release(b, "coco-panoptic") for b in _SWINS},
    **{
        f"maskformer-{b}-ade-panoptic": _release(b, "ade20k-panoptic", **_ENCODER_PIXEL_DECODER) for b in ("r50", "r101")
    },
}


@strict
class SegmodelsMaskFormerConfig(PresetConfigMixin, RemoteCodeConfigMixin, PreTrainedConfig):
    r"""
    Configuration of [`MaskFormerForUniversalSegmentation`]: a backbone, an FPN pixel decoder producing 1/4-resolution
    per-pixel embeddings, a DETR transformer decoder over the backbone's last feature map, a class head (num_labels + 1
    with the "no object" class) and a mask-embedding MLP. Field names mirror transformers' `MaskFormerConfig`.

    Args:
        backbone_config (`PreTrainedConfig` or `dict`, *optional*): a transformers backbone config (e.g.
            `ResNetConfig`, `SwinConfig` / `MaskFormerSwinConfig`) with `out_features` listing the stages fed to the
            pixel decoder, lowest resolution last (default: the four stages). Built with transformers'
            `load_backbone`. Defaults to Swin-B (384, window 12) as transformers' MaskFormer. Our own encoders work
            too: a `SegformerConfig` gives SegFormer's MiT encoder (its four maps; decoder fields unused), a
            `SegmenterConfig` / `SetrConfig` the plain ViT with a simple feature pyramid (ViTDet: 2x2 transposed
            convolutions / max pooling from the patch grid to strides 4, 8, 16, 32; decoder fields unused).
        decoder_config (`DetrConfig` or `dict`, *optional*): the transformer decoder (`d_model`, `decoder_layers`,
            `decoder_attention_heads`, `decoder_ffn_dim`, `dropout`, `attention_dropout`, `activation_dropout`,
            `activation_function`). Defaults to DETR's: 6 layers, d_model 256, 8 heads, FFN 2048, post-norm.
        num_queries (`int`, defaults to 100): number of queries (kept equal to `decoder_config.num_queries`).
        fpn_feature_size (`int`, defaults to 256): channels of the FPN (GroupNorm(32) + ReLU everywhere).
        mask_feature_size (`int`, defaults to 256): channels of the per-pixel and mask embeddings.
        no_object_weight (`float`, defaults to 0.1): cross-entropy weight of the "no object" class.
        cross_entropy_weight, mask_weight, dice_weight (`float`, defaults to 1, 20, 1): loss weights of the
            classification cross-entropy, the sigmoid focal mask loss and the dice loss; the matching costs are
            class 1, mask `mask_weight`, dice `dice_weight` as in the original.
        use_auxiliary_loss (`bool`, defaults to `True`): deep supervision, i.e. the loss on the (LayerNorm-ed) output
            of every decoder layer, as the original trains.
        output_auxiliary_logits (`bool`, *optional*): return `auxiliary_outputs` even when no loss is computed.
        pixel_decoder_encoder_layers (`int`, defaults to 0): transformer-encoder layers on the lowest-resolution
            feature map inside the pixel decoder (the original's `TransformerEncoderPixelDecoder`, 6 in the released
            R50 / R101 panoptic models): that map is projected to `fpn_feature_size` by a 1x1 conv, encoded by
            post-norm DETR encoder layers (heads, FFN size, dropout and activation of `decoder_config`) with sine
            position embeddings, and the encoded map is both the FPN's top level and the memory the transformer
            decoder attends to. 0: the plain FPN (`BasePixelDecoder`), the decoder attends to the backbone's map.
        backbone_deep_stem (`bool`, defaults to `False`): ResNet backbones only. Replace the 7x7 stem convolution by
            the DeepLab stem of detectron2 (three 3x3 conv + BatchNorm + ReLU, the first with stride 2, to
            `embedding_size // 2`, `embedding_size // 2` and `embedding_size` channels), as MaskFormer's R101c.
        backbone_last_stage_dilations (`list[int]`, *optional*): ResNet backbones only. Dilation of the 3x3
            convolution of every block of the last stage (DeepLab's multi-grid, `[1, 2, 4]` in R101c); the stage keeps
            its stride.
        size_divisibility (`int`, defaults to 32): the original's `MASK_FORMER.SIZE_DIVISIBILITY`: whole-image
            inference (`full_resolution_logits`) zero-pads the image to a multiple of this, as the original's
            `ImageList.from_tensors`, and crops the scores back; 0 or 1: no rounding (the COCO / ADE panoptic
            releases). Converted checkpoints record their release's value (and their image processor's
            `size_divisor` pads batches the same way).
        enforce_input_projection (`bool`, defaults to `False`): the original's `ENFORCE_INPUT_PROJ`: the transformer
            decoder projects its memory with a 1x1 convolution even when its width already equals `d_model` (the
            released Swin panoptic models). Without it the projection exists only where the widths differ.
        init_std, init_xavier_std (`float`): initialisation (normal std of embeddings; gain of Xavier inits).
        test_protocol (`dict`, *optional*): the test protocol the checkpoint was evaluated with (resize, whole or
            sliding-window inference, multi-scale + flip setting, semantic or panoptic task); see
            `hf_segmodels.protocol`. `infer_logits` and `pipeline("image-segmentation")` follow it.

    `MaskFormerConfig.from_preset(name)` gives a released model by its zoo name (`preset_names()`, e.g.
    `"maskformer-swin-b-ade"`, `"maskformer-r50-coco-panoptic"`: its backbone, classes, size divisibility and test
    protocol, as the converter builds it); `"swin-base"` (an alias) is the default config above.

    Example:

    ```python
    >>> from transformers import DetrConfig, ResNetConfig
    >>> from hf_segmodels import MaskFormerConfig, MaskFormerForUniversalSegmentation
    >>> backbone = ResNetConfig(depths=[3, 4, 6, 3], out_features=["stage1", "stage2", "stage3", "stage4"])
    >>> config = MaskFormerConfig(backbone_config=backbone, num_labels=150)
    >>> model = MaskFormerForUniversalSegmentation(config)
    ```"""

    model_type = "segmodels_maskformer"
    _PRESET_KIND = "MaskFormer"
    _RELEASES = MASKFORMER_RELEASES
    _ALIAS_HINT = "'swin-base' (the default config: Swin-B 384 backbone, as transformers' MaskFormer)"
    # `Trainer.evaluate` / `predict` gather every output except these: the predictions are then the semantic `logits`
    # (B, num_labels, h, w), as for the per-pixel models (the per-query outputs differ in size between batches).
    keys_to_ignore_at_inference = [
        "class_queries_logits", "masks_queries_logits", "auxiliary_outputs", "auxiliary_logits",
        "encoder_last_hidden_state", "pixel_decoder_last_hidden_state", "transformer_decoder_last_hidden_state",
        "encoder_hidden_states", "pixel_decoder_hidden_states", "transformer_decoder_hidden_states", "hidden_states",
        "attentions", "cross_attentions", "image_sizes", "padded_sizes",
    ]  # fmt: skip
    sub_configs_defaults = {
        "backbone_config": SubConfigSpec(
            config_class=AutoConfig,
            model_type="maskformer-swin",
            init_kwargs={
                "depths": [2, 2, 18, 2],
                "drop_path_rate": 0.3,
                "image_size": 384,
                "embed_dim": 128,
                "num_heads": [4, 8, 16, 32],
                "window_size": 12,
                "out_features": ["stage1", "stage2", "stage3", "stage4"],
            },
        ),
        "decoder_config": SubConfigSpec(config_class=AutoConfig, model_type="detr"),
    }
    attribute_map = {"hidden_size": "mask_feature_size"}

    backbone_config: dict | PreTrainedConfig | None = None
    decoder_config: dict | PreTrainedConfig | None = None
    num_queries: int | None = None
    fpn_feature_size: int = 256
    mask_feature_size: int = 256
    no_object_weight: float | int = 0.1
    cross_entropy_weight: float | int = 1.0
    mask_weight: float | int = 20.0
    dice_weight: float | int = 1.0
    use_auxiliary_loss: bool = True
    output_auxiliary_logits: bool | None = None
    pixel_decoder_encoder_layers: int = 0
    backbone_deep_stem: bool = False
    backbone_last_stage_dilations: list[int] | None = None
    size_divisibility: int = 32
    enforce_input_projection: bool = False
    init_std: float = 0.02
    init_xavier_std: float | int = 1.0
    test_protocol: dict | None = None

    def __post_init__(self, **kwargs):
        self.test_protocol = normalize_test_protocol(self.test_protocol)
        super().__post_init__(**kwargs)
        backbone = self.backbone_config
        if backbone.model_type == "swin":
            from transformers import MaskFormerSwinConfig

            values = backbone.to_dict()
            values.pop("model_type", None)
            self.backbone_config = backbone = MaskFormerSwinConfig(**values)
        if backbone.model_type in OWN_ENCODERS:
            pass  # our encoders always give four maps (strides 4, 8, 16, 32)
        elif getattr(backbone, "out_features", None) is None or len(backbone.out_features) < 2:
            stages = [name for name in backbone.stage_names if name != "stem"]
            backbone.out_features = stages
        if self.num_queries is None:
            self.num_queries = self.decoder_config.num_queries
        self.decoder_config.num_queries = self.num_queries

    def validate_architecture(self):
        super().validate_architecture()
        check_id2label(self)
        if self.decoder_config.model_type != "detr":
            raise ValueError(
                f"`decoder_config` must be a DetrConfig (model_type 'detr'), got {self.decoder_config.model_type!r}."
            )
        if self.fpn_feature_size % 32:
            raise ValueError(f"`fpn_feature_size` ({self.fpn_feature_size}) must be a multiple of 32 (GroupNorm(32)).")
        if self.decoder_config.d_model % self.decoder_config.decoder_attention_heads:
            raise ValueError(
                f"decoder d_model ({self.decoder_config.d_model}) must be divisible by decoder_attention_heads "
                f"({self.decoder_config.decoder_attention_heads})."
            )
        if self.num_queries < 1:
            raise ValueError(f"`num_queries` must be positive, got {self.num_queries}.")
        if self.pixel_decoder_encoder_layers < 0:
            raise ValueError(
                f"`pixel_decoder_encoder_layers` must be >= 0, got {self.pixel_decoder_encoder_layers}."
            )
        if self.pixel_decoder_encoder_layers and self.fpn_feature_size % self.decoder_config.decoder_attention_heads:
            raise ValueError(
                f"`fpn_feature_size` ({self.fpn_feature_size}) must be divisible by decoder_attention_heads "
                f"({self.decoder_config.decoder_attention_heads}) for the pixel decoder's transformer encoder."
            )
        resnet_options = self.backbone_deep_stem or self.backbone_last_stage_dilations is not None
        if resnet_options and self.backbone_config.model_type != "resnet":
            raise ValueError(
                "`backbone_deep_stem` and `backbone_last_stage_dilations` apply to ResNet backbones only, got a "
                f"{self.backbone_config.model_type!r} backbone."
            )
        dilations = self.backbone_last_stage_dilations
        if dilations is not None and self.backbone_config.layer_type != "bottleneck":
            raise ValueError("`backbone_last_stage_dilations` needs a ResNet with bottleneck blocks.")
        if dilations is not None:
            depth = self.backbone_config.depths[-1]
            if len(dilations) != depth or any(int(d) < 1 for d in dilations):
                raise ValueError(
                    f"`backbone_last_stage_dilations` needs one dilation >= 1 per block of the last stage ({depth}), "
                    f"got {list(dilations)}."
                )


    @classmethod
    def _alias_names(cls) -> list[str]:
        return ["swin-base"]

    @classmethod
    def _from_alias(cls, name: str, **kwargs) -> "MaskFormerConfig | None":
        return cls(**kwargs) if name == "swin-base" else None

    @classmethod
    def _from_release(cls, release: Release, **kwargs) -> "MaskFormerConfig":
        """The config of a release as the converter builds it from the original weights (`config_from_original`
        with the release's settings): DETR decoder of 6 layers, d_model 256, 8 heads, FFN 2048, dropout 0.1 and 100
        queries; 256-wide FPN and mask embeddings."""
        size = MASKFORMER_BACKBONES[release.variant]
        out_features = ["stage1", "stage2", "stage3", "stage4"]
        values = {}
        if isinstance(size, ResNetSize):
            backbone = ResNetConfig(
                embedding_size=size.embedding_size, hidden_sizes=[256, 512, 1024, 2048], depths=list(size.depths),
                layer_type="bottleneck", downsample_in_bottleneck=False, out_features=out_features,
            )
            if size.deep_stem:
                values.update(backbone_deep_stem=True, backbone_last_stage_dilations=[1, 2, 4])
        else:
            backbone = MaskFormerSwinConfig(
                embed_dim=size.embed_dim, patch_size=4, depths=list(size.depths), num_heads=list(size.num_heads),
                window_size=size.window_size, mlp_ratio=4.0, qkv_bias=True, drop_path_rate=0.3,
                out_features=out_features,
            )
        decoder = DetrConfig(
            d_model=256, decoder_layers=6, decoder_attention_heads=8, decoder_ffn_dim=2048, dropout=0.1,
            attention_dropout=0.1, activation_dropout=0.1, num_queries=100, use_timm_backbone=False,
        )
        values.update(
            backbone_config=backbone, decoder_config=decoder, num_queries=100, fpn_feature_size=256,
            mask_feature_size=256, pixel_decoder_encoder_layers=0, enforce_input_projection=True,
        )
        values.update(release.overrides)
        values.update(kwargs)
        return cls(**values)


# transformers' Auto classes look classes up by *name* (`_LazyAutoMapping`): a class named like one of transformers'
# would resolve to transformers' models (e.g. `AutoModel` -> its MaskFormerModel with random weights). The class therefore
# has a name of its own; the public name (README, docs/ARCHITECTURE.md) is an alias.
MaskFormerConfig = SegmodelsMaskFormerConfig

__all__ = [
    "ADE20K_PANOPTIC_STUFF_IDS",
    "COCO_PANOPTIC_STUFF_IDS",
    "MASKFORMER_BACKBONES",
    "MASKFORMER_RELEASES",
    "RELEASE_SETTINGS",
    "MaskFormerConfig",
    "ResNetSize",
    "SegmodelsMaskFormerConfig",
    "SwinSize",
]
