"""The evaluation loop shared by `examples/train.py` and `examples/evaluate.py`: whole-image, sliding-window or
multi-scale + flip inference (`hf_segmodels.infer_logits`), predictions resized to each label map's original size,
per-image confusion matrices gathered across processes with `gather_for_metrics` (so the samples duplicated to even
out the last batch are dropped) and summed."""

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from ..inference import infer_logits
from ..metrics import SegmentationMetric

# The papers' multi-scale test: ratios 0.5 ... 1.75 of the test size, each also flipped.
MS_SCALES = (0.5, 0.75, 1.0, 1.25, 1.5, 1.75)


def _same_size_groups(pixel_values: list[torch.Tensor], labels: list[torch.Tensor]):
    """Groups batch positions by (image size, label size) so that each group runs as one stacked batch."""
    groups: dict[tuple, list[int]] = {}
    for position, (image, label) in enumerate(zip(pixel_values, labels)):
        groups.setdefault((tuple(image.shape), tuple(label.shape)), []).append(position)
    return groups.values()


@torch.no_grad()
def predict_batch(model, pixel_values: list[torch.Tensor], labels: list[torch.Tensor], *, window=None, stride=None,
                  scales: Sequence[float] = (1.0,), flip: bool = False) -> list[torch.Tensor]:
    """Class maps (H, W) at each label's size for a list of processed images (3, h, w)."""
    predictions: list[torch.Tensor | None] = [None] * len(pixel_values)
    for positions in _same_size_groups(pixel_values, labels):
        images = torch.stack([pixel_values[p] for p in positions])
        # The callers resolve the window (examples/evaluate.py from the checkpoint's protocol): None is whole-image.
        logits = infer_logits(model, images, window=window, stride=stride, scales=scales, flip=flip, protocol=False)
        size = labels[positions[0]].shape[-2:]
        if logits.shape[-2:] != size:
            logits = F.interpolate(logits.float(), size=size, mode="bilinear", align_corners=False)
        for position, prediction in zip(positions, logits.argmax(dim=1)):
            predictions[position] = prediction
    return predictions


@torch.no_grad()
def evaluate_semantic(model, dataloader, accelerator, num_labels: int, *, window=None, stride=None,
                      scales: Sequence[float] = (1.0,), flip: bool = False, description: str = "evaluating") -> dict:
    """Runs the model over a prepared evaluation DataLoader (batches from `collate_eval`) on every process and
    returns the metrics of `SegmentationMetric.compute` over the whole split (identical on every process)."""
    unwrapped = accelerator.unwrap_model(model)
    was_training = unwrapped.training
    unwrapped.eval()
    metric = SegmentationMetric(num_labels=num_labels)
    try:
        total = len(dataloader)
    except TypeError:  # a streamed split has no length
        total = None
    progress = tqdm(total=total, desc=description, disable=not accelerator.is_local_main_process)
    for batch in dataloader:
        predictions = predict_batch(
            unwrapped, batch["pixel_values"], batch["labels"], window=window, stride=stride, scales=scales, flip=flip
        )
        # Per-image confusion matrices have one shape whatever the image sizes, so they gather across processes.
        confusion = torch.cat(
            [metric.batch_confusion(p[None], l[None]) for p, l in zip(predictions, batch["labels"])]
        ).to(accelerator.device)
        metric.add_counts(accelerator.gather_for_metrics(confusion).cpu())
        progress.update()
    progress.close()
    unwrapped.train(was_training)
    return metric.compute()


def metrics_to_json(results: dict, id2label: dict[int, str]) -> dict:
    """JSON-serialisable metrics with per-class values keyed by class name (NaN -> None)."""

    def clean(value: float):
        return None if value != value else float(value)

    data = {
        "mean_iou": clean(results["mean_iou"]),
        "mean_accuracy": clean(results["mean_accuracy"]),
        "overall_accuracy": clean(results["overall_accuracy"]),
        "per_category_iou": {id2label[i]: clean(v) for i, v in enumerate(results["per_category_iou"])},
        "per_category_accuracy": {
            id2label[i]: clean(v) for i, v in enumerate(results["per_category_accuracy"])
        },
    }
    if results.get("warning"):
        data["warning"] = results["warning"]  # why the values above are null
    return data


def format_table(results: dict, id2label: dict[int, str]) -> str:
    """Per-class IoU / accuracy and the summary (mIoU, aAcc, mAcc) as a plain-text table, values in percent."""

    def percent(value) -> str:
        return "   nan" if value is None else f"{100 * value:6.2f}"

    data = metrics_to_json(results, id2label)
    width = max([len("class")] + [len(name) for name in id2label.values()])
    lines = [f"{'class':<{width}} |    IoU |    Acc", f"{'-' * width}-+--------+-------"]
    for name in id2label.values():
        lines.append(
            f"{name:<{width}} | {percent(data['per_category_iou'][name])} | {percent(data['per_category_accuracy'][name])}"
        )
    lines.append(f"{'-' * width}-+--------+-------")
    lines.append(
        f"mIoU {percent(data['mean_iou']).strip()}  aAcc {percent(data['overall_accuracy']).strip()}  "
        f"mAcc {percent(data['mean_accuracy']).strip()}"
    )
    return "\n".join(lines)
