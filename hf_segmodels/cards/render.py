"""Rendering of the model card of one converted checkpoint, with huggingface_hub's `ModelCard` / `ModelCardData`.

`render_model_card(...)` is used by every `conversion_scripts/convert_<arch>.py`; the tables below (paper, original
repository, licence of the original weights and BibTeX of each architecture; datasets and metrics of the releases)
are what a card says about them. The card template is package data (`hf_segmodels/zoo/model_card_template.md`), read
through `importlib.resources` so that it is found in any install.

Published numbers (the paper's / original repository's) and numbers we measured ourselves are kept apart: they are
separate `model-index` result blocks with their own `source`, and separate tables in the card body.
"""

import os
from importlib.resources import files
from pathlib import Path

from huggingface_hub import EvalResult, ModelCard, ModelCardData

# Package data (ships with non-editable installs): a `Traversable`, a `pathlib.Path` for an installed folder.
TEMPLATE_PATH = files("hf_segmodels") / "zoo" / "model_card_template.md"
LIBRARY_NAME = "hf_segmodels"
PACKAGE_URL = "https://github.com/hf-segmodels/hf_segmodels"

# Paper, original repository, licence of the ORIGINAL weights and BibTeX of each architecture.
ARCHITECTURES = {
    "segmenter": {
        "title": "Segmenter",
        "paper": "https://arxiv.org/abs/2105.05633",
        "repository": "https://github.com/rstrudel/segmenter",
        "license": "mit",
        "license_note": "The original code and weights are released under the MIT licence.",
        "model_type": "segmodels_segmenter",
        "verification": (
            "The converter is tested against outputs of the original implementation (rstrudel/segmenter) on small "
            "random-weight checkpoints in the release format (atol 1e-4)."
        ),
        "summary": (
            "Segmenter (Strudel et al., ICCV 2021) encodes the image with a plain Vision Transformer and decodes the "
            "patch tokens either with a linear layer or with a Mask Transformer: learnable class embeddings are "
            "processed jointly with the patch tokens, and the class masks are the scalar products of the "
            "L2-normalised patch and class embeddings."
        ),
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
        "license_note": "The original code and weights are released under the MIT licence.",
        "model_type": "segmodels_setr",
        "verification": (
            "The converter is tested against outputs of the original implementation (fudan-zvg/SETR and "
            "mmsegmentation) on small random-weight checkpoints in the release format (atol 1e-4)."
        ),
        "summary": (
            "SETR (Zheng et al., CVPR 2021) treats segmentation as sequence-to-sequence prediction: a ViT encoder "
            "without any downsampling, followed by a naive (1x1 conv + bilinear), progressive-upsampling (PUP) or "
            "multi-level feature aggregation (MLA) decoder."
        ),
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
        "license_name": "nvidia-source-code-license",
        "license_link": "https://github.com/NVlabs/SegFormer/blob/master/LICENSE",
        "license_note": (
            "The original weights are released under the NVIDIA Source Code License for SegFormer: non-commercial "
            "use (research or evaluation) only. The licence is linked above; redistributions must include it."
        ),
        "model_type": "segmodels_segformer",
        "verification": (
            "The converter is tested against outputs of the original implementation (NVlabs/SegFormer and "
            "mmsegmentation) on small random-weight checkpoints in the release format (atol 1e-4), and the model "
            "against transformers' SegformerForSemanticSegmentation on identical weights."
        ),
        "summary": (
            "SegFormer (Xie et al., NeurIPS 2021) pairs a hierarchical Mix Transformer encoder (MiT-B0..B5: "
            "overlapping patch embeddings, efficient self-attention with spatial reduction, Mix-FFN with a 3x3 "
            "depthwise convolution, no position embeddings) with a lightweight all-MLP decoder at 1/4 resolution."
        ),
        "bibtex": """@inproceedings{xie2021segformer,
  title={SegFormer: Simple and Efficient Design for Semantic Segmentation with Transformers},
  author={Xie, Enze and Wang, Wenhai and Yu, Zhiding and Anandkumar, Anima and Alvarez, Jose M and Luo, Ping},
  booktitle={NeurIPS},
  year={2021}
}""",
    },
    "maskformer": {
        "title": "MaskFormer",
        "paper": "https://arxiv.org/abs/2107.06278",
        "repository": "https://github.com/facebookresearch/MaskFormer",
        "license": "cc-by-nc-4.0",
        "license_note": (
            "The original weights are released under the Creative Commons Attribution-NonCommercial 4.0 "
            "International licence (non-commercial use only)."
        ),
        "model_type": "segmodels_maskformer",
        "verification": (
            "The model is tested against transformers' MaskFormerForInstanceSegmentation on identical weights, and "
            "the converter on checkpoints built in the original detectron2 key layout from such a model."
        ),
        "summary": (
            "MaskFormer (Cheng et al., NeurIPS 2021) casts semantic and panoptic segmentation as mask "
            "classification: a backbone and an FPN pixel decoder produce per-pixel embeddings, a DETR transformer "
            "decoder turns 100 queries into (class, mask embedding) pairs, and the semantic map is the sum over "
            "queries of class probability times mask probability."
        ),
        "bibtex": """@inproceedings{cheng2021maskformer,
  title={Per-Pixel Classification is Not All You Need for Semantic Segmentation},
  author={Cheng, Bowen and Schwing, Alexander G. and Kirillov, Alexander},
  booktitle={NeurIPS},
  year={2021}
}""",
    },
}

