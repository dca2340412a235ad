#!/usr/bin/env python
"""Our models in PyTorch against what a CPU user would deploy instead, on identical weights (issue "Deployment on
CPU"): transformers' model exported to ONNX Runtime and OpenVINO, and our own export in both runtimes.

    python benchmarks/bench_deploy.py [--cases segformer-b0 ...] [--threads 1 2] [--size 512] [--repeats 7]
        [--output benchmarks/results/deploy.md]

Cases (random weights, 150 classes, 1 x 3 x size x size, float32; both sides built by the per-architecture benchmark
scripts with IDENTICAL weights):

- `segformer-b0`, `segformer-b2`: transformers' `SegformerForSemanticSegmentation` vs ours (`bench_segformer`);
  outputs: `logits`.
- `maskformer-r50`, `maskformer-swin-t`: transformers' `MaskFormerForInstanceSegmentation` vs our conversion of it
  (`bench_maskformer`); outputs: the semantic scores, `class_queries_logits`, `masks_queries_logits`. Our forward
  always computes the semantic scores (its `logits`, the einsum of transformers' semantic post-processing), so
  transformers' side computes them too (in its exported graph), and every row does the same work.
- `segmenter-b16-encoder`, `setr-l-encoder`: transformers' `ViTModel` (sdpa) vs our Segmenter-B/16 / SETR T-Large
  encoder (`bench_segmenter` / `bench_setr`); outputs: the last layer's tokens. Segmenter's encoder ends with the
  final LayerNorm as ViTModel does (`last_hidden_state` against `last_hidden_state`); SETR's has none, so ViTModel's
  output before its final LayerNorm is taken (`hidden_states[-1]`; the exporter drops the unused norm).

Rows, per case and thread count: ours in PyTorch (plain `model(...)` under `torch.no_grad()`), ours through
`hf_segmodels.fastest(model)`, transformers' model exported with the TorchScript-based `torch.onnx.export`
(`dynamo=False`, opset 17; the dynamo exporter if that fails, the table says which) in ONNX Runtime and in OpenVINO
(fp32: `INFERENCE_PRECISION_HINT=f32`), and our export (`hf_segmodels.export.export_model(..., dynamic=False)`:
the dynamo exporter, static shape; for the encoders the same `torch.onnx.export` of a wrapper of our encoder) in both
runtimes. ONNX Runtime and OpenVINO are optional
(`pip install hf-segmodels[deploy]`): a missing runtime's rows are left out.

Timing (`benchmarks/timing.py`): every (case, thread count) runs in its own process; medians of `--repeats`
interleaved runs after one warm-up, process CPU time at 1 thread, wall time at more. `fastest(model)` switches
process-wide settings (the measured oneDNN kernels, the allocator), so it is timed in a second round, after the
first (ours plain and the four runtime rows) is done, interleaved with transformers' two runtime rows again;
"best / fastest" is the ratio within that round. Targets: the faster transformers runtime / ours in PyTorch >= 1.3
on every row, ours in each runtime / ours in PyTorch <= 1.1. Max abs difference: of every row's outputs to ours in
PyTorch (all outputs; the largest).
"""

import argparse
import datetime
import gc
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

from timing import interleaved_medians, onnxruntime_options  # noqa: E402

CASES = {
    "segformer-b0": "SegFormer-B0",
    "segformer-b2": "SegFormer-B2",
    "maskformer-r50": "MaskFormer R50",
    "maskformer-swin-t": "MaskFormer Swin-T",
    "segmenter-b16-encoder": "Segmenter-B/16 encoder",
    "setr-l-encoder": "SETR T-Large encoder",
}
RUNTIMES = {"onnx": "ONNX Runtime", "openvino": "OpenVINO"}
TARGET_PEER, TARGET_EXPORT = 1.3, 1.1


