#!/usr/bin/env python
"""Speed and memory of the four architectures against their peers, in one table.

    python benchmarks/run_all.py                       # all cases, 512x512, batch 1, float32, 1 thread, CPU clock
    python benchmarks/run_all.py --cases segformer-b0 maskformer-r50 --repeats 7
    python benchmarks/run_all.py --threads 2 --clock wall   # on an otherwise idle machine
    python benchmarks/run_all.py --deploy --repeats 7       # the deployment runtimes (bench_deploy.py): deploy.md
    python benchmarks/run_all.py --profile                  # where the time goes, ours and the runtimes (profile_cpu.py)

Every comparison runs in its own fresh process (`--_case`), builds both models with IDENTICAL weights through the
per-architecture benchmark scripts (bench_segformer / bench_maskformer / bench_segmenter / bench_setr), checks that
they compute the same thing (max abs diff reported), and times them on the same input:

- peers: transformers' `SegformerForSemanticSegmentation` and `MaskFormerForInstanceSegmentation` (+ the einsum of its
  semantic post-processing, which our forward includes); for Segmenter and SETR, which transformers does not port,
  transformers' `ViTModel` (sdpa) of the same size against our encoder, and the whole model's FLOP count
  (`torch.utils.flop_counter`, attention's products included: `count_flops`) against this machine's measured fp32
  matmul throughput as the physical anchor (`achieved GFLOP/s / peak GFLOP/s`, where the peak is a 1536^3 `torch.mm`
  timed in the same interleaved loop); also for SegFormer's `fastest()` / `fastest(compile=True)` rows.
- timing: after warm-up, ours, the peer and the matmul probe run alternately `--repeats` times and the medians are
  reported, with the noise `(p75 - p25) / median`. Both the process CPU time and the wall time are recorded; `--clock`
  picks which one the table shows. The default (1 thread, CPU time) is the stable measure on a machine shared with
  other jobs: CPU time does not count the time another process holds the core. Use `--threads N --clock wall` on an
  idle machine.
- peak memory: after warm-up, freed heap memory is returned to the OS (`malloc_trim`), the kernel's peak-RSS mark is
  reset (`/proc/self/clear_refs`) and the forward's `VmHWM - VmRSS` is its peak extra resident memory (activations and
  temporaries; weights and input are already resident). Larger of two alternating measurements.
- post-processing: `post_process_panoptic_segmentation` of our processors (MaskFormer: against transformers' PIL
  processor on the same outputs, synthetic confident masks so that ~100 queries become segments; SegFormer: our
  panoptic vs transformers' semantic post-processing, transformers has no panoptic one for it).
- graph breaks: `torch._dynamo.explain` of our whole model (at 128x128, the graph structure does not depend on size).

Writes benchmarks/results/run_all.{json,md,png} (table, and a bar chart of the speed ratios) and includes the sliding-
window and image-processor throughput results of `bench_infer.py`.
"""

import argparse
import ctypes
import gc
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))
RESULTS = HERE / "results"

from timing import interleaved  # noqa: E402

# name -> (architecture, variant, targets: {row work: minimum ratio peer / ours})
CASES = {
    "segformer-b0": ("SegFormer", "MiT-B0, 150 classes", {"forward": 1.5}),
    "segformer-b2": ("SegFormer", "MiT-B2, 150 classes", {"forward": 1.5}),
    "maskformer-swin-t": ("MaskFormer", "Swin-T, 150 classes, 100 queries", {"forward + panoptic post-processing": 1.2}),
    "maskformer-r50": ("MaskFormer", "R50, 150 classes, 100 queries", {"forward + panoptic post-processing": 1.2}),
    "segmenter-b16-mask": ("Segmenter", "ViT-B/16 mask, 150 classes", {"encoder": 1.0, "whole model": 0.5}),
    "setr-pup-l": ("SETR", "PUP T-Large, 150 classes", {"encoder": 1.0, "whole model": 0.5}),
}


# ------------------------------------------------------------------------------------------------------------------
# measurement
# ------------------------------------------------------------------------------------------------------------------


def summary(values: list[float]) -> dict:
    quartiles = statistics.quantiles(values, n=4) if len(values) > 1 else [values[0]] * 3
    median = statistics.median(values)
    return {"median": median, "min": min(values), "noise": (quartiles[2] - quartiles[0]) / median}


