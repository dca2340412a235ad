"""One vocabulary for presets: every released model of hf_segmodels/zoo/zoo.json builds by its zoo name with
`<Arch>Config.from_preset`, the original names stay aliases giving what they gave, unknown names are errors that list
the zoo names, and the training registry builds all four architectures the same way."""

import pytest
import torch
from test_maskformer_conversion import to_original_state_dict

from hf_segmodels import (
    MaskFormerConfig,
    MaskFormerForUniversalSegmentation,
    SegformerConfig,
    SegformerImageProcessor,
    SegmenterConfig,
    SetrConfig,
)
from hf_segmodels.maskformer.convert_maskformer import config_from_original, settings_of_release
from hf_segmodels.model_card import ARCHITECTURES, DATASETS, load_zoo, zoo_test_protocol
from hf_segmodels.presets import VIT_SIZES, EncoderSize, UnknownPresetError
from hf_segmodels.training.registry import build_config, get_architecture

ZOO = load_zoo()
CONFIGS = {"segmenter": SegmenterConfig, "setr": SetrConfig, "segformer": SegformerConfig, "maskformer": MaskFormerConfig}
ENTRIES = {entry["name"]: entry for entry in ZOO["models"]}

# Every zoo release of Segmenter, SETR and SegFormer with the call that gave its config before zoo names existed.
ORIGINAL_NAMES = {
    "segmenter-t16-ade": lambda: SegmenterConfig.from_original_variant("seg_tiny_mask", dataset="ade20k"),
    "segmenter-s16-ade": lambda: SegmenterConfig.from_original_variant("seg_small_mask", dataset="ade20k"),
    "segmenter-b16-ade": lambda: SegmenterConfig.from_original_variant("seg_base_mask", dataset="ade20k"),
    "segmenter-b8-linear-ade": lambda: SegmenterConfig.from_original_variant("seg_base_linear_8", dataset="ade20k"),
    # the released ViT-L run is seg_large_mask_640: 640 crops
    "segmenter-l16-ade": lambda: SegmenterConfig.from_original_variant("seg_large_mask", image_size=640),
    "segmenter-b16-deit-linear-ade": lambda: SegmenterConfig.from_original_variant("seg_base_deit_linear"),
    "segmenter-b16-deit-ade": lambda: SegmenterConfig.from_original_variant("seg_base_deit_mask"),
    # the release predicts 60 classes (n_cls = 60 of the original's Pascal Context dataset)
    "segmenter-l16-pascal-context": lambda: SegmenterConfig.from_original_variant(
        "seg_large_mask", dataset="pascal_context", num_labels=60
    ),
    "segmenter-l16-cityscapes": lambda: SegmenterConfig.from_original_variant("seg_large_mask", dataset="cityscapes"),
    **{
        f"setr-{decoder}-{iterations}-cityscapes": lambda decoder=decoder: SetrConfig.from_preset(
            f"setr_{decoder}_large_cityscapes"
        )
        for decoder in ("naive", "pup", "mla")
        for iterations in ("40k", "80k")
    },
    "setr-naive-base-40k-cityscapes": lambda: SetrConfig.from_preset("setr_naive_base_cityscapes"),
    "setr-naive-base-80k-cityscapes": lambda: SetrConfig.from_preset("setr_naive_base_cityscapes"),
    "setr-naive-ade": lambda: SetrConfig.from_preset("setr_naive_large_ade20k"),
    "setr-mla-ade": lambda: SetrConfig.from_preset("setr_mla_large_ade20k"),
    "setr-pup-ade": lambda: SetrConfig.from_preset("setr_pup_large_ade20k"),
    "setr-naive-pascal-context": lambda: SetrConfig.from_preset("setr_naive_large_pascal_context"),
    "setr-mla-bs8-pascal-context": lambda: SetrConfig.from_preset("setr_mla_large_pascal_context"),
    "setr-mla-pascal-context": lambda: SetrConfig.from_preset("setr_mla_large_pascal_context"),
    "setr-pup-pascal-context": lambda: SetrConfig.from_preset("setr_pup_large_pascal_context"),
    **{f"segformer-b{i}-ade": lambda i=i: SegformerConfig.from_preset(f"b{i}-ade-512") for i in range(5)},
    "segformer-b5-ade": lambda: SegformerConfig.from_preset("b5-ade-640"),
    **{f"segformer-b{i}-cityscapes": lambda i=i: SegformerConfig.from_preset(f"b{i}-cityscapes-1024") for i in range(6)},
    # the real-time B0 runs have the architecture of the 1024 one (they differ in their test protocol)
    **{
        f"segformer-b0-{crop}-cityscapes": lambda: SegformerConfig.from_preset("b0-cityscapes-1024")
        for crop in ("512x1024", "640x1280", "768x768")
    },
}