class _Tuple(torch.nn.Module):
    """`module` as a module of `pixel_values` alone returning `outputs(module, pixel_values)`, a tuple of tensors."""

    def __init__(self, module: torch.nn.Module, outputs):
        super().__init__()
        self.module, self.outputs = module, outputs

    def forward(self, pixel_values):
        return self.outputs(self.module, pixel_values)


def _maskformer_outputs(model, pixel_values):
    """transformers' MaskFormer: the semantic scores (our `logits`, the einsum of its semantic post-processing),
    class_queries_logits, masks_queries_logits; our export's outputs, in its order."""
    from hf_segmodels.maskformer.modeling_maskformer import semantic_scores

    outputs = model(pixel_values=pixel_values)
    return (semantic_scores(outputs.class_queries_logits, outputs.masks_queries_logits),
            outputs.class_queries_logits, outputs.masks_queries_logits)  # fmt: skip


def build(case: str, size: int, folder: Path) -> dict:
    """Both sides of a case: `theirs` (transformers' model as a `_Tuple` module, exported), `ours` (our model),
    `ours_module` (what of ours is timed and exported, pixel_values -> tuple: the export entry point's wrapper of the
    whole model, or a wrapper of the encoder), `names` (the outputs) and `compared` (them, in words)."""
    from hf_segmodels.export import _Outputs, output_names

    if case.startswith("segformer"):
        import bench_segformer

        theirs_path, ours_path = bench_segformer.build_checkpoints(case.split("-")[1], folder)
        theirs, ours = bench_segformer.load("transformers", theirs_path), bench_segformer.load("ours", ours_path)
        return {"theirs": _Tuple(theirs, lambda model, x: (model(pixel_values=x).logits,)), "ours": ours,
                "ours_module": _Outputs(ours, output_names(ours)).eval(), "names": list(output_names(ours)),
                "compared": "logits"}  # fmt: skip
    if case.startswith("maskformer"):
        import bench_maskformer

        theirs, ours = bench_maskformer.build_models(case.removeprefix("maskformer-"))
        return {"theirs": _Tuple(theirs, _maskformer_outputs), "ours": ours,
                "ours_module": _Outputs(ours, output_names(ours)).eval(), "names": list(output_names(ours)),
                "compared": "semantic scores (our logits; transformers: its post-processing's einsum), "
                            "class_queries_logits, masks_queries_logits"}  # fmt: skip
    import bench_segmenter
    import bench_setr

    vit, ours = (bench_segmenter if case.startswith("segmenter") else bench_setr).build_models(size)
    common = {"ours": ours, "ours_module": _Tuple(ours.encoder, lambda encoder, x: (encoder(x).last_hidden_state,)),
            "names": ["last_hidden_state"]}  # fmt: skip
    if ours.encoder.layernorm is not None:  # Segmenter: the final LayerNorm on both sides
        return {**common, "theirs": _Tuple(vit, lambda model, x: (model(pixel_values=x).last_hidden_state,)),
                "compared": "encoder tokens after the final LayerNorm (ViTModel: last_hidden_state)"}  # fmt: skip
    theirs = _Tuple(vit, lambda model, x: (model(pixel_values=x, output_hidden_states=True).hidden_states[-1],))
    return {**common, "theirs": theirs,
            "compared": "encoder tokens of the last layer, no final LayerNorm (ViTModel: hidden_states[-1])"}


def export_onnx(module: torch.nn.Module, path: Path, size: int, names: list[str]) -> str:
    """`module` (pixel_values -> tuple) to ONNX: the TorchScript-based exporter (opset 17), the dynamo one if that
    fails. Returns the exporter used."""
    example = (torch.zeros(1, 3, size, size),)
    try:
        with torch.no_grad():
            torch.onnx.export(module.eval(), example, str(path), dynamo=False, opset_version=17,
                              input_names=["pixel_values"], output_names=names)  # fmt: skip
        return "TorchScript"
    except Exception as error:  # noqa: BLE001  (any exporter failure: fall back and say so)
        print(f"TorchScript export of {path.name} failed ({type(error).__name__}: {str(error)[:300]}); dynamo exporter",
              file=sys.stderr, flush=True)  # fmt: skip
    with torch.no_grad():
        program = torch.onnx.export(module.eval(), example, dynamo=True, input_names=["pixel_values"],
                                    output_names=names, verbose=False)  # fmt: skip
    program.save(str(path))
    return "dynamo"


