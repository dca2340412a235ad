r"""Conversion of MaskFormer checkpoints into [`MaskFormerForUniversalSegmentation`].

Two sources:

* `transformers`: a directory saved by transformers' `MaskFormerForInstanceSegmentation` (the facebook/maskformer-*
  Hub layout: `config.json` + `model.safetensors` or `pytorch_model.bin`). Both the legacy key names that
  `save_pretrained` writes (`out_proj`, `layers.N.fc1`) and the in-memory names of transformers 5 (`o_proj`,
  `layers.N.mlp.fc1`) are accepted.
* `original`: a detectron2 checkpoint of facebookresearch/MaskFormer (`model_final_*.pkl`, a pickle of NumPy arrays,
  read with a restricted unpickler that only rebuilds arrays; or a `torch.save`d `.pth`), with the `BasePixelDecoder`
  and 0 transformer-encoder layers of the released semantic-segmentation models. The architecture is read from the
  weights' shapes; `--config` may name a JSON file of `MaskFormerConfig` fields to override (e.g. `id2label`,
  `decoder_config.decoder_attention_heads`, which weights cannot reveal; default 8 as every released model).

Key mapping of the original checkpoint (module paths of facebookresearch/MaskFormer and detectron2):

| original key (module)                                                   | ours                                                        |
|-------------------------------------------------------------------------|-------------------------------------------------------------|
| `backbone.stem.conv1.weight` (detectron2 `resnet.BasicStem`)             | `backbone.embedder.embedder.convolution.weight`             |
| `backbone.stem.conv1.norm.{weight,bias,running_mean,running_var}` (FrozenBN) | `backbone.embedder.embedder.normalization.*`            |
| `backbone.stem.conv{j}.weight` / `.norm.*`, j = 1..3 (detectron2 `projects/DeepLab/deeplab/resnet.py` `DeepLabStem`, R101c) | `backbone.embedder.embedder.{j-1}.convolution.weight` / `.normalization.*` |
| `backbone.res{s+2}.{b}.conv{j}.weight` (`BottleneckBlock` / `BasicBlock`) | `backbone.encoder.stages.{s}.layers.{b}.layer.{j-1}.convolution.weight` |
| `backbone.res{s+2}.{b}.conv{j}.norm.*`                                   | `backbone.encoder.stages.{s}.layers.{b}.layer.{j-1}.normalization.*` |
| `backbone.res{s+2}.{b}.shortcut.weight` / `.shortcut.norm.*`             | `backbone.encoder.stages.{s}.layers.{b}.shortcut.{convolution,normalization}.*` |
| (FrozenBN has no counter)                                               | `...normalization.num_batches_tracked` = 0                   |
| `backbone.patch_embed.proj.*` (`mask_former/modeling/backbone/swin.py` `PatchEmbed`) | `backbone.model.embeddings.patch_embeddings.projection.*` |
| `backbone.patch_embed.norm.*`                                            | `backbone.model.embeddings.norm.*`                          |
| `backbone.layers.{i}.blocks.{j}.norm1.*` / `.norm2.*` (`SwinTransformerBlock`) | `backbone.model.encoder.layers.{i}.blocks.{j}.layernorm_before.*` / `.layernorm_after.*` |
| `backbone.layers.{i}.blocks.{j}.attn.qkv.{weight,bias}` ((3C, C), rows q, k, v) | `...blocks.{j}.attention.self.{query,key,value}.*` (split) |
| `backbone.layers.{i}.blocks.{j}.attn.proj.*`                             | `...blocks.{j}.attention.output.dense.*`                    |
| `backbone.layers.{i}.blocks.{j}.attn.relative_position_{bias_table,index}` | `...blocks.{j}.attention.self.relative_position_{bias_table,index}` |
| `backbone.layers.{i}.blocks.{j}.mlp.fc1.*` / `.mlp.fc2.*`                | `...blocks.{j}.intermediate.dense.*` / `.output.dense.*`    |
| `backbone.layers.{i}.downsample.{reduction,norm}.*` (`PatchMerging`)     | `backbone.model.encoder.layers.{i}.downsample.{reduction,norm}.*` |
| `backbone.norm{i}.*` (per-output LayerNorm of `D2SwinTransformer`)       | `backbone.hidden_states_norms.{i}.*`                        |
| (none; transformers' final Swin LayerNorm is not used by the backbone)   | `backbone.model.layernorm.*` = identity (1, 0)              |
| `sem_seg_head.pixel_decoder.layer_{n}.weight` / `.norm.*` (`BasePixelDecoder`, n = #features) | `pixel_decoder.stem.conv.weight` / `.norm.*` |
| `sem_seg_head.pixel_decoder.adapter_{k}.weight` / `.norm.*` (k < n)      | `pixel_decoder.lateral_convs.{n-1-k}.conv.weight` / `.norm.*` |
| `sem_seg_head.pixel_decoder.layer_{k}.weight` / `.norm.*` (k < n)        | `pixel_decoder.output_convs.{n-1-k}.conv.weight` / `.norm.*` |
| `sem_seg_head.pixel_decoder.mask_features.*`                             | `pixel_decoder.mask_projection.*`                           |
| `sem_seg_head.pixel_decoder.input_proj.*` (`TransformerEncoderPixelDecoder`) | `pixel_decoder.input_projection.*`                      |
| `sem_seg_head.pixel_decoder.transformer.encoder.layers.{i}.self_attn.in_proj_{weight,bias}` (`TransformerEncoderOnly`, rows q, k, v) | `pixel_decoder.encoder_layers.{i}.self_attn.{q,k,v}_proj.*` (split) |
| `...encoder.layers.{i}.self_attn.out_proj.*` / `.linear1.*` / `.linear2.*` | `pixel_decoder.encoder_layers.{i}.self_attn.o_proj.*` / `.fc1.*` / `.fc2.*` |
| `...encoder.layers.{i}.norm1.*` / `.norm2.*`                            | `pixel_decoder.encoder_layers.{i}.self_attn_layer_norm.*` / `.final_layer_norm.*` |
| `sem_seg_head.pixel_decoder.layer_{n}.*` of a `TransformerEncoderPixelDecoder` (3x3 conv on the encoded map) | `pixel_decoder.stem.*` |
| `sem_seg_head.predictor.query_embed.weight` (`TransformerPredictor`)     | `transformer_decoder.query_position_embeddings.weight`      |
| `sem_seg_head.predictor.input_proj.*`                                    | `transformer_decoder.input_projection.*`                    |
| `sem_seg_head.predictor.transformer.decoder.layers.{i}.self_attn.in_proj_{weight,bias}` (`nn.MultiheadAttention`, rows q, k, v) | `transformer_decoder.layers.{i}.self_attn.{q,k,v}_proj.*` (split) |
| `...decoder.layers.{i}.self_attn.out_proj.*`                             | `transformer_decoder.layers.{i}.self_attn.o_proj.*`         |
| `...decoder.layers.{i}.multihead_attn.in_proj_{weight,bias}` / `.out_proj.*` | `transformer_decoder.layers.{i}.encoder_attn.{q,k,v,o}_proj.*` |
| `...decoder.layers.{i}.linear1.*` / `.linear2.*`                         | `transformer_decoder.layers.{i}.fc1.*` / `.fc2.*`           |
| `...decoder.layers.{i}.norm1` / `norm2` / `norm3`                        | `transformer_decoder.layers.{i}.self_attn_layer_norm` / `encoder_attn_layer_norm` / `final_layer_norm` |
| `sem_seg_head.predictor.transformer.decoder.norm.*`                      | `transformer_decoder.layernorm.*`                           |
| `sem_seg_head.predictor.class_embed.*`                                   | `class_predictor.*`                                         |
| `sem_seg_head.predictor.mask_embed.layers.{i}.*` (`MLP`)                 | `mask_embedder.layers.{i}.*`                                |
| `criterion.empty_weight`, `pixel_mean`, `pixel_std`                      | dropped (loss / preprocessing constants)                    |

What the weights cannot tell is fixed by the releases: a DeepLab stem (R101c) comes with the multi-grid dilations
`[1, 2, 4]` in the last stage (`RES5_MULTI_GRID` of every released R101c config; override with
`{"backbone_last_stage_dilations": [...]}` in `--config`), 8 attention heads. Not supported (reported as unknown keys):
transformer-encoder layers in the predictor (`ENC_LAYERS > 0`, not used by any release). ResNet blocks are assumed to
stride in the 3x3 convolution (`STRIDE_IN_1X1: False`, all MaskFormer ResNets).
"""