@pytest.mark.parametrize("architecture", sorted(CONFIGS))
def test_preset_names_are_the_zoo_names_and_aliases_are_listed_apart(architecture):
    config_class = CONFIGS[architecture]
    expected = [entry["name"] for entry in ZOO["models"] if entry["architecture"] == architecture]
    assert config_class.preset_names() == expected
    aliases = config_class.preset_aliases()
    assert aliases and not set(aliases) & set(expected)
    if architecture != "maskformer":
        assert {name for name in ORIGINAL_NAMES if name.startswith(f"{architecture}-")} == set(expected)


@pytest.mark.parametrize("name", sorted(ENTRIES))
def test_every_zoo_name_builds_its_release(name):
    entry = ENTRIES[name]
    config = CONFIGS[entry["architecture"]].from_preset(name)
    assert config.model_type == ARCHITECTURES[entry["architecture"]]["model_type"]
    assert config.num_labels == entry["num_labels"] == DATASETS[entry["dataset"]]["num_labels"]
    assert len(config.id2label) == config.num_labels
    # the protocol the converters record for the release
    assert config.test_protocol == zoo_test_protocol(entry).to_dict()
    assert config.test_protocol["task"] == DATASETS[entry["dataset"]]["task"]
    # kwargs override fields, the test protocol included
    override = CONFIGS[entry["architecture"]].from_preset(name, num_labels=3, test_protocol=None)
    assert override.num_labels == 3 and override.test_protocol is None


@pytest.mark.parametrize("name", sorted(ORIGINAL_NAMES))
def test_zoo_name_gives_the_config_of_the_original_name(name):
    config = CONFIGS[ENTRIES[name]["architecture"]].from_preset(name)
    original = ORIGINAL_NAMES[name]()
    assert original.test_protocol is None  # the original names give what they always gave
    released = config.to_dict()
    assert released.pop("test_protocol") is not None
    expected = original.to_dict()
    expected.pop("test_protocol")
    assert released == expected


def test_original_names_stay_aliases():
    for name in ("seg_large_mask", "seg_small_linear_8", "seg_base_deit_mask_32"):
        assert SegmenterConfig.from_preset(name).to_dict() == SegmenterConfig.from_original_variant(name).to_dict()
        assert name in SegmenterConfig.preset_aliases()
    cityscapes = SegmenterConfig.from_preset("seg_large_mask", dataset="cityscapes")
    assert (cityscapes.num_labels, cityscapes.image_size, cityscapes.test_protocol) == (19, 768, None)
    assert len(SegmenterConfig.preset_aliases()) == 48
    assert "setr_pup_large_ade20k" in SetrConfig.preset_aliases() and len(SetrConfig.preset_aliases()) == 27
    assert {"b2-ade-512", "b5-ade-640", "b0-cityscapes-1024", "mit-b2"} <= set(SegformerConfig.preset_aliases())
    assert MaskFormerConfig.preset_aliases() == ["swin-base"]
    assert MaskFormerConfig.from_preset("swin-base").to_dict() == MaskFormerConfig().to_dict()
    mmseg = SetrConfig.from_preset("setr-pup-ade", implementation="mmseg")
    assert mmseg.to_dict() == SetrConfig.from_preset(
        "setr_pup_large_ade20k", implementation="mmseg", test_protocol=mmseg.test_protocol
    ).to_dict()


@pytest.mark.parametrize("config_class", [*CONFIGS.values(), SegformerImageProcessor])
def test_unknown_names_list_the_zoo_names(config_class):
    with pytest.raises(ValueError, match=r"Unknown \w+ preset 'resnet-9000'") as error:
        config_class.from_preset("resnet-9000")
    assert isinstance(error.value, UnknownPresetError)
    message = str(error.value)
    kind = config_class.__name__.removeprefix("Segmodels").removesuffix("ImageProcessor").removesuffix("Config").lower()
    names = [entry["name"] for entry in ZOO["models"] if entry["architecture"] == kind]
    assert names and all(name in message for name in names)
    assert "aliases" in message
    with pytest.raises(UnknownPresetError, match="Unknown Segmenter preset 'seg_huge_mask'"):
        SegmenterConfig.from_preset("seg_huge_mask")
    with pytest.raises(ValueError, match="Unknown Segmenter variant"):
        SegmenterConfig.from_original_variant("segmenter-l16-ade")


