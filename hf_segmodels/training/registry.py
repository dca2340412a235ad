"""How each architecture plugs into training: its classes, paper recipe, which parameters form the backbone (for
learning-rate multipliers), how its configs are built from preset names, how ImageNet-pretrained backbone weights
are loaded, and whether its BatchNorms are synchronised across processes."""

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import AutoConfig, PreTrainedConfig

from ..conversion_utils import ConversionError, load_checkpoint, load_state_dict_strict
from ..testing_utils import tiny_config, tiny_maskformer_backbone, tiny_maskformer_decoder
from .recipes import PAPER_RECIPES, Recipe


@dataclass(frozen=True)
class Architecture:
    """One architecture's training plug-in.

    Attributes:
        name: the `--model_type` name ("segmenter", ...).
        config_class, model_class, image_processor_class: the classes of `hf_segmodels.<name>`.
        recipe: the paper's optimisation recipe.
        backbone_prefixes: parameter-name prefixes of the ImageNet-pretrained encoder / backbone.
        config_from_preset: `(name, image_size) -> config` for the architecture's preset names: the released models
            by their zoo names (`config_class.from_preset`, e.g. "segformer-b2-ade", "maskformer-r50-ade"; the
            original names are accepted as aliases) and "tiny" for smoke tests and CPU experiments; `image_size` is the
            training crop of the ViT models. Raises `ValueError` listing the choices.
        load_backbone: `(model, source) -> None` loads ImageNet-pretrained encoder weights.
        sync_batch_norm: convert BatchNorms to `SyncBatchNorm` when training on several GPUs (the released models
            were trained with SyncBN).
    """

    name: str
    config_class: type
    model_class: type
    image_processor_class: type
    recipe: Recipe
    backbone_prefixes: tuple[str, ...]
    config_from_preset: Callable[[str, int], PreTrainedConfig]
    load_backbone: Callable[[torch.nn.Module, str], None]
    sync_batch_norm: bool = False


# ------------------------------------------------------------------------------------------------------------------
# Presets
# ------------------------------------------------------------------------------------------------------------------


def _from_preset(config_class, name: str, **kwargs) -> PreTrainedConfig:
    """`config_class.from_preset(name)`: a released model by its zoo name or an original name (alias). The release's
    test protocol is dropped: it describes the release on its dataset, and a trained model records its own
    (examples/train.py)."""
    from ..presets import UnknownPresetError

    try:
        return config_class.from_preset(name, test_protocol=None, **kwargs)
    except UnknownPresetError as error:
        raise UnknownPresetError(f"{error} For training, 'tiny' (a small config for smoke tests) is one too.") from None


def _segmenter_preset(name: str, image_size: int):
    from ..segmenter import SegmenterConfig

    if name == "tiny":
        return tiny_config(
            "segmenter", patch_size=4, image_size=image_size, drop_path_rate=0.0, decoder_num_hidden_layers=1
        )
    return _from_preset(SegmenterConfig, name, image_size=image_size)


def _setr_preset(name: str, image_size: int):
    from ..setr import SetrConfig

    if name == "tiny":
        return tiny_config(
            "setr", num_hidden_layers=2, patch_size=4, image_size=image_size, decoder_type="naive",
            decoder_hidden_size=32, auxiliary_layer_indices=[0],
        )  # fmt: skip
    return _from_preset(SetrConfig, name, image_size=image_size)


def _segformer_preset(name: str, image_size: int):
    from ..segformer import SegformerConfig

    if name == "tiny":
        return tiny_config(
            "segformer", hidden_sizes=[16, 32, 48, 64], num_attention_heads=[1, 2, 2, 4], depths=[1, 1, 1, 1],
            decoder_hidden_size=32, drop_path_rate=0.0,
        )  # fmt: skip
    return _from_preset(SegformerConfig, name)


def _maskformer_preset(name: str, image_size: int):
    from ..maskformer import MaskFormerConfig

    if name == "tiny":
        return tiny_config(
            "maskformer", backbone_config=tiny_maskformer_backbone("resnet", depths=[1, 1, 1, 1]),
            decoder_config=tiny_maskformer_decoder(num_queries=8, decoder_layers=2), num_queries=8,
        )  # fmt: skip
    return _from_preset(MaskFormerConfig, name)


# ------------------------------------------------------------------------------------------------------------------
# Pretrained backbones
# ------------------------------------------------------------------------------------------------------------------


def _load_vit_backbone(model, source) -> None:
    from ..pretrained import load_pretrained_vit

    load_pretrained_vit(model.encoder, source)


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(path)
    state_dict = load_checkpoint(path)
    for key in ("model", "state_dict"):
        if isinstance(state_dict, dict) and isinstance(state_dict.get(key), dict):
            state_dict = state_dict[key]
    return state_dict