# Datasets of the released checkpoints: display name, short name used in Hub repo names, number of classes, task.
DATASETS = {
    "ade20k": {"name": "ADE20K", "short": "ade", "num_labels": 150, "task": "semantic"},
    "cityscapes": {"name": "Cityscapes", "short": "cityscapes", "num_labels": 19, "task": "semantic"},
    "pascal-context": {"name": "Pascal Context", "short": "pascal-context", "num_labels": 60, "task": "semantic"},
    "coco-stuff-10k": {"name": "COCO-Stuff-10K", "short": "coco-stuff-10k", "num_labels": 171, "task": "semantic"},
    "ade20k-full": {"name": "ADE20K-Full", "short": "ade-full", "num_labels": 847, "task": "semantic"},
    "mapillary-vistas": {"name": "Mapillary Vistas", "short": "mapillary-vistas", "num_labels": 65, "task": "semantic"},
    "coco-panoptic": {"name": "COCO panoptic", "short": "coco-panoptic", "num_labels": 133, "task": "panoptic"},
    "ade20k-panoptic": {"name": "ADE20K panoptic", "short": "ade-panoptic", "num_labels": 150, "task": "panoptic"},
}

METRICS = {
    "mIoU": {"type": "mean_iou", "task_name": "Semantic Segmentation"},
    "PQ": {"type": "panoptic_quality", "task_name": "Panoptic Segmentation"},
}

DEFAULT_PROTOCOL = "Whole-image or sliding-window inference with `hf_segmodels.infer_logits`."
DEFAULT_LIMITATIONS = "Trained on a single dataset; predictions outside its label set are not possible."


def _load_template(template_path: str | os.PathLike | None) -> str:
    path = Path(template_path) if template_path is not None else TEMPLATE_PATH
    if not path.is_file():
        raise FileNotFoundError(
            f"Model-card template not found at {str(path)!r} (it ships with the package as "
            "hf_segmodels/zoo/model_card_template.md; reinstall hf-segmodels, or pass template_path=)."
        )
    return path.read_text(encoding="utf-8")


def _eval_results(results: list[dict], *, dataset: str, measured: bool) -> list[EvalResult]:
    """`EvalResult`s of published (`measured=False`) or our own (`measured=True`) numbers.

    Each item: `metric` ("mIoU" / "PQ"), `setting` (e.g. "single-scale"), `value`, `source` and `source_url`; measured
    items also need `dataset_revision` (what data the number was computed on), which keeps them in a model-index block
    of their own: huggingface_hub groups results by task, dataset, config, split and revision only.
    """
    info = DATASETS[dataset]
    converted = []
    for result in results:
        metric = METRICS[result["metric"]]
        if measured and not result.get("dataset_revision"):
            raise ValueError(f"A measured result needs `dataset_revision` (the data it was computed on): {result}")
        kind = "measured with hf_segmodels" if measured else "reported by the authors"
        converted.append(
            EvalResult(
                task_type="image-segmentation",
                task_name=metric["task_name"],
                dataset_type=dataset,
                dataset_name=info["name"],
                dataset_split=result.get("split", "validation"),
                dataset_revision=result.get("dataset_revision") if measured else None,
                metric_type=metric["type"],
                metric_name=f"{result['metric']} ({result['setting']}, {kind})",
                metric_value=result["value"],
                source_name=result["source"],
                source_url=result.get("source_url") or (PACKAGE_URL if measured else None),
                verified=False,
            )
        )
    return converted


def _results_table(results: list[dict]) -> str:
    if not results:
        return ""
    rows = ["| metric | setting | split | value | source |", "|---|---|---|---|---|"]
    for result in results:
        source = f"[{result['source']}]({result['source_url']})" if result.get("source_url") else result["source"]
        rows.append(
            f"| {result['metric']} | {result['setting']} | {result.get('split', 'validation')} | {result['value']} "
            f"| {source} |"
        )
    return "\n".join(rows)


