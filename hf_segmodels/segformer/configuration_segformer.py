"""SegFormer configuration (arXiv 2105.15203): a Mix Transformer (MiT) encoder and an all-MLP decoder."""

from typing import Literal

from huggingface_hub.dataclasses import strict
from transformers import PreTrainedConfig

from ..configuration_utils import check_id2label
from ..presets import PresetConfigMixin, Release
from ..protocol import normalize_test_protocol
from ..remote_code import RemoteCodeConfigMixin

# The released Mix Transformer encoders, as defined by the `mit_b0` ... `mit_b5` classes of NVlabs/SegFormer. All share
# heads (1, 2, 5, 8), MLP ratio 4, spatial-reduction ratios (8, 4, 2, 1), overlapping patch embeddings 7/4 then 3/2 and
# drop-path 0.1; they differ in widths and depths. The decoder is 256 wide for B0/B1 and 768 wide for B2-B5.
MIT_ENCODERS: dict[str, dict] = {
    "mit-b0": {"hidden_sizes": (32, 64, 160, 256), "depths": (2, 2, 2, 2), "decoder_hidden_size": 256},
    "mit-b1": {"hidden_sizes": (64, 128, 320, 512), "depths": (2, 2, 2, 2), "decoder_hidden_size": 256},
    "mit-b2": {"hidden_sizes": (64, 128, 320, 512), "depths": (3, 4, 6, 3), "decoder_hidden_size": 768},
    "mit-b3": {"hidden_sizes": (64, 128, 320, 512), "depths": (3, 4, 18, 3), "decoder_hidden_size": 768},
    "mit-b4": {"hidden_sizes": (64, 128, 320, 512), "depths": (3, 8, 27, 3), "decoder_hidden_size": 768},
    "mit-b5": {"hidden_sizes": (64, 128, 320, 512), "depths": (3, 6, 40, 3), "decoder_hidden_size": 768},
}

ADE20K_CLASSES = (
    "wall", "building", "sky", "floor", "tree", "ceiling", "road", "bed", "windowpane", "grass", "cabinet", "sidewalk",
    "person", "earth", "door", "table", "mountain", "plant", "curtain", "chair", "car", "water", "painting", "sofa",
    "shelf", "house", "sea", "mirror", "rug", "field", "armchair", "seat", "fence", "desk", "rock", "wardrobe", "lamp",
    "bathtub", "railing", "cushion", "base", "box", "column", "signboard", "chest of drawers", "counter", "sand",
    "sink", "skyscraper", "fireplace", "refrigerator", "grandstand", "path", "stairs", "runway", "case",
    "pool table", "pillow", "screen door", "stairway", "river", "bridge", "bookcase", "blind", "coffee table",
    "toilet", "flower", "book", "hill", "bench", "countertop", "stove", "palm", "kitchen island", "computer",
    "swivel chair", "boat", "bar", "arcade machine", "hovel", "bus", "towel", "light", "truck", "tower",
    "chandelier", "awning", "streetlight", "booth", "television receiver", "airplane", "dirt track", "apparel",
    "pole", "land", "bannister", "escalator", "ottoman", "bottle", "buffet", "poster", "stage", "van", "ship",
    "fountain", "conveyer belt", "canopy", "washer", "plaything", "swimming pool", "stool", "barrel", "basket",
    "waterfall", "tent", "bag", "minibike", "cradle", "oven", "ball", "food", "step", "tank", "trade name",
    "microwave", "pot", "animal", "bicycle", "lake", "dishwasher", "screen", "blanket", "sculpture", "hood", "sconce",
    "vase", "traffic light", "tray", "ashcan", "fan", "pier", "crt screen", "plate", "monitor", "bulletin board",
    "shower", "radiator", "glass", "clock", "flag",
)  # fmt: skip

CITYSCAPES_CLASSES = (
    "road", "sidewalk", "building", "wall", "fence", "pole", "traffic light", "traffic sign", "vegetation", "terrain",
    "sky", "person", "rider", "car", "truck", "bus", "train", "motorcycle", "bicycle",
)  # fmt: skip

# The released semantic-segmentation models by their original names (aliases of the zoo names of `SEGFORMER_RELEASES`):
# encoder, dataset and the test-time image size of the original configs (`local_configs/segformer/B*/*.py`). ADE20K
# models are evaluated on the whole image resized to a short side of 512 (640 for B5), Cityscapes models with
# 1024 x 1024 sliding windows (stride 768) on 1024 x 2048 images.
SEGFORMER_PRESETS: dict[str, dict] = {
    **{f"b{i}-ade-512": {"encoder": f"mit-b{i}", "dataset": "ade20k", "test_size": 512} for i in range(5)},
    "b5-ade-640": {"encoder": "mit-b5", "dataset": "ade20k", "test_size": 640},
    **{f"b{i}-cityscapes-1024": {"encoder": f"mit-b{i}", "dataset": "cityscapes", "test_size": 1024} for i in range(6)},
}

