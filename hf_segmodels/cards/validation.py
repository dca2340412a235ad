"""Validation of rendered model cards: metadata that huggingface_hub parses, the fields and sections every card
needs, a well-formed `model-index` (reported and measured numbers apart) and a usage snippet through the package."""

import re

import yaml
from huggingface_hub import ModelCard

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


__all__ = ["usage_snippet", "validate_model_card"]
