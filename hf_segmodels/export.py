"""Export a model of this package to ONNX or OpenVINO IR for CPU deployment, and verify the exported graph.

    python -m hf_segmodels.export --model DIR --format onnx [openvino] --output OUT [--height H --width W]
        [--batch_size B] [--static] [--opset N] [--atol 1e-4] [--no_winograd]

or `hf_segmodels.export.export_model(...)`: one entry point for all four architectures. The graph is captured with
`torch.export` and written by `torch.onnx.export(dynamo=True)` (the fast kernels of `hf_segmodels.kernels` and the
models' input checks step aside while a graph is captured, so it holds only standard operators; the rewrites that are
standard operators stay: SegFormer's merged decoder, and MaskFormer's folded BatchNorms and wide 3x3 convolutions as
Winograd, see `hf_segmodels.kernels`); OpenVINO IR is
converted from that ONNX graph and keeps its dynamic dimensions. Outputs: `logits` (and for MaskFormer also
`class_queries_logits`, `masks_queries_logits`).

Input sizes. By default the graph takes `pixel_values` (batch, 3, height, width) of any batch size and of any
height / width from a minimum (`size_rule`; written to `export_config.json` as `dynamic_axes` and `size_rule`):

| model | batch | height, width |
| --- | --- | --- |
| Segmenter, SETR (plain ViT) | any | any from patch_size + 1 (17 for patch 16) |
| SegFormer (MiT) | any | any from the smallest size whose spatial reductions keep 2 tokens per side (61 released) |
| MaskFormer, ResNet backbone | any | any from 33 |
| MaskFormer, MiT backbone / ViT backbone | any | as SegFormer / any from max(patch + 1, 65 - patch) (49 for 16) |
| MaskFormer, Swin backbone | any | fixed: the export size |

The minimums keep every strided map the graph follows at 2 or more pixels per side: `torch.export` specialises a
size of 1 (broadcasting), so a graph captured with bigger maps cannot follow a side of 1 (the models themselves take
smaller inputs in eager PyTorch). While exporting, the ViTs pad by patch_size - 1 instead of up to the next patch
multiple (the strided patch embedding floors, so it sees the same ceil(H / patch) windows; a pad to the multiple is a
symbolic modulo that torch.export cannot bound). transformers' Swin chooses its window padding, shift and window size
in Python from the map size; `torch.export` turns those choices into assertions on the input size (and takes minutes
on a tiny Swin), so MaskFormer-Swin graphs fix height and width and keep the batch dynamic. A size the rule refuses
raises a `ValueError` that names the rule, at export time and in `run_exported` (which reads `export_config.json`).
Runtimes can run a dynamic graph slower than a static one (OpenVINO notably: `benchmarks/results/deploy.md`);
`--static`, or OpenVINO's `model.reshape([1, 3, 512, 512])` before `compile_model`, gives the static speed for a fixed
deployment size.

`--static` (`dynamic=False`) exports ONE shape, (batch_size, 3, height, width), with any size the model accepts. The
default export size is the checkpoint's sliding window (what its test protocol runs every window at), else the
processor's fixed size, else the config's image_size. If the dynamo exporter fails, the TorchScript-based exporter
(`dynamo=False`) writes a static graph of the export size instead, with a warning.

After writing, the export is verified: the runtime (onnxruntime / openvino, `pip install hf-segmodels[deploy]`) runs
a random sample at the export size and, for a dynamic export, a second one with another batch size, height and width
(`second_shape`); the maximum absolute difference to PyTorch of each is printed; above `atol` (1e-4 for float32) it
is an `ExportVerificationError` (exit status 1). The image processor's config is written next to the graph.
"""

import argparse
import contextlib
import json
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from . import kernels

FORMATS = ("onnx", "openvino")
CONFIG_NAME = "export_config.json"
# The TorchScript exporter's opset when none is asked for (the dynamo exporter picks its own, 20 in torch 2.13).
TORCHSCRIPT_OPSET = 17


