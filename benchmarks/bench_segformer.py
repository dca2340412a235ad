#!/usr/bin/env python
"""SegFormer inference speed and peak memory: hf_segmodels vs transformers, identical weights, batch 1, CPU.

    python benchmarks/bench_segformer.py                       # B0 @ 512, B2 @ 512, B0 @ 1024
    python benchmarks/bench_segformer.py --cases b0:512 --repeats 20 --threads 1

For every case the script builds transformers' `SegformerForSemanticSegmentation` (attn_implementation="sdpa") with
seeded random weights (BatchNorm statistics randomised too, so the decoder's BatchNorm is not an identity), saves it,
converts it with our converter (`--source transformers`, the same path as `conversion_scripts/convert_segformer.py`)
and loads both from disk in ONE process. It checks that the logits agree (max abs diff <= 1e-4), then times
`model(pixel_values)` under `torch.inference_mode()`: after warm-up, the two models run alternately (so that load from
other processes on the machine hits both alike) and the median of the repeats is reported; the speed ratio is
transformers' median time / ours.

Peak memory: each model is loaded in a FRESH subprocess (so that neither sees the other's allocations, nor memory
that the C allocator kept from earlier runs), the kernel's peak-RSS counter is reset (`echo 5 >
/proc/self/clear_refs`) and the resident size read (`VmRSS`); after ONE forward pass, `VmHWM` minus that baseline is
the forward pass's peak extra resident memory (activations, temporaries and one-time library buffers; weights and
input are in the baseline). Where `clear_refs` is not available, the growth of `ru_maxrss` over the forward is
reported instead (marked "ru"; it misses peaks below the loading peak).

Timings on a shared machine: the default thread count (torch's, one per core) is what users get, but when other
processes keep the cores busy, OpenMP threads that wait for each other make every op slower by an amount that has
nothing to do with the model; `--threads 1` gives steadier numbers then. The ratio of the medians is the figure to
read; absolute times move with the load.
"""

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

ENCODERS = {
    "b0": {"hidden_sizes": [32, 64, 160, 256], "depths": [2, 2, 2, 2], "decoder_hidden_size": 256},
    "b2": {"hidden_sizes": [64, 128, 320, 512], "depths": [3, 4, 6, 3], "decoder_hidden_size": 768},
}
NUM_LABELS = 150  # ADE20K


def build_checkpoints(variant: str, folder: Path) -> tuple[Path, Path]:
    """Saves a random transformers SegFormer and our conversion of it (once per variant); returns both folders."""
    import transformers

    theirs, ours = folder / f"transformers-{variant}", folder / f"ours-{variant}"
    if ours.is_dir():
        return theirs, ours

    from hf_segmodels.conversion_utils import save_converted
    from hf_segmodels.segformer.convert_segformer import convert_segformer_checkpoint

    torch.manual_seed(0)
    config = transformers.SegformerConfig(num_labels=NUM_LABELS, **ENCODERS[variant])
    model = transformers.SegformerForSemanticSegmentation(config).eval()
    with torch.no_grad():
        model.decode_head.batch_norm.running_mean.normal_(0, 0.1)
        model.decode_head.batch_norm.running_var.uniform_(0.5, 1.5)
        model.decode_head.batch_norm.weight.normal_(1, 0.1)
        model.decode_head.batch_norm.bias.normal_(0, 0.1)
    model.save_pretrained(theirs)
    ours_model, processor = convert_segformer_checkpoint(theirs, source="transformers")
    save_converted(ours, ours_model, processor)
    return theirs, ours


def load(kind: str, path: Path):
    if kind == "transformers":
        import transformers

        return transformers.SegformerForSemanticSegmentation.from_pretrained(path, attn_implementation="sdpa").eval()
    import hf_segmodels  # noqa: F401  (registers the classes)
    from hf_segmodels import SegformerForSemanticSegmentation

    return SegformerForSemanticSegmentation.from_pretrained(path, attn_implementation="sdpa").eval()


