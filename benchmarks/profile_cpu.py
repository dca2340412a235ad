#!/usr/bin/env python
"""Where the time goes: our fastest CPU path and ONNX Runtime, operator by operator, on the same model and input.

    python benchmarks/profile_cpu.py [--cases segformer-b0 ...] [--size 512] [--threads 1] [--repeats 3]
        [--output benchmarks/results/profile_cpu.md]

The profile that `bench_fastest.py` (ours against ONNX Runtime on OUR exported graph) and `bench_deploy.py` (ours
against transformers' model in the runtimes) ask for where a row misses its target. Every case runs in its own
process, on the models those two scripts build (random weights of the release's size, 150 classes, 1 x 3 x size x
size, float32):

- whole models (`segformer-b0/b2`, `maskformer-r50/swin-t`, `segmenter-b16`, `setr-pup-l`): ours is
  `hf_segmodels.fastest(model)(pixel_values=...)`; our graph is `bench_fastest.export` (the dynamo exporter, `logits`);
- the ViT encoders of `bench_deploy.py` (`segmenter-b16-encoder`, `setr-l-encoder`): ours is the encoder run the way
  `fastest` runs the model; our graph is `bench_deploy.export_onnx` of it;
- where transformers has the model (SegFormer, MaskFormer, the encoders as `ViTModel`), its graph as `bench_deploy.py`
  exports it, in ONNX Runtime and in OpenVINO (fp32) too.

Ours is timed per ATen operator with a `TorchDispatchMode` that reads the process CPU time around each call (the
torch profiler's wall clock misattributes time on this shared machine); ONNX Runtime with its own profiler (per-node
kernel time); OpenVINO with its performance counters (per node of the compiled graph). All are summed per category of
operator over `--repeats` runs after two warm-ups, and reported per run.
Categories: matrix products (GEMMs, batched products, oneDNN linears), attention (fused scaled-dot-product kernels),
convolutions, normalisation, resize, element-wise, data movement (copies, transposes, concatenations, reorders),
other. Our Winograd convolutions appear as what they run: batched products for the 36 transformed positions and
element-wise / data movement for the transforms (ONNX Runtime's graph form: MatMul, grouped Conv, DepthToSpace).
ONNX Runtime runs these graphs' attention as MatMul / FusedMatMul and Softmax (products and element-wise);
OpenVINO's "Subgraph" nodes are its generated fused kernels (on the ViTs they hold the attention's products too) and
are counted as element-wise.
"""

import argparse
import collections
import datetime
import gc
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

WHOLE = ("segformer-b0", "segformer-b2", "maskformer-r50", "maskformer-swin-t", "segmenter-b16", "setr-pup-l")
ENCODERS = ("segmenter-b16-encoder", "setr-l-encoder")
CASES = WHOLE + ENCODERS
CATEGORIES = ("matrix products", "attention", "convolution", "normalisation", "resize", "element-wise",
              "data movement", "other")  # fmt: skip

_PYTORCH = {
    "matrix products": ("mm", "addmm", "addmm_", "bmm", "baddbmm", "baddbmm_", "linear", "matmul", "_linear_pointwise",
                        "einsum"),
    "attention": ("scaled_dot_product_attention", "_scaled_dot_product_flash_attention_for_cpu"),
    "convolution": ("conv2d", "convolution", "_convolution", "mkldnn_convolution", "_convolution_pointwise"),
    "normalisation": ("layer_norm", "native_layer_norm", "group_norm", "native_group_norm", "batch_norm"),
    "resize": ("upsample_bilinear2d", "upsample_nearest2d", "_upsample_bilinear2d_aa", "interpolate"),
    "data movement": ("copy_", "clone", "contiguous", "cat", "stack", "pad", "constant_pad_nd", "index_select",
                      "index", "gather", "_to_copy", "max_pool2d", "max_pool2d_with_indices", "roll", "repeat"),
}  # fmt: skip
_ELEMENTWISE_PYTORCH = ("add", "add_", "sub", "sub_", "mul", "mul_", "div", "div_", "relu", "relu_", "gelu", "gelu_",
                        "sigmoid", "softmax", "_softmax", "clamp", "clamp_min", "clamp_min_", "exp", "neg", "where",
                        "addcmul", "rsqrt", "sqrt", "tanh", "fill_", "zero_", "zeros_like", "dropout", "argmax", "sum",
                        "mean", "amax", "max", "logical_and", "erf")  # fmt: skip