class ExportVerificationError(RuntimeError):
    """The exported graph does not reproduce the PyTorch model (or cannot be run)."""


class _Outputs(torch.nn.Module):
    """The model's forward on `pixel_values` alone, returning a tuple of named tensors."""

    def __init__(self, model: torch.nn.Module, names: tuple[str, ...]):
        super().__init__()
        self.model, self.names = model, names

    def forward(self, pixel_values: torch.Tensor):
        outputs = self.model(pixel_values=pixel_values, return_dict=True)
        return tuple(getattr(outputs, name) for name in self.names)


def output_names(model) -> tuple[str, ...]:
    if model.config.model_type == "segmodels_maskformer":
        return ("logits", "class_queries_logits", "masks_queries_logits")
    return ("logits",)


@dataclass(frozen=True)
class SizeRule:
    """The input heights / widths a dynamic export takes: any from `minimum` pixels on (both sides alike), or only
    the export size when `dynamic_size` is False. The batch size is always dynamic (any, at least 1)."""

    minimum: int = 1
    dynamic_size: bool = True

    def describe(self) -> str:
        """The rule in words: "any, at least 61" or "fixed at the export size"."""
        return f"any, at least {self.minimum}" if self.dynamic_size else "fixed at the export size"

    def as_dict(self) -> dict:
        return {"minimum": self.minimum, "dynamic_size": self.dynamic_size}