import json
import pickle
import re
from pathlib import Path

import numpy as np
import torch
import yaml
from transformers import DetrConfig, MaskFormerSwinConfig, ResNetConfig

from ..conversion_utils import ConversionError, load_checkpoint, load_state_dict_strict, rename_keys
from .configuration_maskformer import (  # noqa: F401  (the release settings are public names of this module too)
    ADE20K_PANOPTIC_STUFF_IDS,
    COCO_PANOPTIC_STUFF_IDS,
    RELEASE_SETTINGS,
    MaskFormerConfig,
)
from .image_processing_maskformer import MaskFormerImageProcessor
from .modeling_maskformer import MaskFormerForUniversalSegmentation

# ----------------------------------------------------------------------------------------------------------------
# transformers (facebook/maskformer-*) layout
# ----------------------------------------------------------------------------------------------------------------

_TRANSFORMERS_DECODER = r"model\.transformer_module\.decoder"
TRANSFORMERS_RULES = [
    (r"model\.pixel_level_module\.encoder\.(.+)", r"backbone.\1"),
    (r"model\.pixel_level_module\.decoder\.fpn\.stem\.0\.weight", r"pixel_decoder.stem.conv.weight"),
    (r"model\.pixel_level_module\.decoder\.fpn\.stem\.1\.(weight|bias)", r"pixel_decoder.stem.norm.\1"),
    (r"model\.pixel_level_module\.decoder\.fpn\.layers\.(\d+)\.proj\.0\.weight", r"pixel_decoder.lateral_convs.\1.conv.weight"),
    (r"model\.pixel_level_module\.decoder\.fpn\.layers\.(\d+)\.proj\.1\.(weight|bias)", r"pixel_decoder.lateral_convs.\1.norm.\2"),
    (r"model\.pixel_level_module\.decoder\.fpn\.layers\.(\d+)\.block\.0\.weight", r"pixel_decoder.output_convs.\1.conv.weight"),
    (r"model\.pixel_level_module\.decoder\.fpn\.layers\.(\d+)\.block\.1\.(weight|bias)", r"pixel_decoder.output_convs.\1.norm.\2"),
    (r"model\.pixel_level_module\.decoder\.mask_projection\.(weight|bias)", r"pixel_decoder.mask_projection.\1"),
    (r"model\.transformer_module\.queries_embedder\.weight", r"transformer_decoder.query_position_embeddings.weight"),
    (r"model\.transformer_module\.input_projection\.(weight|bias)", r"transformer_decoder.input_projection.\1"),
    (_TRANSFORMERS_DECODER + r"\.layers\.(\d+)\.(self_attn|encoder_attn)\.(q|k|v)_proj\.(weight|bias)",
     r"transformer_decoder.layers.\1.\2.\3_proj.\4"),
    (_TRANSFORMERS_DECODER + r"\.layers\.(\d+)\.(self_attn|encoder_attn)\.(?:out|o)_proj\.(weight|bias)",
     r"transformer_decoder.layers.\1.\2.o_proj.\3"),
    (_TRANSFORMERS_DECODER + r"\.layers\.(\d+)\.(?:mlp\.)?(fc1|fc2)\.(weight|bias)", r"transformer_decoder.layers.\1.\2.\3"),
    (_TRANSFORMERS_DECODER + r"\.layers\.(\d+)\.(self_attn_layer_norm|encoder_attn_layer_norm|final_layer_norm)\.(weight|bias)",
     r"transformer_decoder.layers.\1.\2.\3"),
    (_TRANSFORMERS_DECODER + r"\.layernorm\.(weight|bias)", r"transformer_decoder.layernorm.\1"),
    (r"class_predictor\.(weight|bias)", r"class_predictor.\1"),
    (r"mask_embedder\.(\d+)\.0\.(weight|bias)", r"mask_embedder.layers.\1.\2"),
]
TRANSFORMERS_DROP = [r"criterion\.empty_weight"]

