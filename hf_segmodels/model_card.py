"""Model cards of converted checkpoints, rendered with huggingface_hub's `ModelCard` / `ModelCardData`.

Two entry points:

* `render_model_card(...)`: the card of one conversion (used by every `conversion_scripts/convert_<arch>.py`).
* `render_zoo_card(entry, org=...)`: the card of a released original checkpoint listed in `hf_segmodels/zoo/zoo.json`
  (download URL, exact conversion command, published numbers with their source).

Published numbers (the paper's / original repository's) and numbers we measured ourselves are kept apart: they are
separate `model-index` result blocks with their own `source`, and separate tables in the card body.
"""

import json
import os
import re
from pathlib import Path

import yaml
from huggingface_hub import EvalResult, ModelCard, ModelCardData

# The zoo and the card template are package data (they ship with non-editable installs); the rendered cards of the
# releases live in the repository's model_cards/ folder.
ZOO_DIR = Path(__file__).resolve().parent / "zoo"
TEMPLATE_PATH = ZOO_DIR / "model_card_template.md"
ZOO_PATH = ZOO_DIR / "zoo.json"
MODEL_CARDS_DIR = Path(__file__).resolve().parents[1] / "model_cards"
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


# ---------------------------------------------------------------------------------------------------------------
# The zoo: every released original checkpoint, its Hub name, download URL, conversion command and published numbers.
# ---------------------------------------------------------------------------------------------------------------

_REPO_NAME = re.compile(r"^[a-z0-9]+(-[a-z0-9]+)*$")


def load_zoo(path: str | os.PathLike | None = None) -> dict:
    """Reads and validates `hf_segmodels/zoo/zoo.json` (raises `ValueError` listing every problem)."""
    path = Path(path) if path is not None else ZOO_PATH
    zoo = json.loads(path.read_text(encoding="utf-8"))
    problems = validate_zoo(zoo)
    if problems:
        raise ValueError(f"{path} is not a valid zoo file:\n  " + "\n  ".join(problems))
    return zoo


def validate_zoo(zoo: dict) -> list[str]:
    """Every problem of a zoo dictionary (empty list when valid)."""
    problems = []
    if not isinstance(zoo.get("org"), str) or not zoo["org"]:
        problems.append("top-level `org` (default Hub organisation) is missing")
    names = set()
    for index, entry in enumerate(zoo.get("models", [])):
        where = f"models[{index}] ({entry.get('name', '?')})"
        for key in ("name", "architecture", "title", "dataset", "supported", "checkpoint", "source_format"):
            if key not in entry:
                problems.append(f"{where}: missing `{key}`")
        if problems and problems[-1].startswith(where):
            continue
        name, architecture, dataset = entry["name"], entry["architecture"], entry["dataset"]
        if name in names:
            problems.append(f"{where}: duplicate name")
        names.add(name)
        if architecture not in ARCHITECTURES:
            problems.append(f"{where}: unknown architecture {architecture!r}")
            continue
        if dataset not in DATASETS:
            problems.append(f"{where}: unknown dataset {dataset!r}")
            continue
        if not isinstance(entry.get("num_labels"), int) or entry["num_labels"] < 1:
            problems.append(f"{where}: `num_labels` (classes of the released model) must be a positive int")
        if not _REPO_NAME.match(name) or not name.startswith(f"{architecture}-"):
            problems.append(f"{where}: the Hub name must be `{architecture}-<variant>-<dataset>` in lower case")
        if entry.get("hub_repo") != f"{zoo.get('org')}/{name}":
            problems.append(f"{where}: `hub_repo` must be `<org>/<name>` with the zoo's default org")
        if not name.endswith(f"-{DATASETS[dataset]['short']}"):
            problems.append(f"{where}: the Hub name must end with the dataset, `-{DATASETS[dataset]['short']}`")
        checkpoint = entry["checkpoint"]
        for key in ("url", "file_name", "match"):
            if not checkpoint.get(key):
                problems.append(f"{where}: checkpoint.{key} is missing")
        if checkpoint.get("match") and not checkpoint["match"].endswith(checkpoint.get("file_name", "")):
            problems.append(f"{where}: checkpoint.match must end with checkpoint.file_name")
        if entry["supported"]:
            command = entry.get("conversion_command", "")
            script = f"python conversion_scripts/convert_{architecture}.py "
            if not command.startswith(script):
                problems.append(f"{where}: conversion_command must start with {script!r}")
            if f"--push_to_hub {zoo.get('org')}/{name}" not in command:
                problems.append(f"{where}: conversion_command must push to {zoo.get('org')}/{name}")
            if checkpoint.get("match") and checkpoint["match"] not in command:
                problems.append(f"{where}: conversion_command must read {checkpoint['match']}")
            if not entry.get("protocol"):
                problems.append(f"{where}: `protocol` (evaluation protocol) is missing")
        elif not entry.get("unsupported_reason"):
            problems.append(f"{where}: unsupported entries need `unsupported_reason`")
        for result in entry.get("published", []):
            missing = [key for key in ("metric", "setting", "value", "source", "source_url") if key not in result]
            if missing:
                problems.append(f"{where}: published result {result} lacks {missing}")
            elif result["metric"] not in METRICS or not isinstance(result["value"], (int, float)):
                problems.append(f"{where}: published result {result} has an unknown metric or a non-numeric value")
        for result in entry.get("measured", []):
            if not result.get("dataset_revision"):
                problems.append(f"{where}: measured result {result} lacks `dataset_revision`")
    return problems