def _load_mit_backbone(model, source) -> None:
    """ImageNet-pretrained Mix Transformer weights into `model.segformer`: the authors' `mit_b*.pth` (keys
    `patch_embed1.*`, `block1.*`, `norm1.*`, classifier `head.*` dropped) or a transformers checkpoint directory
    (`nvidia/mit-b*`: `SegformerForImageClassification` / `SegformerModel`, classifier dropped)."""
    from ..segformer.convert_segformer import convert_original_state_dict, convert_transformers_state_dict

    path = Path(source)
    if path.is_dir():
        files = [path / name for name in ("model.safetensors", "pytorch_model.bin") if (path / name).is_file()]
        if not files:
            raise ConversionError(f"{str(path)!r} holds neither model.safetensors nor pytorch_model.bin.")
        state_dict = _read_state_dict(files[0])
        state_dict = {
            (key if key.startswith("segformer.") else f"segformer.{key}"): tensor
            for key, tensor in state_dict.items()
            if not key.startswith(("classifier.", "decode_head."))
        }
        converted = convert_transformers_state_dict(state_dict)
    elif path.is_file():
        state_dict = _read_state_dict(path)
        state_dict = {
            f"backbone.{key.removeprefix('backbone.')}": tensor
            for key, tensor in state_dict.items()
            if not key.startswith(("head.", "decode_head.", "auxiliary_head."))
        }
        converted = convert_original_state_dict(state_dict)
    else:
        raise ConversionError(f"Pretrained MiT weights not found: {str(path)!r} is neither a directory nor a file.")
    encoder = {key.removeprefix("segformer."): tensor for key, tensor in converted.items()}
    load_state_dict_strict(model.segformer, encoder)


def _load_transformers_backbone(model, source) -> None:
    """A transformers checkpoint of the backbone (e.g. `microsoft/resnet-50`, a Swin) into `model.backbone`: the
    backbone class is loaded from it with our backbone config, and every weight must be found."""
    backbone_class = type(model.backbone)
    loaded, info = backbone_class.from_pretrained(
        source, config=model.config.backbone_config, output_loading_info=True
    )
    problems = {name: info.get(name) for name in ("missing_keys", "mismatched_keys") if info.get(name)}
    if problems:
        raise ConversionError(
            f"The backbone checkpoint {str(source)!r} does not fit the model's {backbone_class.__name__}: "
            + "; ".join(f"{name}: {sorted(map(str, keys))[:20]}" for name, keys in problems.items())
        )
    load_state_dict_strict(model.backbone, loaded.state_dict())


# ------------------------------------------------------------------------------------------------------------------
# Registry
# ------------------------------------------------------------------------------------------------------------------


def _architectures() -> dict[str, Architecture]:
    from .. import segformer, segmenter, setr
    from .. import maskformer

    return {
        "segmenter": Architecture(
            "segmenter", segmenter.SegmenterConfig, segmenter.SegmenterForSemanticSegmentation,
            segmenter.SegmenterImageProcessor, PAPER_RECIPES["segmenter"], ("encoder.",), _segmenter_preset,
            _load_vit_backbone,
        ),
        "setr": Architecture(
            "setr", setr.SetrConfig, setr.SetrForSemanticSegmentation, setr.SetrImageProcessor, PAPER_RECIPES["setr"],
            ("encoder.",), _setr_preset, _load_vit_backbone, sync_batch_norm=True,
        ),
        "segformer": Architecture(
            "segformer", segformer.SegformerConfig, segformer.SegformerForSemanticSegmentation,
            segformer.SegformerImageProcessor, PAPER_RECIPES["segformer"], ("segformer.",), _segformer_preset,
            _load_mit_backbone, sync_batch_norm=True,
        ),
        "maskformer": Architecture(
            "maskformer", maskformer.MaskFormerConfig, maskformer.MaskFormerForUniversalSegmentation,
            maskformer.MaskFormerImageProcessor, PAPER_RECIPES["maskformer"], ("backbone.",), _maskformer_preset,
            _load_transformers_backbone,
        ),
    }


ARCHITECTURE_NAMES = ("segmenter", "setr", "segformer", "maskformer")


def get_architecture(name: str) -> Architecture:
    """The plug-in of `name` ("segmenter", "setr", ... or a `model_type` such as "segmodels_setr")."""
    short = name.removeprefix("segmodels_")
    if short not in ARCHITECTURE_NAMES:
        raise ValueError(f"Unknown model type {name!r}; choose one of {list(ARCHITECTURE_NAMES)}.")
    return _architectures()[short]


def build_config(
    architecture: Architecture, config_name: str | os.PathLike | None, image_size: int, id2label: dict[int, str]
) -> PreTrainedConfig:
    """A config from a saved config directory (or `config.json`) of ours, or from a preset name, with the dataset's
    labels."""
    if config_name is None:
        raise ValueError(
            f"Training {architecture.name} from scratch needs --config_name (a preset name such as 'tiny', or a saved "
            "config directory) or --model_name_or_path."
        )
    if Path(config_name).exists():
        config = AutoConfig.from_pretrained(config_name)
        if not isinstance(config, architecture.config_class):
            raise ValueError(
                f"--config_name {str(config_name)!r} is a {type(config).__name__} (model_type {config.model_type!r}), "
                f"not a {architecture.config_class.__name__} for --model_type {architecture.name}."
            )
    else:
        config = architecture.config_from_preset(str(config_name), image_size)
    config.num_labels = len(id2label)
    config.id2label = dict(id2label)
    config.label2id = {name: index for index, name in id2label.items()}
    return config


def convert_sync_batch_norm(model: torch.nn.Module, architecture: Architecture, num_processes: int, device) -> int:
    """Turns the BatchNorms of architectures trained with SyncBN into `SyncBatchNorm` when several processes train on
    GPUs; returns how many were converted. PyTorch's SyncBatchNorm does not run on CPU, so CPU (gloo) runs keep
    per-process statistics."""
    if not architecture.sync_batch_norm or num_processes < 2 or torch.device(device).type == "cpu":
        return 0
    count = sum(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in model.modules())
    if count:
        torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    return count