# Fields of transformers' MaskFormerConfig that carry over unchanged.
_TRANSFORMERS_CONFIG_FIELDS = (
    "fpn_feature_size", "mask_feature_size", "no_object_weight", "cross_entropy_weight", "mask_weight", "dice_weight",
    "init_std", "init_xavier_std", "id2label", "label2id", "use_auxiliary_loss", "output_auxiliary_logits",
)


def _read_transformers_state_dict(directory: Path, allow_unsafe_pickle: bool) -> dict[str, torch.Tensor]:
    safetensors_file = directory / "model.safetensors"
    if safetensors_file.is_file():
        from safetensors.torch import load_file

        return load_file(str(safetensors_file))
    bin_file = directory / "pytorch_model.bin"
    if bin_file.is_file():
        return load_checkpoint(bin_file, allow_unsafe_pickle=allow_unsafe_pickle)
    raise ConversionError(
        f"No model.safetensors or pytorch_model.bin in {str(directory)!r} (sharded checkpoints are not supported)."
    )


def config_from_transformers(config_dict: dict) -> MaskFormerConfig:
    """Our config from the `config.json` dict of a transformers MaskFormer."""
    if config_dict.get("model_type") != "maskformer":
        raise ConversionError(
            f"Expected a transformers MaskFormer config (model_type 'maskformer'), got {config_dict.get('model_type')!r}."
        )
    values = {field: config_dict[field] for field in _TRANSFORMERS_CONFIG_FIELDS if field in config_dict}
    values["backbone_config"] = dict(config_dict["backbone_config"])
    decoder = dict(config_dict["decoder_config"])
    decoder.pop("backbone_config", None)
    decoder["use_timm_backbone"] = False
    values["decoder_config"] = DetrConfig(**{k: v for k, v in decoder.items() if k != "model_type"})
    values["num_queries"] = decoder.get("num_queries", 100)
    return MaskFormerConfig(**values)


def convert_transformers_checkpoint(
    directory: str | Path, allow_unsafe_pickle: bool = False
) -> tuple[MaskFormerForUniversalSegmentation, MaskFormerImageProcessor]:
    """Loads a directory saved by transformers' `MaskFormerForInstanceSegmentation` into our model (eval mode)."""
    directory = Path(directory)
    config_file = directory / "config.json"
    if not config_file.is_file():
        raise ConversionError(f"{str(directory)!r} has no config.json; --source transformers expects a model directory.")
    config = config_from_transformers(json.loads(config_file.read_text()))
    state_dict = _read_transformers_state_dict(directory, allow_unsafe_pickle)
    converted = rename_keys(state_dict, TRANSFORMERS_RULES, TRANSFORMERS_DROP, source_name="transformers checkpoint")
    model = MaskFormerForUniversalSegmentation(config).eval()
    load_state_dict_strict(model, converted)
    processor = MaskFormerImageProcessor()
    processor_file = directory / "preprocessor_config.json"
    if processor_file.is_file():
        values = json.loads(processor_file.read_text())
        size = values.get("size")
        if isinstance(size, dict) and "shortest_edge" in size:
            processor = MaskFormerImageProcessor(
                size={"shortest_edge": size["shortest_edge"], "longest_edge": size.get("longest_edge", 1333)},
                image_mean=values.get("image_mean", processor.image_mean),
                image_std=values.get("image_std", processor.image_std),
                do_reduce_labels=bool(values.get("do_reduce_labels", False)),
                size_divisor=int(values.get("size_divisor", 32) or 0),
            )
    return model, processor


# ----------------------------------------------------------------------------------------------------------------
# Original (detectron2) layout
# ----------------------------------------------------------------------------------------------------------------


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickles detectron2's `.pkl` checkpoints (dicts of NumPy arrays) and refuses any other global."""

    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"),
        ("collections", "OrderedDict"),
        # protocol-2 pickles written by Python 3 rebuild every byte string (the arrays' raw data) with
        # `_codecs.encode(text, "latin1")`: a pure str -> bytes conversion
        ("_codecs", "encode"),
    }

    def find_class(self, module, name):
        if (module, name) in self._ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to unpickle {module}.{name}: only NumPy arrays are expected")


def load_original_checkpoint(path: str | Path, allow_unsafe_pickle: bool = False) -> dict[str, torch.Tensor]:
    """The `model` state dict of an original checkpoint (`.pkl` of NumPy arrays or `.pth`), as tensors."""
    path = Path(path)
    if not path.is_file():
        raise ConversionError(f"Checkpoint not found: {str(path)!r} does not exist or is not a file.")
    if path.suffix == ".pkl":
        try:
            with path.open("rb") as handle:
                checkpoint = _ArrayUnpickler(handle, encoding="latin1").load()
        except Exception as error:
            raise ConversionError(f"Could not read the detectron2 checkpoint {str(path)!r}: {error}") from error
    else:
        checkpoint = load_checkpoint(path, allow_unsafe_pickle=allow_unsafe_pickle)
    if isinstance(checkpoint, dict) and isinstance(checkpoint.get("model"), dict):
        checkpoint = checkpoint["model"]
    if not isinstance(checkpoint, dict):
        raise ConversionError(f"{str(path)!r} does not hold a state dict (got {type(checkpoint).__name__}).")
    state_dict = {}
    for key, value in checkpoint.items():
        if isinstance(value, np.ndarray):
            value = torch.from_numpy(np.ascontiguousarray(value))
        if not isinstance(value, torch.Tensor):
            raise ConversionError(f"Entry {key!r} of {str(path)!r} is a {type(value).__name__}, not an array.")
        state_dict[key] = value
    return state_dict


# ----------------------------------------------------------------------------------------------------------------
# The release's detectron2 config (config.yaml) and what the weights cannot tell
# ----------------------------------------------------------------------------------------------------------------

def _stuff_ids_of_dataset(name: str) -> tuple[int, ...] | None:
    """Stuff classes of a detectron2 panoptic dataset name (`coco_2017_val_panoptic`, `ade20k_panoptic_val`)."""
    name = name.lower()
    if "panoptic" in name and name.startswith("coco"):
        return COCO_PANOPTIC_STUFF_IDS
    if "panoptic" in name and name.startswith("ade20k"):
        return ADE20K_PANOPTIC_STUFF_IDS
    return None