def zoo_entries(zoo: dict, *, supported_only: bool = False) -> list[dict]:
    return [entry for entry in zoo["models"] if entry["supported"] or not supported_only]


def zoo_repo_id(entry: dict, org: str) -> str:
    return f"{org}/{entry['name']}"


def zoo_command(entry: dict, zoo: dict, org: str | None = None) -> str:
    """The exact conversion command of `entry`, pushing to `org` (default: the zoo's organisation)."""
    command = entry["conversion_command"]
    if org and org != zoo["org"]:
        command = command.replace(f"--push_to_hub {zoo['org']}/", f"--push_to_hub {org}/")
    return command


def zoo_card_path(entry: dict, cards_dir: str | os.PathLike | None = None) -> Path:
    return Path(cards_dir or MODEL_CARDS_DIR) / entry["architecture"] / f"{entry['name']}.md"


def zoo_test_protocol(entry: dict):
    """The `TestProtocol` of a zoo release, from the original test settings it records (`original_test_cfg`, with
    their source), or None when it records none."""
    from .protocol import protocol_from_original_test_cfg

    cfg = entry.get("original_test_cfg")
    return None if cfg is None else protocol_from_original_test_cfg(entry["architecture"], cfg)


def zoo_card_kwargs(entry: dict) -> dict:
    """The `render_model_card` keyword arguments that a zoo entry fixes (everything except the command and repo)."""
    evaluation = entry.get("evaluation", {})
    return {
        "architecture": entry["architecture"],
        "checkpoint": entry["checkpoint"]["file_name"],
        "source": entry["source_format"],
        "description": entry.get("description")
        or f"This checkpoint is {entry['title']} ({entry['variant']}) trained on {DATASETS[entry['dataset']]['name']} "
        f"({entry['num_labels']} classes).",
        "protocol": entry.get("protocol", DEFAULT_PROTOCOL),
        "limitations": entry.get("limitations", DEFAULT_LIMITATIONS),
        "datasets": [entry["dataset"]],
        "base_model": entry.get("base_model"),
        "download_url": entry["checkpoint"]["url"],
        "checkpoint_note": entry["checkpoint"].get("note"),
        "side_file": entry.get("config"),
        "reported_results": entry.get("published", []),
        "measured_results": entry.get("measured", []),
        "window": evaluation.get("window"),
        "stride": evaluation.get("stride"),
        "ms_scales": tuple(evaluation.get("ms_scales", ())),
        "ms_flip": evaluation.get("ms_flip", False),
    }


def render_zoo_card(entry: dict, zoo: dict, org: str | None = None, *, remote_code: bool = False, **overrides) -> ModelCard:
    """The card of a released original checkpoint listed in the zoo."""
    if not entry["supported"]:
        raise ValueError(f"{entry['name']} cannot be converted yet: {entry['unsupported_reason']}")
    org = org or zoo["org"]
    kwargs = {**zoo_card_kwargs(entry), **overrides}
    return render_model_card(
        repo_id=zoo_repo_id(entry, org), command=zoo_command(entry, zoo, org), remote_code=remote_code, **kwargs
    )


def render_zoo_cards(zoo: dict, cards_dir: str | os.PathLike | None = None, org: str | None = None) -> list[Path]:
    """Writes the card of every supported zoo entry to `<cards_dir>/<architecture>/<name>.md`."""
    written = []
    for entry in zoo_entries(zoo, supported_only=True):
        path = zoo_card_path(entry, cards_dir)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(render_zoo_card(entry, zoo, org).content, encoding="utf-8")
        written.append(path)
    return written


