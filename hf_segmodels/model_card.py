"""Model cards of converted checkpoints, rendered with huggingface_hub's `ModelCard` / `ModelCardData`."""

from huggingface_hub import ModelCard, ModelCardData

# Paper, original repository, licence of the ORIGINAL weights and BibTeX of each architecture.
ARCHITECTURES = {
    "segmenter": {
        "title": "Segmenter",
        "paper": "https://arxiv.org/abs/2105.05633",
        "repository": "https://github.com/rstrudel/segmenter",
        "license": "mit",
        "bibtex": """@inproceedings{strudel2021segmenter,
  title={Segmenter: Transformer for Semantic Segmentation},
  author={Strudel, Robin and Garcia, Ricardo and Laptev, Ivan and Schmid, Cordelia},
  booktitle={ICCV},
  year={2021}
}""",
    },
    "setr": {
        "title": "SETR",
        "paper": "https://arxiv.org/abs/2012.15840",
        "repository": "https://github.com/fudan-zvg/SETR",
        "license": "mit",
        "bibtex": """@inproceedings{zheng2021rethinking,
  title={Rethinking Semantic Segmentation from a Sequence-to-Sequence Perspective with Transformers},
  author={Zheng, Sixiao and Lu, Jiachen and Zhao, Hengshuang and Zhu, Xiatian and Luo, Zekun and Wang, Yabiao and Fu, Yanwei and Feng, Jianfeng and Xiang, Tao and Torr, Philip H.S. and Zhang, Li},
  booktitle={CVPR},
  year={2021}
}""",
    },
    "segformer": {
        "title": "SegFormer",
        "paper": "https://arxiv.org/abs/2105.15203",
        "repository": "https://github.com/NVlabs/SegFormer",
        "license": "other",
        "bibtex": """@inproceedings{xie2021segformer,
  title={SegFormer: Simple and Efficient Design for Semantic Segmentation with Transformers},
  author={Xie, Enze and Wang, Wenhai and Yu, Zhiding and Anandkumar, Anima and Alvarez, Jose M and Luo, Ping},
  booktitle={NeurIPS},
  year={2021}
}""",
    },
}

_TEMPLATE = """---
{{ card_data }}
---

# {{ title }}

{{ description }}

This checkpoint was converted from the authors' original release to the
[hf_segmodels](https://github.com/hf-segmodels/hf_segmodels) format (safetensors weights, transformers-style config
and image processor). Converted outputs are checked against outputs of the original code.

- Paper: {{ paper }}
- Original code: {{ repository }}
- Source checkpoint: `{{ checkpoint }}` ({{ source }} format)
- Conversion: `{{ command }}`

## Usage

```python
import hf_segmodels  # registers the architectures with transformers' Auto classes
from transformers import AutoImageProcessor, AutoModelForSemanticSegmentation, pipeline

model = AutoModelForSemanticSegmentation.from_pretrained("{{ repo_id }}")
processor = AutoImageProcessor.from_pretrained("{{ repo_id }}")
segmenter = pipeline("image-segmentation", model=model, image_processor=processor)
```

Without `pip install hf-segmodels` and `import hf_segmodels`, transformers does not know the model type
`{{ model_type }}`.

## Evaluation protocol

{{ protocol }}

## Limitations

{{ limitations }}

## Citation

```bibtex
{{ bibtex }}
```
"""


def render_model_card(
    model_config,
    *,
    architecture: str,
    repo_id: str,
    checkpoint: str,
    source: str,
    command: str,
    description: str = "",
    protocol: str = "Whole-image or sliding-window inference with `hf_segmodels.infer_logits`.",
    limitations: str = "Trained on a single dataset; predictions outside its label set are not possible.",
    datasets: list[str] | None = None,
    base_model: str | None = None,
) -> ModelCard:
    """A model card for a converted checkpoint: metadata (`library_name`, `pipeline_tag`, tags, licence of the
    original weights, datasets, base model) plus provenance, usage, evaluation protocol and citation."""
    info = ARCHITECTURES[architecture]
    card_data = ModelCardData(
        library_name="hf_segmodels",
        pipeline_tag="image-segmentation",
        license=info["license"],
        tags=[architecture, "segmentation", "vision", *(datasets or [])],
        datasets=datasets,
        base_model=base_model,
    )
    return ModelCard.from_template(
        card_data,
        template_str=_TEMPLATE,
        title=f"{info['title']} ({repo_id.split('/')[-1]})",
        description=description or f"{info['title']} semantic segmentation model with {model_config.num_labels} classes.",
        paper=info["paper"],
        repository=info["repository"],
        checkpoint=checkpoint,
        source=source,
        command=command,
        repo_id=repo_id,
        model_type=model_config.model_type,
        protocol=protocol,
        limitations=limitations,
        bibtex=info["bibtex"],
    )