_ORT = {
    "matrix products": ("MatMul", "Gemm", "FusedMatMul", "FusedGemm", "Einsum"),
    "attention": ("Attention", "MultiHeadAttention", "GroupQueryAttention"),
    "convolution": ("Conv", "FusedConv", "NhwcConv", "NhwcFusedConv", "ConvTranspose", "QLinearConv"),
    "normalisation": ("LayerNormalization", "SkipLayerNormalization", "SimplifiedLayerNormalization",
                      "GroupNormalization", "GroupNorm", "InstanceNormalization", "BatchNormalization"),
    "resize": ("Resize", "Upsample"),
    "element-wise": ("Add", "Sub", "Mul", "Div", "Relu", "Gelu", "BiasGelu", "FastGelu", "QuickGelu", "Softmax",
                     "Sigmoid", "Erf", "Sqrt", "Pow", "Tanh", "Where", "Exp", "Neg", "Clip", "Max", "Min",
                     "ReduceMean", "ReduceMax", "ReduceSum", "ArgMax", "BiasAdd", "Not", "Equal", "Cast"),
    "data movement": ("Transpose", "Reshape", "Concat", "Slice", "Gather", "GatherElements", "Split", "DepthToSpace",
                      "SpaceToDepth", "ReorderInput", "ReorderOutput", "Pad", "Expand", "Unsqueeze", "Squeeze",
                      "Identity", "Flatten", "Tile", "MaxPool", "Shape", "ConstantOfShape", "Range", "ScatterND"),
}  # fmt: skip


_OPENVINO = {
    "matrix products": ("FullyConnected", "MatMul", "Gemm"),
    "attention": ("ScaledDotProductAttention", "ScaledAttn"),
    "convolution": ("Convolution", "GroupConvolution", "Deconvolution"),
    "normalisation": ("MVN", "NormalizeL2", "RMS", "BatchNormInference", "GroupNormalization"),
    "resize": ("Interpolate",),
    "element-wise": ("Eltwise", "Subgraph", "Softmax", "SoftMax", "Math", "Reduce", "Activation", "Erf", "Select",
                     "Convert"),
    "data movement": ("Reorder", "Transpose", "Reshape", "Concatenation", "Split", "Gather", "StridedSlice",
                      "Broadcast", "DepthToSpace", "SpaceToDepth", "Pad", "Pooling", "ShapeOf", "Input", "Output",
                      "Slice", "Tile", "ScatterUpdate"),
}  # fmt: skip


def pytorch_category(name: str) -> str:
    """The category of an ATen operator (`aten.addmm.default` -> "matrix products")."""
    op = name.split(".")[1] if name.count(".") >= 1 else name
    category = _category(_PYTORCH, op)
    if category != "other":
        return category
    if op in _ELEMENTWISE_PYTORCH:
        return "element-wise"
    if op in ("view", "reshape", "permute", "transpose", "expand", "unflatten", "flatten", "select", "slice",
              "unbind", "split", "squeeze", "unsqueeze", "t", "as_strided", "narrow", "detach", "alias",
              "empty", "empty_like", "new_empty", "unsafe_view", "_unsafe_view", "chunk"):  # fmt: skip
        return "data movement"  # (views: their dispatch cost only)
    return "other"


def _category(table: dict, name: str) -> str:
    for category, names in table.items():
        if name in names:
            return category
    return "other"


def ort_category(op_type: str) -> str:
    """The category of an ONNX Runtime node's operator type ("FusedMatMul" -> "matrix products")."""
    return _category(_ORT, op_type)


def openvino_category(node_type: str) -> str:
    """The category of an OpenVINO compiled-graph node type ("FullyConnected" -> "matrix products")."""
    return _category(_OPENVINO, node_type)


class _CpuTimes(torch.utils._python_dispatch.TorchDispatchMode):
    """Process CPU seconds per ATen operator (outermost calls only, no double counting of what they dispatch)."""

    def __init__(self):
        super().__init__()
        self.seconds = collections.Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        start = time.process_time()
        output = func(*args, **(kwargs or {}))
        self.seconds[str(func)] += time.process_time() - start
        return output


def _clock(threads: int):
    """Process CPU time at one thread (what another process takes from a shared core is not counted), wall time at
    more (CPU time would add up the threads)."""
    return time.process_time if threads == 1 else time.perf_counter


def _ms_per_run(function, threads: int, repeats: int) -> float:
    """Milliseconds per call of `function()` without a profiler (`_clock`), after two warm-up calls."""
    clock = _clock(threads)
    for _ in range(2):
        function()
    start = clock()
    for _ in range(repeats):
        function()
    return 1e3 * (clock() - start) / repeats