def find_zoo_entry(path: str | os.PathLike, zoo: dict, architecture: str | None = None) -> dict | None:
    """The zoo entry whose checkpoint `path` is, or None when no entry (or more than one) matches.

    A file name unique to one release (`segformer.b0.512x512.ade.160k.pth`, `model_final_d8dbeb.pkl`) matches by
    itself; a name shared by several releases (Segmenter's `checkpoint.pth`) matches only when the trailing folders
    agree with the entry's whole `checkpoint.match` path (`ade20k/seg_tiny_mask/checkpoint.pth`).
    """
    path = Path(path).resolve()
    candidates = [
        entry
        for entry in zoo["models"]
        if Path(entry["checkpoint"]["match"]).name == path.name
        and (architecture is None or entry["architecture"] == architecture)
    ]
    if len(candidates) > 1:
        candidates = [
            entry
            for entry in candidates
            if path.parts[-len(Path(entry["checkpoint"]["match"]).parts):] == Path(entry["checkpoint"]["match"]).parts
        ]
    return candidates[0] if len(candidates) == 1 else None


# ---------------------------------------------------------------------------------------------------------------
# Validation of rendered cards.
# ---------------------------------------------------------------------------------------------------------------

_CODE_BLOCK = re.compile(r"```python\n(.*?)```", flags=re.DOTALL)


def usage_snippet(card_text: str) -> str:
    """The first Python code block of a card (the usage snippet)."""
    match = _CODE_BLOCK.search(card_text)
    if match is None:
        raise ValueError("The card has no ```python usage snippet.")
    return match.group(1)


def validate_model_card(card_text: str) -> list[str]:
    """Every problem of a rendered card (empty when valid): metadata that huggingface_hub cannot parse, missing
    fields, a malformed model-index, or a usage snippet that does not load through `import hf_segmodels`."""
    problems = []
    try:
        card = ModelCard(card_text, ignore_metadata_errors=False)
    except Exception as error:  # huggingface_hub raises ValueError / yaml errors for broken metadata
        return [f"metadata does not parse: {error}"]
    data = card.data.to_dict()
    for key in ("library_name", "pipeline_tag", "license", "tags", "datasets"):
        if not data.get(key):
            problems.append(f"metadata lacks `{key}`")
    if data.get("pipeline_tag") != "image-segmentation":
        problems.append("pipeline_tag must be image-segmentation")
    for tag in ("segmentation", "vision"):
        if tag not in data.get("tags", []):
            problems.append(f"tags lack {tag!r}")
    if data.get("license") == "other" and not (data.get("license_name") and data.get("license_link")):
        problems.append("license: other needs license_name and license_link")
    model_index = data.get("model-index")
    if model_index is not None:
        raw = yaml.safe_load(card_text.split("---")[1])["model-index"]
        for block in raw[0]["results"]:
            if not (block.get("task", {}).get("type") and block.get("dataset", {}).get("type")):
                problems.append(f"model-index block without task/dataset type: {block}")
            if not block.get("source", {}).get("name"):
                problems.append(f"model-index block without source: {block}")
            for metric in block.get("metrics", []):
                if not isinstance(metric.get("value"), (int, float)) or not metric.get("type"):
                    problems.append(f"model-index metric without numeric value/type: {metric}")
            kinds = {("measured" in metric.get("name", "")) for metric in block.get("metrics", [])}
            if len(kinds) > 1:
                problems.append(f"model-index block mixes reported and measured metrics: {block}")
    try:
        snippet = usage_snippet(card_text)
    except ValueError as error:
        problems.append(str(error))
    else:
        if "import hf_segmodels" not in snippet:
            problems.append("the usage snippet does not `import hf_segmodels`")
        for needed in ("AutoModelForSemanticSegmentation", "AutoImageProcessor", "pipeline("):
            if needed not in snippet:
                problems.append(f"the usage snippet does not use {needed}")
    for section in ("## Usage", "## Evaluation protocol", "## Limitations", "## Citation", "## Provenance"):
        if section not in card_text:
            problems.append(f"the card lacks the section {section!r}")
    return problems


__all__ = [
    "ARCHITECTURES",
    "DATASETS",
    "find_zoo_entry",
    "load_zoo",
    "render_model_card",
    "render_zoo_card",
    "render_zoo_cards",
    "usage_snippet",
    "validate_model_card",
    "validate_zoo",
    "zoo_card_path",
    "zoo_command",
    "zoo_entries",
    "zoo_repo_id",
    "zoo_test_protocol",
]