class _Detectron2ConfigLoader(yaml.SafeLoader):
    """Reads detectron2 / MaskFormer yaml configs as plain data. Python tags (the released ADE20K configs compute
    `MIN_SIZE_TRAIN` with `!!python/object/apply:eval`) are NEVER evaluated: they load as None."""


_Detectron2ConfigLoader.add_multi_constructor("tag:yaml.org,2002:python/", lambda loader, suffix, node: None)
_Detectron2ConfigLoader.add_multi_constructor("!", lambda loader, suffix, node: None)


def _merge(base: dict, update: dict) -> dict:
    merged = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def read_detectron2_config(path: str | Path, _depth: int = 0) -> dict:
    """A detectron2 yaml config as a nested dict: a full `cfg.dump()` (config.yaml) or a released config file whose
    `_BASE_` chain is followed relative to it (keys of the file win over its base's)."""
    path = Path(path)
    if not path.is_file():
        raise ConversionError(f"Config file not found: {str(path)!r}.")
    try:
        values = yaml.load(path.read_text(), Loader=_Detectron2ConfigLoader) or {}
    except yaml.YAMLError as error:
        raise ConversionError(f"Could not read the detectron2 config {str(path)!r}: {error}") from error
    if not isinstance(values, dict):
        raise ConversionError(f"{str(path)!r} is not a detectron2 config (a yaml mapping).")
    base = values.pop("_BASE_", None)
    if base:
        if _depth > 10:
            raise ConversionError(f"{str(path)!r}: _BASE_ chain too deep.")
        values = _merge(read_detectron2_config(path.parent / base, _depth + 1), values)
    return values


def _get(config: dict, dotted: str, default=None):
    value = config
    for part in dotted.split("."):
        if not isinstance(value, dict) or part not in value:
            return default
        value = value[part]
    return value


def settings_from_detectron2_config(config: dict) -> tuple[dict, dict, bool]:
    """What a MaskFormer detectron2 config sets beyond the weights: `MaskFormerConfig` overrides (decoder heads and
    dropout, size divisibility, input projection, ResNet stride / multi-grid), `MaskFormerImageProcessor` arguments
    (normalisation, test resize, padding, post-processing order, stuff classes) and whether the model reads BGR.
    Raises `ConversionError` for settings the port does not implement."""
    model = config.get("MODEL", {})
    mask_former = model.get("MASK_FORMER", {})
    head = model.get("SEM_SEG_HEAD", {})
    unsupported = []
    if _get(model, "META_ARCHITECTURE", "MaskFormer") != "MaskFormer":
        unsupported.append(f"MODEL.META_ARCHITECTURE {model['META_ARCHITECTURE']!r}")
    if mask_former.get("PRE_NORM", False):
        unsupported.append("MODEL.MASK_FORMER.PRE_NORM True")
    if mask_former.get("ENC_LAYERS", 0):
        unsupported.append(f"MODEL.MASK_FORMER.ENC_LAYERS {mask_former['ENC_LAYERS']}")
    decoder_name = head.get("PIXEL_DECODER_NAME", "BasePixelDecoder")
    in_feature = mask_former.get("TRANSFORMER_IN_FEATURE", "res5")
    if decoder_name == "BasePixelDecoder":
        if in_feature != (head.get("IN_FEATURES") or ["res5"])[-1]:
            unsupported.append(f"TRANSFORMER_IN_FEATURE {in_feature!r} with the BasePixelDecoder")
    elif decoder_name == "TransformerEncoderPixelDecoder":
        if in_feature != "transformer_encoder":
            unsupported.append(f"TRANSFORMER_IN_FEATURE {in_feature!r} with the TransformerEncoderPixelDecoder")
    else:
        unsupported.append(f"MODEL.SEM_SEG_HEAD.PIXEL_DECODER_NAME {decoder_name!r}")
    if head.get("NORM", "GN") != "GN":
        unsupported.append(f"MODEL.SEM_SEG_HEAD.NORM {head['NORM']!r}")
    resnets = model.get("RESNETS", {})
    backbone_name = _get(model, "BACKBONE.NAME", "build_resnet_backbone")
    overrides: dict = {"backbone_config": {}}
    if "resnet" in backbone_name:
        if int(resnets.get("NUM_GROUPS", 1)) != 1:
            unsupported.append(f"MODEL.RESNETS.NUM_GROUPS {resnets['NUM_GROUPS']} (ResNeXt)")
        if resnets.get("NORM", "FrozenBN") not in ("FrozenBN", "BN", "SyncBN", "nnSyncBN", "naiveSyncBN"):
            unsupported.append(f"MODEL.RESNETS.NORM {resnets['NORM']!r}")
        if any(resnets.get("DEFORM_ON_PER_STAGE", [])):
            unsupported.append("deformable convolutions (MODEL.RESNETS.DEFORM_ON_PER_STAGE)")
        if int(resnets.get("RES4_DILATION", 1)) != 1:
            unsupported.append(f"MODEL.RESNETS.RES4_DILATION {resnets['RES4_DILATION']}")
        res5_dilation = int(resnets.get("RES5_DILATION", 1))
        if res5_dilation != 1:
            unsupported.append(f"MODEL.RESNETS.RES5_DILATION {res5_dilation} (a stride-1 last stage)")
        overrides["backbone_config"]["downsample_in_bottleneck"] = bool(resnets.get("STRIDE_IN_1X1", False))
        if backbone_name == "build_resnet_deeplab_backbone":
            # detectron2's DeepLab ResNet: the 3x3 convs of the last stage use RES5_DILATION x RES5_MULTI_GRID
            grid = resnets.get("RES5_MULTI_GRID") or [1, 1, 1]
            overrides["backbone_last_stage_dilations"] = [res5_dilation * int(g) for g in grid]
        else:
            overrides["backbone_last_stage_dilations"] = None  # build_resnet_backbone ignores RES5_MULTI_GRID
    swin = model.get("SWIN", {})
    if "swin" in backbone_name.lower():
        if swin.get("APE", False):
            unsupported.append("MODEL.SWIN.APE True")
        if swin.get("QK_SCALE") is not None:
            unsupported.append(f"MODEL.SWIN.QK_SCALE {swin['QK_SCALE']}")
    if unsupported:
        raise ConversionError("The detectron2 config uses settings this port does not implement: " + "; ".join(unsupported))

    dropout = float(mask_former.get("DROPOUT", 0.1))
    overrides["decoder_config"] = {
        "decoder_attention_heads": int(mask_former.get("NHEADS", 8)),
        "dropout": dropout,
        "attention_dropout": dropout,
        "activation_dropout": dropout,
    }
    size_divisibility = int(mask_former.get("SIZE_DIVISIBILITY", 32))
    overrides["size_divisibility"] = size_divisibility
    if mask_former.get("ENFORCE_INPUT_PROJ", False):
        overrides["enforce_input_projection"] = True
    if not overrides["backbone_config"]:
        overrides.pop("backbone_config")

    test = mask_former.get("TEST", {})
    panoptic = bool(test.get("PANOPTIC_ON", False))
    processor: dict = {
        "size_divisor": max(size_divisibility, 0),
        "sem_seg_postprocessing_before_inference": bool(
            test.get("SEM_SEG_POSTPROCESSING_BEFORE_INFERENCE", False) or panoptic
        ),
    }
    bgr = str(_get(config, "INPUT.FORMAT", "RGB")).upper() == "BGR"
    mean, std = model.get("PIXEL_MEAN"), model.get("PIXEL_STD")
    if mean is not None and std is not None:
        order = slice(None, None, -1) if bgr else slice(None)
        processor["image_mean"] = [float(v) / 255 for v in list(mean)[order]]
        processor["image_std"] = [float(v) / 255 for v in list(std)[order]]
    min_size, max_size = _get(config, "INPUT.MIN_SIZE_TEST"), _get(config, "INPUT.MAX_SIZE_TEST")
    if isinstance(min_size, int) and min_size > 0:
        processor["size"] = {"shortest_edge": min_size, "longest_edge": int(max_size or 1333)}
    elif min_size == 0:
        processor["do_resize"] = False
    if panoptic:
        for key, name in (("OBJECT_MASK_THRESHOLD", "object_mask_threshold"), ("OVERLAP_THRESHOLD", "overlap_threshold")):
            if test.get(key) is not None:
                processor[name] = float(test[key])
        datasets = list(_get(config, "DATASETS.TEST") or []) + list(_get(config, "DATASETS.TRAIN") or [])
        for name in datasets:
            stuff = _stuff_ids_of_dataset(str(name))
            if stuff is not None:
                processor["label_ids_to_fuse"] = list(stuff)
                break
    return overrides, processor, bgr