def _status_bytes(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise KeyError(field)


def peak_memory_mb(function) -> float | None:
    """Peak extra resident memory of one call (see the module docstring); None where /proc does not allow it."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return None
    baseline = _status_bytes("VmRSS")
    function()
    return (_status_bytes("VmHWM") - baseline) / 2**20


def compare_memory(functions: dict) -> dict:
    peaks = {name: [] for name in functions}
    for _ in range(2):
        for name, function in functions.items():
            peaks[name].append(peak_memory_mb(function))
    return {name: (None if None in values else max(values)) for name, values in peaks.items()}


def _cpu_flash_attention_flops(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    """FLOPs of `aten._scaled_dot_product_flash_attention_for_cpu` (the kernel `F.scaled_dot_product_attention` runs
    on CPU): Q K^T and P V, 4 * B * H * L * S * D, as torch.utils.flop_counter counts its CUDA flash attention."""
    from torch.utils.flop_counter import sdpa_flop_count

    return sdpa_flop_count(query_shape, key_shape, value_shape)


def count_flops(function) -> int:
    """FLOPs of `function()` by `torch.utils.flop_counter.FlopCounterMode`, with attention's products counted on CPU
    too: PyTorch 2.13's registry has formulas for the CUDA attention kernels only, so without this mapping every
    attention layer on CPU counted zero (SegFormer-B2 at 512x512: 40.8 instead of 48.5 GFLOP)."""
    from torch.utils.flop_counter import FlopCounterMode

    mapping = {torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: _cpu_flash_attention_flops}
    with FlopCounterMode(display=False, custom_mapping=mapping) as counter:
        function()
    return counter.get_total_flops()


MATMUL_SIZE = 1536


def matmul_probe():
    a = torch.randn(MATMUL_SIZE, MATMUL_SIZE)
    b = torch.randn(MATMUL_SIZE, MATMUL_SIZE)
    return lambda: torch.mm(a, b)


def graph_breaks(model, num_channels: int = 3, size: int = 128) -> dict:
    """`torch._dynamo.explain` of the model's forward: number of graphs, graph breaks and their reasons."""
    import torch._dynamo

    torch._dynamo.reset()
    try:
        with torch.no_grad():
            explanation = torch._dynamo.explain(model)(pixel_values=torch.randn(1, num_channels, size, size))
    except Exception as error:  # reported in the table, not hidden
        return {"graph_count": None, "graph_break_count": None, "break_reasons": [f"explain failed: {error!r}"[:300]]}
    finally:
        torch._dynamo.reset()
    reasons = []
    for reason in explanation.break_reasons:
        frame = reason.user_stack[-1] if reason.user_stack else None
        where = f" ({Path(frame.filename).name}:{frame.lineno})" if frame is not None else ""
        reasons.append(reason.reason.splitlines()[0][:200] + where)
    return {
        "graph_count": explanation.graph_count,
        "graph_break_count": explanation.graph_break_count,
        "break_reasons": reasons,
    }


# ------------------------------------------------------------------------------------------------------------------
# cases: every builder returns the callables to compare (identical weights, same input)
# ------------------------------------------------------------------------------------------------------------------


def fastest_logits(model, pixel_values: torch.Tensor, compile: bool):
    """A function giving `hf_segmodels.fastest(model, compile=compile)(pixel_values=...).logits`; `fastest` is
    called at the first call (it switches process-wide settings, so not before the rows that precede it)."""
    import hf_segmodels

    def run():
        return hf_segmodels.fastest(model, compile=compile)(pixel_values=pixel_values).logits

    return run


def build_segformer(variant: str, size: int, folder: Path) -> dict:
    import transformers

    import bench_segformer
    from hf_segmodels import SegformerImageProcessor

    theirs_path, ours_path = bench_segformer.build_checkpoints(variant, folder)
    peer = bench_segformer.load("transformers", theirs_path)
    ours = bench_segformer.load("ours", ours_path)
    pixel_values = torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        outputs = ours(pixel_values)
    processor, peer_processor = SegformerImageProcessor(), transformers.SegformerImageProcessorPil()
    target = [(size, size)]
    return {
        "model": ours,
        "rows": {
            "forward": {
                "ours": lambda: ours(pixel_values).logits,
                "peer": lambda: peer(pixel_values).logits,
                "peer_name": "transformers SegformerForSemanticSegmentation (sdpa)",
            },
            # the package's fastest CPU path (after the plain rows: it switches process-wide settings), eager and
            # compiled; the same work, so the same FLOP count and % of the matmul peak
            "forward, fastest()": {
                "ours": fastest_logits(ours, pixel_values, compile=False),
                "peer": lambda: peer(pixel_values).logits,
                "peer_name": "transformers SegformerForSemanticSegmentation (sdpa)",
            },
            "forward, fastest(compile=True)": {
                "ours": fastest_logits(ours, pixel_values, compile=True),
                "peer": lambda: peer(pixel_values).logits,
                "peer_name": "transformers SegformerForSemanticSegmentation (sdpa)",
            },
        },
        "whole": lambda: ours(pixel_values),
        "post": {
            "ours": lambda: processor.post_process_panoptic_segmentation(outputs, target_sizes=target),
            "peer": lambda: peer_processor.post_process_semantic_segmentation(outputs, target_sizes=target),
            "what": "ours: panoptic (from the semantic map); transformers: semantic (it has no panoptic)",
        },
    }


def build_maskformer(backbone: str, size: int, folder: Path) -> dict:
    from transformers import MaskFormerImageProcessorPil

    import bench_maskformer
    from hf_segmodels import MaskFormerImageProcessor

    peer, ours = bench_maskformer.build_models(backbone)
    pixel_values = torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(1))

    def peer_forward():
        outputs = peer(pixel_values=pixel_values)
        # the semantic scores, as transformers' post_process_semantic_segmentation computes them (before resizing);
        # our forward returns them as `logits`
        scores = torch.einsum("bqc,bqhw->bchw", outputs.class_queries_logits.softmax(-1)[..., :-1],
                              outputs.masks_queries_logits.sigmoid())  # fmt: skip
        return outputs, scores

    with torch.inference_mode():
        reference = peer_forward()[0]
    synthetic = bench_maskformer.synthetic_outputs(type(reference), reference.masks_queries_logits.shape[-2:])
    processor, peer_processor = MaskFormerImageProcessor(), MaskFormerImageProcessorPil()
    post_kwargs = {"threshold": 0.5, "label_ids_to_fuse": set(), "target_sizes": [(size, size)]}

    def ours_post():
        return processor.post_process_panoptic_segmentation(synthetic, **post_kwargs)

    def peer_post():
        return peer_processor.post_process_panoptic_segmentation(synthetic, **post_kwargs)

    def ours_outputs():
        outputs = ours(pixel_values=pixel_values)
        return torch.cat([outputs.logits.flatten(), outputs.masks_queries_logits.flatten(),
                          outputs.class_queries_logits.flatten()])  # fmt: skip

    def peer_outputs():
        outputs, scores = peer_forward()
        return torch.cat([scores.flatten(), outputs.masks_queries_logits.flatten(),
                          outputs.class_queries_logits.flatten()])  # fmt: skip

    def original_post():
        """A literal port of the original's panoptic_inference (ours follows it; transformers resizes probabilities
        and measures the overlap differently, so its map differs on a few boundary pixels)."""
        logits = torch.nn.functional.interpolate(synthetic.masks_queries_logits, size=(size, size), mode="bilinear",
                                                 align_corners=False)[0]  # fmt: skip
        scores, labels = synthetic.class_queries_logits[0].softmax(-1).max(-1)
        keep = labels.ne(synthetic.class_queries_logits.shape[-1] - 1) & (scores > post_kwargs["threshold"])
        masks = logits[keep].sigmoid()
        ids = (scores[keep].view(-1, 1, 1) * masks).argmax(0)
        panoptic = torch.zeros(ids.shape, dtype=torch.long)
        segment = 0
        for k in range(masks.shape[0]):
            mask = ids == k
            area, original_area = mask.sum().item(), (masks[k] >= 0.5).sum().item()
            if area > 0 and original_area > 0 and area / original_area >= 0.8:
                segment += 1
                panoptic[mask] = segment
        return panoptic

    with torch.inference_mode():
        same = torch.equal(ours_post()[0]["segmentation"].long(), original_post())
    if not same:
        raise SystemExit(f"maskformer-{backbone}: our panoptic map differs from the original's; not benchmarking.")
    return {
        "model": ours,
        "rows": {
            "forward": {"ours": ours_outputs, "peer": peer_outputs,
                        "peer_name": "transformers MaskFormerForInstanceSegmentation (+ semantic einsum)"},
            "forward + panoptic post-processing": {
                "ours": lambda: (ours_outputs(), ours_post()),
                "peer": lambda: (peer_outputs(), peer_post()),
                "peer_name": "transformers MaskFormer + MaskFormerImageProcessorPil",
                "difference_of": "forward",
            },
        },
        "whole": lambda: ours(pixel_values=pixel_values),
        "post": {"ours": ours_post, "peer": peer_post,
                 "what": "panoptic on the same outputs (~100 segments); our map checked equal to the original's algorithm"},
    }


