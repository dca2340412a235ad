"""The test protocol a checkpoint was evaluated with, recorded in its config (`config.test_protocol`).

A converted (or trained) checkpoint stores, as a plain dict in `config.json`, how its release was evaluated:

```json
"test_protocol": {
  "mode": "slide", "window": [512, 512], "stride": [341, 341],
  "resize": {"shortest_edge": 512, "longest_edge": 2048}, "size_divisor": null,
  "ms_scales": [0.5, 0.75, 1.0, 1.25, 1.5, 1.75], "ms_flip": true,
  "task": "semantic", "source": "https://github.com/fudan-zvg/SETR/... test_cfg"
}
```

- `mode` / `window` / `stride` (`(height, width)`): whole-image or sliding-window inference on the resized image.
  `hf_segmodels.infer_logits(model, pixel_values)` and `pipeline("image-segmentation")` follow them.
- `resize`: the test resize, as the image processor's `size`: `{"shortest_edge", "longest_edge"}` is the
  keep-ratio rule of mmsegmentation / detectron2 (scale = min(longest / long side, shortest / short side)),
  `{"shortest_edge"}` alone scales the short side to it, `{"height", "width"}` is a fixed size.
  `size_divisor`: both sides then rounded up to a multiple of it (SegFormer's ADE20K `AlignedResize`). The converters
  build the image processor with this resize.
- `ms_scales` / `ms_flip`: the multi-scale + flip setting of the release's "MS" numbers (`()` when none was
  reported); single-scale is the default everywhere, `examples/evaluate.py --mode ms` uses these.
- `task`: "semantic" or "panoptic" (MaskFormer's panoptic releases): the pipeline's default sub-task.
- `source`: where the values come from (the release's config).

`TestProtocol` is the typed view of that dict; configs validate it on construction.
"""

from dataclasses import asdict, dataclass

_MODES = ("whole", "slide")
_TASKS = ("semantic", "panoptic", "instance")
_RESIZE_FORMS = ({"shortest_edge", "longest_edge"}, {"shortest_edge"}, {"height", "width"})


def _pair_or_none(value, name: str) -> tuple[int, int] | None:
    if value is None:
        return None
    if isinstance(value, int):
        value = (value, value)
    value = tuple(int(v) for v in value)
    if len(value) != 2 or min(value) < 1:
        raise ValueError(f"test_protocol.{name} must be a positive (height, width) pair, got {value!r}.")
    return value


@dataclass(frozen=True)
class TestProtocol:
    """Typed view of `config.test_protocol` (see the module docstring for the fields)."""

    __test__ = False  # not a pytest test class

    mode: str = "whole"
    window: tuple[int, int] | None = None
    stride: tuple[int, int] | None = None
    resize: dict | None = None
    size_divisor: int | None = None
    ms_scales: tuple[float, ...] = ()
    ms_flip: bool = False
    task: str = "semantic"
    source: str | None = None

    def __post_init__(self):
        object.__setattr__(self, "window", _pair_or_none(self.window, "window"))
        object.__setattr__(self, "stride", _pair_or_none(self.stride, "stride"))
        object.__setattr__(self, "ms_scales", tuple(float(s) for s in self.ms_scales))
        if self.mode not in _MODES:
            raise ValueError(f"test_protocol.mode must be one of {_MODES}, got {self.mode!r}.")
        if (self.mode == "slide") != (self.window is not None and self.stride is not None):
            raise ValueError("test_protocol: mode 'slide' needs `window` and `stride`; mode 'whole' takes neither.")
        if self.mode == "whole" and (self.window is not None or self.stride is not None):
            raise ValueError("test_protocol: mode 'whole' takes no `window` / `stride`.")
        if self.stride is not None and any(s > w for s, w in zip(self.stride, self.window)):
            raise ValueError(f"test_protocol.stride {self.stride} must not exceed the window {self.window}.")
        if self.resize is not None:
            resize = {key: int(value) for key, value in self.resize.items() if value is not None}
            if set(resize) not in _RESIZE_FORMS or min(resize.values()) < 1:
                raise ValueError(
                    "test_protocol.resize must be {'shortest_edge', 'longest_edge'}, {'shortest_edge'} or "
                    f"{{'height', 'width'}} with positive sizes, got {self.resize!r}."
                )
            object.__setattr__(self, "resize", resize)
        if self.size_divisor is not None and int(self.size_divisor) < 1:
            raise ValueError(f"test_protocol.size_divisor must be positive or None, got {self.size_divisor!r}.")
        if any(s <= 0 for s in self.ms_scales):
            raise ValueError(f"test_protocol.ms_scales must be positive, got {self.ms_scales!r}.")
        if self.task not in _TASKS:
            raise ValueError(f"test_protocol.task must be one of {_TASKS}, got {self.task!r}.")

    @classmethod
    def from_dict(cls, values: "dict | TestProtocol") -> "TestProtocol":
        if isinstance(values, TestProtocol):
            return values
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"test_protocol has unknown fields {unknown}; known: {sorted(known)}.")
        return cls(**values)

    def to_dict(self) -> dict:
        """The JSON form stored in `config.json` (lists for pairs)."""
        values = asdict(self)
        for name in ("window", "stride", "ms_scales"):
            values[name] = list(values[name]) if values[name] is not None else None
        return values

    @property
    def sliding_window(self) -> tuple[tuple[int, int] | None, tuple[int, int] | None]:
        """`(window, stride)` for `infer_logits`: `(None, None)` for whole-image inference."""
        return (self.window, self.stride) if self.mode == "slide" else (None, None)


