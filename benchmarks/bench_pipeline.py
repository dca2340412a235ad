#!/usr/bin/env python
"""`pipeline("image-segmentation")(image)` end to end (pre-processing + model + post-processing) against
transformers' own pipeline on the same weights.

    python benchmarks/bench_pipeline.py [--cases segformer-b0 maskformer-r50] [--repeats 5] [--threads 1]

- SegFormer-B0 (150 classes, random weights saved by transformers and converted with `source="transformers"`, our
  ADE20K release protocol: whole image, shorter side 512): ours vs transformers' `SegformerForSemanticSegmentation`
  with its `SegformerImageProcessor` (512x512). Both answer the semantic sub-task (the default of both for a
  semantic model). The image is 512x512, so both models see the same input; the maps must be identical.
- MaskFormer R50 / Swin-T (150 classes, 100 queries, random weights, converted from transformers'
  `MaskFormerForInstanceSegmentation`): ours (semantic, the original's semantic inference) vs transformers' pipeline
  asked for the semantic sub-task, both with a 512x512 image processed at 512x512. The original combines class and
  mask probabilities after upsampling the masks, transformers' post-processing before, so the maps agree on most but
  not all pixels: the agreement is printed.

Timing: the two pipelines run alternately (`benchmarks/timing.py`), medians of `--repeats` on `--clock` (default:
process CPU time, at `--threads` threads). Prints seconds, the ratio transformers / ours (> 1: ours faster) and the
agreement of the two label maps.
"""

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np
import PIL.Image
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from timing import interleaved_medians  # noqa: E402

TARGETS = {"segformer-b0": 2.0, "maskformer-r50": 1.3, "maskformer-swin-t": 1.3}


def label_map(annotations: list[dict], size: tuple[int, int]) -> np.ndarray:
    """The (H, W) map of label names of a pipeline's answer ("" where no mask covers a pixel)."""
    labels = np.full(size, "", dtype=object)
    for annotation in annotations:
        labels[np.array(annotation["mask"]) == 255] = annotation["label"]
    return labels


def segformer_pipelines(folder: Path):
    import transformers

    import bench_segformer
    from hf_segmodels.cards.zoo import load_zoo, zoo_test_protocol
    from hf_segmodels.protocol import apply_test_protocol

    theirs_path, ours_path = bench_segformer.build_checkpoints("b0", folder)
    ours_model = bench_segformer.load("ours", ours_path)
    from hf_segmodels import SegformerImageProcessor

    processor = SegformerImageProcessor.from_pretrained(ours_path)
    entry = next(e for e in load_zoo()["models"] if e["name"] == "segformer-b0-ade")
    apply_test_protocol(ours_model, processor, zoo_test_protocol(entry))
    ours = transformers.pipeline("image-segmentation", model=ours_model, image_processor=processor)
    theirs = transformers.pipeline(
        "image-segmentation",
        model=bench_segformer.load("transformers", theirs_path),
        image_processor=transformers.SegformerImageProcessor(size={"height": 512, "width": 512}),
    )
    return ours, theirs, {}, {}


def maskformer_pipelines(name: str):
    import transformers

    import bench_maskformer
    from hf_segmodels import MaskFormerImageProcessor

    reference, ours_model = bench_maskformer.build_models(name)
    size = {"shortest_edge": 512, "longest_edge": 2048}
    processor = MaskFormerImageProcessor(size=size, size_divisor=32)
    ours_model.config.test_protocol = {"task": "semantic", "mode": "whole"}
    ours = transformers.pipeline("image-segmentation", model=ours_model, image_processor=processor)
    theirs = transformers.pipeline(
        "image-segmentation", model=reference, image_processor=transformers.MaskFormerImageProcessor(size=size)
    )
    return ours, theirs, {}, {"subtask": "semantic"}


def run(case: str, repeats: int, clock: str) -> dict:
    image = PIL.Image.fromarray(np.random.default_rng(0).integers(0, 256, (512, 512, 3), dtype=np.uint8))
    with tempfile.TemporaryDirectory() as folder:
        if case == "segformer-b0":
            ours, theirs, ours_kwargs, their_kwargs = segformer_pipelines(Path(folder))
        else:
            ours, theirs, ours_kwargs, their_kwargs = maskformer_pipelines(case.split("-", 1)[1])
        with torch.inference_mode():
            ours_map = label_map(ours(image, **ours_kwargs), (512, 512))
            their_map = label_map(theirs(image, **their_kwargs), (512, 512))
            seconds = interleaved_medians(
                {"ours": lambda: ours(image, **ours_kwargs), "transformers": lambda: theirs(image, **their_kwargs)},
                repeats,
                clock=clock,
            )
    return {
        "case": case,
        "ours_s": seconds["ours"],
        "transformers_s": seconds["transformers"],
        "ratio": seconds["transformers"] / seconds["ours"],
        "target": TARGETS[case],
        "agreement": float((ours_map == their_map).mean()),
    }


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", nargs="+", default=list(TARGETS), choices=list(TARGETS))
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--clock", choices=["cpu", "wall"], default="cpu")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {args.threads} thread(s), clock {args.clock}, 512x512 image, median of "
          f"{args.repeats} interleaved runs")
    print("| pipeline | ours s | transformers s | ratio | target | maps equal |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for case in args.cases:
        row = run(case, args.repeats, args.clock)
        mark = "✅" if row["ratio"] >= row["target"] else "❌"
        print(f"| {case} | {row['ours_s']:.3f} | {row['transformers_s']:.3f} | {row['ratio']:.2f} | "
              f"≥{row['target']} {mark} | {100 * row['agreement']:.3f}% |", flush=True)


if __name__ == "__main__":
    main()