def build_vit_case(kind: str, size: int, folder: Path) -> dict:
    from hf_segmodels import SegmenterImageProcessor, SetrImageProcessor

    if kind == "segmenter":
        import bench_segmenter

        vit, ours = bench_segmenter.build_models(size)
        processor = SegmenterImageProcessor()
    else:
        import bench_setr

        vit, ours = bench_setr.build_models(size)
        processor = SetrImageProcessor()
    pixel_values = torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        outputs = ours(pixel_values=pixel_values)
    # SETR's encoder has no final LayerNorm: compare (and time) ViTModel's last layer output before its final norm,
    # which costs one LayerNorm over the tokens (< 0.1% of the work) more on the peer's side.
    last_hidden = (lambda: vit(pixel_values).last_hidden_state) if kind == "segmenter" else (
        lambda: vit(pixel_values, output_hidden_states=True).hidden_states[-1])
    return {
        "model": ours,
        "rows": {
            "encoder": {
                "ours": lambda: ours.encoder(pixel_values).last_hidden_state,
                "peer": last_hidden,
                "peer_name": "transformers ViTModel (sdpa), same size and weights",
            },
            "whole model": {"ours": lambda: ours(pixel_values=pixel_values).logits, "peer": None, "peer_name": None},
        },
        "whole": lambda: ours(pixel_values=pixel_values),
        "post": {
            "ours": lambda: processor.post_process_panoptic_segmentation(outputs, target_sizes=[(size, size)]),
            "peer": None,
            "what": "panoptic (from the semantic map)",
        },
    }