def settings_of_release(checkpoint: str | Path) -> tuple[dict, dict] | None:
    """`MaskFormerConfig` overrides and image-processor arguments of a known release (hf_segmodels/zoo/zoo.json, by file
    name) from `RELEASE_SETTINGS`, or None for an unknown checkpoint."""
    from ..cards.zoo import ZOO_PATH, find_zoo_entry, load_zoo

    if not ZOO_PATH.is_file():
        return None
    entry = find_zoo_entry(checkpoint, load_zoo(), "maskformer")
    if entry is None or entry["source_format"] != "original" or entry["dataset"] not in RELEASE_SETTINGS:
        return None
    release = RELEASE_SETTINGS[entry["dataset"]]
    overrides = {"size_divisibility": release["size_divisibility"]}
    processor = {
        "size_divisor": release["size_divisibility"],
        "sem_seg_postprocessing_before_inference": release["panoptic"],
    }
    if "stuff" in release:
        processor["label_ids_to_fuse"] = list(release["stuff"])
    if release["panoptic"]:
        # TEST.OBJECT_MASK_THRESHOLD / OVERLAP_THRESHOLD of the released COCO and ADE20K panoptic configs
        processor.update(object_mask_threshold=0.8, overlap_threshold=0.8)
    if "size" in release:
        processor["size"] = {"shortest_edge": release["size"][0], "longest_edge": release["size"][1]}
    return overrides, processor


def _pixel_decoder_prefix(state_dict: dict) -> str:
    """`sem_seg_head.pixel_decoder.` (current layout) or `sem_seg_head.` (the older `MaskFormerHead` layout that the
    original loader renames); a checkpoint mixing both is refused."""
    current = [k for k in state_dict if k.startswith("sem_seg_head.pixel_decoder.")]
    older = [
        k for k in state_dict
        if k.startswith("sem_seg_head.") and not k.startswith(("sem_seg_head.pixel_decoder.", "sem_seg_head.predictor."))
    ]
    if current and older:
        raise ConversionError(
            "The checkpoint mixes the two pixel-decoder layouts (`sem_seg_head.pixel_decoder.*` and the older "
            f"`sem_seg_head.*`): {sorted(older)[:10]}"
        )
    return "sem_seg_head." if older else "sem_seg_head.pixel_decoder."


def _count(state_dict: dict, pattern: str) -> int:
    regex = re.compile(pattern)
    return len({match.group(1) for key in state_dict if (match := regex.fullmatch(key))})


