#!/usr/bin/env python
"""pipeline("image-segmentation") end to end (pre-processing + model + post-processing) on a 1024x2048 image:
our SegFormer-B0 checkpoint with the Cityscapes protocol (sliding 1024x1024 windows, stride 768) vs transformers'
own SegFormer pipeline on the same weights doing whole-image inference at the same processed size (1024x2048).

    python benchmarks/bench_pipeline_protocol.py [--repeats 3]

Prints the median seconds of each and the ratio (transformers / ours: > 1 means ours is faster), measured in this run.
"""

import argparse
import statistics
import tempfile
import time

import numpy as np
import PIL.Image
import torch
from transformers import SegformerConfig as HFSegformerConfig
from transformers import SegformerForSemanticSegmentation as HFSegformer
from transformers import SegformerImageProcessor as HFSegformerImageProcessor
from transformers import pipeline

import hf_segmodels
from hf_segmodels.cards.zoo import load_zoo, zoo_test_protocol
from hf_segmodels.protocol import apply_test_protocol
from hf_segmodels.segformer.convert_segformer import convert_segformer_checkpoint


def timed(function, repeats: int) -> float:
    function()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    reference = HFSegformer(HFSegformerConfig(num_labels=19)).eval()  # MiT-B0 with the 256-wide decoder
    with tempfile.TemporaryDirectory() as folder:
        reference.save_pretrained(folder)
        ours, processor = convert_segformer_checkpoint(folder, None, source="transformers")
        entry = next(e for e in load_zoo()["models"] if e["name"] == "segformer-b0-cityscapes")
        apply_test_protocol(ours, processor, zoo_test_protocol(entry))
        ours.save_pretrained(folder + "/ours")
        processor.save_pretrained(folder + "/ours")
        our_pipeline = pipeline("image-segmentation", model=folder + "/ours")
    their_pipeline = pipeline("image-segmentation", model=reference,
                              image_processor=HFSegformerImageProcessor(size={"height": 1024, "width": 2048}))
    image = PIL.Image.fromarray(np.random.default_rng(0).integers(0, 256, (1024, 2048, 3), dtype=np.uint8))
    ours_seconds = timed(lambda: our_pipeline(image), args.repeats)
    theirs_seconds = timed(lambda: their_pipeline(image), args.repeats)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, image 1024x2048")
    print(f"ours (slide 1024x1024 / 768, 3 windows): {ours_seconds:.3f} s")
    print(f"transformers (whole image 1024x2048):    {theirs_seconds:.3f} s")
    print(f"ratio transformers / ours: {theirs_seconds / ours_seconds:.2f}")


if __name__ == "__main__":
    main()