def _infer_call(window, stride, scales, flip) -> str:
    arguments = []
    if window:
        arguments.append(f"window={tuple(window)}")
        arguments.append(f"stride={tuple(stride or window)}")
    if scales and tuple(scales) != (1.0,):
        arguments.append(f"scales={tuple(scales)}")
    if flip:
        arguments.append("flip=True")
    return "".join(f", {argument}" for argument in arguments)


def render_model_card(
    model_config=None,
    *,
    architecture: str,
    repo_id: str,
    checkpoint: str,
    source: str,
    command: str,
    description: str = "",
    protocol: str = DEFAULT_PROTOCOL,
    limitations: str = DEFAULT_LIMITATIONS,
    datasets: list[str] | None = None,
    base_model: str | None = None,
    download_url: str | None = None,
    checkpoint_note: str | None = None,
    side_file: dict | None = None,
    reported_results: list[dict] = (),
    measured_results: list[dict] = (),
    window: tuple[int, int] | None = None,
    stride: tuple[int, int] | None = None,
    ms_scales: tuple[float, ...] = (),
    ms_flip: bool = False,
    remote_code: bool = False,
    template_path: str | os.PathLike | None = None,
) -> ModelCard:
    """A model card for a converted checkpoint: metadata (`library_name`, `pipeline_tag`, tags, licence of the
    original weights, datasets, base model, `model-index` of the published and measured numbers) plus what the model
    is, provenance, a usage snippet, evaluation protocol, limitations and citation.

    `model_config` (optional) adds the number of classes to the description. `datasets` are keys of `DATASETS` (the
    first one is the dataset the results refer to). `reported_results` / `measured_results`: see `_eval_results`.
    `window` / `stride` / `ms_scales` / `ms_flip` set the `infer_logits` calls shown for the evaluation protocol.
    `side_file`: the file the source format ships with the weights (`file_name`, `url`, optional `note`).
    """
    if architecture not in ARCHITECTURES:
        raise ValueError(f"Unknown architecture {architecture!r}; expected one of {sorted(ARCHITECTURES)}.")
    info = ARCHITECTURES[architecture]
    datasets = list(datasets or [])
    unknown = [name for name in datasets if name not in DATASETS]
    if unknown:
        raise ValueError(f"Unknown dataset(s) {unknown}; expected keys of DATASETS: {sorted(DATASETS)}.")
    if (reported_results or measured_results) and not datasets:
        raise ValueError("Results need the dataset they were computed on (pass datasets=[...]).")
    eval_results = []
    if datasets:
        eval_results += _eval_results(list(reported_results), dataset=datasets[0], measured=False)
        measured = _eval_results(list(measured_results), dataset=datasets[0], measured=True)
        reported_ids = {result.unique_identifier for result in eval_results}
        if any(result.unique_identifier in reported_ids for result in measured):
            raise ValueError("Measured results must not share a model-index block with the reported ones.")
        eval_results += measured
    name = repo_id.split("/")[-1]
    license_fields = {key: info[key] for key in ("license", "license_name", "license_link") if key in info}
    card_data = ModelCardData(
        library_name=LIBRARY_NAME,
        pipeline_tag="image-segmentation",
        tags=[architecture, "segmentation", "vision", *datasets],
        datasets=datasets or None,
        base_model=base_model,
        model_name=name if eval_results else None,
        eval_results=eval_results or None,
        **license_fields,
    )
    if model_config is not None and not description:
        description = f"{info['title']} semantic segmentation model with {model_config.num_labels} classes."
    has_window = bool(window)
    return ModelCard.from_template(
        card_data,
        template_str=_load_template(template_path),
        title=f"{info['title']} ({name})",
        summary=info["summary"],
        description=description,
        paper=info["paper"],
        repository=info["repository"],
        license_note=info["license_note"],
        verification=info["verification"],
        checkpoint=checkpoint,
        download_url=download_url,
        checkpoint_note=checkpoint_note,
        side_file=side_file,
        source=source,
        command=command,
        repo_id=repo_id,
        model_type=info["model_type"],
        protocol=protocol,
        infer_args=_infer_call(window, stride, (), False),
        ms_infer_args=_infer_call(window, stride, ms_scales, ms_flip) if ms_scales else "",
        has_window=has_window,
        reported_table=_results_table(list(reported_results)),
        measured_table=_results_table(list(measured_results)),
        limitations=limitations,
        remote_code=remote_code,
        bibtex=info["bibtex"],
        package_url=PACKAGE_URL,
    )


__all__ = ["ARCHITECTURES", "DATASETS", "METRICS", "render_model_card"]