def config_from_original(state_dict: dict[str, torch.Tensor], overrides: dict | None = None) -> MaskFormerConfig:
    """Infers the architecture of an original checkpoint from its weights' shapes; `overrides` (a dict of
    `MaskFormerConfig` fields, `decoder_config` / `backbone_config` as dicts of fields to change) win."""
    overrides = dict(overrides or {})
    out_features = ["stage1", "stage2", "stage3", "stage4"]
    model_values = {}  # architecture fields read from the weights, besides the backbone and decoder configs
    if "backbone.patch_embed.proj.weight" in state_dict:
        projection = state_dict["backbone.patch_embed.proj.weight"]
        num_stages = _count(state_dict, r"backbone\.layers\.(\d+)\..*")
        depths = [_count(state_dict, rf"backbone\.layers\.{i}\.blocks\.(\d+)\..*") for i in range(num_stages)]
        num_heads = [
            state_dict[f"backbone.layers.{i}.blocks.0.attn.relative_position_bias_table"].shape[1] for i in range(num_stages)
        ]
        table_rows = state_dict["backbone.layers.0.blocks.0.attn.relative_position_bias_table"].shape[0]
        window_size = (round(table_rows**0.5) + 1) // 2
        embed_dim = projection.shape[0]
        mlp_ratio = state_dict["backbone.layers.0.blocks.0.mlp.fc1.weight"].shape[0] / embed_dim
        backbone = MaskFormerSwinConfig(
            embed_dim=embed_dim, patch_size=projection.shape[-1], depths=depths, num_heads=num_heads,
            window_size=window_size, mlp_ratio=mlp_ratio, qkv_bias="backbone.layers.0.blocks.0.attn.qkv.bias" in state_dict,
            drop_path_rate=0.3, out_features=out_features[:num_stages],
        )
    elif "backbone.stem.conv1.weight" in state_dict:
        num_stages = _count(state_dict, r"backbone\.res(\d+)\..*")
        depths = [_count(state_dict, rf"backbone\.res{s + 2}\.(\d+)\..*") for s in range(num_stages)]
        bottleneck = "backbone.res2.0.conv3.weight" in state_dict
        last_conv = "conv3" if bottleneck else "conv2"
        deep_stem = "backbone.stem.conv3.weight" in state_dict
        if deep_stem:
            model_values["backbone_deep_stem"] = True
            # RES5_MULTI_GRID of every released DeepLab-stem (R101c) model; weights cannot reveal dilations
            model_values["backbone_last_stage_dilations"] = [1, 2, 4] if depths[-1] == 3 else None
        backbone = ResNetConfig(
            embedding_size=state_dict["backbone.stem.conv3.weight" if deep_stem else "backbone.stem.conv1.weight"].shape[0],
            hidden_sizes=[state_dict[f"backbone.res{s + 2}.0.{last_conv}.weight"].shape[0] for s in range(num_stages)],
            depths=depths, layer_type="bottleneck" if bottleneck else "basic", downsample_in_bottleneck=False,
            out_features=out_features[:num_stages],
        )
    else:
        raise ConversionError(
            "Cannot recognise the backbone: the checkpoint has neither `backbone.patch_embed.proj.weight` (Swin) nor "
            "`backbone.stem.conv1.weight` (ResNet with the basic stem)."
        )
    for key, value in overrides.pop("backbone_config", {}).items():
        setattr(backbone, key, value)

    prefix = "sem_seg_head.predictor."
    try:
        query_embed = state_dict[prefix + "query_embed.weight"]
        num_classes = state_dict[prefix + "class_embed.weight"].shape[0] - 1
        ffn_dim = state_dict[prefix + "transformer.decoder.layers.0.linear1.weight"].shape[0]
        pixel_prefix = _pixel_decoder_prefix(state_dict)
        fpn_size = state_dict[pixel_prefix + "mask_features.weight"].shape[1]
        mask_size = state_dict[pixel_prefix + "mask_features.weight"].shape[0]
    except KeyError as error:
        raise ConversionError(f"The checkpoint lacks {error.args[0]!r}; is it a MaskFormer checkpoint?") from error
    decoder_values = {
        "d_model": query_embed.shape[1],
        "decoder_layers": _count(state_dict, re.escape(prefix) + r"transformer\.decoder\.layers\.(\d+)\..*"),
        "decoder_attention_heads": 8,
        "decoder_ffn_dim": ffn_dim,
        "dropout": 0.1,
        "attention_dropout": 0.1,
        "activation_dropout": 0.1,
        "num_queries": query_embed.shape[0],
        "use_timm_backbone": False,
    }
    decoder_values.update(overrides.pop("decoder_config", {}))
    values = {
        "backbone_config": backbone,
        "decoder_config": DetrConfig(**decoder_values),
        "num_queries": decoder_values["num_queries"],
        "num_labels": num_classes,
        "fpn_feature_size": fpn_size,
        "mask_feature_size": mask_size,
        "pixel_decoder_encoder_layers": _count(
            state_dict, re.escape(pixel_prefix) + r"transformer\.encoder\.layers\.(\d+)\..*"
        ),
        # ENFORCE_INPUT_PROJ: a predictor input projection in the weights is used, even where the widths are equal
        "enforce_input_projection": prefix + "input_proj.weight" in state_dict,
        **model_values,
    }
    values.update(overrides)
    if "id2label" in values:
        values["id2label"] = {int(k): v for k, v in values["id2label"].items()}
        values.setdefault("label2id", {v: k for k, v in values["id2label"].items()})
        values.pop("num_labels")
    config = MaskFormerConfig(**values)
    if config.num_labels != num_classes:
        raise ConversionError(
            f"The checkpoint's class head predicts {num_classes} classes (+ no object) but the config has "
            f"{config.num_labels} labels."
        )
    return config


def _split_rows(names: tuple[str, ...]):
    def split(match: re.Match, tensor: torch.Tensor) -> dict[str, torch.Tensor]:
        chunks = tensor.chunk(len(names), dim=0)
        return {match.expand(name): chunk.clone() for name, chunk in zip(names, chunks)}

    return split