def _status(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise KeyError(field)


def measure_peak_memory(kind: str, path: str, size: int) -> dict:
    """Runs in a fresh subprocess (see the module docstring)."""
    torch.manual_seed(0)
    model = load(kind, Path(path))
    pixel_values = torch.randn(1, 3, size, size)
    with torch.inference_mode():
        try:
            Path("/proc/self/clear_refs").write_text("5")
            baseline = _status("VmRSS")
            model(pixel_values)
            return {"peak_bytes": _status("VmHWM") - baseline, "method": "hwm"}
        except OSError:
            before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
            model(pixel_values)
            after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
            return {"peak_bytes": after - before, "method": "ru"}


def peak_memory_in_subprocess(kind: str, path: Path, size: int) -> dict:
    command = [sys.executable, __file__, "--_memory", kind, str(path), str(size), str(torch.get_num_threads())]
    result = subprocess.run(command, capture_output=True, text=True, check=True)
    return json.loads(result.stdout.strip().splitlines()[-1])


def time_models(models: dict, pixel_values: torch.Tensor, repeats: int, warmup: int) -> dict[str, list[float]]:
    times = {name: [] for name in models}
    with torch.inference_mode():
        for _ in range(warmup):
            for model in models.values():
                model(pixel_values)
        for _ in range(repeats):
            for name, model in models.items():
                start = time.perf_counter()
                model(pixel_values)
                times[name].append(time.perf_counter() - start)
    return times


def run_case(variant: str, size: int, repeats: int, warmup: int, folder: Path) -> dict:
    theirs_path, ours_path = build_checkpoints(variant, folder)
    models = {"transformers": load("transformers", theirs_path), "ours": load("ours", ours_path)}
    torch.manual_seed(1)
    pixel_values = torch.randn(1, 3, size, size)
    with torch.inference_mode():
        reference = models["transformers"](pixel_values).logits
        logits = models["ours"](pixel_values).logits
    max_diff = (reference - logits).abs().max().item()
    if logits.shape != reference.shape or not max_diff <= 1e-4:
        raise SystemExit(f"{variant}@{size}: logits differ (max abs diff {max_diff:.3g}); not benchmarking.")
    times = time_models(models, pixel_values, repeats, warmup)
    del models
    memory = {kind: peak_memory_in_subprocess(kind, path, size)
              for kind, path in (("transformers", theirs_path), ("ours", ours_path))}  # fmt: skip
    medians = {name: statistics.median(values) for name, values in times.items()}
    return {
        "case": f"{variant}@{size}",
        "max_abs_diff": max_diff,
        "median_s": medians,
        "min_s": {name: min(values) for name, values in times.items()},
        "ratio": medians["transformers"] / medians["ours"],
        "peak_mb": {name: memory[name]["peak_bytes"] / 2**20 for name in memory},
        "memory_method": memory["ours"]["method"],
    }


def main(argv=None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", nargs="+", default=["b0:512", "b2:512", "b0:1024"], help="variant:size pairs")
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's choice).")
    parser.add_argument("--json", default=None, help="Also write the results to this file.")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    import transformers

    print(f"torch {torch.__version__}, transformers {transformers.__version__}, {torch.get_num_threads()} threads, "
          f"{os.cpu_count()} CPUs; batch 1, float32, inference_mode; repeats {args.repeats} (median)")  # fmt: skip
    results = []
    with tempfile.TemporaryDirectory() as folder:
        for case in args.cases:
            variant, size = case.split(":")
            result = run_case(variant, int(size), args.repeats, args.warmup, Path(folder))
            results.append(result)
            med, peak = result["median_s"], result["peak_mb"]
            print(
                f"{result['case']:>8}: transformers {med['transformers'] * 1e3:8.1f} ms | "
                f"ours {med['ours'] * 1e3:8.1f} ms | speed ratio {result['ratio']:.2f}x | peak forward memory "
                f"transformers {peak['transformers']:7.1f} MiB, ours {peak['ours']:7.1f} MiB "
                f"({result['memory_method']}) | max |diff| {result['max_abs_diff']:.2e}",
                flush=True,
            )
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return results


if __name__ == "__main__":
    if len(sys.argv) == 6 and sys.argv[1] == "--_memory":
        torch.set_num_threads(int(sys.argv[5]))
        print(json.dumps(measure_peak_memory(sys.argv[2], sys.argv[3], int(sys.argv[4]))))
    else:
        main()
