"""Export a model of this package to ONNX or OpenVINO IR for CPU deployment, and verify the exported graph.

    python -m hf_segmodels.export --model DIR --format onnx|openvino --output OUT [--height H --width W]
        [--batch_size B] [--opset 17] [--atol 1e-4]

or `hf_segmodels.export.export_model(...)`. The graph is captured with `torch.onnx.export` (the fast kernels of
`hf_segmodels.kernels` step aside while it runs, so it holds only standard operators); OpenVINO IR is converted from
that ONNX graph. The exported graph takes `pixel_values` of ONE shape, (batch_size, 3, height, width): the models
compute their position-embedding grids, attention reshapes and resize targets from the input size, and a traced graph
keeps the sizes it was traced at. Deploy it with a fixed window (the checkpoint's sliding-window protocol runs every
window at the window size; the default export size is that window, else the processor's fixed size) and export once
per size otherwise. Outputs: `logits` (and for MaskFormer also `class_queries_logits`, `masks_queries_logits`).

After writing, the export is verified: the runtime (onnxruntime / openvino, `pip install hf-segmodels[deploy]`) runs
a random sample and the maximum absolute difference to PyTorch is printed; above `atol` (1e-4 for float32) it is an
`ExportVerificationError` (exit status 1). The image processor's config is written next to the graph.
"""

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

FORMATS = ("onnx", "openvino")


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


def run_exported(path: str | Path, format: str, pixel_values: np.ndarray) -> list[np.ndarray]:
    """Runs an exported graph (ONNX file or OpenVINO .xml) on `pixel_values`; returns its outputs in order."""
    path = Path(path)
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
    """The max abs difference between the exported graph and `model` on a random input of `shape`; raises
    `ExportVerificationError` above `atol`, on a different output shape, or on non-finite outputs."""
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
        raise ExportVerificationError(f"The exported {format} graph {str(path)!r} cannot be run: {error}") from error
    worst = 0.0
    for name, reference, value in zip(names, expected, obtained):
        if tuple(value.shape) != tuple(reference.shape):
            raise ExportVerificationError(
                f"Output {name!r} of the export has shape {tuple(value.shape)}, PyTorch's {tuple(reference.shape)}."
            )
        if not np.isfinite(value).all():
            raise ExportVerificationError(f"Output {name!r} of the export holds NaN or Inf.")
        worst = max(worst, float(np.abs(value - reference.numpy()).max()))
    if worst > atol:
        raise ExportVerificationError(
            f"The exported {format} graph differs from PyTorch by up to {worst:.3g} (> atol {atol:g}) on a "
            f"{tuple(shape)} input."
        )
    return worst


def export_model(
    model_or_path,
    output: str | Path,
    format: str = "onnx",
    *,
    height: int | None = None,
    width: int | None = None,
    batch_size: int = 1,
    opset: int = 17,
    atol: float = 1e-4,
    image_processor=None,
    verify_export: bool = True,
) -> dict:
    """Exports `model_or_path` (a model of this package, or its folder) to `output` (a folder): `model.onnx` or
    `openvino_model.xml` / `.bin`, plus `preprocessor_config.json` and `export_config.json` (the input shape and
    output names). Returns that export config with the verification's `max_abs_difference`.

    Raises `ValueError` for an unknown format or size, `ExportVerificationError` when the export does not
    reproduce the model within `atol`.
    """
    if format not in FORMATS:
        raise ValueError(f"Unknown export format {format!r}; choose one of {FORMATS}.")
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
    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    names = output_names(model)
    onnx_path = output / "model.onnx"
    example = torch.zeros(shape)
    with torch.no_grad():
        torch.onnx.export(
            # the wrapper in eval mode too: the exporter restores the wrapper's mode on everything below it afterwards
            _Outputs(model, names).eval(), (example,), str(onnx_path), dynamo=False, opset_version=opset,
            input_names=["pixel_values"], output_names=list(names),
        )
    path = onnx_path
    if format == "openvino":
        try:
            import openvino
        except ImportError as error:
            raise ImportError("Exporting to OpenVINO needs openvino: pip install hf-segmodels[deploy]") from error
        path = output / "openvino_model.xml"
        openvino.save_model(openvino.convert_model(str(onnx_path)), str(path), compress_to_fp16=False)
        onnx_path.unlink()
    if image_processor is not None:
        image_processor.save_pretrained(output)
    config = {"format": format, "file": path.name, "input_shape": list(shape), "outputs": list(names),
              "model_type": model.config.model_type}
    if verify_export:
        config["max_abs_difference"] = verify(path, format, model, shape, atol=atol)
    (output / "export_config.json").write_text(json.dumps(config, indent=2))
    return config


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="A model folder of ours (config.json + model.safetensors).")
    parser.add_argument("--format", choices=FORMATS, default="onnx")
    parser.add_argument("--output", required=True, help="Folder to write the exported graph to.")
    parser.add_argument("--height", type=int, help="Input height (default: the protocol's window / fixed size).")
    parser.add_argument("--width", type=int, help="Input width (default: likewise).")
    parser.add_argument("--batch_size", type=int, default=1)
    parser.add_argument("--opset", type=int, default=17)
    parser.add_argument("--atol", type=float, default=1e-4, help="Largest accepted difference to PyTorch.")
    parser.add_argument("--no_verify", action="store_true", help="Skip running the exported graph.")
    args = parser.parse_args(argv)
    try:
        config = export_model(args.model, args.output, args.format, height=args.height, width=args.width,
                              batch_size=args.batch_size, opset=args.opset, atol=args.atol,
                              verify_export=not args.no_verify)
    except (ExportVerificationError, ValueError, ImportError, OSError) as error:
        print(f"export: error: {error}", file=sys.stderr)
        return 1
    difference = config.get("max_abs_difference")
    checked = f"; max abs difference to PyTorch {difference:.3g}" if difference is not None else ""
    print(f"Exported {args.model} -> {Path(args.output) / config['file']} (input {config['input_shape']}){checked}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