BUILDERS = {
    "segformer-b0": lambda size, folder: build_segformer("b0", size, folder),
    "segformer-b2": lambda size, folder: build_segformer("b2", size, folder),
    "maskformer-swin-t": lambda size, folder: build_maskformer("swin-t", size, folder),
    "maskformer-r50": lambda size, folder: build_maskformer("r50", size, folder),
    "segmenter-b16-mask": lambda size, folder: build_vit_case("segmenter", size, folder),
    "setr-pup-l": lambda size, folder: build_vit_case("setr", size, folder),
}


def _max_abs_diff(a, b) -> float:
    if isinstance(a, tuple):
        a, b = a[0], b[0]
    return (a.float() - b.float()).abs().max().item()


def run_case(name: str, args) -> dict:
    """One comparison (in its own process): timings, differences, memory, FLOPs, graph breaks."""
    architecture, variant, targets = CASES[name]
    torch.manual_seed(0)
    autocast = args.dtype == "bfloat16"
    with tempfile.TemporaryDirectory() as folder:
        case = BUILDERS[name](args.size, Path(folder))

    def wrapped(function):
        if function is None or not autocast:
            return function
        return lambda: _autocast_call(function)

    rows = []
    # FlopCounterMode's module hooks trip over views of parameters that require grad (even under no_grad)
    case["model"].requires_grad_(False)
    with torch.no_grad():
        flops = count_flops(case["whole"])
    with torch.inference_mode():
        probe = matmul_probe()
        post = case["post"]
        post_times = interleaved({k: post[k] for k in ("ours", "peer") if post[k] is not None}, args.repeats)
        for work, row in case["rows"].items():
            functions = {"ours": wrapped(row["ours"])}
            if row["peer"] is not None:
                functions["peer"] = wrapped(row["peer"])
            functions["matmul"] = probe
            difference = None
            if row["peer"] is not None and "difference_of" not in row:
                difference = _max_abs_diff(functions["ours"](), functions["peer"]())
            times = interleaved(functions, args.repeats, warmup=args.warmup)
            memory = compare_memory({k: v for k, v in functions.items() if k != "matmul"})
            stats = {who: {clock: summary(values) for clock, values in clocks.items()} for who, clocks in times.items()}
            ours_s = stats["ours"][args.clock]["median"]
            peer_s = stats["peer"][args.clock]["median"] if "peer" in stats else None
            matmul_gflops = 2 * MATMUL_SIZE**3 / stats["matmul"][args.clock]["median"] / 1e9
            result = {
                "architecture": architecture,
                "variant": variant,
                "work": work,
                "input": f"{args.size}x{args.size}",
                "batch": 1,
                "dtype": args.dtype,
                "peer": row["peer_name"],
                "ours_ms": ours_s * 1e3,
                "peer_ms": peer_s * 1e3 if peer_s is not None else None,
                "ratio": peer_s / ours_s if peer_s is not None else None,
                "target": targets.get(work),
                "max_abs_diff": difference,
                "ours_peak_mb": memory["ours"],
                "peer_peak_mb": memory.get("peer"),
                "noise": {who: stats[who][args.clock]["noise"] for who in stats},
                "timings": stats,
                "matmul_peak_gflops": matmul_gflops,
            }
            fastest_row = work.startswith("forward, fastest")
            if work in ("whole model", "forward") or work == "forward + panoptic post-processing" or fastest_row:
                result["whole_model_gflop"] = flops / 1e9
            if work == "whole model" or (work == "forward" and "whole model" not in case["rows"]) or fastest_row:
                achieved = flops / ours_s / 1e9
                result["achieved_gflops"] = achieved
                result["fraction_of_matmul_peak"] = achieved / matmul_gflops
                if work == "whole model":
                    result["ratio"] = result["fraction_of_matmul_peak"]
            rows.append(result)
        post_result = {
            "what": post["what"],
            **{f"{who}_ms": summary(post_times[who][args.clock])["median"] * 1e3 for who in post_times},
        }
    breaks = graph_breaks(case["model"]) if args.explain else None
    for result in rows:
        result["post_processing"] = post_result
        result["graph_breaks"] = breaks
    return {"case": name, "rows": rows}