_DATASET_CLASSES = {"ade20k": ADE20K_CLASSES, "cityscapes": CITYSCAPES_CLASSES}

# The released models (hf_segmodels/zoo/zoo.json) by their zoo names, with their original names (`SEGFORMER_PRESETS`).
# The real-time Cityscapes runs of B0 (trained on 512x1024, 640x1280 and 768x768 crops) have the architecture of
# "b0-cityscapes-1024"; they differ in their test protocol, which the zoo records.
SEGFORMER_RELEASES: dict[str, Release] = {
    **{f"segformer-b{i}-ade": Release(f"b{i}-ade-512") for i in range(5)},
    "segformer-b5-ade": Release("b5-ade-640"),
    **{f"segformer-b{i}-cityscapes": Release(f"b{i}-cityscapes-1024") for i in range(6)},
    **{
        f"segformer-b0-{crop}-cityscapes": Release("b0-cityscapes-1024")
        for crop in ("512x1024", "640x1280", "768x768")
    },
}

DecoderType = Literal["original", "mmseg"]


@strict
class SegmodelsSegformerConfig(PresetConfigMixin, RemoteCodeConfigMixin, PreTrainedConfig):
    r"""Configuration of [`SegformerModel`] (the Mix Transformer encoder) and [`SegformerForSemanticSegmentation`].

    Field names are those of transformers' `SegformerConfig`. The defaults give MiT-B0 with its 256-wide decoder; use
    [`SegformerConfig.from_preset`] for the released B0-B5 ADE20K / Cityscapes models, by their zoo names
    (`preset_names()`, e.g. `"segformer-b2-ade"`: classes with their names and the test protocol) or their original
    names (aliases, `preset_aliases()`: `"b2-ade-512"`, and `"mit-b2"` for a bare encoder).

    Args:
        num_channels (`int`, defaults to 3): input image channels.
        num_encoder_blocks (`int`, defaults to 4): number of encoder stages; every per-stage list has this length.
        depths (`list[int]`): transformer blocks per stage.
        sr_ratios (`list[int]`): spatial-reduction ratio of the efficient self-attention per stage (keys and values
            come from a map reduced by a `sr x sr` conv with stride `sr`; 1 means no reduction).
        hidden_sizes (`list[int]`): channel width of each stage.
        patch_sizes (`list[int]`), strides (`list[int]`): kernel and stride of each overlapping patch embedding
            (padding `patch_size // 2`).
        num_attention_heads (`list[int]`): attention heads per stage.
        mlp_ratios (`list[int]`): Mix-FFN expansion ratio per stage.
        hidden_act (`str`, defaults to `"gelu"`): Mix-FFN activation.
        hidden_dropout_prob (`float`): dropout after the attention output and inside the Mix-FFN.
        attention_probs_dropout_prob (`float`): dropout on the attention probabilities.
        classifier_dropout_prob (`float`, defaults to 0.1): dropout before the decoder's classifier.
        initializer_range (`float`, defaults to 0.02): std of the truncated normal init of linear layers.
        drop_path_rate (`float`, defaults to 0.1): stochastic-depth rate of the last block, linearly increasing from 0.
        layer_norm_eps (`float`, defaults to 1e-6): epsilon of the LayerNorms in the transformer blocks and at the end
            of each stage.
        embedding_layer_norm_eps (`float`, defaults to 1e-5): epsilon of the LayerNorms after the overlapping patch
            embeddings and after the spatial reduction. The original code leaves these at PyTorch's default 1e-5;
            mmsegmentation 1.x uses 1e-6 everywhere, transformers' port uses 1e-5 everywhere.
        qkv_bias (`bool`, defaults to `True`): bias of the query / key / value projections.
        decoder_hidden_size (`int`, defaults to 256): width of the all-MLP decoder (256 for B0/B1, 768 for B2-B5).
        decoder_type (`str`, defaults to `"original"`): `"original"` is the decoder of NVlabs/SegFormer (and
            transformers): a Linear projection with bias per stage, concatenated in the order 4, 3, 2, 1.
            `"mmseg"` is mmsegmentation 1.x's `SegformerHead`: a 1x1 conv without bias + BatchNorm + ReLU per stage,
            concatenated in the order 1, 2, 3, 4. Both then fuse with a 1x1 conv + BatchNorm + ReLU and classify
            with a 1x1 conv.
        semantic_loss_ignore_index (`int`, defaults to 255): label ignored by the cross-entropy loss.
        test_protocol (`dict`, *optional*): the test protocol the checkpoint was evaluated with (resize, whole or
            sliding-window inference, multi-scale + flip setting); see `hf_segmodels.protocol`. `infer_logits` and
            `pipeline("image-segmentation")` follow it. None (the default) means whole-image inference.

    Example:

    ```python
    >>> from hf_segmodels import SegformerConfig, SegformerForSemanticSegmentation
    >>> config = SegformerConfig.from_preset("segformer-b2-ade")
    >>> model = SegformerForSemanticSegmentation(config)
    ```
    """

    model_type = "segmodels_segformer"
    _PRESET_KIND = "SegFormer"
    _RELEASES = SEGFORMER_RELEASES
    _ALIAS_HINT = (
        "the original released models 'b0-ade-512' ... 'b4-ade-512', 'b5-ade-640', 'b0-cityscapes-1024' ... "
        "'b5-cityscapes-1024' (`SEGFORMER_PRESETS`) and the bare MiT encoders 'mit-b0' ... 'mit-b5'"
    )
    attribute_map = {"num_hidden_layers": "num_encoder_blocks"}

    num_channels: int = 3
    num_encoder_blocks: int = 4
    depths: list[int] | tuple[int, ...] = (2, 2, 2, 2)
    sr_ratios: list[int] | tuple[int, ...] = (8, 4, 2, 1)
    hidden_sizes: list[int] | tuple[int, ...] = (32, 64, 160, 256)
    patch_sizes: list[int] | tuple[int, ...] = (7, 3, 3, 3)
    strides: list[int] | tuple[int, ...] = (4, 2, 2, 2)
    num_attention_heads: list[int] | tuple[int, ...] = (1, 2, 5, 8)
    mlp_ratios: list[int] | tuple[int, ...] = (4, 4, 4, 4)
    hidden_act: str = "gelu"
    hidden_dropout_prob: float | int = 0.0
    attention_probs_dropout_prob: float | int = 0.0
    classifier_dropout_prob: float | int = 0.1
    initializer_range: float = 0.02
    drop_path_rate: float | int = 0.1
    layer_norm_eps: float = 1e-6
    embedding_layer_norm_eps: float = 1e-5
    qkv_bias: bool = True
    decoder_hidden_size: int = 256
    decoder_type: DecoderType = "original"
    semantic_loss_ignore_index: int = 255
    test_protocol: dict | None = None

    def __post_init__(self, **kwargs):
        self.test_protocol = normalize_test_protocol(self.test_protocol)
        super().__post_init__(**kwargs)

    def validate_architecture(self):
        super().validate_architecture()
        check_id2label(self)
        stages = self.num_encoder_blocks
        for name in ("depths", "sr_ratios", "hidden_sizes", "patch_sizes", "strides", "num_attention_heads",
                     "mlp_ratios"):  # fmt: skip
            value = getattr(self, name)
            if len(value) != stages:
                raise ValueError(
                    f"`{name}` must have one entry per encoder stage (num_encoder_blocks={stages}), got {list(value)}."
                )
            if any(int(v) < 1 for v in value):
                raise ValueError(f"`{name}` must hold positive integers, got {list(value)}.")
        for stage, (width, heads) in enumerate(zip(self.hidden_sizes, self.num_attention_heads)):
            if width % heads:
                raise ValueError(
                    f"Stage {stage}: hidden size {width} is not divisible by its {heads} attention heads."
                )

    @classmethod
    def _alias_names(cls) -> list[str]:
        return [*SEGFORMER_PRESETS, *MIT_ENCODERS]

    @classmethod
    def _from_alias(cls, name: str, **kwargs) -> "SegformerConfig | None":
        if name in SEGFORMER_PRESETS:
            preset = SEGFORMER_PRESETS[name]
            classes = _DATASET_CLASSES[preset["dataset"]]
            fields = dict(MIT_ENCODERS[preset["encoder"]])
            fields["id2label"] = dict(enumerate(classes))
            fields["label2id"] = {label: index for index, label in enumerate(classes)}
        elif name in MIT_ENCODERS:
            fields = dict(MIT_ENCODERS[name])
        else:
            return None
        fields = {key: list(value) if isinstance(value, tuple) else value for key, value in fields.items()}
        fields.update(kwargs)
        return cls(**fields)


# transformers' Auto classes look classes up by *name* (`_LazyAutoMapping`): a class named like one of transformers'
# would resolve to transformers' models (e.g. `AutoModel` -> its SegformerForImageClassification with random weights). The class therefore
# has a name of its own; the public name (README, docs/ARCHITECTURE.md) is an alias.
SegformerConfig = SegmodelsSegformerConfig

__all__ = [
    "SegformerConfig", "SegmodelsSegformerConfig", "SEGFORMER_PRESETS", "SEGFORMER_RELEASES", "MIT_ENCODERS",
]