def _summary(operator_ms, category, repeats: int, measured_ms: float) -> dict:
    """`operator_ms`: (operator, ms) pairs summed over `repeats` runs -> per run: ms per category (`category` of an
    operator), the eight costliest operators, and `measured_ms` (the same side without a profiler)."""
    per_category, operators = collections.Counter(), collections.Counter()
    for operator, ms in operator_ms:
        per_category[category(operator)] += ms / repeats
        operators[operator] += ms / repeats
    return {"categories": dict(per_category), "top": operators.most_common(8), "measured_ms": measured_ms}


def profile_pytorch(function, threads: int, repeats: int) -> dict:
    """{category: ms per run} of `function()` (ours), and the ms per run without the profiler (`_clock`)."""
    measured_ms = _ms_per_run(function, threads, repeats)
    mode = _CpuTimes()
    with mode:
        for _ in range(repeats):
            function()
    return _summary(((name, 1e3 * seconds) for name, seconds in mode.seconds.items()), pytorch_category, repeats,
                    measured_ms)  # fmt: skip


def profile_ort(path: Path, pixel_values: np.ndarray, threads: int, repeats: int, folder: Path) -> dict:
    """{category: ms per run} of ONNX Runtime running the graph at `path` (graph optimisations on), from its
    profiler's per-node kernel times."""
    import onnxruntime

    from timing import onnxruntime_options

    options = onnxruntime_options(threads)
    options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
    plain = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    name = plain.get_inputs()[0].name
    measured_ms = _ms_per_run(lambda: plain.run(None, {name: pixel_values}), threads, repeats)
    del plain
    options.enable_profiling = True
    options.profile_file_prefix = str(folder / f"ort-{path.stem}")
    session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    for _ in range(2 + repeats):
        session.run(None, {name: pixel_values})
    events = json.loads(Path(session.end_profiling()).read_text())
    # the kernel times of the last `repeats` runs (the first two are warm-ups)
    runs = sorted(event["ts"] for event in events if event.get("cat") == "Session" and event.get("name") == "model_run")
    if len(runs) != 2 + repeats:
        raise RuntimeError(f"ONNX Runtime's profile holds {len(runs)} runs, expected {2 + repeats}")
    kernels = [
        (event.get("args", {}).get("op_name", "?"), event["dur"] / 1e3)
        for event in events
        if event.get("cat") == "Node" and event.get("name", "").endswith("_kernel_time") and event["ts"] >= runs[2]
    ]
    return _summary(kernels, ort_category, repeats, measured_ms)


def profile_openvino(path: Path, pixel_values: np.ndarray, threads: int, repeats: int) -> dict:
    """{category: ms per run} of OpenVINO (fp32) running the ONNX graph at `path`, from its per-node performance
    counters (`PERF_COUNT`; the node types of the compiled graph, after OpenVINO's own fusions)."""
    import openvino

    from bench_deploy import openvino_settings

    core = openvino.Core()
    plain = core.compile_model(str(path), "CPU", openvino_settings(threads)).create_infer_request()
    measured_ms = _ms_per_run(lambda: plain.infer(pixel_values), threads, repeats)
    del plain
    settings = {**openvino_settings(threads), "PERF_COUNT": True}
    request = core.compile_model(str(path), "CPU", settings).create_infer_request()
    for _ in range(2):
        request.infer(pixel_values)
    nodes = []
    for _ in range(repeats):  # (the counters describe the last inference)
        request.infer(pixel_values)
        nodes += [(info.node_type, info.real_time.total_seconds() * 1e3) for info in request.get_profiling_info()]
    return _summary(nodes, openvino_category, repeats, measured_ms)


def run_case(case: str, size: int, threads: int, repeats: int) -> dict:
    import bench_deploy
    import bench_fastest

    import hf_segmodels

    torch.set_num_threads(threads)
    pixel_values = torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(1))
    array = pixel_values.numpy()
    sides = {}
    with tempfile.TemporaryDirectory() as folder:
        folder = Path(folder)
        theirs_path = None
        if case in ENCODERS or case.startswith(("segformer", "maskformer")):
            built = bench_deploy.build(case, size, folder)
            model, module = built["ours"], built["ours_module"]
            theirs_path = folder / "transformers.onnx"
            bench_deploy.export_onnx(built["theirs"], theirs_path, size, built["names"])
            del built
        else:
            _, model = bench_fastest.build(case)
            module = None
        gc.collect()
        ours_path = folder / "ours.onnx"
        if case in ENCODERS:
            bench_deploy.export_onnx(module, ours_path, size, ["last_hidden_state"])
        else:
            bench_fastest.export(model, None, pixel_values, ours_path)
        fast = hf_segmodels.fastest(model)
        if case in ENCODERS:
            ours = lambda: bench_deploy.run_as_fastest(module, pixel_values)  # noqa: E731
        else:
            ours = lambda: fast(pixel_values=pixel_values)  # noqa: E731
        sides["ours (PyTorch, fastest)"] = profile_pytorch(ours, threads, repeats)
        sides["ONNX Runtime, our graph"] = profile_ort(ours_path, array, threads, repeats, folder)
        if theirs_path is not None:
            sides["ONNX Runtime, transformers' graph"] = profile_ort(theirs_path, array, threads, repeats, folder)
            sides["OpenVINO, transformers' graph"] = profile_openvino(theirs_path, array, threads, repeats)
    return {"case": case, "threads": threads, "size": size, "sides": sides}