def original_rules(num_features: int, deep_stem: bool = False) -> list[tuple[str, object]]:
    """`rename_keys` rules of the original layout for a pixel decoder fed `num_features` backbone maps (and a
    DeepLab stem when `deep_stem`)."""
    n = num_features
    # the current layout (`sem_seg_head.pixel_decoder.*`) and the older one the original loader renames
    # (`MaskFormerHead._load_from_state_dict`: pixel-decoder weights directly under `sem_seg_head.`)
    pixel = r"sem_seg_head\.(?:pixel_decoder\.)?"
    encoder_layer = pixel + r"transformer\.encoder\.layers\.(\d+)\."
    stem_target = r"backbone.embedder.embedder.{}." if deep_stem else r"backbone.embedder.embedder."

    def stem(match: re.Match, tensor):
        index, name = int(match.group(1)), match.group(2)
        if not deep_stem and index != 1:
            raise ConversionError(f"{match.group(0)!r}: a basic ResNet stem has only conv1 (DeepLab stems have conv3).")
        target = stem_target.format(index - 1)
        return {target + ("convolution.weight" if name == "weight" else "normalization." + name[len("norm."):]): tensor}

    layer = r"sem_seg_head\.predictor\.transformer\.decoder\.layers\.(\d+)\."
    swin = r"backbone\.layers\.(\d+)\.blocks\.(\d+)\."
    ours_swin = r"backbone.model.encoder.layers.\1.blocks.\2."

    def lateral(match: re.Match, tensor):
        kind, k, name = match.group(1), int(match.group(2)), match.group(3)
        if kind == "layer" and k == n:
            target = "pixel_decoder.stem."
        else:
            target = f"pixel_decoder.{'lateral_convs' if kind == 'adapter' else 'output_convs'}.{n - 1 - k}."
        suffix = "conv.weight" if name == "weight" else f"norm.{name[len('norm.'):]}"
        return {target + suffix: tensor}

    return [
        # ResNet (detectron2)
        (r"backbone\.stem\.conv(\d)\.(weight|norm\.weight|norm\.bias|norm\.running_mean|norm\.running_var)", stem),
        (r"backbone\.res(\d+)\.(\d+)\.conv(\d)\.(weight|norm\.weight|norm\.bias|norm\.running_mean|norm\.running_var)",
         lambda m, t: {
             f"backbone.encoder.stages.{int(m.group(1)) - 2}.layers.{m.group(2)}.layer.{int(m.group(3)) - 1}."
             + ("convolution.weight" if m.group(4) == "weight" else "normalization." + m.group(4)[5:]): t
         }),
        (r"backbone\.res(\d+)\.(\d+)\.shortcut\.(weight|norm\.weight|norm\.bias|norm\.running_mean|norm\.running_var)",
         lambda m, t: {
             f"backbone.encoder.stages.{int(m.group(1)) - 2}.layers.{m.group(2)}.shortcut."
             + ("convolution.weight" if m.group(3) == "weight" else "normalization." + m.group(3)[5:]): t
         }),
        # Swin (mask_former/modeling/backbone/swin.py)
        (r"backbone\.patch_embed\.proj\.(weight|bias)", r"backbone.model.embeddings.patch_embeddings.projection.\1"),
        (r"backbone\.patch_embed\.norm\.(weight|bias)", r"backbone.model.embeddings.norm.\1"),
        (swin + r"norm1\.(weight|bias)", ours_swin + r"layernorm_before.\3"),
        (swin + r"norm2\.(weight|bias)", ours_swin + r"layernorm_after.\3"),
        (swin + r"attn\.qkv\.(weight|bias)",
         _split_rows(tuple(ours_swin + rf"attention.self.{p}.\3" for p in ("query", "key", "value")))),
        (swin + r"attn\.proj\.(weight|bias)", ours_swin + r"attention.output.dense.\3"),
        (swin + r"attn\.(relative_position_bias_table|relative_position_index)", ours_swin + r"attention.self.\3"),
        (swin + r"mlp\.fc1\.(weight|bias)", ours_swin + r"intermediate.dense.\3"),
        (swin + r"mlp\.fc2\.(weight|bias)", ours_swin + r"output.dense.\3"),
        (r"backbone\.layers\.(\d+)\.downsample\.(reduction\.weight|norm\.weight|norm\.bias)",
         r"backbone.model.encoder.layers.\1.downsample.\2"),
        (r"backbone\.norm(\d+)\.(weight|bias)", r"backbone.hidden_states_norms.\1.\2"),
        # Pixel decoder (BasePixelDecoder)
        (pixel + r"(adapter|layer)_(\d+)\.(weight|norm\.weight|norm\.bias)", lateral),
        (pixel + r"mask_features\.(weight|bias)", r"pixel_decoder.mask_projection.\1"),
        # TransformerEncoderPixelDecoder
        (pixel + r"input_proj\.(weight|bias)", r"pixel_decoder.input_projection.\1"),
        (encoder_layer + r"self_attn\.in_proj_(weight|bias)",
         _split_rows(tuple(rf"pixel_decoder.encoder_layers.\1.self_attn.{p}_proj.\2" for p in "qkv"))),
        (encoder_layer + r"self_attn\.out_proj\.(weight|bias)", r"pixel_decoder.encoder_layers.\1.self_attn.o_proj.\2"),
        (encoder_layer + r"linear1\.(weight|bias)", r"pixel_decoder.encoder_layers.\1.fc1.\2"),
        (encoder_layer + r"linear2\.(weight|bias)", r"pixel_decoder.encoder_layers.\1.fc2.\2"),
        (encoder_layer + r"norm1\.(weight|bias)", r"pixel_decoder.encoder_layers.\1.self_attn_layer_norm.\2"),
        (encoder_layer + r"norm2\.(weight|bias)", r"pixel_decoder.encoder_layers.\1.final_layer_norm.\2"),
        # Transformer predictor
        (r"sem_seg_head\.predictor\.query_embed\.weight", r"transformer_decoder.query_position_embeddings.weight"),
        (r"sem_seg_head\.predictor\.input_proj\.(weight|bias)", r"transformer_decoder.input_projection.\1"),
        (layer + r"self_attn\.in_proj_(weight|bias)",
         _split_rows(tuple(rf"transformer_decoder.layers.\1.self_attn.{p}_proj.\2" for p in "qkv"))),
        (layer + r"multihead_attn\.in_proj_(weight|bias)",
         _split_rows(tuple(rf"transformer_decoder.layers.\1.encoder_attn.{p}_proj.\2" for p in "qkv"))),
        (layer + r"self_attn\.out_proj\.(weight|bias)", r"transformer_decoder.layers.\1.self_attn.o_proj.\2"),
        (layer + r"multihead_attn\.out_proj\.(weight|bias)", r"transformer_decoder.layers.\1.encoder_attn.o_proj.\2"),
        (layer + r"linear1\.(weight|bias)", r"transformer_decoder.layers.\1.fc1.\2"),
        (layer + r"linear2\.(weight|bias)", r"transformer_decoder.layers.\1.fc2.\2"),
        (layer + r"norm1\.(weight|bias)", r"transformer_decoder.layers.\1.self_attn_layer_norm.\2"),
        (layer + r"norm2\.(weight|bias)", r"transformer_decoder.layers.\1.encoder_attn_layer_norm.\2"),
        (layer + r"norm3\.(weight|bias)", r"transformer_decoder.layers.\1.final_layer_norm.\2"),
        (r"sem_seg_head\.predictor\.transformer\.decoder\.norm\.(weight|bias)", r"transformer_decoder.layernorm.\1"),
        (r"sem_seg_head\.predictor\.class_embed\.(weight|bias)", r"class_predictor.\1"),
        (r"sem_seg_head\.predictor\.mask_embed\.layers\.(\d+)\.(weight|bias)", r"mask_embedder.layers.\1.\2"),
    ]


ORIGINAL_DROP = [
    r"criterion\.empty_weight",
    r"pixel_mean",
    r"pixel_std",
    # (Sync)BatchNorm counters of backbones trained without FrozenBN (eval mode never reads them)
    r"backbone\..+\.num_batches_tracked",
]


