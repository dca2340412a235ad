#!/usr/bin/env python
"""hf_segmodels quickstart: fine-tune a small Segmenter on a synthetic dataset, on CPU, with no download.

1. builds a synthetic segmentation dataset (textured shapes on textured backgrounds, 4 classes) as a 🤗
   `datasets.DatasetDict` with `image` / `annotation` columns,
2. trains a small Segmenter (ViT encoder + Mask Transformer) on it for about two minutes (450 steps),
3. evaluates mIoU on the held-out split,
4. saves model + image processor, reloads them with `AutoModelForSemanticSegmentation` / `AutoImageProcessor`
   and runs `pipeline("image-segmentation")`,
5. writes a PNG (image | ground truth | prediction, with a colour legend) next to the model.

    python examples/quickstart.py [--output_dir quickstart_output] [--max_steps 450]
"""

import argparse
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image as PILImage
from PIL import ImageDraw
from tqdm.auto import tqdm
from transformers import AutoImageProcessor, AutoModelForSemanticSegmentation, pipeline

import hf_segmodels
from hf_segmodels import SegmenterConfig, SegmenterForSemanticSegmentation, SegmenterImageProcessor
from hf_segmodels.metrics import SegmentationMetric
from hf_segmodels.training.synthetic import CLASSES, PALETTE, SIZE, make_dataset


def build_model() -> SegmenterForSemanticSegmentation:
    config = SegmenterConfig(
        hidden_size=96,
        num_hidden_layers=4,
        num_attention_heads=3,
        intermediate_size=384,
        image_size=SIZE,
        patch_size=4,
        drop_path_rate=0.0,
        decoder_hidden_size=96,
        decoder_num_hidden_layers=1,
        decoder_num_attention_heads=3,
        decoder_dropout=0.0,
        num_labels=len(CLASSES),
        id2label=dict(enumerate(CLASSES)),
        label2id={name: index for index, name in enumerate(CLASSES)},
    )
    return SegmenterForSemanticSegmentation(config)


def evaluate(model, loader) -> dict:
    metric = SegmentationMetric(num_labels=model.config.num_labels)
    model.eval()
    with torch.no_grad():
        for batch in loader:
            predictions = hf_segmodels.infer_logits(model, batch["pixel_values"]).argmax(dim=1)
            metric.update(predictions, batch["labels"])
    return metric.compute()


def save_visualisation(path: Path, image, annotation, prediction) -> None:
    """image | ground truth | prediction, with a legend of the class colours underneath."""
    panels = [np.array(image.convert("RGB")), PALETTE[np.array(annotation)], PALETTE[np.asarray(prediction)]]
    scale, legend_height = 4, 24
    canvas = PILImage.new("RGB", (3 * SIZE * scale + 20, SIZE * scale + legend_height + 24), "white")
    draw = ImageDraw.Draw(canvas)
    for index, (panel, title) in enumerate(zip(panels, ["image", "ground truth", "prediction"])):
        left = index * (SIZE * scale + 10)
        canvas.paste(PILImage.fromarray(panel).resize((SIZE * scale, SIZE * scale), PILImage.NEAREST), (left, 20))
        draw.text((left + 4, 4), title, fill="black")
    top = SIZE * scale + 28
    for index, name in enumerate(CLASSES):
        left = 4 + index * 150
        draw.rectangle([left, top, left + 16, top + 16], fill=tuple(int(c) for c in PALETTE[index]))
        draw.text((left + 22, top + 3), name, fill="black")
    canvas.save(path)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output_dir", default="quickstart_output")
    parser.add_argument("--max_steps", type=int, default=450, help="Training steps (about 100 s on 2 CPU cores).")
    parser.add_argument("--max_seconds", type=float, default=None, help="Optional wall-clock budget for training.")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.manual_seed(args.seed)
    output_dir = Path(args.output_dir)

    dataset = make_dataset(seed=args.seed)
    processor = SegmenterImageProcessor(size={"height": SIZE, "width": SIZE})

    def transform(batch):
        return processor(batch["image"], segmentation_maps=batch["annotation"], return_tensors="pt")

    dataset.set_transform(transform)
    train_loader = torch.utils.data.DataLoader(dataset["train"], batch_size=16, shuffle=True, drop_last=True)
    validation_loader = torch.utils.data.DataLoader(dataset["validation"], batch_size=50)

    model = build_model()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.01)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: (1 - step / args.max_steps) ** 0.9)
    print(f"Training a {sum(p.numel() for p in model.parameters()) / 1e6:.2f}M-parameter Segmenter on "
          f"{len(dataset['train'])} synthetic images for {args.max_steps} steps ...")
    budget = args.max_seconds if args.max_seconds is not None else float("inf")
    start, step = time.monotonic(), 0
    progress = tqdm(total=args.max_steps, desc="training", unit="step")
    model.train()
    while step < args.max_steps and time.monotonic() - start < budget:
        for batch in train_loader:
            loss = model(**batch).loss
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            scheduler.step()
            step += 1
            progress.update()
            progress.set_postfix(loss=f"{loss.item():.3f}")
            if step >= args.max_steps or time.monotonic() - start >= budget:
                break
    progress.close()

    results = evaluate(model, validation_loader)
    per_class = ", ".join(f"{name} {iou:.3f}" for name, iou in zip(CLASSES, results["per_category_iou"]))
    print(f"validation mIoU {results['mean_iou']:.3f} (aAcc {results['overall_accuracy']:.3f}; {per_class})")

    model.save_pretrained(output_dir)
    processor.save_pretrained(output_dir)
    reloaded = AutoModelForSemanticSegmentation.from_pretrained(output_dir).eval()
    reloaded_processor = AutoImageProcessor.from_pretrained(output_dir)
    segmentation = pipeline("image-segmentation", model=reloaded, image_processor=reloaded_processor)

    dataset.reset_format()
    example = dataset["validation"][0]
    segments = segmentation(example["image"])
    # one mask per class present (semantic); `segmentation(image, subtask="panoptic")` also scores each segment
    shares = [f"{s['label']} ({np.mean(np.array(s['mask']) > 0):.0%} of the image)" for s in segments]
    print("pipeline:", ", ".join(shares))
    prediction = np.zeros((SIZE, SIZE), dtype=np.int64)
    for segment in segments:
        prediction[np.array(segment["mask"]) > 0] = reloaded.config.label2id[segment["label"]]
    save_visualisation(output_dir / "prediction.png", example["image"], example["annotation"], prediction)
    print(f"saved model, image processor and prediction.png to {output_dir}/")
    if results["mean_iou"] < 0.80:
        raise SystemExit(f"validation mIoU {results['mean_iou']:.3f} is below the expected 0.80")


if __name__ == "__main__":
    main()