def normalize_test_protocol(value) -> dict | None:
    """Validates a config's `test_protocol` value and returns its canonical JSON form (None stays None)."""
    if value is None:
        return None
    return TestProtocol.from_dict(value).to_dict()


def get_test_protocol(model_or_config) -> TestProtocol | None:
    """The recorded test protocol of a model or config, or None when it records none."""
    config = getattr(model_or_config, "config", model_or_config)
    value = getattr(config, "test_protocol", None)
    return None if value is None else TestProtocol.from_dict(value)


# ---------------------------------------------------------------------------------------------------------------
# Translation of the originals' own test settings (as recorded in hf_segmodels/zoo/zoo.json `original_test_cfg` or read
# from a release's side file) into a protocol.
# ---------------------------------------------------------------------------------------------------------------


def _mmseg_resize(img_scale, keep_ratio: bool = True) -> dict:
    """mmseg `img_scale=(long, short)` with `keep_ratio=True` -> our keep-ratio size; without -> fixed (w, h)."""
    if keep_ratio:
        return {"shortest_edge": int(min(img_scale)), "longest_edge": int(max(img_scale))}
    width, height = img_scale
    return {"height": int(height), "width": int(width)}


def protocol_from_original_test_cfg(architecture: str, cfg: dict) -> TestProtocol:
    """The protocol described by the original code base's test settings of one release.

    - Segmenter (rstrudel/segmenter `segm/eval/miou.py`): `im_size`, `max_ratio` (the dataset config's, the test
      resize is mmseg's keep-ratio `img_scale=(max_ratio * im_size, im_size)`), `window_size`, `window_stride`.
    - SETR / SegFormer (mmsegmentation configs): `img_scale`, `keep_ratio`, optional `size_divisor`
      (`AlignedResize`), optional `min_short` (SETR's Pascal Context `Resize(dataset='pascal_context')`, which scales
      the short side to `max(min(img_scale), min_short)` with no limit on the long side), and `test_cfg`
      (`mode`, `crop_size`, `stride`).
    - MaskFormer (detectron2 configs): `MIN_SIZE_TEST`, `MAX_SIZE_TEST`, whole-image inference.
    All take `ms_ratios` / `flip` (the "MS" setting, omitted when none was reported), `task` and `source`.
    """
    common = {
        "ms_scales": tuple(cfg.get("ms_ratios") or ()),
        "ms_flip": bool(cfg.get("flip", False)) if cfg.get("ms_ratios") else False,
        "task": cfg.get("task", "semantic"),
        "source": cfg.get("source"),
    }
    if architecture == "segmenter":
        im_size, window, stride = int(cfg["im_size"]), int(cfg["window_size"]), int(cfg["window_stride"])
        return TestProtocol(
            mode="slide", window=(window, window), stride=(stride, stride),
            resize={"shortest_edge": im_size, "longest_edge": int(cfg["max_ratio"]) * im_size}, **common,
        )
    if architecture in ("setr", "segformer"):
        if cfg.get("min_short") is not None:
            resize = {"shortest_edge": max(int(min(cfg["img_scale"])), int(cfg["min_short"]))}
        else:
            resize = _mmseg_resize(cfg["img_scale"], cfg.get("keep_ratio", True))
        test_cfg = cfg.get("test_cfg", {"mode": "whole"})
        slide = test_cfg.get("mode") == "slide"
        return TestProtocol(
            mode="slide" if slide else "whole",
            window=test_cfg.get("crop_size") if slide else None,
            stride=test_cfg.get("stride") if slide else None,
            resize=resize, size_divisor=cfg.get("size_divisor"), **common,
        )
    if architecture == "maskformer":
        return TestProtocol(
            mode="whole",
            resize={"shortest_edge": int(cfg["MIN_SIZE_TEST"]), "longest_edge": int(cfg["MAX_SIZE_TEST"])},
            **common,
        )
    raise ValueError(f"Unknown architecture {architecture!r}.")