def convert_original_state_dict(
    state_dict: dict[str, torch.Tensor], overrides: dict | None = None, bgr_input: bool = False
) -> MaskFormerForUniversalSegmentation:
    """Our model (eval mode) holding the weights of an original MaskFormer state dict (either pixel-decoder layout).
    `bgr_input`: the original reads BGR images (`INPUT.FORMAT: BGR`); the input channels of the first convolution are
    reversed so that the model reads RGB like every other of ours."""
    config = config_from_original(state_dict, overrides)
    model = MaskFormerForUniversalSegmentation(config).eval()
    num_features = len(model.backbone.channels)
    rules = original_rules(num_features, deep_stem=config.backbone_deep_stem)
    converted = rename_keys(state_dict, rules, ORIGINAL_DROP, source_name="original checkpoint")
    expected = model.state_dict()
    # Buffers and parameters the original does not store (see the module docstring table).
    for key, value in expected.items():
        if key in converted:
            continue
        if key.endswith("num_batches_tracked"):
            converted[key] = torch.zeros_like(value)
        elif key in ("backbone.model.layernorm.weight", "backbone.model.layernorm.bias"):
            converted[key] = torch.ones_like(value) if key.endswith("weight") else torch.zeros_like(value)
    if bgr_input:
        for key in ("backbone.embedder.embedder.convolution.weight", "backbone.embedder.embedder.0.convolution.weight",
                    "backbone.model.embeddings.patch_embeddings.projection.weight"):  # fmt: skip
            if key in converted:
                converted[key] = converted[key].flip(1)
    load_state_dict_strict(model, converted)
    return model


def _check_against_weights(config: MaskFormerConfig, detectron2_config: dict) -> None:
    """Refuses a config.yaml that does not describe the checkpoint's architecture."""
    model = detectron2_config.get("MODEL", {})
    expected = {
        "MODEL.SEM_SEG_HEAD.NUM_CLASSES": config.num_labels,
        "MODEL.MASK_FORMER.HIDDEN_DIM": config.decoder_config.d_model,
        "MODEL.MASK_FORMER.NUM_OBJECT_QUERIES": config.num_queries,
        "MODEL.MASK_FORMER.DEC_LAYERS": config.decoder_config.decoder_layers,
        "MODEL.MASK_FORMER.DIM_FEEDFORWARD": config.decoder_config.decoder_ffn_dim,
        "MODEL.SEM_SEG_HEAD.CONVS_DIM": config.fpn_feature_size,
        "MODEL.SEM_SEG_HEAD.MASK_DIM": config.mask_feature_size,
    }
    if _get(model, "SEM_SEG_HEAD.PIXEL_DECODER_NAME") == "TransformerEncoderPixelDecoder":
        expected["MODEL.SEM_SEG_HEAD.TRANSFORMER_ENC_LAYERS"] = config.pixel_decoder_encoder_layers
    mismatches = [
        f"{key} {_get(detectron2_config, key)} vs {value} in the weights"
        for key, value in expected.items()
        if _get(detectron2_config, key) is not None and int(_get(detectron2_config, key)) != int(value)
    ]
    if mismatches:
        raise ConversionError("The config does not match the checkpoint: " + "; ".join(mismatches))


def convert_original_checkpoint(
    checkpoint: str | Path, config_path: str | Path | None = None, allow_unsafe_pickle: bool = False
) -> tuple[MaskFormerForUniversalSegmentation, MaskFormerImageProcessor]:
    """Loads an original detectron2 checkpoint into our model and image processor.

    `config_path`: the release's detectron2 config (`config.yaml` as `cfg.dump()` writes it, or a released
    `configs/**/*.yaml` with its `_BASE_` files beside it), from which everything the weights cannot tell is read:
    `MASK_FORMER.SIZE_DIVISIBILITY` (recorded in the model config and as the processor's `size_divisor`), `NHEADS`,
    `DROPOUT`, `ENFORCE_INPUT_PROJ`, the ResNet's `STRIDE_IN_1X1` and (DeepLab backbone) `RES5_MULTI_GRID`,
    `PIXEL_MEAN` / `PIXEL_STD` / `INPUT.FORMAT`, the test resize, `PANOPTIC_ON` (post-processing order) and, for the
    COCO / ADE20K panoptic datasets, the stuff classes (the processor's default `label_ids_to_fuse`). Or a JSON file
    of `MaskFormerConfig` fields to override. Without a config, a known release (hf_segmodels/zoo/zoo.json) gets its
    release's settings (`RELEASE_SETTINGS`), anything else the defaults of the ADE20K semantic releases."""
    overrides, processor_kwargs, bgr = None, {}, False
    detectron2_config = None
    if config_path is not None:
        config_path = Path(config_path)
        if not config_path.is_file():
            raise ConversionError(f"Config file not found: {str(config_path)!r}.")
        if config_path.suffix.lower() in (".yaml", ".yml"):
            detectron2_config = read_detectron2_config(config_path)
            overrides, processor_kwargs, bgr = settings_from_detectron2_config(detectron2_config)
        else:
            try:
                overrides = json.loads(config_path.read_text())
            except json.JSONDecodeError as error:
                raise ConversionError(
                    "--config for --source original must be the release's detectron2 config.yaml or a JSON file of "
                    f"MaskFormerConfig fields: {error}"
                ) from error
    else:
        release = settings_of_release(checkpoint)
        if release is not None:
            overrides, processor_kwargs = release
    state_dict = load_original_checkpoint(checkpoint, allow_unsafe_pickle)
    model = convert_original_state_dict(state_dict, overrides, bgr_input=bgr)
    if detectron2_config is not None:
        _check_against_weights(model.config, detectron2_config)
    processor_kwargs.setdefault("size_divisor", max(int(model.config.size_divisibility), 0))
    return model, MaskFormerImageProcessor(**processor_kwargs)


__all__ = [
    "RELEASE_SETTINGS",
    "config_from_original",
    "config_from_transformers",
    "convert_original_checkpoint",
    "convert_original_state_dict",
    "convert_transformers_checkpoint",
    "load_original_checkpoint",
    "original_rules",
    "read_detectron2_config",
    "settings_from_detectron2_config",
    "settings_of_release",
]