def exports(name: str, size: int, folder: Path, case: dict, formats: list[str]) -> dict:
    """The graphs of both sides, written once per case and size into `folder` (the thread counts' processes share
    them): {"theirs": ONNX path, "ours": {format: path}, "exporter": transformers' exporter}."""
    from hf_segmodels.export import _Outputs, export_model

    record = folder / f"{name}-{size}.json"
    if not record.exists():
        theirs_path = folder / f"{name}-{size}-transformers.onnx"
        exporter = export_onnx(case["theirs"], theirs_path, size, case["names"])
        ours_paths = {}
        if isinstance(case["ours_module"], _Outputs):  # the whole model: the package's export entry point
            for format in formats:
                # Static graphs, as the transformers rows: OpenVINO runs a dynamic-shape graph slower (deploy.md).
                config = export_model(case["ours"], folder / f"{name}-{size}-ours-{format}", format, height=size,
                                      width=size, dynamic=False, verify_export=False)  # fmt: skip
                ours_paths[format] = str(folder / f"{name}-{size}-ours-{format}" / config["file"])
        else:  # the encoder alone: the same exporter on a wrapper of it; OpenVINO reads that ONNX graph
            path = folder / f"{name}-{size}-ours.onnx"
            ours_exporter = export_onnx(case["ours_module"], path, size, case["names"])
            if ours_exporter != exporter:
                exporter += f" (ours: {ours_exporter})"
            ours_paths = dict.fromkeys(formats, str(path))
        record.write_text(json.dumps({"theirs": str(theirs_path), "ours": ours_paths, "exporter": exporter}))
    return json.loads(record.read_text())


def openvino_settings(threads: int) -> dict:
    """OpenVINO's CPU plugin settings of every OpenVINO row: `threads` threads, float32 inference (no bf16 on CPUs
    that have it)."""
    return {"INFERENCE_NUM_THREADS": threads, "INFERENCE_PRECISION_HINT": "f32"}


def runtime(path: Path, format: str, threads: int):
    """A callable running the graph (ONNX, or OpenVINO IR / ONNX in OpenVINO) with `threads` threads on a numpy
    input; returns all its outputs in order."""
    if format == "onnx":
        import onnxruntime

        session = onnxruntime.InferenceSession(str(path), onnxruntime_options(threads),
                                               providers=["CPUExecutionProvider"])  # fmt: skip
        name = session.get_inputs()[0].name
        return lambda x: session.run(None, {name: x})
    import openvino

    compiled = openvino.Core().compile_model(str(path), "CPU", openvino_settings(threads))
    return lambda x: [np.asarray(value) for value in compiled(x).values()]


def available_formats() -> list[str]:
    formats = []
    for format, module in (("onnx", "onnxruntime"), ("openvino", "openvino")):
        try:
            __import__(module)
            formats.append(format)
        except ImportError:
            print(f"{module} is not installed: its rows are left out", file=sys.stderr)
    return formats


def run_as_fastest(module: torch.nn.Module, pixel_values: torch.Tensor):
    """A part of a model (the encoder) run the way `hf_segmodels.fastest(model)` runs the model, once `fastest` has
    switched the process-wide settings (the measured kernels, the allocator): in eval and inference mode."""
    module.eval()
    with torch.inference_mode():
        return module(pixel_values)


