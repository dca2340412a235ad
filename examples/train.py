#!/usr/bin/env python
"""Train or fine-tune Segmenter, SETR, SegFormer or MaskFormer for semantic segmentation, or MaskFormer for panoptic
or instance segmentation (`--task`), with 🤗 Accelerate and 🤗 datasets. Flags follow transformers'
`run_semantic_segmentation_no_trainer.py` where they exist.

    accelerate launch examples/train.py --model_type segformer --config_name segformer-b0-ade \\
        --backbone_checkpoint mit_b0.pth --dataset_name scene_parse_150 --do_reduce_labels --id2label id2label.json \\
        --crop_size 512 --max_train_steps 160000 --per_device_train_batch_size 2 --output_dir segformer-b0-ade

    # CPU smoke test on two processes (gloo; `--multi_gpu` starts them through torchrun, which train.py joins into
    # one CPU group: accelerate's `--cpu --num_processes 2` would start a single process)
    accelerate launch --multi_gpu --num_processes 2 --num_machines 1 --mixed_precision no --dynamo_backend no \\
        examples/train.py --model_type segmenter --config_name tiny --dataset_name ./my_dataset --crop_size 32 ...

Training follows the papers: mmsegmentation's augmentation (random resize 0.5-2.0 of the base scale, random crop
with cat_max_ratio 0.75, flip, photometric distortion, labels padded with 255) and the paper's optimiser / schedule
(`--recipe paper`, each part overridable). State (model, optimiser, scheduler, RNG of every process) is saved
atomically every `--checkpointing_steps` steps to `<output_dir>/step_<N>/`; `--resume_from_checkpoint latest|PATH`
continues the same schedule with the same data order. At the end the model, its image processor and a model card
with the measured validation metrics are saved to `--output_dir`.

`--task panoptic` (MaskFormer): the label column holds panoptic maps (segment ids, or COCO's RGB encoding
id = R + 256 G + 256^2 B) and `--segments_info_column` their `segments_info` ({"id", "category_id", "iscrowd"}), as the
COCO-panoptic datasets on the Hub; `--stuff_classes` names the stuff classes (one segment each, fused at inference).
Targets are one binary mask + class per non-crowd segment, as the original's panoptic dataset mappers build them, and
`--recipe paper` is the COCO panoptic recipe (its augmentation, step schedule and loss weights; see
`hf_segmodels.training.panoptic` and `recipes.MASKFORMER_PANOPTIC_RECIPE`). Validation reports PQ / SQ / RQ.
`--task instance`: the same layout, or instance-id maps / lists of instance masks with `--instance_classes_column` (one
class per instance); validation reports COCO-style mask AP.

    accelerate launch examples/train.py --task panoptic --model_type maskformer \
        --config_name maskformer-swin-b-coco-panoptic --dataset_name ./coco_panoptic --id2label coco133.json \
        --category_map coco_ids.json --stuff_classes $(seq 80 132) --per_device_train_batch_size 8 \
        --max_train_steps 554400 --output_dir out
"""

import argparse
import json
import math
import os
import shlex
import sys
import time
from dataclasses import replace
from functools import partial
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.logging import get_logger
from accelerate.utils import set_seed
from tqdm.auto import tqdm
from transformers import AutoConfig, AutoImageProcessor, AutoModelForSemanticSegmentation
from transformers.image_utils import SizeDict

import hf_segmodels  # noqa: F401  (registers the architectures)
from hf_segmodels.hub import TRAINING_STATE_PATTERNS
from hf_segmodels.training.augmentation import TrainAugmentation
from hf_segmodels.training.checkpointing import read_state, remove_temporary, resolve_checkpoint, save_checkpoint
from hf_segmodels.training.data import (
    EpochSampler,
    EvalSamples,
    SegmentationSamples,
    StreamingEvalSamples,
    StreamingSamples,
    StreamingTrainSamples,
    TrainSamples,
    collate_eval,
    collate_train,
    dataloader_generator,
    get_split,
    get_streaming_split,
    load_splits,
    load_streaming_splits,
    resolve_id2label,
)
from hf_segmodels.protocol import TestProtocol, protocol_from_training_crop
from hf_segmodels.training.evaluation import evaluate_semantic, format_table, metrics_to_json
from hf_segmodels.training.model_card import render_training_card
from hf_segmodels.training.panoptic import (
    COCO_CROP_MIN_SIZES,
    COCO_CROP_SIZE_RANGE,
    COCO_MAX_SIZE,
    COCO_MIN_SIZES,
    PANOPTIC_SUMMARY,
    PanopticAugmentation,
    PanopticSamples,
    PanopticTrainSamples,
    class_ids,
    collate_panoptic,
    evaluate_instances,
    evaluate_panoptic,
    mask_ap_to_json,
    panoptic_metrics_to_json,
    percent,
    read_category_map,
)
from hf_segmodels.training.recipes import MASKFORMER_PANOPTIC_RECIPE, PAPER_RECIPES, build_optimizer, build_scheduler
from hf_segmodels.training.registry import (
    ARCHITECTURE_NAMES,
    build_config,
    convert_sync_batch_norm,
    get_architecture,
)