def _mit_minimum(config) -> int:
    """The smallest side whose every MiT stage map has 2 tokens per side after the stage's spatial-reduction conv
    (kernel = stride = sr_ratio: a map of side n becomes (n - sr) // sr + 1 >= 2, i.e. n >= 2 * sr)."""
    for side in range(1, 1 << 16):
        current, fits = side, True
        for stage in range(config.num_encoder_blocks):
            kernel, stride = config.patch_sizes[stage], config.strides[stage]
            current = (current + 2 * (kernel // 2) - kernel) // stride + 1
            fits = fits and current >= 2 * config.sr_ratios[stage]
        if fits:
            return side
    raise ValueError("No input size fits this SegFormer configuration's spatial reductions.")


def size_rule(model) -> SizeRule:
    """The heights / widths a dynamic export of `model` takes (the reasons: the module docstring). Every minimum keeps
    the maps the graph follows at 2 or more pixels per side."""
    config = model.config
    model_type = config.model_type
    if model_type in ("segmodels_segmenter", "segmodels_setr"):
        return SizeRule(minimum=config.patch_size + 1)  # a patch grid of ceil(H / patch) >= 2
    if model_type == "segmodels_segformer":
        return SizeRule(minimum=_mit_minimum(config))
    if model_type == "segmodels_maskformer":
        backbone = config.backbone_config
        if backbone.model_type == "resnet":
            return SizeRule(minimum=33)  # stride 32: ceil(H / 32) >= 2
        if backbone.model_type == "segmodels_segformer":
            return SizeRule(minimum=max(_mit_minimum(backbone), 33))
        if backbone.model_type in ("segmodels_segmenter", "segmodels_setr"):
            # the simple feature pyramid max-pools the patch grid (ceil(H / patch)) by 32 / patch: 2 pixels there
            patch = backbone.patch_size
            return SizeRule(minimum=max(patch + 1, 65 - patch))
    return SizeRule(dynamic_size=False)  # Swin (and any other transformers backbone): the batch only


def check_size(rule: SizeRule, height: int, width: int, export_size: tuple[int, int] | None = None) -> None:
    """Raises a `ValueError` naming `rule` when a (height, width) input does not obey it (`export_size`: the only
    size of a graph whose height / width are fixed)."""
    if not rule.dynamic_size:
        if export_size is not None and (height, width) != tuple(export_size):
            raise ValueError(
                f"This export takes only height x width {export_size[0]}x{export_size[1]} (its height / width rule "
                f"is '{rule.describe()}'); got {height}x{width}."
            )
        return
    bad = [f"{name} {side}" for name, side in (("height", height), ("width", width)) if side < rule.minimum]
    if bad:
        raise ValueError(
            f"The dynamic export's height / width rule is '{rule.describe()}' (pixels); got {', '.join(bad)}. "
            f"Pad or resize the input to at least {rule.minimum} pixels per side."
        )


def second_shape(rule: SizeRule, shape: tuple[int, int, int, int]) -> tuple[int, int, int, int]:
    """The verification's second input of a dynamic export of `shape` (B, C, H, W): another batch size (2, or 1
    after a batch of 2 or more) and, when the size is dynamic, other sides obeying `rule`: odd ones (which exercise
    the ceil-divisions of strided layers and the ViTs' padding) near 3/4 of H and 5/4 of W."""
    batch, channels, height, width = shape
    other_batch = 2 if batch == 1 else 1
    if not rule.dynamic_size:
        return other_batch, channels, height, width

    def other(side: int, fraction: float) -> int:
        value = max(rule.minimum, round(side * fraction))
        value += 1 - value % 2  # odd
        return value if value != side else value + 2

    return other_batch, channels, other(height, 0.75), other(width, 1.25)


def default_size(model, processor=None) -> tuple[int, int]:
    """The export size: the checkpoint's sliding window, else the processor's fixed size, else the config's
    image_size, else 512 x 512."""
    protocol = getattr(model.config, "test_protocol", None) or {}
    window = protocol.get("window") if isinstance(protocol, dict) else None
    if window:
        return int(window[0]), int(window[-1])
    size = dict(getattr(processor, "size", None) or {})
    if size.get("height") and size.get("width"):
        return int(size["height"]), int(size["width"])
    image_size = getattr(model.config, "image_size", None)
    if isinstance(image_size, int):
        return image_size, image_size
    if isinstance(image_size, (list, tuple)) and len(image_size) == 2:
        return int(image_size[0]), int(image_size[1])
    return 512, 512


def _check_against_config(path: Path, shape: tuple[int, ...]) -> None:
    """Checks `shape` against the `export_config.json` next to `path`, when there is one: a `ValueError` naming the
    rule instead of the runtime's shape error."""
    config_path = path.parent / CONFIG_NAME
    if not config_path.is_file():
        return
    config = json.loads(config_path.read_text())
    if path.name not in {config.get("file"), *config.get("files", {}).values()}:
        return  # the config of another export
    if len(shape) != 4:
        return
    export_shape = config["input_shape"]
    if not config.get("dynamic", False):
        if list(shape) != list(export_shape):
            raise ValueError(f"This static export takes only pixel_values of shape {tuple(export_shape)}; got "
                             f"{tuple(shape)}. Export again with the size you need, or without --static.")
        return
    if shape[0] < 1:
        raise ValueError(f"The export needs a batch of at least 1 image; got shape {tuple(shape)}.")
    rule = SizeRule(**config["size_rule"])
    check_size(rule, int(shape[2]), int(shape[3]), (export_shape[2], export_shape[3]))


def run_exported(path: str | Path, format: str, pixel_values: np.ndarray) -> list[np.ndarray]:
    """Runs an exported graph (ONNX file or OpenVINO .xml) on `pixel_values` (B, 3, H, W) float32; returns its
    outputs in order. When the export's `export_config.json` lies next to it, an input size outside the export's
    size rule is a `ValueError` naming the rule."""
    path = Path(path)
    _check_against_config(path, tuple(pixel_values.shape))
    if format == "onnx":
        try:
            import onnxruntime
        except ImportError as error:
            raise ImportError("Running ONNX exports needs onnxruntime: pip install hf-segmodels[deploy]") from error
        session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        return session.run(None, {"pixel_values": pixel_values})
    try:
        import openvino
    except ImportError as error:
        raise ImportError("Running OpenVINO exports needs openvino: pip install hf-segmodels[deploy]") from error
    compiled = openvino.Core().compile_model(str(path), "CPU")
    result = compiled(pixel_values)
    return [np.asarray(result[output]) for output in compiled.outputs]


def verify(path: str | Path, format: str, model, shape: tuple[int, int, int, int], atol: float = 1e-4,
           seed: int = 0) -> float:
    """The max abs difference between the exported graph and `model` on a random input of `shape` (B, 3, H, W);
    raises `ExportVerificationError` above `atol`, on a different output shape, or on non-finite outputs."""
    generator = torch.Generator().manual_seed(seed)
    pixel_values = torch.randn(shape, generator=generator)
    names = output_names(model)
    with torch.no_grad():
        expected = _Outputs(model.eval(), names).eval()(pixel_values)
    try:
        obtained = run_exported(path, format, pixel_values.numpy())
    except ImportError:
        raise
    except Exception as error:  # noqa: BLE001 - any runtime failure means the export is unusable
        raise ExportVerificationError(
            f"The exported {format} graph {str(path)!r} cannot be run on a {tuple(shape)} input: {error}"
        ) from error
    worst = 0.0
    for name, reference, value in zip(names, expected, obtained):
        if tuple(value.shape) != tuple(reference.shape):
            raise ExportVerificationError(
                f"Output {name!r} of the export has shape {tuple(value.shape)}, PyTorch's {tuple(reference.shape)} "
                f"(input {tuple(shape)})."
            )
        if not np.isfinite(value).all():
            raise ExportVerificationError(f"Output {name!r} of the export holds NaN or Inf (input {tuple(shape)}).")
        worst = max(worst, float(np.abs(value - reference.numpy()).max()))
    if worst > atol:
        raise ExportVerificationError(
            f"The exported {format} graph differs from PyTorch by up to {worst:.3g} (> atol {atol:g}) on a "
            f"{tuple(shape)} input."
        )
    return worst


def _dynamic_shapes(rule: SizeRule) -> dict:
    """torch.export's `dynamic_shapes` for `pixel_values` under `rule` (the Dim names become the ONNX graph's
    dimension names)."""
    axes = {0: torch.export.Dim("batch", min=1)}
    if rule.dynamic_size:
        axes.update({2: torch.export.Dim("height", min=rule.minimum), 3: torch.export.Dim("width", min=rule.minimum)})
    return {"pixel_values": axes}


def export_program(model, shape: tuple[int, int, int, int], dynamic: bool = True) -> "torch.export.ExportedProgram":
    """`model` (eval mode) captured by `torch.export` on `pixel_values` of `shape` (B, 3, H, W): with the batch and,
    where `size_rule(model)` allows, height and width dynamic; else at that one shape. The example batch is at least
    2 for a dynamic export (torch.export specialises a size-1 dimension). Raises `ValueError` when H, W break the
    rule; torch.export's `UserError` ("Constraints violated") when the graph cannot follow every size the rule
    states."""
    names = output_names(model)
    batch, channels, height, width = shape
    dynamic_shapes = None
    if dynamic:
        rule = size_rule(model)
        check_size(rule, height, width)
        dynamic_shapes = _dynamic_shapes(rule)
        batch = max(batch, 2)
    example = torch.zeros(batch, channels, height, width)
    with torch.no_grad():
        # the wrapper in eval mode too: export restores the wrapper's mode on everything below it afterwards
        program = torch.export.export(_Outputs(model, names).eval(), (example,), dynamic_shapes=dynamic_shapes,
                                      strict=False)
    return program


def _export_onnx(
    model, shape: tuple[int, int, int, int], path: Path, dynamic: bool, opset: int | None
) -> tuple[str, int]:
    """Writes the ONNX graph of `model` to `path`; returns the exporter used ("dynamo" or "torchscript") and the
    graph's opset (the dynamo exporter writes 18 or newer: it keeps 18 when asked for less)."""
    names = output_names(model)
    try:
        program = export_program(model, shape, dynamic)
        # onnxscript's graph optimisation, on for every architecture (with torch 2.13 / onnxscript 0.7.2 it finishes
        # in seconds on the dynamic graphs of the released sizes)
        onnx_program = torch.onnx.export(program, dynamo=True, opset_version=opset, optimize=True,
                                         input_names=["pixel_values"], output_names=list(names), verbose=False)
        onnx_program.save(str(path), external_data=False)
        return "dynamo", int(onnx_program.model.opset_imports[""])
    except Exception as error:  # noqa: BLE001 - any capture / translation failure: fall back, and say so
        warnings.warn(
            f"The dynamo ONNX exporter failed ({type(error).__name__}: {str(error)[:300]}); exporting with the "
            f"TorchScript exporter at ONE fixed shape {tuple(shape)} instead.",
            RuntimeWarning,
            stacklevel=3,
        )
    with torch.no_grad():
        torch.onnx.export(
            _Outputs(model, names).eval(), (torch.zeros(shape),), str(path), dynamo=False,
            opset_version=opset or TORCHSCRIPT_OPSET, input_names=["pixel_values"], output_names=list(names),
        )  # fmt: skip
    return "torchscript", opset or TORCHSCRIPT_OPSET


def export_model(
    model_or_path,
    output: str | Path,
    format: str | tuple[str, ...] = "onnx",
    *,
    height: int | None = None,
    width: int | None = None,
    batch_size: int = 1,
    dynamic: bool = True,
    opset: int | None = None,
    atol: float = 1e-4,
    image_processor=None,
    verify_export: bool = True,
    winograd: bool = True,
) -> dict:
    """Exports `model_or_path` (a model of this package, or its folder) to `output` (a folder): `model.onnx` and / or
    `openvino_model.xml` / `.bin` (`format`: "onnx", "openvino" or both as a tuple, from one capture), plus
    `preprocessor_config.json` and `export_config.json` (files, export size, dynamic axes and size rule, output
    names, exporter). `height` x `width` and `batch_size` are the export size (the example the graph is captured on,
    and the verification's first input); `dynamic=False` fixes the graph to it. `opset`: None for the exporter's
    default. Returns the export config with the verification's `max_abs_difference` (the largest over the verified
    formats and sizes) and `verified` (each format and size with its difference). `winograd=False` keeps the wide 3x3
    convolutions plain (for int8 quantisation of convolutions or reduced-precision runtimes: Winograd's transforms
    need float32; see `hf_segmodels.kernels`).

    Raises `ValueError` for an unknown format or a size the dynamic export cannot take (the message names the
    rule), `ExportVerificationError` when the export does not reproduce the model within `atol`.
    """
    formats = (format,) if isinstance(format, str) else tuple(dict.fromkeys(format))
    if not formats or any(each not in FORMATS for each in formats):
        raise ValueError(f"Unknown export format {format!r}; choose one of {FORMATS} (or both).")
    if isinstance(model_or_path, (str, Path)):
        from transformers import AutoImageProcessor, AutoModelForSemanticSegmentation

        import hf_segmodels  # noqa: F401  (registers the architectures)

        model = AutoModelForSemanticSegmentation.from_pretrained(model_or_path)
        if image_processor is None:
            try:
                image_processor = AutoImageProcessor.from_pretrained(model_or_path)
            except OSError:
                image_processor = None
    else:
        model = model_or_path
    model = model.eval().float()
    default_height, default_width = default_size(model, image_processor)
    height, width = height or default_height, width or default_width
    if min(height, width, batch_size) < 1:
        raise ValueError(f"The export size must be positive, got batch {batch_size}, {height}x{width}.")
    shape = (batch_size, 3, height, width)
    rule = size_rule(model)
    if dynamic:
        try:
            check_size(rule, height, width)
        except ValueError as error:
            raise ValueError(f"{error} Or export at that one size with --static (dynamic=False).") from None
    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    (output / CONFIG_NAME).unlink(missing_ok=True)  # a previous export's; written again once this one is verified
    names = output_names(model)
    onnx_path = output / "model.onnx"
    with contextlib.nullcontext() if winograd else kernels.disabled("winograd"):
        exporter, opset = _export_onnx(model, shape, onnx_path, dynamic, opset)
    dynamic = dynamic and exporter == "dynamo"
    paths = {"onnx": onnx_path}
    if "openvino" in formats:
        try:
            import openvino
        except ImportError as error:
            raise ImportError("Exporting to OpenVINO needs openvino: pip install hf-segmodels[deploy]") from error
        paths["openvino"] = output / "openvino_model.xml"
        # convert_model reads the ONNX graph's dynamic dimensions as dynamic (-1) IR dimensions
        openvino.save_model(openvino.convert_model(str(onnx_path)), str(paths["openvino"]), compress_to_fp16=False)
        if "onnx" not in formats:
            onnx_path.unlink()
            del paths["onnx"]
    if image_processor is not None:
        image_processor.save_pretrained(output)
    if dynamic:
        dynamic_axes = {"batch": "any, at least 1", "height": rule.describe(), "width": rule.describe()}
    else:
        dynamic_axes = {"batch": "fixed", "height": "fixed", "width": "fixed"}
    config = {
        "format": formats[0], "file": paths[formats[0]].name, "files": {each: paths[each].name for each in formats},
        "exporter": exporter, "opset": opset, "dynamic": dynamic, "input_shape": list(shape),
        "dynamic_axes": dynamic_axes, "size_rule": rule.as_dict() if dynamic else None, "outputs": list(names),
        "model_type": model.config.model_type, "winograd": winograd,
    }  # fmt: skip
    if verify_export:
        shapes = [shape, second_shape(rule, shape)] if dynamic else [shape]
        config["verified"] = [
            {"format": each_format, "input_shape": list(each),
             "max_abs_difference": verify(paths[each_format], each_format, model, each, atol=atol)}
            for each_format in formats
            for each in shapes
        ]  # fmt: skip
        config["max_abs_difference"] = max(each["max_abs_difference"] for each in config["verified"])
    (output / CONFIG_NAME).write_text(json.dumps(config, indent=2))
    return config


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="A model folder of ours (config.json + model.safetensors).")
    parser.add_argument("--format", nargs="+", choices=FORMATS, default=["onnx"], help="One or both formats.")
    parser.add_argument("--output", required=True, help="Folder to write the exported graph to.")
    parser.add_argument("--height", type=int, help="Export height (default: the protocol's window / fixed size).")
    parser.add_argument("--width", type=int, help="Export width (default: likewise).")
    parser.add_argument("--batch_size", type=int, default=1, help="Export batch size (any batch runs when dynamic).")
    parser.add_argument("--static", action="store_true", help="Fix the graph to the export size (batch, H, W).")
    parser.add_argument("--opset", type=int, help="ONNX opset (default: the exporter's; dynamo writes >= 18).")
    parser.add_argument("--atol", type=float, default=1e-4, help="Largest accepted difference to PyTorch.")
    parser.add_argument("--no_verify", action="store_true", help="Skip running the exported graph.")
    parser.add_argument("--no_winograd", action="store_true",
                        help="Keep wide 3x3 convolutions plain (int8 / reduced-precision targets).")
    args = parser.parse_args(argv)
    try:
        config = export_model(args.model, args.output, tuple(args.format), height=args.height, width=args.width,
                              batch_size=args.batch_size, dynamic=not args.static, opset=args.opset,
                              atol=args.atol, verify_export=not args.no_verify,
                              winograd=not args.no_winograd)  # fmt: skip
    except (ExportVerificationError, ValueError, ImportError, OSError) as error:
        print(f"export: error: {error}", file=sys.stderr)
        return 1
    axes = config["dynamic_axes"]
    inputs = (f"batch {axes['batch']}; height, width {axes['height']}" if config["dynamic"]
              else f"fixed shape {tuple(config['input_shape'])}")  # fmt: skip
    files = ", ".join(str(Path(args.output) / name) for name in config["files"].values())
    print(f"Exported {args.model} -> {files} ({config['exporter']} exporter; input {inputs})")
    for each in config.get("verified", []):
        print(f"  {each['format']} on {tuple(each['input_shape'])}: max abs difference to PyTorch "
              f"{each['max_abs_difference']:.3g}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