def run_case(case: str, threads: int, size: int, repeats: int, folder: Path) -> dict:
    """One case at one thread count (in its own process): medians in seconds and max abs differences per row."""
    import hf_segmodels
    from hf_segmodels.export import _Outputs

    torch.set_num_threads(threads)
    formats = available_formats()
    built = build(case, size, folder)
    ours, ours_module = built["ours"], built["ours_module"]
    graphs = exports(case, size, folder, built, formats)
    del built["theirs"]  # transformers' side runs in the runtimes only: its PyTorch weights are not needed
    gc.collect()
    pixel_values = torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(0))
    array = pixel_values.numpy()

    def pytorch():
        with torch.no_grad():
            return ours_module(pixel_values)

    def call(run):
        return lambda: run(array)

    peers = {f"transformers {RUNTIMES[f]}": call(runtime(graphs["theirs"], f, threads)) for f in formats}
    rows = {"ours PyTorch": pytorch, **peers,
            **{f"ours {RUNTIMES[f]}": call(runtime(graphs["ours"][f], f, threads)) for f in formats}}  # fmt: skip
    clock = "cpu" if threads == 1 else "wall"
    reference = [tensor.numpy() for tensor in pytorch()]

    def difference(outputs) -> float:
        return max(float(np.abs(np.asarray(value) - expected).max()) for value, expected in zip(outputs, reference))

    differences = {name: difference(function()) for name, function in rows.items() if name != "ours PyTorch"}
    medians = interleaved_medians(rows, repeats=repeats, clock=clock)

    # second round: the fastest path (process-wide settings, so after the first round), against the peers again
    fast = hf_segmodels.fastest(ours)

    def fastest():
        if isinstance(ours_module, _Outputs):  # fastest(model)(pixel_values=...), the outputs of our export
            outputs = fast(pixel_values=pixel_values)
            return tuple(getattr(outputs, name) for name in ours_module.names)
        return run_as_fastest(ours_module, pixel_values)

    differences["ours fastest"] = difference(fastest())
    second = interleaved_medians({"ours fastest": fastest, **peers}, repeats=repeats, clock=clock)
    best = min((second[name] for name in peers), default=None)
    return {
        "case": case, "threads": threads, "clock": clock, "exporter": graphs["exporter"], "compared": built["compared"],
        "ms": {name: 1e3 * value for name, value in {**medians, "ours fastest": second["ours fastest"]}.items()},
        "best_peer_over_fastest": None if best is None else best / second["ours fastest"],
        "differences": differences,
    }  # fmt: skip


def _fmt(value, spec: str) -> str:
    return "–" if value is None else format(value, spec)


def _mark(ok: bool) -> str:
    return " ✅" if ok else " ❌"


