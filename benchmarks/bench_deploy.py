#!/usr/bin/env python
"""Our SegFormer in PyTorch against what a CPU user would deploy instead, on identical weights (issue "Deployment on
CPU"): transformers' SegFormer exported to ONNX Runtime and OpenVINO, and our own export
(`hf_segmodels.export`, static shape: `dynamic=False`) in both runtimes.

    python benchmarks/bench_deploy.py [--variants b0 b2] [--threads 1 2] [--size 512] [--repeats 7]

For each variant and thread count: median CPU milliseconds of interleaved runs (1 x 3 x size x size, 150 classes,
float32), the ratio of the faster transformers-in-a-runtime row to ours in PyTorch (target >= 1.3x), and each of our
exported graphs against ours in PyTorch (target: within 10% or faster), with the max abs difference of every row's
logits to ours in PyTorch. Needs `pip install hf-segmodels[deploy]`.
"""

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_segformer import build_checkpoints, load  # noqa: E402
from timing import interleaved_medians  # noqa: E402

from hf_segmodels.export import export_model  # noqa: E402


def _onnx_of_transformers(model, path: Path, size: int) -> Path:
    class Logits(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.model = model

        def forward(self, pixel_values):
            return self.model(pixel_values=pixel_values).logits

    with torch.no_grad():
        torch.onnx.export(Logits().eval(), (torch.zeros(1, 3, size, size),), str(path), dynamo=False,
                          opset_version=17, input_names=["pixel_values"], output_names=["logits"])
    return path


def _runtime(path: Path, format: str, threads: int):
    """A callable running the graph with `threads` threads."""
    if format == "onnx":
        import onnxruntime

        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
        session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        return lambda x: session.run(None, {"pixel_values": x})[0]
    import openvino

    core = openvino.Core()
    compiled = core.compile_model(str(path), "CPU", {"INFERENCE_NUM_THREADS": threads,
                                                     "INFERENCE_PRECISION_HINT": "f32"})
    return lambda x: np.asarray(compiled(x)[compiled.outputs[0]])


def run_case(variant: str, threads: int, size: int, repeats: int, folder: Path) -> dict:
    torch.set_num_threads(threads)
    theirs_path, ours_path = build_checkpoints(variant, folder)
    theirs, ours = load("transformers", theirs_path), load("ours", ours_path)
    pixel_values = torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(0))
    array = pixel_values.numpy()
    theirs_onnx = _onnx_of_transformers(theirs, folder / f"transformers-{variant}-{size}.onnx", size)
    ours_onnx = folder / f"ours-onnx-{variant}-{size}"
    ours_ov = folder / f"ours-openvino-{variant}-{size}"
    # Static graphs, as the transformers rows: OpenVINO runs a dynamic-shape graph slower (SegFormer-B0 at 512, one
    # thread: 350 ms against 274 ms static; ONNX Runtime: 291 against 297 ms).
    export_model(ours, ours_onnx, "onnx", height=size, width=size, dynamic=False, verify_export=False)
    export_model(ours, ours_ov, "openvino", height=size, width=size, dynamic=False, verify_export=False)

    def pytorch():
        with torch.no_grad():
            return ours(pixel_values=pixel_values).logits

    rows = {
        "ours PyTorch": pytorch,
        "transformers ONNX Runtime": (lambda run: lambda: run(array))(_runtime(theirs_onnx, "onnx", threads)),
        "transformers OpenVINO": (lambda run: lambda: run(array))(_runtime(theirs_onnx, "openvino", threads)),
        "ours ONNX Runtime": (lambda run: lambda: run(array))(_runtime(ours_onnx / "model.onnx", "onnx", threads)),
        "ours OpenVINO": (lambda run: lambda: run(array))(
            _runtime(ours_ov / "openvino_model.xml", "openvino", threads)),
    }
    reference = pytorch().numpy()
    differences = {name: float(np.abs(np.asarray(function()) - reference).max()) for name, function in rows.items()}
    medians = interleaved_medians(rows, repeats=repeats, clock="cpu" if threads == 1 else "wall")
    return {"medians": medians, "differences": differences}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variants", nargs="+", default=["b0"], choices=["b0", "b2"])
    parser.add_argument("--threads", nargs="+", type=int, default=[1])
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    print("| SegFormer | threads | ours PyTorch ms | transformers ORT ms | transformers OpenVINO ms | ours ORT ms | "
          "ours OpenVINO ms | best runtime / ours | ours ORT / ours | ours OV / ours | max abs diff |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    with tempfile.TemporaryDirectory() as folder:
        for variant in args.variants:
            for threads in args.threads:
                result = run_case(variant, threads, args.size, args.repeats, Path(folder))
                m = {name: 1e3 * value for name, value in result["medians"].items()}
                ours = m["ours PyTorch"]
                best = min(m["transformers ONNX Runtime"], m["transformers OpenVINO"])
                worst_difference = max(v for k, v in result["differences"].items() if k != "ours PyTorch")
                print(f"| {variant.upper()} | {threads} | {ours:.0f} | {m['transformers ONNX Runtime']:.0f} | "
                      f"{m['transformers OpenVINO']:.0f} | {m['ours ONNX Runtime']:.0f} | {m['ours OpenVINO']:.0f} | "
                      f"{best / ours:.2f} | {m['ours ONNX Runtime'] / ours:.2f} | {m['ours OpenVINO'] / ours:.2f} | "
                      f"{worst_difference:.1e} |", flush=True)


if __name__ == "__main__":
    main()
