#!/usr/bin/env python
"""Test-time resize of our image processors vs the original pipelines' on real photographs, in grey levels.

    pip install opencv-python-headless   # the reference (not a dependency of hf_segmodels)
    python benchmarks/resize_vs_original.py PHOTO [PHOTO ...]

For every photograph and every keep-ratio test scale of the releases (mmsegmentation `img_scale` (long, short)),
prints the maximum absolute difference (and the share of differing values) between `cv2.resize(INTER_LINEAR)`,
which mmsegmentation's test pipeline (Segmenter, SETR, SegFormer) uses, and (a) PIL's bilinear filter, the resize
of transformers' PIL backend used before, (b) `hf_segmodels.image_processing.opencv_bilinear_resize`, what the
Segmenter / SETR / SegFormer processors use now. MaskFormer's detectron2 pipeline resizes with PIL, as its processor.
"""

import argparse

import numpy as np
import PIL.Image

from hf_segmodels.image_processing import opencv_bilinear_resize

SCALES = [(2048, 512), (2560, 640), (520, 480), (2048, 1024)]


def main(argv=None):
    import cv2

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("photos", nargs="+")
    args = parser.parse_args(argv)
    worst = {"pil": 0, "ours": 0}
    print(f"{'photo':<28} {'scale':<12} {'size':<22} {'PIL max':>7} {'PIL %':>7} {'ours max':>8} {'ours %':>7}")
    for path in args.photos:
        image = np.asarray(PIL.Image.open(path).convert("RGB"))
        height, width = image.shape[:2]
        for scale in SCALES:
            factor = min(max(scale) / max(height, width), min(scale) / min(height, width))
            new_h, new_w = int(height * factor + 0.5), int(width * factor + 0.5)
            reference = cv2.resize(image, (new_w, new_h), interpolation=cv2.INTER_LINEAR).astype(np.int32)
            pil = np.asarray(PIL.Image.fromarray(image).resize((new_w, new_h), PIL.Image.BILINEAR)).astype(np.int32)
            ours = np.moveaxis(opencv_bilinear_resize(np.moveaxis(image, -1, 0), (new_h, new_w)), 0, -1).astype(np.int32)
            pil_diff, our_diff = np.abs(pil - reference), np.abs(ours - reference)
            worst["pil"], worst["ours"] = max(worst["pil"], pil_diff.max()), max(worst["ours"], our_diff.max())
            print(f"{path.split('/')[-1][:28]:<28} {str(scale):<12} {f'{height}x{width}->{new_h}x{new_w}':<22} "
                  f"{pil_diff.max():>7} {100 * (pil_diff > 0).mean():>6.2f}% {our_diff.max():>8} "
                  f"{100 * (our_diff > 0).mean():>6.2f}%")
    print(f"max difference to cv2.resize: PIL bilinear {worst['pil']} grey levels, ours {worst['ours']}")


if __name__ == "__main__":
    main()