def markdown(results: list[dict], command: str, size: int, repeats: int) -> str:
    import transformers

    versions = [f"torch {torch.__version__}", f"transformers {transformers.__version__}"]
    for module, label in (("onnxruntime", "onnxruntime"), ("openvino", "OpenVINO")):
        try:
            versions.append(f"{label} {__import__(module).__version__.split('-')[0]}")
        except ImportError:
            versions.append(f"{label} not installed")
    lines = [
        f"# Deployment runtimes vs ours in PyTorch ({size}x{size}, batch 1, float32, 150 classes, identical weights)",
        "",
        f"`{command}` ({', '.join(versions)}, {os.cpu_count()} CPUs, {datetime.date.today().isoformat()}; 1 thread: "
        f"process CPU time, 2 threads: wall time; medians of {repeats} interleaved runs)",
        "",
        "| model | threads | ours PyTorch ms | ours fastest ms | transformers ORT ms | transformers OpenVINO ms | "
        "ours ORT ms | ours OpenVINO ms | best transformers runtime / ours | best / ours fastest | ours ORT / ours | "
        "ours OV / ours | max abs diff |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in results:
        m = row["ms"]
        ours = m["ours PyTorch"]
        peers = [m[name] for name in ("transformers ONNX Runtime", "transformers OpenVINO") if name in m]
        best = min(peers) / ours if peers else None
        exported = {f: m.get(f"ours {RUNTIMES[f]}") for f in RUNTIMES}
        ratios = {f: None if value is None else value / ours for f, value in exported.items()}
        cells = [
            CASES[row["case"]], str(row["threads"]), f"{ours:.0f}", f"{m['ours fastest']:.0f}",
            _fmt(m.get("transformers ONNX Runtime"), ".0f"), _fmt(m.get("transformers OpenVINO"), ".0f"),
            _fmt(exported["onnx"], ".0f"), _fmt(exported["openvino"], ".0f"),
            _fmt(best, ".2f") + ("" if best is None else _mark(best >= TARGET_PEER)),
            _fmt(row["best_peer_over_fastest"], ".2f"),
            *[_fmt(ratio, ".2f") + ("" if ratio is None else _mark(ratio <= TARGET_EXPORT))
              for ratio in ratios.values()],
            f"{max(row['differences'].values()):.1e}",
        ]  # fmt: skip
        lines.append("| " + " | ".join(cells) + " |")
    lines += [
        "",
        f"best transformers runtime / ours: the faster of transformers' model in ONNX Runtime and OpenVINO over ours "
        f"in PyTorch (plain `model(...)`, `torch.no_grad()`; target >= {TARGET_PEER}). best / ours fastest: the same "
        "over `hf_segmodels.fastest(model)`, timed in a second round (it switches process-wide settings). "
        f"ours ORT / ours, ours OV / ours: our exported graph in each runtime over ours in PyTorch (target <= "
        f"{TARGET_EXPORT}). max abs diff: the largest difference of any row's outputs to ours in PyTorch.",
        "",
        "| model | threads | transformers' exporter | compared outputs | max abs diff per row |",
        "|---|---:|---|---|---|",
    ]
    for row in results:
        per_row = ", ".join(f"{name}: {value:.1e}" for name, value in row["differences"].items())
        lines.append(f"| {CASES[row['case']]} | {row['threads']} | {row['exporter']} | {row['compared']} | {per_row} |")
    return "\n".join(lines) + "\n"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", nargs="+", default=list(CASES), choices=list(CASES))
    parser.add_argument("--threads", nargs="+", type=int, default=[1, 2])
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--output", default=str(HERE / "results" / "deploy.md"), help="Markdown table to write.")
    parser.add_argument("--_case", help=argparse.SUPPRESS)
    parser.add_argument("--_folder", help=argparse.SUPPRESS)
    parser.add_argument("--_json", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args._case:  # child process: one case at one thread count
        result = run_case(args._case, args.threads[0], args.size, args.repeats, Path(args._folder))
        Path(args._json).write_text(json.dumps(result))
        return
    command = "python benchmarks/bench_deploy.py " + " ".join(sys.argv[1:] if argv is None else argv)
    results = []
    with tempfile.TemporaryDirectory() as folder:
        for case in args.cases:
            for threads in args.threads:
                out = Path(folder) / f"{case}-{threads}.json"
                done = subprocess.run(
                    [sys.executable, __file__, "--_case", case, "--threads", str(threads), "--size", str(args.size),
                     "--repeats", str(args.repeats), "--_folder", folder, "--_json", str(out)],
                    capture_output=True, text=True, env={**os.environ, "PYTHONWARNINGS": "ignore"},
                )  # fmt: skip
                if done.returncode != 0 or not out.exists():
                    print(f"{case} ({threads} thread(s)): failed\n{done.stderr[-3000:]}", flush=True)
                    continue
                for line in done.stderr.splitlines():  # exporter fallbacks
                    if "export of" in line and "failed" in line:
                        print(line, flush=True)
                result = json.loads(out.read_text())
                results.append(result)
                print(f"{case:>22} {threads} thread(s) " + "  ".join(f"{k} {v:.0f}" for k, v in result["ms"].items())
                      + f"  max abs diff {max(result['differences'].values()):.1e}", flush=True)  # fmt: skip
    text = markdown(results, command, args.size, args.repeats)
    print(text)
    if args.output:
        Path(args.output).parent.mkdir(parents=True, exist_ok=True)
        Path(args.output).write_text(text)


if __name__ == "__main__":
    main()
