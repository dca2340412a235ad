#!/usr/bin/env python
"""Evaluate a segmentation checkpoint of ours on a dataset split: mIoU, per-class IoU, aAcc and mAcc (the `evaluate`
library's `mean_iou` definitions), printed as a table and written as JSON.

    python examples/evaluate.py --model_name_or_path org/segformer-b0-ade --dataset_name scene_parse_150 \\
        --split validation --do_reduce_labels --mode ms

    # several processes (each evaluates a shard; per-image counts are gathered)
    accelerate launch --multi_gpu --num_processes 2 examples/evaluate.py --model_name_or_path ./out ...

Modes: `whole` (whole-image inference at the image processor's test size), `slide` (sliding windows `--window`
with `--stride`, as the papers' Cityscapes / Pascal Context / Segmenter numbers), `ms` (scales 0.5 ... 1.75 of the
test size, each also flipped, as the papers' "MS" numbers; with `--window` every scale slides). The default is the
checkpoint's recorded test protocol (`config.test_protocol`: `slide` with its window and stride, or `whole`); `ms`
then also takes its scales, flip and window. Predictions are
resized to each label map's original size before scoring.

With `--task panoptic` the label column holds panoptic maps (segment ids, or COCO's RGB encoding id = R + 256 G +
256^2 B) and `--segments_info_column` their `segments_info` lists; PQ, SQ and RQ of the model's
`post_process_panoptic_segmentation` are reported (MaskFormer: with `--object_mask_threshold` / `--overlap_threshold`,
0.8 / 0.8 by default as the released panoptic configs, and the stuff classes the converted checkpoint records).

MaskFormer checkpoints are evaluated with the original's (detectron2) protocol, the one behind the paper's numbers:
`--mode whole` runs, image by image, the image processor (test resize, normalisation, zero padding to the release's
`size_divisor` with `pixel_mask`), the model and `post_process_semantic_segmentation(target_sizes=[label size])`,
which upsamples the mask logits to the padded input, crops the padding and combines / resizes in the original's order.
"""

import argparse
import json
import os
import sys
from pathlib import Path

import numpy as np
import torch
from accelerate import Accelerator
from tqdm.auto import tqdm
from transformers import AutoConfig, AutoImageProcessor, AutoModelForSemanticSegmentation

import hf_segmodels  # noqa: F401  (registers the architectures)
from hf_segmodels.metrics import PanopticQualityMetric
from hf_segmodels.protocol import get_test_protocol
from hf_segmodels.training.data import (
    EvalSamples,
    SegmentationSamples,
    collate_eval,
    dataloader_generator,
    decode_image,
    get_split,
    load_splits,
)
from hf_segmodels.training.evaluation import MS_SCALES, evaluate_semantic, format_table, metrics_to_json


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model_name_or_path", required=True, help="A checkpoint folder or Hub id of ours.")
    parser.add_argument("--image_processor_name", help="Image processor to use instead of the checkpoint's.")
    parser.add_argument("--dataset_name", required=True, help="Hub dataset id or local folder / file.")
    parser.add_argument("--dataset_config_name")
    parser.add_argument("--split", default="validation")
    parser.add_argument("--image_column", default="image")
    parser.add_argument("--label_column", default="annotation")
    parser.add_argument("--do_reduce_labels", action="store_true", default=None,
                        help="0 -> ignored, k -> k - 1 (default: the image processor's setting).")
    parser.add_argument("--task", choices=["semantic", "panoptic"], default="semantic")
    parser.add_argument("--segments_info_column", default="segments_info")
    parser.add_argument("--object_mask_threshold", type=float, default=0.8,
                        help="--task panoptic: keep queries whose class probability exceeds this (MaskFormer).")
    parser.add_argument("--overlap_threshold", type=float, default=0.8,
                        help="--task panoptic: minimum visible fraction of a query's mask (MaskFormer).")
    parser.add_argument("--mode", choices=["whole", "slide", "ms"], default=None,
                        help="Default: the checkpoint's test protocol (slide or whole).")
    parser.add_argument("--window", type=int, nargs="+", help="Sliding window (H [W]); default: the protocol's, "
                        "else the config's image_size for --mode slide.")
    parser.add_argument("--stride", type=int, nargs="+", help="Sliding-window stride (H [W]); default: the "
                        "protocol's, else 2/3 window.")
    parser.add_argument("--scales", type=float, nargs="+", default=None,
                        help="Scales of --mode ms (default: the protocol's, else 0.5 ... 1.75).")
    parser.add_argument("--no_flip", action="store_true", help="--mode ms without the flipped views.")
    parser.add_argument("--num_samples", type=int, help="Evaluate the first N examples only.")
    parser.add_argument("--per_device_eval_batch_size", type=int, default=1)
    parser.add_argument("--dataloader_num_workers", type=int, default=0)
    parser.add_argument("--output_json", default=None, help="Where to write the results (default: "
                        "<model folder>/eval_<split>_<mode>.json for local models, else ./eval_<split>_<mode>.json).")
    parser.add_argument("--trust_remote_code", action="store_true")
    parser.add_argument("--fastest", action="store_true",
                        help="On a CPU, run the model through hf_segmodels.fastest (as HF_SEGMODELS_FASTEST=1 does).")
    args = parser.parse_args(argv)
    if args.num_samples is not None and args.num_samples < 1:
        parser.error("--num_samples must be >= 1.")
    for name in ("window", "stride"):
        value = getattr(args, name)
        if value is not None and (len(value) not in (1, 2) or min(value) < 1):
            parser.error(f"--{name} takes one or two positive integers (H [W]).")
    if args.window is not None and args.stride is not None:
        window, stride = _pair(args.window), _pair(args.stride)
        if stride[0] > window[0] or stride[1] > window[1]:
            parser.error(f"--stride {list(stride)} is larger than --window {list(window)}: the pixels between windows "
                         "would get no prediction.")
    return args