def mmcv_test_cfg(cfg: dict) -> dict | None:
    """The `test_cfg` of an mmcv / mmsegmentation config: under `model` (mmseg 0.x / 1.x) or at the top level (the
    older configs of SETR and SegFormer)."""
    return (cfg.get("model") or {}).get("test_cfg") or cfg.get("test_cfg")


def protocol_from_side_file(test_cfg: dict | None, image_processor, source: str) -> "TestProtocol | None":
    """The protocol a checkpoint's own side file states, for conversions of checkpoints that are not a known release:
    its test-time inference (`test_cfg` of an mmseg / mmcv config: `mode`, `crop_size`, `stride`; Segmenter's
    `variant.yml` `inference_kwargs` as `crop_size` / `stride`) with the test resize the converter read from the same
    file into `image_processor`. None when the file states no test-time inference."""
    if not isinstance(test_cfg, dict) or test_cfg.get("mode", "whole") not in _MODES:
        return None
    slide = test_cfg.get("mode", "whole") == "slide"
    size = image_processor.size if image_processor is not None else None
    size = {key: getattr(size, key, None) if not isinstance(size, dict) else size.get(key)
            for key in ("shortest_edge", "longest_edge", "height", "width")} if size is not None else {}
    resize = {key: value for key, value in size.items() if value}
    if set(resize) not in _RESIZE_FORMS:
        resize = None
    divisor = getattr(image_processor, "size_divisor", None)
    return TestProtocol(
        mode="slide" if slide else "whole",
        window=test_cfg.get("crop_size") if slide else None,
        stride=test_cfg.get("stride") if slide else None,
        resize=resize,
        size_divisor=divisor if divisor and divisor > 1 else None,
        source=source,
    )


def apply_test_protocol(model, image_processor, protocol: "TestProtocol | dict | None") -> None:
    """Records `protocol` in `model.config` and gives `image_processor` its test resize."""
    if protocol is None:
        return
    protocol = TestProtocol.from_dict(protocol)
    model.config.test_protocol = protocol.to_dict()
    if protocol.resize is not None:
        from transformers.image_utils import SizeDict

        image_processor.size = SizeDict(**protocol.resize)  # the type the processor's own __init__ gives `size`
    if hasattr(image_processor, "size_divisor") and model.config.model_type != "segmodels_maskformer":
        # SegFormer's aligned resize; MaskFormer's `size_divisor` is its batch padding, set from the release config
        image_processor.size_divisor = protocol.size_divisor


def protocol_from_training_crop(crop_size, image_processor) -> TestProtocol:
    """The protocol `examples/train.py` records: sliding windows of the training crop (stride 2/3 of it, as
    mmsegmentation's `slide` configs use for 512 crops) on images resized like the image processor's test size."""
    window = _pair_or_none(crop_size, "window")
    stride = tuple(max(1, (2 * side) // 3) for side in window)
    size = {key: value for key, value in dict(image_processor.size or {}).items() if value is not None}
    return TestProtocol(
        mode="slide", window=window, stride=stride, resize=size or None,
        size_divisor=getattr(image_processor, "size_divisor", None),
        source="examples/train.py: the training crop as window",
    )


__all__ = [
    "TestProtocol",
    "apply_test_protocol",
    "get_test_protocol",
    "normalize_test_protocol",
    "protocol_from_original_test_cfg",
    "protocol_from_training_crop",
]