def _table_row(label: str, values, style: str = "") -> str:
    """A Markdown table row: `label`, then each value in whole milliseconds wrapped in `style` ("*", "**")."""
    return f"| {label} | " + " | ".join(f"{style}{value:.0f}{style}" for value in values) + " |"


def markdown(results: list[dict], command: str) -> str:
    lines = [
        "# Where the time goes: our fastest path, ONNX Runtime and OpenVINO, per category of operator",
        "",
        f"`{command}` ({datetime.date.today().isoformat()}, torch {torch.__version__}, "
        f"{os.cpu_count()} CPUs). Milliseconds per run (ours: process CPU time per ATen operator; ONNX Runtime: its "
        "profiler's per-node kernel time; OpenVINO: its per-node performance counters); *measured* is the same side "
        "timed without a profiler (process CPU time at 1 thread, wall time at more). See the script's docstring for "
        "the categories (ONNX Runtime's attention is MatMul and Softmax; OpenVINO's fused \"Subgraph\" kernels, which "
        "hold the ViTs' attention, count as element-wise).",
    ]
    for result in results:
        sides = list(result["sides"].values())
        names = list(result["sides"])
        lines += ["", f"## {result['case']} ({result['threads']} thread(s), {result['size']}x{result['size']})", "",
                  "| category | " + " | ".join(names) + " |", "|---|" + "---:|" * len(names)]  # fmt: skip
        for category in CATEGORIES:
            values = [side["categories"].get(category, 0.0) for side in sides]
            if max(values) >= 0.5:
                lines.append(_table_row(category, values))
        # (ONNX Runtime runs these graphs' attention as MatMul and Softmax)
        products = [side["categories"].get("matrix products", 0.0) + side["categories"].get("attention", 0.0)
                    for side in sides]  # fmt: skip
        lines.append(_table_row("*products incl. attention*", products, "*"))
        lines.append(_table_row("**sum of operators**", [sum(side["categories"].values()) for side in sides], "**"))
        lines.append(_table_row("measured (no profiler)", [side["measured_ms"] for side in sides]))
        lines.append("")
        for name, side in zip(names, sides):
            top = ", ".join(f"{op.removeprefix('aten.')} {ms:.0f}" for op, ms in side["top"])
            lines.append(f"- top operators, {name}: {top}")
    return "\n".join(lines) + "\n"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", nargs="+", default=list(CASES), choices=list(CASES))
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--output", default=str(HERE / "results" / "profile_cpu.md"))
    parser.add_argument("--_case", help=argparse.SUPPRESS)
    parser.add_argument("--_json", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args._case:
        Path(args._json).write_text(json.dumps(run_case(args._case, args.size, args.threads, args.repeats)))
        return
    results, failed = [], []
    with tempfile.TemporaryDirectory() as folder:
        for case in args.cases:  # one process per case: no allocator or kernel state carried over
            record = Path(folder) / f"{case}.json"
            command = [sys.executable, __file__, "--_case", case, "--_json", str(record), "--size", str(args.size),
                       "--threads", str(args.threads), "--repeats", str(args.repeats)]  # fmt: skip
            process = subprocess.run(command)
            if process.returncode != 0:  # (the other cases still run and are written; the exit status says so)
                print(f"profiling {case} failed (exit {process.returncode})", file=sys.stderr, flush=True)
                failed.append(case)
                continue
            results.append(json.loads(record.read_text()))
            print(markdown(results[-1:], "").split("\n", 4)[-1], flush=True)
    shown = " ".join(argv if argv is not None else sys.argv[1:])
    text = markdown(results, f"python benchmarks/profile_cpu.py {shown}".strip())
    Path(args.output).write_text(text)
    print(f"wrote {args.output}")
    if failed:
        raise SystemExit(f"profiling failed for {', '.join(failed)} (see above)")


if __name__ == "__main__":
    main()