def _pair(values):
    return None if values is None else (values[0], values[-1])


def sliding_window(args, config):
    """(window, stride) for the mode: the checkpoint's protocol unless `--window` / `--stride` are given; for
    `--mode slide` without a protocol window the window defaults to the training crop (`config.image_size`)."""
    recorded = get_test_protocol(config)
    window = _pair(args.window)
    if window is None and recorded is not None and recorded.window and args.mode in ("slide", "ms"):
        window = recorded.window
        if args.stride is None:
            return window, recorded.stride
    if window is None and args.mode == "slide":
        size = getattr(config, "image_size", None)
        if size is None:
            raise ValueError("--mode slide needs --window (the model's config has no image_size).")
        window = (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))
    if window is None:
        if args.stride is not None:
            raise ValueError("--stride needs a sliding window: use --mode slide or pass --window.")
        return None, None
    stride = _pair(args.stride) or tuple(max(1, (2 * w) // 3) for w in window)
    return window, stride


def resolve_mode(args, config) -> None:
    """`--mode` and `--scales` default to the checkpoint's test protocol."""
    recorded = get_test_protocol(config)
    if args.mode is None:
        args.mode = "slide" if recorded is not None and recorded.mode == "slide" else "whole"
    if args.scales is None:
        args.scales = list(recorded.ms_scales) if recorded is not None and recorded.ms_scales else list(MS_SCALES)


def _panoptic_ids(label) -> np.ndarray:
    array = np.asarray(label)
    if array.ndim == 3 and array.shape[-1] >= 3:
        array = array[..., 0].astype(np.int64) + 256 * array[..., 1].astype(np.int64) + 65536 * array[..., 2].astype(
            np.int64
        )
    return array.astype(np.int64)


def evaluate_panoptic(model, processor, dataset, args, accelerator) -> dict:
    """PQ / SQ / RQ of `post_process_panoptic_segmentation` against panoptic ground truth, images sharded across
    processes and statistics summed."""
    metric = PanopticQualityMetric(num_labels=model.config.num_labels)
    indices = list(range(accelerator.process_index, len(dataset), accelerator.num_processes))
    for index in tqdm(indices, desc="panoptic", disable=not accelerator.is_local_main_process):
        example = dataset[index]
        image = decode_image(example[args.image_column])
        target = _panoptic_ids(example[args.label_column])
        inputs = processor(image, return_tensors="pt").to(accelerator.device)
        with torch.no_grad():
            outputs = model(**inputs)
        result = processor.post_process_panoptic_segmentation(
            outputs, threshold=args.object_mask_threshold, overlap_mask_area_threshold=args.overlap_threshold,
            target_sizes=[target.shape],
        )[0]
        metric.update(result["segmentation"].cpu(), result["segments_info"], torch.from_numpy(target),
                      example[args.segments_info_column])
    metric.all_reduce()
    return metric.compute()


def is_mask_classification(model) -> bool:
    """MaskFormer: semantic predictions come from its image processor's post-processing (the original's protocol)."""
    return getattr(model.config, "model_type", None) == "segmodels_maskformer"


@torch.no_grad()
def evaluate_maskformer_semantic(model, processor, samples, accelerator) -> dict:
    """mIoU of a MaskFormer with the original's (detectron2) semantic protocol, image by image: the image
    processor's test resize and normalisation, zero padding to `size_divisor` (`pixel_mask`), the model, then
    `post_process_semantic_segmentation(target_sizes=[label size])`, which upsamples the mask logits to the padded
    input, crops the padding, combines the class and mask probabilities and resizes to the label's size in the
    original's order. (The published MaskFormer numbers come from this protocol.)"""
    from hf_segmodels.metrics import SegmentationMetric

    metric = SegmentationMetric(num_labels=model.config.num_labels)
    indices = list(range(accelerator.process_index, len(samples), accelerator.num_processes))
    for index in tqdm(indices, desc="evaluating", disable=not accelerator.is_local_main_process):
        image, label = samples.sample(index)
        inputs = processor(image, return_tensors="pt").to(accelerator.device)
        outputs = model(**inputs)
        prediction = processor.post_process_semantic_segmentation(outputs, target_sizes=[label.shape])[0]
        metric.add_counts(metric.batch_confusion(prediction[None].cpu(), torch.from_numpy(label)[None]))
    metric.all_reduce()
    return metric.compute()


def main(argv=None):
    args = parse_args(argv)
    kwargs = {"cpu": True} if os.environ.get("LOCAL_RANK") is not None and not torch.cuda.is_available() else {}
    accelerator = Accelerator(**kwargs)
    config = AutoConfig.from_pretrained(args.model_name_or_path, trust_remote_code=args.trust_remote_code)
    resolve_mode(args, config)
    model = AutoModelForSemanticSegmentation.from_pretrained(
        args.model_name_or_path, trust_remote_code=args.trust_remote_code
    ).eval()
    processor = AutoImageProcessor.from_pretrained(args.image_processor_name or args.model_name_or_path)
    id2label = {int(k): v for k, v in config.id2label.items()}
    do_reduce_labels = processor.do_reduce_labels if args.do_reduce_labels is None else args.do_reduce_labels

    splits = load_splits(args.dataset_name, args.dataset_config_name)
    columns = (args.image_column, args.label_column)
    if args.task == "panoptic":
        columns += (args.segments_info_column,)
    dataset = get_split(splits, args.split, columns)
    if args.num_samples is not None:
        dataset = dataset.select(range(min(args.num_samples, len(dataset))))

    model = model.to(accelerator.device)
    if args.fastest and accelerator.device.type == "cpu":
        model = hf_segmodels.fastest(model)  # (what HF_SEGMODELS_FASTEST=1 does inside infer_logits)
    if args.task == "panoptic":
        results = evaluate_panoptic(model, processor, dataset, args, accelerator)
        # NaN (nothing to measure) is written as null, with the reason, so that the file stays valid JSON.
        output = {key: (None if results[key] != results[key] else results[key]) for key in ("pq", "sq", "rq")}
        output["per_class"] = {id2label[k]: v for k, v in results.get("per_class", {}).items()}
        if results.get("warning"):
            output["warning"] = results["warning"]
        accelerator.print(f"PQ {100 * results['pq']:.2f}  SQ {100 * results['sq']:.2f}  RQ {100 * results['rq']:.2f} "
                          f"over {results['num_classes']} classes")
    else:
        window, stride = sliding_window(args, config)
        scales, flip = (tuple(args.scales), not args.no_flip) if args.mode == "ms" else ((1.0,), False)
        samples = SegmentationSamples(
            dataset, args.image_column, args.label_column, len(id2label), do_reduce_labels, args.split
        )
    if args.task == "semantic" and args.mode == "whole" and is_mask_classification(model):
        results = evaluate_maskformer_semantic(model, processor, samples, accelerator)
        output = metrics_to_json(results, id2label)
        output["mode"] = {"mode": "whole", "window": None, "stride": None, "scales": [1.0], "flip": False,
                          "protocol": "MaskFormer (detectron2): pad to size_divisor, post_process_semantic_segmentation"}
        accelerator.print(format_table(results, id2label))
    elif args.task == "semantic":
        loader = torch.utils.data.DataLoader(
            EvalSamples(samples, processor), batch_size=args.per_device_eval_batch_size, collate_fn=collate_eval,
            num_workers=args.dataloader_num_workers, generator=dataloader_generator(0),
        )
        loader = accelerator.prepare(loader)
        results = evaluate_semantic(model, loader, accelerator, len(id2label), window=window, stride=stride,
                                    scales=scales, flip=flip)
        output = metrics_to_json(results, id2label)
        output["mode"] = {"mode": args.mode, "window": window, "stride": stride, "scales": list(scales), "flip": flip}
        accelerator.print(format_table(results, id2label))
    output.update({"model": str(args.model_name_or_path), "dataset": args.dataset_name, "split": args.split,
                   "num_samples": len(dataset), "task": args.task})

    if args.output_json is None:
        folder = Path(args.model_name_or_path) if Path(args.model_name_or_path).is_dir() else Path(".")
        output_json = folder / f"eval_{args.split}_{args.mode if args.task == 'semantic' else 'panoptic'}.json"
    else:
        output_json = Path(args.output_json)
    if accelerator.is_main_process:
        output_json.parent.mkdir(parents=True, exist_ok=True)
        output_json.write_text(json.dumps(output, indent=2))
        accelerator.print(f"wrote {output_json}", file=sys.stderr)


if __name__ == "__main__":
    main()