logger = get_logger(__name__)


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    model = parser.add_argument_group("model")
    model.add_argument("--model_name_or_path", help="A checkpoint of ours to fine-tune (local folder or Hub id).")
    model.add_argument("--model_type", choices=ARCHITECTURE_NAMES, help="Architecture to train from a config.")
    model.add_argument("--config_name", help="A saved config folder of ours, or a preset name: a released model's "
                       "zoo name ('segmenter-b16-ade', 'setr-pup-ade', 'segformer-b2-ade', 'maskformer-r50-ade', ...: "
                       "`<Arch>Config.preset_names()`), an original name accepted as alias ('seg_base_mask', "
                       "'setr_pup_large_ade20k', 'b2-ade-512', 'swin-base', ...) or 'tiny'.")
    model.add_argument("--image_processor_name", help="Image processor folder / Hub id (test-time size, mean/std).")
    model.add_argument("--backbone_checkpoint", help="ImageNet-pretrained encoder weights: a transformers ViT/DeiT, "
                       "MiT or backbone folder, a timm ViT state dict, or the authors' MiT .pth.")
    model.add_argument("--trust_remote_code", action="store_true")

    data = parser.add_argument_group("data")
    data.add_argument("--dataset_name", required=True, help="Hub dataset id, or a local folder / file "
                      "(save_to_disk folder, imagefolder, parquet, arrow).")
    data.add_argument("--dataset_config_name")
    data.add_argument("--train_split", default="train")
    data.add_argument("--validation_split", default=None, help="Evaluated at the end; default 'validation' when the "
                      "dataset has that split (otherwise no validation runs); 'none' to skip.")
    data.add_argument("--image_column", default="image")
    data.add_argument("--label_column", default="annotation")
    data.add_argument("--task", choices=["semantic", "panoptic", "instance"], default="semantic",
                      help="panoptic / instance: MaskFormer trained on segments (see above).")
    data.add_argument("--segments_info_column", default="segments_info", help="--task panoptic|instance: the "
                      "segments_info column ({id, category_id, iscrowd} per segment of the label map).")
    data.add_argument("--instance_classes_column", default="classes", help="--task instance without segments_info: "
                      "one class id per instance (ids 1..N of an instance-id map, or a list of N masks).")
    data.add_argument("--stuff_classes", nargs="+", default=[], help="--task panoptic: stuff class ids or names.")
    data.add_argument("--category_map", help="JSON {dataset category_id: class index} (e.g. COCO's 1..200 -> 0..132).")
    data.add_argument("--min_size_train", type=int, nargs="+", help="--task panoptic|instance: shorter-side sizes of "
                      "the resize (default: COCO's 480 ... 800).")
    data.add_argument("--max_size_train", type=int, help="Longest side of that resize (default 1333).")
    data.add_argument("--crop_min_sizes", type=int, nargs="+", help="Shorter-side sizes before the random crop "
                      "(default 400 500 600).")
    data.add_argument("--crop_size_range", type=int, nargs=2, metavar=("MIN", "MAX"),
                      help="Side range of the random crop (default 384 600).")
    data.add_argument("--object_mask_threshold", type=float, default=0.8, help="--task panoptic evaluation: keep "
                      "queries whose class probability exceeds this (COCO config: 0.8).")
    data.add_argument("--overlap_threshold", type=float, default=0.8, help="--task panoptic evaluation: minimum "
                      "visible fraction of a query's mask (COCO config: 0.8).")
    data.add_argument("--do_reduce_labels", action="store_true", help="0 -> 255 (ignored), k -> k - 1 (ADE20K).")
    data.add_argument("--id2label", help="JSON file or text with the class names {id: name}.")
    data.add_argument("--crop_size", type=int, nargs="+", help="Training crop (H [W]); default: the config's "
                      "image_size, else 512.")
    data.add_argument("--base_size", type=int, nargs=2, metavar=("LONG", "SHORT"),
                      help="Base scale of the random resize (default: the image processor's test size).")
    data.add_argument("--ratio_range", type=float, nargs=2, default=(0.5, 2.0))
    data.add_argument("--cat_max_ratio", type=float, default=0.75)
    data.add_argument("--no_photometric_distortion", action="store_true")
    data.add_argument("--max_train_samples", type=int)
    data.add_argument("--max_eval_samples", type=int)
    data.add_argument("--dataloader_num_workers", type=int, default=0)
    data.add_argument("--streaming", action="store_true", help="Read the dataset as a stream (data larger than the "
                      "disk): needs --max_train_steps; shuffled with a buffer of --shuffle_buffer_size examples.")
    data.add_argument("--shuffle_buffer_size", type=int, default=1000)

    optim = parser.add_argument_group("optimisation (defaults: the paper's recipe)")
    optim.add_argument("--recipe", choices=["paper"], default="paper")
    optim.add_argument("--optimizer", choices=["sgd", "adamw"])
    optim.add_argument("--learning_rate", type=float)
    optim.add_argument("--weight_decay", type=float)
    optim.add_argument("--momentum", type=float)
    optim.add_argument("--lr_power", type=float, help="Power of the polynomial decay.")
    optim.add_argument("--min_learning_rate", type=float)
    optim.add_argument("--num_warmup_steps", type=int)
    optim.add_argument("--head_lr_multiplier", type=float)
    optim.add_argument("--backbone_lr_multiplier", type=float)
    optim.add_argument("--max_grad_norm", type=float)
    optim.add_argument("--max_train_steps", type=int)
    optim.add_argument("--num_train_epochs", type=int, default=3)
    optim.add_argument("--per_device_train_batch_size", type=int, default=8)
    optim.add_argument("--per_device_eval_batch_size", type=int, default=1)
    optim.add_argument("--gradient_accumulation_steps", type=int, default=1)
    optim.add_argument("--mixed_precision", choices=["no", "fp16", "bf16"])
    optim.add_argument("--gradient_checkpointing", action="store_true")
    optim.add_argument("--seed", type=int, default=42)

    run = parser.add_argument_group("run")
    run.add_argument("--output_dir", required=True)
    run.add_argument("--checkpointing_steps", type=int, help="Save the training state every N optimiser steps.")
    run.add_argument("--resume_from_checkpoint", help="'latest' (in --output_dir) or a step_<N> folder.")
    run.add_argument("--report_to", default="all", help="'all', 'none', or trackers such as 'tensorboard'.")
    run.add_argument("--logging_steps", type=int, default=10)
    run.add_argument("--eval_steps", type=int, help="Also evaluate every N optimiser steps (eval_log.jsonl).")
    run.add_argument("--push_to_hub", action="store_true")
    run.add_argument("--hub_model_id")
    run.add_argument("--hub_token")
    args = parser.parse_args(argv)

    if (args.model_name_or_path is None) == (args.model_type is None):
        parser.error("pass exactly one of --model_name_or_path (fine-tune) or --model_type (+ --config_name).")
    if args.push_to_hub and not args.hub_model_id:
        parser.error("--push_to_hub needs --hub_model_id.")
    if args.crop_size is not None and len(args.crop_size) not in (1, 2):
        parser.error("--crop_size takes one or two integers (H [W]).")
    for name in ("per_device_train_batch_size", "per_device_eval_batch_size", "gradient_accumulation_steps"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be >= 1.")
    if args.max_train_steps is not None and args.max_train_steps < 1:
        parser.error("--max_train_steps must be >= 1.")
    if args.streaming and args.max_train_steps is None:
        parser.error("--streaming needs --max_train_steps (a stream has no known length to count epochs in).")
    if args.checkpointing_steps is not None and args.checkpointing_steps < 1:
        parser.error("--checkpointing_steps must be >= 1.")
    if args.eval_steps is not None and args.eval_steps < 1:
        parser.error("--eval_steps must be >= 1.")
    if args.task != "semantic":
        if args.streaming:
            parser.error(f"--streaming supports --task semantic only, not --task {args.task}.")
        if args.model_type not in (None, "maskformer"):
            parser.error(f"--task {args.task} trains MaskFormer (mask classification); --model_type {args.model_type} "
                         "is a per-pixel model: use --task semantic.")
    return args


def _trackers(report_to: str) -> list[str] | None:
    """The requested trackers that are installed (tensorboard when present for 'all')."""
    from accelerate.utils import is_tensorboard_available

    if report_to == "none":
        return None
    if report_to == "all":
        return ["tensorboard"] if is_tensorboard_available() else None
    return [name.strip() for name in report_to.split(",") if name.strip()]


def _distributed_cpu_kwargs() -> dict:
    """Accelerator arguments for multi-process runs on a machine without GPUs.

    `accelerate launch --multi_gpu --num_processes N` (torchrun) on a CPU-only machine starts N processes but
    accelerate only joins them into one gloo group when asked for the CPU; `accelerate launch --cpu --num_processes N`
    starts ONE process unless an MPI hostfile is configured (accelerate's simple launcher), which is reported.
    """
    launched_by_torchrun = os.environ.get("LOCAL_RANK") is not None
    if launched_by_torchrun and not torch.cuda.is_available():
        return {"cpu": True}
    if os.environ.get("ACCELERATE_USE_CPU", "").lower() in ("1", "true") and os.environ.get("MASTER_ADDR") \
            and os.environ.get("WORLD_SIZE") is None:
        print(
            "warning: `accelerate launch --cpu --num_processes N` starts a single process without an MPI hostfile; "
            "for N CPU processes use `accelerate launch --multi_gpu --num_processes N ...` (torchrun; gloo is used "
            "automatically without GPUs).",
            file=sys.stderr,
        )
    return {}


def build_model_and_processor(args, id2label):
    """The model (pretrained or from a config), its image processor and architecture plug-in."""
    if args.model_name_or_path is not None:
        config = AutoConfig.from_pretrained(args.model_name_or_path, trust_remote_code=args.trust_remote_code)
        architecture = get_architecture(config.model_type)
        same_labels = config.num_labels == len(id2label)
        model = AutoModelForSemanticSegmentation.from_pretrained(
            args.model_name_or_path,
            num_labels=len(id2label),
            id2label=id2label,
            label2id={name: index for index, name in id2label.items()},
            ignore_mismatched_sizes=not same_labels,
            trust_remote_code=args.trust_remote_code,
        )
        processor = AutoImageProcessor.from_pretrained(args.image_processor_name or args.model_name_or_path)
    else:
        architecture = get_architecture(args.model_type)
        crop = args.crop_size[0] if args.crop_size else 512
        config = build_config(architecture, args.config_name, crop, id2label)
        model = architecture.model_class(config)
        if args.image_processor_name:
            processor = AutoImageProcessor.from_pretrained(args.image_processor_name)
        else:
            # mmsegmentation's convention for a from-scratch run: test on the shorter side = crop size (longer <= 4x)
            short = min(args.crop_size) if args.crop_size else 512
            processor = architecture.image_processor_class(size={"shortest_edge": short, "longest_edge": 4 * short})
    processor.do_reduce_labels = args.do_reduce_labels
    return model, processor, architecture


def crop_size_of(args, config) -> tuple[int, int]:
    if args.crop_size:
        return (args.crop_size[0], args.crop_size[-1])
    size = getattr(config, "image_size", None)
    if isinstance(size, int):
        return (size, size)
    if isinstance(size, (tuple, list)) and len(size) == 2:
        return (int(size[0]), int(size[1]))
    return (512, 512)


def base_scale_of(args, processor, crop_size) -> tuple[int, int]:
    """(long, short) base scale of the random resize: --base_size, else the processor's test size."""
    if args.base_size:
        return (max(args.base_size), min(args.base_size))
    size = dict(processor.size or {})
    if size.get("shortest_edge") and size.get("longest_edge"):
        return (size["longest_edge"], size["shortest_edge"])
    if size.get("shortest_edge"):
        return (4 * size["shortest_edge"], size["shortest_edge"])
    if size.get("height") and size.get("width"):
        return (max(size["height"], size["width"]), min(size["height"], size["width"]))
    return (4 * min(crop_size), min(crop_size))


def recipe_of(args, architecture):
    """The paper's recipe (MaskFormer's COCO panoptic one for --task panoptic|instance) with every explicitly given
    flag applied on top."""
    base = MASKFORMER_PANOPTIC_RECIPE if args.task != "semantic" else PAPER_RECIPES[architecture.name]
    recipe = base.for_dataset(args.dataset_name)
    overrides = {
        "optimizer": args.optimizer,
        "learning_rate": args.learning_rate,
        "weight_decay": args.weight_decay,
        "momentum": args.momentum,
        "power": args.lr_power,
        "min_lr": args.min_learning_rate,
        "warmup_steps": args.num_warmup_steps,
        "head_lr_multiplier": args.head_lr_multiplier,
        "backbone_lr_multiplier": args.backbone_lr_multiplier,
        "max_grad_norm": args.max_grad_norm,
    }
    return replace(recipe, **{key: value for key, value in overrides.items() if value is not None})


def segment_columns(args, splits) -> tuple[str | None, str | None]:
    """(segments_info column, per-instance classes column) of a panoptic / instance dataset: one of them is None."""
    names = splits[args.train_split].column_names if args.train_split in splits else []
    if args.segments_info_column in names:
        return args.segments_info_column, None
    if args.task == "instance" and args.instance_classes_column in names:
        return None, args.instance_classes_column
    wanted = f"--segments_info_column {args.segments_info_column!r}"
    if args.task == "instance":
        wanted += f" or --instance_classes_column {args.instance_classes_column!r}"
    raise ValueError(f"--task {args.task} needs the segments of each label map: the {args.train_split!r} split has no "
                     f"column {wanted}; its columns: {names}.")


def panoptic_augmentation(args, processor) -> PanopticAugmentation:
    """The COCO panoptic augmentation of the paper's configs, each size overridable."""
    return PanopticAugmentation(
        image_mean=tuple(processor.image_mean),
        image_std=tuple(processor.image_std),
        min_sizes=tuple(args.min_size_train or COCO_MIN_SIZES),
        max_size=args.max_size_train or COCO_MAX_SIZE,
        crop_min_sizes=tuple(args.crop_min_sizes or COCO_CROP_MIN_SIZES),
        crop_size_range=tuple(args.crop_size_range or COCO_CROP_SIZE_RANGE),
    )


def augmentation_text(args, augmentation, crop_size) -> str:
    if args.task == "semantic":
        return f"crop {crop_size[0]}x{crop_size[1]}"
    return (f"flip, shorter side {min(augmentation.min_sizes)}-{max(augmentation.min_sizes)} (longer <= "
            f"{augmentation.max_size}), with p {augmentation.crop_prob:g} first resized to "
            f"{'/'.join(map(str, augmentation.crop_min_sizes))} and cropped to "
            f"{augmentation.crop_size_range[0]}-{augmentation.crop_size_range[1]} px")


class TrainingError(RuntimeError):
    """Training cannot go on (e.g. a non-finite loss); the message says why and what was kept."""


def gradients_are_finite(model) -> torch.Tensor:
    """One reduction over all gradients (the same pass a gradient-norm clip makes): False if any is NaN or Inf."""
    gradients = [p.grad for p in model.parameters() if p.grad is not None]
    if not gradients:
        return torch.tensor(True)
    return torch.isfinite(torch.nn.utils.get_total_norm(gradients))


def stop_if_not_finite(accelerator, finite: torch.Tensor, step: int, last_saved: int | None, output_dir: Path):
    """Raises `TrainingError` on every process when any process saw a non-finite loss or gradient at `step`, before
    the optimiser step, so no weights, checkpoint, model or card are written from it."""
    if bool(accelerator.gather(finite.reshape(1).to(accelerator.device)).all()):
        return
    kept = f"the last good checkpoint is {output_dir / f'step_{last_saved}'}" if last_saved else "no checkpoint was saved"
    raise TrainingError(
        f"The loss or gradients are not finite (NaN or Inf) at step {step}; training stopped before that step's update "
        f"and nothing was saved from it ({kept}). Lower --learning_rate, set --max_grad_norm, or check the data."
    )


def without_rng_draws(loader):
    """Yields the loader's batches with the global torch RNG (dropout, drop-path) left as it was before each fetch:
    accelerate's loader for a streamed dataset draws from it when it starts, which a resumed run (whose RNG state is
    restored before its skipped batches are fetched) would otherwise not reproduce."""
    iterator = iter(loader)
    while True:
        state = torch.get_rng_state()
        try:
            batch = next(iterator)
        except StopIteration:
            return
        finally:
            torch.set_rng_state(state)
        yield batch


def check_first_examples(samples: SegmentationSamples, count: int = 2) -> None:
    """Decodes and checks the first `count` examples of a split (image / label shapes, label dtype and values), so
    that a malformed split fails before training rather than after it."""
    for index in range(min(count, len(samples))):
        samples.sample(index)


def prepare_output_dir(output_dir: Path) -> None:
    try:
        output_dir.mkdir(parents=True, exist_ok=True)
        probe = output_dir / ".write_test"
        probe.write_text("")
        probe.unlink()
    except OSError as error:
        raise TrainingError(f"--output_dir {str(output_dir)!r} cannot be written to: {error.strerror or error}.") from None


def truncate_log(log_path: Path, completed_steps: int) -> None:
    """Drops the log records of steps after the checkpoint a run resumes from (they are trained again)."""
    if not log_path.is_file():
        return
    kept = [line for line in log_path.read_text().splitlines()
            if line.strip() and json.loads(line).get("step", 0) <= completed_steps]
    log_path.write_text("".join(line + "\n" for line in kept))


def main(argv=None):
    args = parse_args(argv)
    output_dir = Path(args.output_dir)
    trackers = _trackers(args.report_to)
    accelerator = Accelerator(
        gradient_accumulation_steps=args.gradient_accumulation_steps,
        mixed_precision=args.mixed_precision,
        log_with=trackers,
        project_dir=str(output_dir),
        **_distributed_cpu_kwargs(),
    )
    if accelerator.is_main_process:
        prepare_output_dir(output_dir)
        remove_temporary(output_dir)
    accelerator.wait_for_everyone()
    checkpoint = resolve_checkpoint(args.resume_from_checkpoint, output_dir) if args.resume_from_checkpoint else None
    set_seed(args.seed)

    # ---------------------------------------------------------------- data
    columns = (args.image_column, args.label_column)
    if args.streaming:
        splits = load_streaming_splits(args.dataset_name, args.dataset_config_name)
        split_of = get_streaming_split
    else:
        splits = load_splits(args.dataset_name, args.dataset_config_name)
        split_of = get_split
    segments_column = classes_column = None
    if args.task != "semantic":
        segments_column, classes_column = segment_columns(args, splits)
        columns += (segments_column or classes_column,)
    train_split = split_of(splits, args.train_split, columns)
    if args.validation_split is None:
        args.validation_split = "validation" if "validation" in splits else "none"
        if args.validation_split == "none":
            accelerator.print(f"The dataset has no 'validation' split (splits: {sorted(splits)}): no validation runs; "
                              "pass --validation_split NAME to evaluate on another split.")
    evaluate_split = args.validation_split.lower() != "none"
    validation_split = split_of(splits, args.validation_split, columns) if evaluate_split else None
    fallback = None
    if args.model_name_or_path is not None and args.id2label is None:
        fallback = AutoConfig.from_pretrained(args.model_name_or_path, trust_remote_code=args.trust_remote_code).id2label
    id2label = resolve_id2label(args.id2label, args.dataset_name, fallback)
    if args.streaming:
        if args.max_train_samples is not None:
            train_split = train_split.take(args.max_train_samples)
        train_split = train_split.shuffle(seed=args.seed, buffer_size=args.shuffle_buffer_size)
        if validation_split is not None and args.max_eval_samples is not None:
            validation_split = validation_split.take(args.max_eval_samples)
    else:
        if args.max_train_samples is not None:
            train_split = train_split.select(range(min(args.max_train_samples, len(train_split))))
        if validation_split is not None and args.max_eval_samples is not None:
            validation_split = validation_split.select(range(min(args.max_eval_samples, len(validation_split))))

    model, processor, architecture = build_model_and_processor(args, id2label)
    if args.backbone_checkpoint:
        if checkpoint is None:
            architecture.load_backbone(model, args.backbone_checkpoint)
            logger.info(f"Loaded pretrained backbone weights from {args.backbone_checkpoint}", main_process_only=True)
    if args.gradient_checkpointing:
        model.activation_checkpointing_enable()
    converted = convert_sync_batch_norm(model, architecture, accelerator.num_processes, accelerator.device)
    if architecture.sync_batch_norm and accelerator.num_processes > 1 and not converted:
        logger.warning("SyncBatchNorm needs GPUs; CPU processes keep per-process BatchNorm statistics.",
                       main_process_only=True)

    if args.task != "semantic" and architecture.name != "maskformer":
        raise ValueError(f"--task {args.task} trains MaskFormer (mask classification), not {architecture.name}.")
    stuff_ids = class_ids(args.stuff_classes, id2label)
    crop_size = crop_size_of(args, model.config)
    augmentation = None if args.task != "semantic" else TrainAugmentation(
        crop_size=crop_size,
        scale=base_scale_of(args, processor, crop_size),
        image_mean=tuple(processor.image_mean),
        image_std=tuple(processor.image_std),
        ratio_range=tuple(args.ratio_range),
        cat_max_ratio=args.cat_max_ratio,
        photometric=not args.no_photometric_distortion,
    )
    num_labels = len(id2label)
    eval_samples = None
    if args.task != "semantic":
        augmentation = panoptic_augmentation(args, processor)
        if args.model_name_or_path is None and args.image_processor_name is None:
            # detectron2's test size: the largest training shorter side (COCO: 800, longest side 1333)
            processor.size = SizeDict(shortest_edge=max(augmentation.min_sizes), longest_edge=augmentation.max_size)
        processor.label_ids_to_fuse = stuff_ids if args.task == "panoptic" else None
        if args.task == "panoptic":
            # pipeline() and post_process_panoptic_segmentation use these when their caller gives none
            processor.object_mask_threshold = args.object_mask_threshold
            processor.overlap_threshold = args.overlap_threshold
        category_map = read_category_map(args.category_map)

        def panoptic_samples(split, name):
            return PanopticSamples(split, args.image_column, args.label_column, num_labels, name,
                                   segments_column=segments_column, classes_column=classes_column,
                                   category_map=category_map)

        train_samples = panoptic_samples(train_split, args.train_split)
        sampler = EpochSampler(len(train_samples), seed=args.seed, shuffle=True)
        size_divisibility = getattr(model.config, "size_divisibility", 32) or 1
        train_loader = torch.utils.data.DataLoader(
            PanopticTrainSamples(train_samples, augmentation, args.seed, stuff_ids),
            batch_sampler=torch.utils.data.BatchSampler(sampler, args.per_device_train_batch_size, drop_last=True),
            collate_fn=partial(collate_panoptic, size_divisibility=size_divisibility),
            num_workers=args.dataloader_num_workers,
            generator=dataloader_generator(args.seed),
        )
        check_first_examples(train_samples)
        if validation_split is not None:
            eval_samples = panoptic_samples(validation_split, args.validation_split)
            check_first_examples(eval_samples)
    elif args.streaming:
        train_samples = StreamingSamples(train_split, args.image_column, args.label_column, num_labels,
                                         args.do_reduce_labels, args.train_split)
        train_samples.check_first()
        train_loader = torch.utils.data.DataLoader(
            StreamingTrainSamples(train_samples, augmentation, args.seed),
            batch_size=args.per_device_train_batch_size,
            drop_last=True,
            collate_fn=collate_train,
            generator=dataloader_generator(args.seed),
        )
    else:
        train_samples = SegmentationSamples(
            train_split, args.image_column, args.label_column, num_labels, args.do_reduce_labels, args.train_split
        )
        sampler = EpochSampler(len(train_samples), seed=args.seed, shuffle=True)
        train_loader = torch.utils.data.DataLoader(
            TrainSamples(train_samples, augmentation, args.seed),
            batch_sampler=torch.utils.data.BatchSampler(sampler, args.per_device_train_batch_size, drop_last=True),
            collate_fn=collate_train,
            num_workers=args.dataloader_num_workers,
            generator=dataloader_generator(args.seed),
        )
        check_first_examples(train_samples)
    if not args.streaming and len(train_loader) == 0:
        raise ValueError(
            f"The {args.train_split!r} split has {len(train_samples)} examples, fewer than one batch of "
            f"{args.per_device_train_batch_size}; lower --per_device_train_batch_size."
        )
    eval_loader = None
    if validation_split is not None and args.task == "semantic":
        if args.streaming:
            eval_stream = StreamingSamples(validation_split, args.image_column, args.label_column, num_labels,
                                           args.do_reduce_labels, args.validation_split)
            eval_stream.check_first()
            eval_dataset = StreamingEvalSamples(eval_stream, processor)
        else:
            eval_samples = SegmentationSamples(
                validation_split, args.image_column, args.label_column, num_labels, args.do_reduce_labels,
                args.validation_split,
            )
            check_first_examples(eval_samples)
            eval_dataset = EvalSamples(eval_samples, processor)
        eval_loader = torch.utils.data.DataLoader(
            eval_dataset,
            batch_size=args.per_device_eval_batch_size,
            collate_fn=collate_eval,
            num_workers=0 if args.streaming else args.dataloader_num_workers,
            generator=dataloader_generator(args.seed),
        )

    # ---------------------------------------------------------------- optimisation
    # Sharded across processes first: the schedule length depends on the batches each process sees per epoch.
    if eval_loader is not None:
        train_loader, eval_loader = accelerator.prepare(train_loader, eval_loader)
    else:
        train_loader = accelerator.prepare(train_loader)
    if args.streaming:
        # A stream's length is unknown: epochs (passes over the stream) repeat until --max_train_steps.
        batches_per_epoch, num_epochs = None, sys.maxsize
    else:
        batches_per_epoch = len(train_loader)
        updates_per_epoch = math.ceil(batches_per_epoch / args.gradient_accumulation_steps)
        if args.max_train_steps is None:
            args.max_train_steps = args.num_train_epochs * updates_per_epoch
        num_epochs = math.ceil(args.max_train_steps / updates_per_epoch)
    recipe = recipe_of(args, architecture)
    if args.num_warmup_steps is None and recipe.warmup_steps > args.max_train_steps // 10:
        # The papers warm up for ~1% of a 160k-step schedule; a short run keeps warmup to a tenth of its steps.
        recipe = replace(recipe, warmup_steps=args.max_train_steps // 10)
    optimizer = build_optimizer(model, recipe, architecture.backbone_prefixes)
    scheduler = build_scheduler(optimizer, recipe, args.max_train_steps)
    model, optimizer = accelerator.prepare(model, optimizer)
    # Stepped by hand once per optimiser step (a prepared scheduler would step once per process).
    accelerator.register_for_checkpointing(scheduler)

    completed_steps, start_epoch, resume_batches = 0, 0, 0
    if checkpoint is not None:
        state = read_state(checkpoint)
        for key in ("max_train_steps", "per_device_train_batch_size", "gradient_accumulation_steps", "num_processes",
                    "seed"):
            current = accelerator.num_processes if key == "num_processes" else getattr(args, key)
            if state.get(key) != current:
                logger.warning(f"Resuming with {key}={current} but the checkpoint was written with {state.get(key)}: "
                               "the schedule or data order will differ from the original run.", main_process_only=True)
        accelerator.load_state(str(checkpoint))
        completed_steps, start_epoch, resume_batches = state["completed_steps"], state["epoch"], state["batches_in_epoch"]
        if batches_per_epoch is not None and resume_batches >= batches_per_epoch:
            start_epoch, resume_batches = start_epoch + 1, 0
        accelerator.print(f"Resumed from {checkpoint} at step {completed_steps} (epoch {start_epoch}).")

    if trackers:
        accelerator.init_trackers(
            "train_segmentation", {k: v for k, v in vars(args).items() if isinstance(v, (int, float, str, bool))}
        )
    total_batch = args.per_device_train_batch_size * accelerator.num_processes * args.gradient_accumulation_steps
    examples = "a stream of" if args.streaming else len(train_samples)
    epochs = "" if args.streaming else f", {num_epochs} epochs"
    accelerator.print(
        f"Training {architecture.name} ({sum(p.numel() for p in model.parameters()) / 1e6:.2f}M parameters) on "
        f"{examples} examples ({args.task}): {args.max_train_steps} steps{epochs}, global batch {total_batch}, "
        f"{augmentation_text(args, augmentation, crop_size)}, recipe {recipe.describe()}"
    )

    def evaluate(description: str) -> tuple[dict, dict]:
        """Validation metrics (JSON form for all_results.json / the card) and their scalar summary (for logs)."""
        if args.task == "semantic":
            results = evaluate_semantic(model, eval_loader, accelerator, num_labels, description=description)
            results_json = metrics_to_json(results, id2label)
            accelerator.print(format_table(results, id2label))
            keys = ("mean_iou", "mean_accuracy", "overall_accuracy")
        elif args.task == "panoptic":
            results = evaluate_panoptic(model, processor, eval_samples, accelerator, stuff_ids=stuff_ids,
                                        object_mask_threshold=args.object_mask_threshold,
                                        overlap_threshold=args.overlap_threshold, description=description)
            results_json = panoptic_metrics_to_json(results, id2label)
            accelerator.print(
                "  ".join(f"{name} {percent(results_json[key])}" for key, name in PANOPTIC_SUMMARY.items()
                          if key in results_json)
            )
            keys = tuple(PANOPTIC_SUMMARY)
        else:
            results = evaluate_instances(model, processor, eval_samples, accelerator, description=description)
            results_json = mask_ap_to_json(results, id2label)
            accelerator.print(f"mask AP {percent(results_json['mask_ap'])}  AP50 {percent(results_json['mask_ap50'])}  "
                              f"AP75 {percent(results_json['mask_ap75'])}")
            keys = ("mask_ap", "mask_ap50", "mask_ap75")
        return results_json, {key: results_json[key] for key in keys if results_json.get(key) is not None}

    def training_state(epoch: int, batches_in_epoch: int) -> dict:
        return {
            "completed_steps": completed_steps,
            "epoch": epoch,
            "batches_in_epoch": batches_in_epoch,
            "max_train_steps": args.max_train_steps,
            "per_device_train_batch_size": args.per_device_train_batch_size,
            "gradient_accumulation_steps": args.gradient_accumulation_steps,
            "num_processes": accelerator.num_processes,
            "seed": args.seed,
            "model_type": architecture.name,
        }

    log_path, eval_log_path = output_dir / "train_log.jsonl", output_dir / "eval_log.jsonl"
    if accelerator.is_main_process and checkpoint is not None:
        truncate_log(log_path, completed_steps)
        truncate_log(eval_log_path, completed_steps)
    evaluates = eval_loader is not None or eval_samples is not None
    progress = tqdm(total=args.max_train_steps, initial=completed_steps, desc="training",
                    disable=not accelerator.is_local_main_process)
    last_saved = completed_steps if checkpoint is not None else None
    start_time = time.monotonic()
    model.train()
    try:
        for epoch in range(start_epoch, num_epochs):
            if completed_steps >= args.max_train_steps:
                break
            # The prepared loader passes its own epoch counter to the sampler when iterated, so it is set, not the sampler.
            train_loader.set_epoch(epoch)
            loader, first_batch = train_loader, 0
            if epoch == start_epoch and resume_batches:
                loader, first_batch = accelerator.skip_first_batches(train_loader, resume_batches), resume_batches
                loader.set_epoch(epoch)
            batch_index = first_batch - 1
            for batch_index, batch in enumerate(without_rng_draws(loader), start=first_batch):
                with accelerator.accumulate(model):
                    loss = model(**batch).loss
                    accelerator.backward(loss)
                    finite = torch.isfinite(loss.detach())
                    if accelerator.sync_gradients:
                        # Checked before the optimiser step, so non-finite values never reach the weights (fp16 runs
                        # leave overflowing gradients to the loss scaler, which skips those steps by design).
                        if recipe.max_grad_norm is not None:
                            norm = accelerator.clip_grad_norm_(model.parameters(), recipe.max_grad_norm)
                            finite &= torch.isfinite(torch.as_tensor(norm)) | (accelerator.mixed_precision == "fp16")
                        elif accelerator.mixed_precision != "fp16":
                            finite &= gradients_are_finite(model)
                        stop_if_not_finite(accelerator, finite, completed_steps + 1, last_saved, output_dir)
                    optimizer.step()
                    optimizer.zero_grad()
                if not accelerator.sync_gradients:
                    continue
                scheduler.step()
                completed_steps += 1
                progress.update(1)
                mean_loss = accelerator.gather(loss.detach()[None]).float().mean().item()
                progress.set_postfix(loss=f"{mean_loss:.4f}")
                record = {"step": completed_steps, "epoch": epoch, "loss": mean_loss,
                          "lr": [group["lr"] for group in optimizer.param_groups]}
                if accelerator.is_main_process:
                    with open(log_path, "a") as handle:
                        handle.write(json.dumps(record) + "\n")
                if trackers and completed_steps % args.logging_steps == 0:
                    accelerator.log({"train_loss": mean_loss, "lr": record["lr"][0]}, step=completed_steps)
                if evaluates and args.eval_steps and completed_steps % args.eval_steps == 0 \
                        and completed_steps < args.max_train_steps:
                    # evaluation draws no random numbers of the training run (so resuming stays bit-identical)
                    rng_state = torch.get_rng_state()
                    _, summary = evaluate(f"validation (step {completed_steps})")
                    torch.set_rng_state(rng_state)
                    if accelerator.is_main_process:
                        with open(eval_log_path, "a") as handle:
                            handle.write(json.dumps({"step": completed_steps, **summary}) + "\n")
                    if trackers:
                        accelerator.log({f"eval_{k}": v for k, v in summary.items()}, step=completed_steps)
                if args.checkpointing_steps and completed_steps % args.checkpointing_steps == 0:
                    save_checkpoint(accelerator, output_dir, completed_steps, training_state(epoch, batch_index + 1))
                    last_saved = completed_steps
                if completed_steps >= args.max_train_steps:
                    break
            if batch_index < 0:
                raise ValueError(
                    f"The {args.train_split!r} split gave no batch of {args.per_device_train_batch_size} examples in "
                    f"epoch {epoch}; lower --per_device_train_batch_size or check the data."
                )
    finally:
        progress.close()
    if last_saved != completed_steps:
        save_checkpoint(accelerator, output_dir, completed_steps, training_state(epoch, batch_index + 1))
    train_seconds = time.monotonic() - start_time

    # ---------------------------------------------------------------- export, then evaluation
    # The model is written before it is evaluated, so that an error in the validation data never loses the training.
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        unwrapped = accelerator.unwrap_model(model)
        # The checkpoint records how to test it: sliding windows of the training crop on images resized like the
        # processor's test size (infer_logits, pipeline() and evaluate.py follow it); panoptic / instance models are
        # tested on whole images as the original's panoptic inference.
        if args.task == "semantic":
            protocol = protocol_from_training_crop(crop_size, processor)
        else:
            # (MaskFormer's own size_divisor is its batch padding, recorded in its config, not an aligned resize)
            resize = {key: value for key, value in dict(processor.size).items() if value is not None}
            protocol = TestProtocol(mode="whole", resize=resize, task=args.task,
                                    source=f"examples/train.py --task {args.task}: whole-image inference")
        unwrapped.config.test_protocol = protocol.to_dict()
        unwrapped.save_pretrained(output_dir)
        processor.save_pretrained(output_dir)
    results_json = None
    if evaluates:
        results_json, summary = evaluate("validation")
        if accelerator.is_main_process and args.eval_steps:
            with open(eval_log_path, "a") as handle:
                handle.write(json.dumps({"step": completed_steps, **summary}) + "\n")
        if trackers:
            accelerator.log({f"eval_{k}": v for k, v in summary.items()}, step=completed_steps)
    elif accelerator.is_main_process:
        accelerator.print("No validation split: the model is saved without evaluation.")
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        all_results = {"task": args.task, "train_steps": completed_steps, "train_seconds": round(train_seconds, 2),
                       "num_processes": accelerator.num_processes}
        if results_json is not None:
            all_results.update({f"eval_{k}": v for k, v in results_json.items()})
        (output_dir / "all_results.json").write_text(json.dumps(all_results, indent=2))
        card = render_training_card(
            architecture=architecture.name,
            model_name=output_dir.name,
            repo_id=args.hub_model_id or str(output_dir),
            num_labels=num_labels,
            dataset=args.dataset_name,
            split=args.validation_split,
            metrics=results_json,
            recipe=f"{recipe.describe()} ({recipe.source})",
            steps=completed_steps,
            batch_size=total_batch,
            augmentation=augmentation_text(args, augmentation, crop_size),
            task=args.task,
            seed=args.seed,
            command="accelerate launch examples/train.py " + " ".join(shlex.quote(a) for a in sys.argv[1:]),
            base_model=args.model_name_or_path,
        )
        card.save(output_dir / "README.md")
        if args.push_to_hub:
            from huggingface_hub import HfApi

            api = HfApi(token=args.hub_token)
            api.create_repo(args.hub_model_id, exist_ok=True)
            api.upload_folder(
                repo_id=args.hub_model_id, folder_path=str(output_dir), commit_message=f"Training step {completed_steps}",
                ignore_patterns=[*TRAINING_STATE_PATTERNS, *(f"{p}/**" for p in TRAINING_STATE_PATTERNS)],
            )
    if trackers:
        accelerator.end_training()
    accelerator.wait_for_everyone()


if __name__ == "__main__":
    try:
        main()
    except (TrainingError, ValueError, FileNotFoundError) as error:
        # One line naming the cause, last in this process's output (the accelerate launcher adds its own
        # CalledProcessError traceback after it unless run with `accelerate launch --quiet`).
        print(f"train.py: error: {error}", file=sys.stderr)
        sys.exit(1)