def _autocast_call(function):
    with torch.autocast("cpu", dtype=torch.bfloat16):
        return function()


# ------------------------------------------------------------------------------------------------------------------
# report
# ------------------------------------------------------------------------------------------------------------------


def _fmt(value, spec: str, empty: str = "–") -> str:
    return empty if value is None else format(value, spec)


def markdown(report: dict) -> str:
    meta = report["meta"]
    lines = [
        "# hf_segmodels benchmarks",
        "",
        f"`{meta['command']}` on {meta['machine']}; torch {meta['torch']}, transformers {meta['transformers']}, "
        f"{meta['threads']} thread(s), clock: **{meta['clock']}** (median of {meta['repeats']} interleaved runs; "
        "noise = IQR / median of ours). Ratio = peer time / our time (> 1: we are faster); for *whole model* rows of "
        "Segmenter/SETR the ratio column is the achieved fraction of the measured fp32 matmul peak instead.",
        "",
        "| architecture | variant | work | input | batch | dtype | ours ms | peer ms | ratio | target | max abs diff "
        "| ours peak MiB | peer peak MiB | GFLOP | % matmul peak | post-proc ours / peer ms | graph breaks | noise |",
        "|---|---|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in report["rows"]:
        post = row["post_processing"]
        breaks = row["graph_breaks"]
        target = row["target"]
        if target is not None and row["ratio"] is not None:
            target = f"{'≥'}{target:g}{' ✅' if row['ratio'] >= target else ' ❌'}"
        lines.append(
            "| " + " | ".join([
                row["architecture"], row["variant"], row["work"], row["input"], str(row["batch"]), row["dtype"],
                _fmt(row["ours_ms"], ".0f"), _fmt(row["peer_ms"], ".0f"),
                _fmt(row["ratio"], ".2f"), target or "–", _fmt(row["max_abs_diff"], ".1e"),
                _fmt(row["ours_peak_mb"], ".0f"), _fmt(row["peer_peak_mb"], ".0f"),
                _fmt(row.get("whole_model_gflop"), ".1f"),
                _fmt(None if row.get("fraction_of_matmul_peak") is None else 100 * row["fraction_of_matmul_peak"], ".0f"),
                f"{_fmt(post.get('ours_ms'), '.1f')} / {_fmt(post.get('peer_ms'), '.1f')}",
                _fmt(None if breaks is None else breaks["graph_break_count"], "d"),
                f"{row['noise']['ours']:.0%}",
            ]) + " |"
        )  # fmt: skip
    lines += ["", "Peers: " + "; ".join(sorted({f"{r['architecture']} {r['work']}: {r['peer']}"
                                                  for r in report["rows"] if r["peer"]}))]  # fmt: skip
    lines += ["", "Matmul peak (fp32 1536³ `torch.mm`, same loop): "
              + ", ".join(f"{r['architecture']} {r['variant'].split(',')[0]}: {r['matmul_peak_gflops']:.0f} GFLOP/s"
                          for r in report["rows"] if r["work"] in ("forward", "whole model"))]  # fmt: skip
    breaks_seen = {}
    for row in report["rows"]:
        if row["graph_breaks"]:
            breaks_seen[f"{row['architecture']} {row['variant'].split(',')[0]}"] = row["graph_breaks"]
    if breaks_seen:
        lines += ["", "## torch.compile graph breaks (`torch._dynamo.explain`, 128x128 input)", ""]
        for name, breaks in breaks_seen.items():
            lines.append(f"- {name}: {breaks['graph_count']} graph(s), {breaks['graph_break_count']} break(s)")
            lines += [f"  - {reason}" for reason in breaks["break_reasons"]]
    if report.get("infer"):
        lines += ["", "## Inference utilities (`benchmarks/bench_infer.py`)", "", report["infer"]["markdown"]]
    if report.get("errors"):
        lines += ["", "## Cases that failed", ""] + [f"- {name}: {error}" for name, error in report["errors"].items()]
    return "\n".join(lines) + "\n"


def bar_chart(report: dict, path: Path) -> None:
    """PNG bar chart of the ratios (PIL only: matplotlib is not a dependency)."""
    from PIL import Image, ImageDraw

    rows = [r for r in report["rows"] if r["ratio"] is not None]
    bar_h, gap, left, right, top = 26, 10, 430, 60, 40
    width, height = 1100, top + len(rows) * (bar_h + gap) + 40
    scale_max = max([2.0] + [r["ratio"] for r in rows] + [r["target"] or 0 for r in rows])
    image = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(image)
    plot_w = width - left - right
    draw.text((10, 10), f"peer time / our time ({report['meta']['clock']} clock; Segmenter/SETR whole model: fraction "
                        "of matmul peak) - vertical ticks: targets", fill="black")  # fmt: skip
    for i, row in enumerate(rows):
        y = top + i * (bar_h + gap)
        label = f"{row['architecture']} {row['variant'].split(',')[0]} - {row['work']}"
        draw.text((10, y + 7), label[:62], fill="black")
        good = row["target"] is None or row["ratio"] >= row["target"]
        draw.rectangle([left, y, left + plot_w * row["ratio"] / scale_max, y + bar_h],
                       fill=(60, 150, 80) if good else (200, 80, 60))  # fmt: skip
        draw.text((left + plot_w * row["ratio"] / scale_max + 5, y + 7), f"{row['ratio']:.2f}", fill="black")
        if row["target"]:
            x = left + plot_w * row["target"] / scale_max
            draw.line([x, y - 3, x, y + bar_h + 3], fill="black", width=3)
    x_one = left + plot_w / scale_max
    draw.line([x_one, top - 5, x_one, height - 30], fill=(120, 120, 120), width=1)
    draw.text((x_one - 8, height - 25), "1.0", fill="black")
    image.save(path)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", nargs="+", default=list(CASES), choices=list(CASES))
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--clock", choices=("cpu", "wall"), default="cpu")
    parser.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32",
                        help="bfloat16: both sides under torch.autocast('cpu', torch.bfloat16)")
    parser.add_argument("--no-explain", dest="explain", action="store_false", help="skip the graph-break count")
    parser.add_argument("--no-infer", dest="infer", action="store_false", help="skip bench_infer.py")
    parser.add_argument("--output", default=str(RESULTS), help="folder for run_all.{json,md,png}")
    parser.add_argument("--fastest_vs_ort", action="store_true",
                        help="instead: hf_segmodels.fastest against ONNX Runtime on our exported graph "
                             "(bench_fastest.py: SegFormer-B0/B2, Segmenter-B/16, SETR-PUP-L, MaskFormer R50 / Swin-T "
                             "at 1 and 2 threads; writes fastest.md into --output)")
    parser.add_argument("--deploy", action="store_true",
                        help="instead: ours in PyTorch against transformers' models and our exports in ONNX Runtime "
                             "and OpenVINO (bench_deploy.py: SegFormer-B0/B2, MaskFormer R50 / Swin-T, the "
                             "Segmenter-B/16 and SETR-L encoders at 1 and 2 threads; writes deploy.md into --output)")
    parser.add_argument("--profile", action="store_true",
                        help="instead: where the time goes, per category of operator, in our fastest path, in ONNX "
                             "Runtime on our graph and in ONNX Runtime / OpenVINO on transformers' (profile_cpu.py: "
                             "the cases of --fastest_vs_ort and --deploy at --threads; writes profile_cpu.md into "
                             "--output)")
    parser.add_argument("--_case", help=argparse.SUPPRESS)
    parser.add_argument("--_json", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.profile:  # ONNX Runtime is an optional extra
        import profile_cpu

        profile_cpu.main(["--size", str(args.size), "--threads", str(args.threads), "--output",
                          str(Path(args.output) / "profile_cpu.md")])  # fmt: skip
        return
    if args.fastest_vs_ort:  # the deployment-runtime section (ONNX Runtime is an optional extra)
        import bench_fastest

        bench_fastest.main(["--repeats", str(args.repeats), "--size", str(args.size), "--output",
                            str(Path(args.output) / "fastest.md")])  # fmt: skip
        return
    if args.deploy:  # the deployment runtimes against transformers' models (both runtimes are optional extras)
        import bench_deploy

        bench_deploy.main(["--repeats", str(args.repeats), "--size", str(args.size), "--output",
                           str(Path(args.output) / "deploy.md")])  # fmt: skip
        return

    if args._case:  # child process: one comparison
        result = run_case(args._case, args)
        Path(args._json).write_text(json.dumps(result))
        return

    import transformers

    forwarded = ["--size", str(args.size), "--repeats", str(args.repeats), "--warmup", str(args.warmup),
                 "--threads", str(args.threads), "--clock", args.clock, "--dtype", args.dtype]  # fmt: skip
    if not args.explain:
        forwarded.append("--no-explain")
    report = {
        "meta": {
            "command": "python benchmarks/run_all.py " + " ".join(sys.argv[1:] if argv is None else argv),
            "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs",
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "threads": args.threads,
            "clock": args.clock,
            "repeats": args.repeats,
        },
        "rows": [],
        "errors": {},
    }
    with tempfile.TemporaryDirectory() as folder:
        for name in args.cases:
            out = Path(folder) / f"{name}.json"
            start = time.perf_counter()
            process = subprocess.run([sys.executable, __file__, "--_case", name, "--_json", str(out), *forwarded],
                                     capture_output=True, text=True)  # fmt: skip
            if process.returncode != 0:
                report["errors"][name] = (process.stderr.strip().splitlines() or ["failed"])[-1]
                print(f"{name}: FAILED: {report['errors'][name]}", flush=True)
                continue
            for row in json.loads(out.read_text())["rows"]:
                report["rows"].append(row)
                print(f"{name:>20} {row['work']:<36} ours {row['ours_ms']:8.0f} ms  peer {_fmt(row['peer_ms'], '8.0f'):>8} ms"
                      f"  ratio {_fmt(row['ratio'], '.2f')}  (target {_fmt(row['target'], 'g')})"
                      f"  diff {_fmt(row['max_abs_diff'], '.1e')}  peak MiB {_fmt(row['ours_peak_mb'], '.0f')}"
                      f" / {_fmt(row['peer_peak_mb'], '.0f')}", flush=True)  # fmt: skip
            print(f"{'':>20} ({time.perf_counter() - start:.0f} s)", flush=True)
        if args.infer:
            out = Path(folder) / "infer.json"
            process = subprocess.run([sys.executable, str(HERE / "bench_infer.py"), "--threads", str(args.threads),
                                      "--json", str(out)], capture_output=True, text=True)  # fmt: skip
            print(process.stdout, end="")
            if process.returncode == 0:
                report["infer"] = json.loads(out.read_text())
            else:
                report["errors"]["bench_infer"] = (process.stderr.strip().splitlines() or ["failed"])[-1]
    output = Path(args.output)
    output.mkdir(parents=True, exist_ok=True)
    (output / "run_all.json").write_text(json.dumps(report, indent=2))
    (output / "run_all.md").write_text(markdown(report))
    if report["rows"]:
        bar_chart(report, output / "run_all.png")
    print(f"wrote {output / 'run_all.json'}, run_all.md, run_all.png")


if __name__ == "__main__":
    main()
