#!/usr/bin/env python
"""Cost of the input checks every forward runs (`check_pixel_values`: shape, dtype, and the non-finite test as one
sum over the values) against a SegFormer-B0 forward (150 classes) at 512 x 512, batch 1.

    python benchmarks/bench_input_checks.py [--threads 1] [--repeats 20]

Prints the median CPU milliseconds of the check and of the forward (interleaved runs) and their ratio in percent
(target: under 1%); also the element-wise `torch.isfinite(x).all()` it replaces, for reference.
"""

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hf_segmodels import SegformerConfig, SegformerForSemanticSegmentation  # noqa: E402
from hf_segmodels.modeling_utils import check_pixel_values  # noqa: E402
from timing import interleaved_medians  # noqa: E402


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model = SegformerForSemanticSegmentation(SegformerConfig.from_preset("segformer-b0-ade")).eval()
    pixel_values = torch.randn(1, 3, 512, 512)

    def forward():
        with torch.no_grad():
            model(pixel_values=pixel_values)

    medians = interleaved_medians(
        {
            "check_pixel_values": lambda: check_pixel_values(pixel_values, 3, torch.float32),
            "isfinite().all()": lambda: torch.isfinite(pixel_values).all(),
            "forward": forward,
        },
        repeats=args.repeats,
        clock="cpu",
    )
    for name, seconds in medians.items():
        print(f"{name:>20}: {1e3 * seconds:9.3f} ms ({100 * seconds / medians['forward']:.3f}% of the forward)")


if __name__ == "__main__":
    main()