# The original names of the SegFormer releases' image processors (the real-time B0 runs have none).
SEGFORMER_PROCESSOR_NAMES = {
    **{f"segformer-b{i}-ade": f"b{i}-ade-512" for i in range(5)},
    "segformer-b5-ade": "b5-ade-640",
    **{f"segformer-b{i}-cityscapes": f"b{i}-cityscapes-1024" for i in range(6)},
}


@pytest.mark.parametrize("name", sorted(n for n in ENTRIES if n.startswith("segformer-")))
def test_segformer_image_processor_takes_zoo_names(name):
    processor = SegformerImageProcessor.from_preset(name)
    protocol = zoo_test_protocol(ENTRIES[name])  # the test resize of the release
    assert processor.to_dict()["size"] == protocol.resize and processor.size_divisor == protocol.size_divisor
    assert processor.do_reduce_labels == (ENTRIES[name]["dataset"] == "ade20k")
    if name in SEGFORMER_PROCESSOR_NAMES:
        original = SegformerImageProcessor.from_preset(SEGFORMER_PROCESSOR_NAMES[name])
        assert processor.to_dict() == original.to_dict()
    assert SegformerImageProcessor.from_preset(name, do_reduce_labels=True).do_reduce_labels


def test_encoder_sizes_are_named_fields():
    assert VIT_SIZES["large"] == EncoderSize(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16)
    large = SegmenterConfig.from_preset("segmenter-l16-ade")
    setr = SetrConfig.from_preset("setr-pup-ade")
    for config in (large, setr):
        assert (config.hidden_size, config.num_hidden_layers, config.num_attention_heads, config.intermediate_size) == (
            1024, 24, 16, 4096
        )
    tiny = SegmenterConfig.from_preset("segmenter-t16-ade")
    assert (tiny.hidden_size, tiny.num_hidden_layers, tiny.num_attention_heads) == (192, 12, 3)


# Total parameters (millions) of the released MaskFormer models, from the paper (arXiv 2107.06278, Tables 1 and 3).
MASKFORMER_PARAMS_M = {
    "maskformer-r50-ade": 41, "maskformer-r101-ade": 60, "maskformer-swin-t-ade": 42, "maskformer-swin-s-ade": 63,
    "maskformer-swin-b-ade": 102, "maskformer-swin-l-ade": 212, "maskformer-r50-coco-panoptic": 45,
    "maskformer-r101-coco-panoptic": 64,
}  # fmt: skip


@pytest.mark.parametrize("name", sorted(n for n in ENTRIES if n.startswith("maskformer-")))
def test_maskformer_presets_are_what_the_converter_builds(name):
    """The release's config is the one the converter infers from weights in the original layout (and the release's
    settings), and the model has the paper's size."""
    config = MaskFormerConfig.from_preset(name, test_protocol=None)
    with torch.device("meta"):
        model = MaskFormerForUniversalSegmentation(config)
    if name in MASKFORMER_PARAMS_M:
        params = sum(p.numel() for p in model.parameters()) / 1e6
        assert abs(params - MASKFORMER_PARAMS_M[name]) < 0.8, params
    overrides, _ = settings_of_release(ENTRIES[name]["checkpoint"]["file_name"])
    converted = config_from_original(to_original_state_dict(model), overrides)
    assert converted.to_dict() == config.to_dict()


@pytest.mark.parametrize("architecture", sorted(CONFIGS))
def test_registry_builds_zoo_names_aliases_and_tiny(architecture):
    registered = get_architecture(architecture)
    labels = {0: "a", 1: "b", 2: "c"}
    name = CONFIGS[architecture].preset_names()[0]
    config = build_config(registered, name, 64, labels)
    assert config.num_labels == 3 and config.id2label == labels
    assert config.test_protocol is None  # a trained model records its own
    expected = CONFIGS[architecture].from_preset(name, test_protocol=None, num_labels=3).to_dict()
    if architecture in ("segmenter", "setr"):
        assert config.image_size == 64
        expected["image_size"] = 64
    expected.update(id2label=config.to_dict()["id2label"], label2id=config.to_dict()["label2id"])
    assert config.to_dict() == expected
    alias = CONFIGS[architecture].preset_aliases()[0]
    assert build_config(registered, alias, 64, labels).num_labels == 3
    assert build_config(registered, "tiny", 64, labels).num_labels == 3
    with pytest.raises(ValueError, match=f"Unknown .* preset 'unet'.*{name}.*aliases.*'tiny'"):
        build_config(registered, "unet", 64, labels)
