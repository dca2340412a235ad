"""Model card of a model trained with `examples/train.py`, with the measured validation metrics in its metadata
(`model-index`) and in a table."""

from huggingface_hub import EvalResult, ModelCard, ModelCardData

from ..model_card import ARCHITECTURES

_TEMPLATE = """---
{{ card_data }}
---

# {{ model_name }}

{{ title }} semantic segmentation model with {{ num_labels }} classes, trained with
[hf_segmodels](https://github.com/hf-segmodels/hf_segmodels)' `examples/train.py` on `{{ dataset }}`.

## Results

{{ results }}

## Training

- Recipe: {{ recipe }}
- Steps: {{ steps }} (global batch size {{ batch_size }}), crop {{ crop_size }}, seed {{ seed }}
- Command: `{{ command }}`

## Usage

```python
import hf_segmodels  # registers the architectures with transformers' Auto classes
from transformers import AutoImageProcessor, AutoModelForSemanticSegmentation

model = AutoModelForSemanticSegmentation.from_pretrained("{{ repo_id }}")
processor = AutoImageProcessor.from_pretrained("{{ repo_id }}")
```
{% if bibtex %}
## Citation

```bibtex
{{ bibtex }}
```
{% endif %}"""


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
    crop_size: tuple[int, int],
    seed: int,
    command: str,
    base_model: str | None = None,
) -> ModelCard:
    """`metrics`: the JSON form of the validation metrics (`metrics_to_json`), or None when not evaluated."""
    info = ARCHITECTURES.get(architecture, {})
    eval_results = None
    results = "Not evaluated (no validation split)."
    if metrics is not None:
        names = {"mean_iou": "mIoU", "overall_accuracy": "aAcc", "mean_accuracy": "mAcc"}
        eval_results = [
            EvalResult(
                task_type="image-segmentation", dataset_type=dataset, dataset_name=dataset, dataset_split=split,
                metric_type=key, metric_name=label, metric_value=round(metrics[key], 4),
            )
            for key, label in names.items() if metrics.get(key) is not None
        ]
        rows = [f"| {label} | {100 * metrics[key]:.2f} |" for key, label in names.items() if metrics.get(key) is not None]
        rows += [
            f"| IoU {name} | {'nan' if value is None else f'{100 * value:.2f}'} |"
            for name, value in metrics["per_category_iou"].items()
        ]
        results = f"On the `{split}` split (whole-image inference):\n\n| metric | value (%) |\n|---|---|\n" + "\n".join(rows)
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
        crop_size=f"{crop_size[0]}x{crop_size[1]}",
        seed=seed,
        command=command,
        repo_id=repo_id,
        bibtex=info.get("bibtex"),
    )
