#!/usr/bin/env python
"""Our fastest CPU path (`hf_segmodels.fastest(model)`) against ONNX Runtime running OUR exported graph.

    python benchmarks/bench_fastest.py [--cases segformer-b0 ...] [--threads 1 2] [--repeats 5] [--size 512]
        [--output benchmarks/results/fastest.md]

Every case runs in its own process: a model of the release's size (random weights, 150 classes, from
`<Arch>Config.from_preset`) is exported with `torch.onnx.export(dynamo=True)` (onnxscript's graph optimisation on;
the TorchScript-based exporter if the dynamo one fails; the fast kernels step aside during export, so the graph holds
standard operators; SegFormer's merged decoder, MaskFormer's folded BatchNorms and Winograd convolutions, written in
standard operators, stay in it), loaded in ONNX Runtime (graph optimisations
on, `intra_op_num_threads` = the thread count) and timed against `fastest(model)(pixel_values=...)` in the same
process, alternately (`benchmarks/timing.py`): medians of `--repeats`, process CPU time at 1 thread and wall time at
more (CPU time counts every thread's work). Also reported: the max abs difference of the logits and the argmax
agreement of ours and of ORT against eager PyTorch, the export time, and our time to first result (the first call, which
measures the kernel choices of each product shape).

ONNX Runtime is an optional extra (`pip install hf-segmodels[deploy]`); target: ours >= 1.1x ORT on every row.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

CASES = {
    "segformer-b0": ("segformer", "segformer-b0-ade"),
    "segformer-b2": ("segformer", "segformer-b2-ade"),
    "segmenter-b16": ("segmenter", "segmenter-b16-ade"),
    "setr-pup-l": ("setr", "setr-pup-ade"),
    "maskformer-r50": ("maskformer", "maskformer-r50-ade"),
    "maskformer-swin-t": ("maskformer", "maskformer-swin-t-ade"),
}
TARGET = 1.1


def build(case: str):
    import hf_segmodels

    architecture, preset = CASES[case]
    config_class = {
        "segformer": hf_segmodels.SegformerConfig,
        "segmenter": hf_segmodels.SegmenterConfig,
        "setr": hf_segmodels.SetrConfig,
        "maskformer": hf_segmodels.MaskFormerConfig,
    }[architecture]
    config = config_class.from_preset(preset)
    model_class = {
        "segformer": hf_segmodels.SegformerForSemanticSegmentation,
        "segmenter": hf_segmodels.SegmenterForSemanticSegmentation,
        "setr": hf_segmodels.SetrForSemanticSegmentation,
        "maskformer": hf_segmodels.MaskFormerForUniversalSegmentation,
    }[architecture]
    torch.manual_seed(0)
    return architecture, model_class(config).eval()


def logits_module(model) -> torch.nn.Module:
    """`model` as a module of `pixel_values` alone returning `(logits,)` (the export entry point's wrapper)."""
    from hf_segmodels.export import _Outputs

    return _Outputs(model, ("logits",)).eval()


def export(model, architecture: str, pixel_values: torch.Tensor, path: Path) -> str:
    wrapper = logits_module(model)
    try:
        # onnxscript's optimiser on for every architecture (it once did not finish on MaskFormer; it does now)
        program = torch.onnx.export(wrapper, (pixel_values,), dynamo=True, optimize=True, verbose=False)
        program.save(str(path))
        return "dynamo"
    except Exception as error:  # noqa: BLE001  (any exporter failure: fall back and say so)
        print(f"dynamo export failed ({type(error).__name__}: {str(error)[:200]}); TorchScript exporter", flush=True)
        torch.onnx.export(wrapper, (pixel_values,), str(path), dynamo=False, input_names=["pixel_values"],
                          output_names=["logits"], opset_version=17)  # fmt: skip
        return "torchscript"


def run_case(
    case: str, threads: list[int], repeats: int, size: int, with_compile: bool = False, freezing: bool = False
) -> list[dict]:
    import onnxruntime as ort

    import hf_segmodels
    from timing import interleaved, onnxruntime_options

    architecture, model = build(case)
    pixel_values = torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(1))
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "model.onnx"
        start = time.perf_counter()
        exporter = export(model, architecture, pixel_values, path)
        export_seconds = time.perf_counter() - start
        with torch.inference_mode():
            reference = model(pixel_values=pixel_values).logits.numpy()
        fast = hf_segmodels.fastest(model)
        for count in threads:
            torch.set_num_threads(count)
            options = onnxruntime_options(count)  # (workers that do not spin)
            options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
            session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
            name = session.get_inputs()[0].name
            inputs = {name: pixel_values.numpy()}
            start = time.perf_counter()
            ours_logits = fast(pixel_values=pixel_values).logits.numpy()
            first_result = time.perf_counter() - start
            ort_logits = session.run(None, inputs)[0]
            clock = "cpu" if count == 1 else "wall"
            functions = {"ours": lambda: fast(pixel_values=pixel_values), "ort": lambda: session.run(None, inputs)}
            compile_s = None
            if with_compile:  # torch.compile (inductor), the alternative a PyTorch user would try
                # freezing: parameters become constants, convolution / linear weights pre-packed for oneDNN
                from torch._inductor import config as inductor_config

                inductor_config.freezing = freezing
                compiled = torch.compile(logits_module(model))
                start = time.perf_counter()
                with torch.inference_mode():
                    compiled(pixel_values)
                compile_s = time.perf_counter() - start

                def run_compiled():
                    with torch.inference_mode():
                        return compiled(pixel_values)

                functions["compiled"] = run_compiled
            times = interleaved(functions, repeats)
            ours_s = statistics.median(times["ours"][clock])
            ort_s = statistics.median(times["ort"][clock])
            rows.append({
                "case": case, "threads": count, "clock": clock, "exporter": exporter, "ours_ms": 1000 * ours_s,
                "ort_ms": 1000 * ort_s, "ratio": ort_s / ours_s,
                "ours_vs_eager_max_abs": float(np.abs(ours_logits - reference).max()),
                "ours_argmax_agreement": float((ours_logits.argmax(1) == reference.argmax(1)).mean()),
                "ort_max_abs": float(np.abs(ort_logits - reference).max()),
                "ort_argmax_agreement": float((ort_logits.argmax(1) == reference.argmax(1)).mean()),
                "export_s": export_seconds, "first_result_s": first_result,
                "compile_s": compile_s,
                "compiled_ms": 1000 * statistics.median(times["compiled"][clock]) if with_compile else None,
            })  # fmt: skip
            print(json.dumps(rows[-1]), flush=True)
    return rows


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", nargs="+", default=list(CASES), choices=list(CASES))
    parser.add_argument("--threads", nargs="+", type=int, default=[1, 2])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--output", help="Markdown table to write (e.g. benchmarks/results/fastest.md).")
    parser.add_argument("--with_compile", nargs="*", default=[], choices=list(CASES),
                        help="cases that also time torch.compile(model) (inductor): compile time and steady state")
    parser.add_argument("--compile_freezing", action="store_true",
                        help="compile with inductor's freezing (constant weights, pre-packed for oneDNN)")
    parser.add_argument("--_case", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args._case:
        run_case(args._case, args.threads, args.repeats, args.size, with_compile=args._case in args.with_compile,
                 freezing=args.compile_freezing)  # fmt: skip
        return
    rows = []
    for case in args.cases:
        command = [sys.executable, __file__, "--_case", case, "--repeats", str(args.repeats), "--size",
                   str(args.size), "--threads", *map(str, args.threads), "--with_compile", *args.with_compile,
                   *(["--compile_freezing"] if args.compile_freezing else [])]  # fmt: skip
        done = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "PYTHONWARNINGS": "ignore"})
        case_rows = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
        if done.returncode != 0 or not case_rows:
            print(f"{case}: failed\n{done.stderr[-2000:]}", flush=True)
            continue
        for row in case_rows:
            print(f"{row['case']:>18} {row['threads']} thread(s) ours {row['ours_ms']:8.0f} ms  ORT {row['ort_ms']:8.0f} ms"
                  f"  ratio {row['ratio']:.2f}  ORT max abs {row['ort_max_abs']:.1e}", flush=True)
        rows += case_rows
    lines = [
        "# Our fastest CPU path vs ONNX Runtime on our own exported graph",
        "",
        f"`python {' '.join(['benchmarks/bench_fastest.py', *(argv if argv is not None else sys.argv[1:])])}` "
        f"(torch {torch.__version__}, ORT sessions without spinning workers, "
        f"{os.cpu_count()} CPUs, {args.size}x{args.size}, batch 1, 150 classes, random weights of the release's "
        "size; 1 thread: process CPU time, 2 threads: wall time; medians of interleaved runs). Ratio = ORT / ours "
        f"(> 1: ours faster); target >= {TARGET}.",
        "",
        "| model | threads | graph | ours ms | ORT ms | ratio | target | ours vs eager max abs | ours argmax agreement | "
        "ORT max abs | ORT argmax agreement | export s | our first result s |",
        "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        mark = "✅" if row["ratio"] >= TARGET else "❌"
        lines.append(
            f"| {row['case']} | {row['threads']} | {row['exporter']} | {row['ours_ms']:.0f} | {row['ort_ms']:.0f} | "
            f"{row['ratio']:.2f} | ≥{TARGET} {mark} | {row['ours_vs_eager_max_abs']:.1e} | "
            f"{100 * row['ours_argmax_agreement']:.3f}% | {row['ort_max_abs']:.1e} | "
            f"{100 * row['ort_argmax_agreement']:.3f}% | {row['export_s']:.0f} | {row['first_result_s']:.2f} |"
        )
    compiled = [row for row in rows if row.get("compiled_ms") is not None]
    if compiled:
        settings = "freezing: constant weights pre-packed for oneDNN" if args.compile_freezing else "default settings"
        lines += ["", f"torch.compile (inductor, {settings}) of the same model, in the same loop:", "",
                  "| model | threads | compile (first call) s | compiled ms | ours ms |", "|---|---:|---:|---:|---:|"]
        lines += [f"| {row['case']} | {row['threads']} | {row['compile_s']:.0f} | {row['compiled_ms']:.0f} | "
                  f"{row['ours_ms']:.0f} |" for row in compiled]
    print("\n".join(lines))
    if args.output:
        Path(args.output).write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
