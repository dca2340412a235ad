"""Model card of a model trained with `examples/train.py`, with the measured validation metrics in its metadata
(`model-index`) and in a table: mIoU / aAcc / mAcc (semantic), PQ / SQ / RQ (panoptic) or mask AP (instance)."""

from huggingface_hub import EvalResult, ModelCard, ModelCardData

from ..cards.render import ARCHITECTURES

_TEMPLATE = """---
{{ card_data }}
---

# {{ model_name }}

{{ title }} {{ task }} segmentation model with {{ num_labels }} classes, trained with
[hf_segmodels](https://github.com/hf-segmodels/hf_segmodels)' `examples/train.py` on `{{ dataset }}`.

## Results

{{ results }}

## Training

- Recipe: {{ recipe }}
- Steps: {{ steps }} (global batch size {{ batch_size }}), seed {{ seed }}
- Augmentation: {{ augmentation }}
- Command: `{{ command }}`

## Usage

```python
import hf_segmodels  # registers the architectures with transformers' Auto classes
from transformers import AutoImageProcessor, {{ auto_class }}

model = {{ auto_class }}.from_pretrained("{{ repo_id }}")
processor = AutoImageProcessor.from_pretrained("{{ repo_id }}")
{%- if task == "panoptic" %}
# segments: processor.post_process_panoptic_segmentation(model(**processor(image, return_tensors="pt")),
#                                                        threshold=0.8, target_sizes=[image.size[::-1]])
{%- elif task == "instance" %}
# instances: processor.post_process_instance_segmentation(model(**processor(image, return_tensors="pt")),
#                                                         target_sizes=[image.size[::-1]])
{%- endif %}
```
{% if bibtex %}
## Citation

```bibtex
{{ bibtex }}
```
{% endif %}"""


# per task: the summary metrics {key: name}, the per-class entry (key, row label) and how predictions were made
_SUMMARY = {
    "semantic": ({"mean_iou": "mIoU", "overall_accuracy": "aAcc", "mean_accuracy": "mAcc"}, ("per_category_iou", "IoU"),
                 "whole-image inference"),
    "panoptic": ({"pq": "PQ", "sq": "SQ", "rq": "RQ", "pq_things": "PQ things", "pq_stuff": "PQ stuff"},
                 ("per_class", "PQ"), "post_process_panoptic_segmentation, stuff classes fused"),
    "instance": ({"mask_ap": "mask AP", "mask_ap50": "mask AP50", "mask_ap75": "mask AP75"}, ("per_class_ap", "AP"),
                 "post_process_instance_segmentation, COCO-style mask AP over IoU 0.50:0.95"),
}


def render_training_card(
    *,
    architecture: str,
    model_name: str,
    repo_id: str,
    num_labels: int,
    dataset: str,
    split: str,
    metrics: dict | None,
    recipe: str,
    steps: int,
    batch_size: int,
    augmentation: str,
    seed: int,
    command: str,
    base_model: str | None = None,
    task: str = "semantic",
) -> ModelCard:
    """`metrics`: the JSON form of the validation metrics (`metrics_to_json`, `panoptic_metrics_to_json` or
    `mask_ap_to_json` for `task` semantic / panoptic / instance), or None when not evaluated."""
    info = ARCHITECTURES.get(architecture, {})
    eval_results = None
    results = "Not evaluated (no validation split)."
    if metrics is not None:
        names, per_class, how = _SUMMARY[task]
        eval_results = [
            EvalResult(
                task_type="image-segmentation", dataset_type=dataset, dataset_name=dataset, dataset_split=split,
                metric_type=key, metric_name=label, metric_value=round(metrics[key], 4),
            )
            for key, label in names.items() if metrics.get(key) is not None
        ]
        rows = [f"| {label} | {100 * metrics[key]:.2f} |" for key, label in names.items() if metrics.get(key) is not None]
        key, label = per_class
        for name, value in metrics[key].items():
            value = value.get("pq") if isinstance(value, dict) else value
            rows.append(f"| {label} {name} | {'nan' if value is None else f'{100 * value:.2f}'} |")
        results = f"On the `{split}` split ({how}):\n\n| metric | value (%) |\n|---|---|\n" + "\n".join(rows)
    card_data = ModelCardData(
        library_name="hf_segmodels",
        pipeline_tag="image-segmentation",
        tags=[architecture, "segmentation", "vision", "hf_segmodels"],
        datasets=None if "/" not in dataset else [dataset],
        base_model=base_model,
        model_name=model_name,
        eval_results=eval_results,
        license=info.get("license"),
    )
    return ModelCard.from_template(
        card_data,
        template_str=_TEMPLATE,
        model_name=model_name,
        title=info.get("title", architecture),
        num_labels=num_labels,
        dataset=dataset,
        results=results,
        recipe=recipe,
        steps=steps,
        batch_size=batch_size,
        augmentation=augmentation,
        task=task,
        auto_class="AutoModelForSemanticSegmentation" if task == "semantic" else "AutoModelForUniversalSegmentation",
        seed=seed,
        command=command,
        repo_id=repo_id,
        bibtex=info.get("bibtex"),
    )
