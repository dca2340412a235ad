"""One vocabulary for presets: the released models by their zoo names (`hf_segmodels/zoo/zoo.json`).

Every configuration has `from_preset(name, **kwargs)`, `preset_names()` and `preset_aliases()`:

* a zoo name (`"segmenter-l16-ade"`, `"setr-pup-ade"`, `"segformer-b2-ade"`, `"maskformer-swin-b-coco-panoptic"`; the
  names `preset_names()` lists, those of the Hub repositories) gives the config of that release: its architecture,
  its dataset's classes (and names where the config has them) and training crop, and the test protocol it was
  evaluated with (`config.test_protocol`, as the converters record it);
* the original repositories' names stay accepted as aliases (`preset_aliases()`): `"seg_large_mask"`,
  `"setr_pup_large_ade20k"`, `"b2-ade-512"`, `"mit-b2"`, `"swin-base"`. They give what they always gave (no test
  protocol).

`kwargs` override any field. Sizes are named fields (`EncoderSize`), never positional tuples.
"""

import json
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

from .protocol import protocol_from_original_test_cfg

# Package data beside this module (read directly: this module ships as remote code with the configurations).
ZOO_PATH = Path(__file__).resolve().parent / "zoo" / "zoo.json"


@dataclass(frozen=True)
class EncoderSize:
    """The size of a plain ViT encoder, in transformers' `ViTConfig` field names (MLP `mlp_ratio` x the width)."""

    hidden_size: int
    num_hidden_layers: int
    num_attention_heads: int
    mlp_ratio: int = 4

    def config_fields(self) -> dict[str, int]:
        """The config fields of this size, `intermediate_size` included."""
        return {
            "hidden_size": self.hidden_size,
            "num_hidden_layers": self.num_hidden_layers,
            "num_attention_heads": self.num_attention_heads,
            "intermediate_size": self.mlp_ratio * self.hidden_size,
        }


# ViT-Ti / S / B / L (DeiT's tiny and small, ViT's base and large): head size 64, MLP 4x the width. Segmenter uses the
# four, SETR's T-Base / T-Large are "base" / "large".
VIT_SIZES = {
    "tiny": EncoderSize(hidden_size=192, num_hidden_layers=12, num_attention_heads=3),
    "small": EncoderSize(hidden_size=384, num_hidden_layers=12, num_attention_heads=6),
    "base": EncoderSize(hidden_size=768, num_hidden_layers=12, num_attention_heads=12),
    "large": EncoderSize(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16),
}


@dataclass(frozen=True)
class Release:
    """How a configuration builds one released model: `variant`, the name of its architecture (for Segmenter, SETR
    and SegFormer the original name, itself an accepted alias; for MaskFormer the backbone), and `overrides`, where
    the release differs from what that name gives (config fields, and the `dataset` of a Segmenter variant)."""

    variant: str
    overrides: dict = field(default_factory=dict)


class UnknownPresetError(ValueError):
    """A name that is neither a zoo name nor an alias of the configuration."""


@cache
def _zoo_models() -> dict[str, dict]:
    if not ZOO_PATH.is_file():
        raise FileNotFoundError(
            f"The model zoo {ZOO_PATH} is missing: it ships with hf_segmodels (`pip install hf-segmodels`); released "
            "models are built by their zoo names from it."
        )
    return {entry["name"]: entry for entry in json.loads(ZOO_PATH.read_text(encoding="utf-8"))["models"]}


def zoo_entry(name: str) -> dict:
    """The zoo entry of the released model `name`."""
    entry = _zoo_models().get(name)
    if entry is None:
        raise KeyError(f"{name!r} is not a model of {ZOO_PATH}.")
    return entry


def release_test_protocol(name: str) -> dict | None:
    """The test protocol (as `config.test_protocol` stores it) the release `name` was evaluated with, from the
    original test settings its zoo entry records; None when it records none."""
    entry = zoo_entry(name)
    cfg = entry.get("original_test_cfg")
    return None if cfg is None else protocol_from_original_test_cfg(entry["architecture"], cfg).to_dict()


def unknown_preset_error(kind: str, name: str, zoo_names, aliases: str) -> UnknownPresetError:
    return UnknownPresetError(
        f"Unknown {kind} preset {name!r}. The released models, by their zoo names (hf_segmodels/zoo/zoo.json): "
        f"{', '.join(zoo_names)}. The original names are accepted as aliases: {aliases}."
    )


class PresetConfigMixin:
    """`from_preset` / `preset_names` / `preset_aliases` of a configuration class, which sets:

    * `_PRESET_KIND`: the architecture's name in messages ("SETR");
    * `_RELEASES`: zoo name -> `Release`;
    * `_ALIAS_HINT`: the aliases in words, for the error of an unknown name;
    * `_alias_names()`: every alias; `_from_alias(name, **kwargs)`: the config of an alias, or None when `name` is
      none; `_from_release(release, **kwargs)` (default: the alias `release.variant` with `release.overrides`).
    """

    _PRESET_KIND: str
    _RELEASES: dict[str, Release] = {}
    _ALIAS_HINT: str = ""

    @classmethod
    def preset_names(cls) -> list[str]:
        """The zoo names of the released models that `from_preset` builds."""
        return list(cls._RELEASES)

    @classmethod
    def preset_aliases(cls) -> list[str]:
        """The original names `from_preset` accepts too (aliases)."""
        return list(cls._alias_names())

    @classmethod
    def from_preset(cls, name: str, **kwargs):
        """The config of the released model `name` (a zoo name, see `preset_names()`: the release's architecture,
        classes, training crop and `test_protocol`) or of an original name (an alias, see `preset_aliases()`: as
        before, no test protocol). `kwargs` override any field. Raises `ValueError` for other names."""
        release = cls._RELEASES.get(name)
        if release is not None:
            kwargs.setdefault("test_protocol", release_test_protocol(name))
            return cls._from_release(release, **kwargs)
        config = cls._from_alias(name, **kwargs)
        if config is None:
            raise unknown_preset_error(cls._PRESET_KIND, name, cls.preset_names(), cls._ALIAS_HINT)
        return config

    @classmethod
    def _from_release(cls, release: Release, **kwargs):
        return cls._from_alias(release.variant, **{**release.overrides, **kwargs})

    @classmethod
    def _alias_names(cls) -> list[str]:
        raise NotImplementedError

    @classmethod
    def _from_alias(cls, name: str, **kwargs):
        raise NotImplementedError


__all__ = [
    "EncoderSize",
    "PresetConfigMixin",
    "Release",
    "UnknownPresetError",
    "VIT_SIZES",
    "ZOO_PATH",
    "release_test_protocol",
    "unknown_preset_error",
    "zoo_entry",
]
