#!/usr/bin/env python
"""Inference utilities: batched sliding window against a naive window-by-window loop, and image-processor throughput.

    python benchmarks/bench_infer.py [--threads 1] [--repeats 3] [--json out.json]

1. Sliding window on a Cityscapes-size input (1, 3, 1024, 2048) with a small model (a MiT-B0-width SegFormer with one
   block per stage, 19 classes), window 512x512, stride 341 (18 windows): `infer_logits(window=..., stride=...,
   window_batch_size=8)` against the loop of mmsegmentation's `slide_inference` (one window per model call, scores and
   counts accumulated window by window). Both give the same scores (max abs diff printed).
2. Image-processor throughput on 20 JPEGs of 1024x768: our `SegformerImageProcessor` against transformers'
   `SegformerImageProcessorPil` doing the same work (resize to 512x512 bilinear, rescale, ImageNet normalisation),
   images/s and the ratio, plus the images/s of our four processors at their own defaults.
Times: CPU time of the process (robust on a shared machine at 1 thread), median of interleaved repeats.
"""

import argparse
import io
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hf_segmodels import (  # noqa: E402
    MaskFormerImageProcessor,
    SegformerConfig,
    SegformerForSemanticSegmentation,
    SegformerImageProcessor,
    SegmenterImageProcessor,
    SetrImageProcessor,
    infer_logits,
)
from hf_segmodels.inference import _window_starts  # noqa: E402
from hf_segmodels.testing_utils import naive_sliding_window  # noqa: E402
from timing import interleaved_medians  # noqa: E402


def cpu_seconds(function) -> float:
    start = time.process_time()
    function()
    return time.process_time() - start


def sliding_window(repeats: int, batch_size: int) -> dict:
    torch.manual_seed(0)
    config = SegformerConfig(hidden_sizes=[32, 64, 160, 256], depths=[1, 1, 1, 1], decoder_hidden_size=128,
                             num_labels=19)  # fmt: skip
    model = SegformerForSemanticSegmentation(config).eval()
    pixel_values = torch.randn(1, 3, 1024, 2048)
    window, stride = (512, 512), (341, 341)
    windows = len(_window_starts(1024, 512, 341)) * len(_window_starts(2048, 512, 341))
    with torch.inference_mode():
        difference = (
            infer_logits(model, pixel_values, window=window, stride=stride, window_batch_size=batch_size)
            - naive_sliding_window(model, pixel_values, window, stride)
        ).abs().max().item()
        medians = interleaved_medians(
            {
                "naive": lambda: naive_sliding_window(model, pixel_values, window, stride),
                "ours": lambda: infer_logits(model, pixel_values, window=window, stride=stride,
                                             window_batch_size=batch_size),
                "ours, one window per call": lambda: infer_logits(model, pixel_values, window=window, stride=stride,
                                                                  window_batch_size=1),
            },
            repeats,
            clock="cpu",
        )  # fmt: skip
    return {
        "ours_batch_1_s": medians["ours, one window per call"],
        "input": "1x3x1024x2048",
        "window": "512x512 stride 341",
        "windows": windows,
        "window_batch_size": batch_size,
        "naive_s": medians["naive"],
        "ours_s": medians["ours"],
        "ratio": medians["naive"] / medians["ours"],
        "max_abs_diff": difference,
    }


def jpeg_images(count: int = 20, size: tuple[int, int] = (1024, 768)) -> list[Image.Image]:
    """`count` decoded JPEGs of (width, height) `size` with photo-like smooth content (deterministic)."""
    generator = np.random.default_rng(0)
    images = []
    for _ in range(count):
        coarse = generator.integers(0, 256, (size[1] // 32, size[0] // 32, 3), dtype=np.uint8)
        image = Image.fromarray(coarse).resize(size, Image.BICUBIC)
        buffer = io.BytesIO()
        image.save(buffer, format="JPEG", quality=90)
        images.append(Image.open(io.BytesIO(buffer.getvalue())).convert("RGB"))
    return images


def processor_throughput(repeats: int) -> dict:
    import transformers

    images = jpeg_images()
    same_work = {"size": {"height": 512, "width": 512}, "do_reduce_labels": False}
    ours = SegformerImageProcessor(**same_work, size_divisor=None)
    peer = transformers.SegformerImageProcessorPil(**same_work)
    a = ours(images, return_tensors="pt")["pixel_values"]
    b = peer(images, return_tensors="pt")["pixel_values"]
    if a.shape != b.shape:
        raise SystemExit(f"processors disagree on the output shape: {tuple(a.shape)} vs {tuple(b.shape)}")
    medians = interleaved_medians(
        {
            "ours": lambda: ours(images, return_tensors="pt"),
            "peer": lambda: peer(images, return_tensors="pt"),
        },
        repeats,
        clock="cpu",
    )
    defaults = {}
    for processor in (SegmenterImageProcessor(), SetrImageProcessor(), SegformerImageProcessor(),
                      MaskFormerImageProcessor()):  # fmt: skip
        seconds = statistics.median(cpu_seconds(lambda: processor(images, return_tensors="pt")) for _ in range(repeats))
        defaults[type(processor).__name__] = len(images) / seconds
    return {
        "images": f"{len(images)} JPEGs 1024x768 -> 512x512",
        "ours_images_per_s": len(images) / medians["ours"],
        "peer_images_per_s": len(images) / medians["peer"],
        "ratio": medians["peer"] / medians["ours"],
        "max_abs_diff": (a - b).abs().max().item(),
        "ours_defaults_images_per_s": defaults,
    }


def markdown(result: dict) -> str:
    window, processors = result["sliding_window"], result["processors"]
    lines = [
        "| measurement | ours | naive / transformers | ratio | max abs diff |",
        "|---|---:|---:|---:|---:|",
        f"| sliding window, {window['input']}, {window['windows']} windows of {window['window']}, tiny SegFormer, "
        f"window_batch_size {window['window_batch_size']} | {window['ours_s']:.2f} s | {window['naive_s']:.2f} s "
        f"| {window['ratio']:.2f} | {window['max_abs_diff']:.1e} |",
        f"| same, window_batch_size 1 | {window['ours_batch_1_s']:.2f} s | {window['naive_s']:.2f} s "
        f"| {window['naive_s'] / window['ours_batch_1_s']:.2f} | |",
        f"| image processor, {processors['images']} (SegformerImageProcessor vs transformers "
        f"SegformerImageProcessorPil) | {processors['ours_images_per_s']:.1f} img/s "
        f"| {processors['peer_images_per_s']:.1f} img/s | {processors['ratio']:.2f} | {processors['max_abs_diff']:.1e} |",
        "",
        "Our processors at their own defaults (images/s): "
        + ", ".join(f"{name} {value:.1f}" for name, value in processors["ours_defaults_images_per_s"].items()),
    ]
    return "\n".join(lines)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--window_batch_size", type=int, default=8)
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    result = {
        "threads": args.threads,
        "sliding_window": sliding_window(args.repeats, args.window_batch_size),
        "processors": processor_throughput(args.repeats),
    }
    result["markdown"] = markdown(result)
    print(result["markdown"])
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
