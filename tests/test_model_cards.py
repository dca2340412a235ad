"""Model cards and the zoo: every card parses with huggingface_hub, has a well-formed model-index whose numbers are the
zoo's (with their source), a usage snippet whose names exist, and agrees with zoo.json."""

import ast
import importlib
import json
from pathlib import Path

import pytest
import yaml
from huggingface_hub import ModelCard

from hf_segmodels import SegmenterConfig
from hf_segmodels.cards.render import ARCHITECTURES, DATASETS, render_model_card
from hf_segmodels.cards.validation import usage_snippet, validate_model_card
from hf_segmodels.cards.zoo import MODEL_CARDS_DIR, find_zoo_entry, load_zoo, render_zoo_card, validate_zoo, zoo_card_path

ZOO = load_zoo()
SUPPORTED = [entry for entry in ZOO["models"] if entry["supported"]]
EXPECTED_LICENSES = {
    "segmenter": {"license": "mit"},
    "setr": {"license": "mit"},
    "segformer": {
        "license": "other",
        "license_name": "nvidia-source-code-license",
        "license_link": "https://github.com/NVlabs/SegFormer/blob/master/LICENSE",
    },
    "maskformer": {"license": "cc-by-nc-4.0"},
}


def _metadata(text: str) -> dict:
    return yaml.safe_load(text.split("---")[1])


def test_zoo_is_valid_and_covers_the_releases():
    assert validate_zoo(ZOO) == []
    by_architecture = {arch: [e for e in ZOO["models"] if e["architecture"] == arch] for arch in ARCHITECTURES}
    # Segmenter: 7 ADE20K runs + Pascal Context + Cityscapes (README model zoo).
    assert len(by_architecture["segmenter"]) == 9
    # SETR: the 15 README rows with a download link (8 Cityscapes, 3 ADE20K, 4 Pascal Context).
    assert len(by_architecture["setr"]) == 15
    assert sorted({e["dataset"] for e in by_architecture["setr"]}) == ["ade20k", "cityscapes", "pascal-context"]
    # SegFormer: B0..B5 on ADE20K and Cityscapes, plus the three real-time B0 Cityscapes variants.
    names = {e["name"] for e in by_architecture["segformer"]}
    assert {f"segformer-b{b}-{d}" for b in range(6) for d in ("ade", "cityscapes")} <= names and len(names) == 15
    # MaskFormer: every MaskFormer row of MODEL_ZOO.md (per-pixel baselines are another architecture).
    assert len(by_architecture["maskformer"]) == 24
    assert {e["name"].split("-")[1] for e in by_architecture["maskformer"]} == {"r50", "r101", "r101c", "swin"}
    assert "segmenter-l16-ade" in {e["name"] for e in SUPPORTED}


@pytest.mark.parametrize(
    "name, values",
    [
        ("segmenter-l16-ade", (51.8, 53.6)),
        ("segmenter-t16-ade", (38.1, 38.8)),
        ("segmenter-l16-cityscapes", (79.1, 81.3)),
        ("setr-pup-80k-cityscapes", (79.34,)),
        ("setr-mla-pascal-context", (55.01, 55.83)),
        ("segformer-b0-ade", (37.4, 38.0)),
        ("segformer-b5-cityscapes", (82.4, 84.0)),
        ("maskformer-swin-l-ade", (54.1, 55.6)),
        ("maskformer-swin-b-coco-panoptic", (51.8,)),
    ],
)
def test_published_numbers_are_the_sources(name, values):
    """Spot checks of numbers transcribed from the original READMEs / paper (see zoo.json `sources`)."""
    entry = next(e for e in ZOO["models"] if e["name"] == name)
    assert tuple(result["value"] for result in entry["published"]) == values
    assert all(result["source_url"].startswith(("https://github.com/", "https://arxiv.org/")) for result in entry["published"])
    assert entry["measured"] == []


def test_every_supported_release_has_exactly_its_rendered_card():
    expected = {zoo_card_path(entry) for entry in SUPPORTED}
    present = {path for path in MODEL_CARDS_DIR.glob("*/*.md") if path.parent.name != "templates"}
    assert present == expected
    unsupported = [e for e in ZOO["models"] if not e["supported"]]
    assert all(e["unsupported_reason"] and "conversion_command" not in e for e in unsupported)
    # every released checkpoint of the four architectures can be converted (63 releases)
    assert not unsupported and len(SUPPORTED) == len(ZOO["models"]) == 63


@pytest.mark.parametrize("entry", SUPPORTED, ids=[entry["name"] for entry in SUPPORTED])
def test_card_is_valid_and_agrees_with_the_zoo(entry):
    text = zoo_card_path(entry).read_text(encoding="utf-8")
    assert validate_model_card(text) == []
    assert text == render_zoo_card(entry, ZOO).content, "card out of date: run convert_zoo.py --write_cards"

    card = ModelCard(text, ignore_metadata_errors=False)
    data = card.data.to_dict()
    for key, value in EXPECTED_LICENSES[entry["architecture"]].items():
        assert data[key] == value
    assert data["library_name"] == "hf_segmodels" and data["pipeline_tag"] == "image-segmentation"
    assert data["tags"] == [entry["architecture"], "segmentation", "vision", entry["dataset"]]
    assert data["datasets"] == [entry["dataset"]]
    assert data.get("base_model") == entry["base_model"]

    published = [(r["setting"], r["metric"], r["value"], r["source"], r["source_url"]) for r in entry["published"]]
    from_card = [
        (result.metric_name.split(" (")[1].split(",")[0], result.metric_name.split(" ")[0], result.metric_value,
         result.source_name, result.source_url)
        for result in card.data.eval_results or []
    ]
    assert from_card == published
    for result in card.data.eval_results or []:
        assert result.task_type == "image-segmentation" and result.dataset_type == entry["dataset"]
        assert result.dataset_name == DATASETS[entry["dataset"]]["name"] and "reported by the authors" in result.metric_name

    assert f'repo_id = "{ZOO["org"]}/{entry["name"]}"' in text
    assert entry["conversion_command"] in text and entry["checkpoint"]["url"] in text
    assert ARCHITECTURES[entry["architecture"]]["bibtex"] in text


def _names_used(snippet: str) -> tuple[list[tuple[str, str]], list[str]]:
    tree = ast.parse(snippet)
    imported = [(node.module, alias.name) for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)
                for alias in node.names]
    attributes = [node.attr for node in ast.walk(tree)
                  if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "hf_segmodels"]
    return imported, attributes


@pytest.mark.parametrize("architecture", sorted(ARCHITECTURES))
def test_usage_snippet_names_exist(architecture):
    entry = next(e for e in SUPPORTED if e["architecture"] == architecture)
    snippet = usage_snippet(zoo_card_path(entry).read_text(encoding="utf-8"))
    compile(snippet, "<snippet>", "exec")
    imported, attributes = _names_used(snippet)
    assert ("transformers", "AutoModelForSemanticSegmentation") in imported and ("transformers", "pipeline") in imported
    for module, name in imported:
        assert hasattr(importlib.import_module(module), name), f"{module}.{name}"
    import hf_segmodels

    assert attributes == ["infer_logits"] and all(hasattr(hf_segmodels, name) for name in attributes)
    processor_class = getattr(hf_segmodels, {"segmenter": "SegmenterImageProcessor", "setr": "SetrImageProcessor",
                                             "segformer": "SegformerImageProcessor",
                                             "maskformer": "MaskFormerImageProcessor"}[architecture])
    assert hasattr(processor_class, "post_process_semantic_segmentation")


def test_reported_and_measured_results_stay_apart():
    reported = {"metric": "mIoU", "setting": "single-scale", "value": 38.1, "source": "rstrudel/segmenter README",
                "source_url": "https://github.com/rstrudel/segmenter#model-zoo"}
    measured = {"metric": "mIoU", "setting": "single-scale", "value": 38.0, "source": "hf_segmodels evaluation",
                "dataset_revision": "ADEChallengeData2016"}
    card = render_model_card(
        SegmenterConfig(num_labels=150), architecture="segmenter", repo_id="org/segmenter-t16-ade",
        checkpoint="checkpoint.pth", source="original", command="python convert", datasets=["ade20k"],
        reported_results=[reported], measured_results=[measured],
    )
    assert validate_model_card(card.content) == []
    blocks = _metadata(card.content)["model-index"][0]["results"]
    assert [block["source"]["name"] for block in blocks] == ["rstrudel/segmenter README", "hf_segmodels evaluation"]
    assert [[m["value"] for m in block["metrics"]] for block in blocks] == [[38.1], [38.0]]
    assert "reported by the authors" in blocks[0]["metrics"][0]["name"]
    assert "measured with hf_segmodels" in blocks[1]["metrics"][0]["name"]
    body = card.content.split("### Results measured with hf_segmodels")
    assert "38.1" in body[0].split("### Published results")[1] and "38.1" not in body[1] and "38.0" in body[1]

    with pytest.raises(ValueError, match="dataset_revision"):
        render_model_card(architecture="segmenter", repo_id="o/n", checkpoint="c", source="original", command="x",
                          datasets=["ade20k"], measured_results=[{**measured, "dataset_revision": None}])
    with pytest.raises(ValueError, match="Unknown architecture 'segnet'"):
        render_model_card(architecture="segnet", repo_id="o/n", checkpoint="c", source="original", command="x")
    with pytest.raises(ValueError, match=r"Unknown dataset\(s\) \['ade'\]"):
        render_model_card(architecture="setr", repo_id="o/n", checkpoint="c", source="original", command="x",
                          datasets=["ade"])


def test_existing_keyword_arguments_still_render():
    card = render_model_card(
        SegmenterConfig(num_labels=7), architecture="segmenter", repo_id="<org>/converted", checkpoint="checkpoint.pth",
        source="original", command="python conversion_scripts/convert_segmenter.py ...",
        description="", protocol="Sliding window.", limitations="Tiny.", datasets=None, base_model=None,
    )
    assert "semantic segmentation model with 7 classes" in card.content and "model-index" not in card.content
    assert validate_model_card(card.content) == ["metadata lacks `datasets`"]


def test_validation_reports_broken_cards():
    good = zoo_card_path(SUPPORTED[0]).read_text(encoding="utf-8")
    assert validate_model_card(good.replace("pipeline_tag: image-segmentation", "pipeline_tag: [unclosed")) != []
    assert "the usage snippet does not `import hf_segmodels`" in validate_model_card(
        good.replace("import hf_segmodels  #", "import os  #"))
    assert any("without numeric value" in problem for problem in validate_model_card(
        good.replace("value: ", "value: n/a # ", 1)))
    broken_zoo = json.loads(json.dumps(ZOO))
    broken_zoo["models"][0]["name"] = "Segmenter_L16"
    broken_zoo["models"][1]["published"][0].pop("source_url")
    problems = validate_zoo(broken_zoo)
    assert any("lower case" in p for p in problems) and any("source_url" in p for p in problems)


def test_checkpoints_are_matched_to_their_release(tmp_path):
    # Every Segmenter release is called checkpoint.pth: only the folders of the download URL tell them apart.
    assert find_zoo_entry(tmp_path / "checkpoint.pth", ZOO) is None
    assert find_zoo_entry(tmp_path / "seg_large_mask" / "checkpoint.pth", ZOO) is None  # Pascal Context or Cityscapes
    entry = find_zoo_entry(tmp_path / "downloads" / "cityscapes" / "seg_large_mask" / "checkpoint.pth", ZOO)
    assert entry["name"] == "segmenter-l16-cityscapes"
    assert find_zoo_entry(Path("segformer.b3.1024x1024.city.160k.pth"), ZOO)["name"] == "segformer-b3-cityscapes"
    assert find_zoo_entry(Path("x/model_final_aefa3b.pkl"), ZOO)["name"] == "maskformer-swin-l-ade"
    assert find_zoo_entry(Path("model_final_aefa3b.pkl"), ZOO, architecture="setr") is None
    assert find_zoo_entry(Path("unknown.pth"), ZOO) is None


def test_the_model_card_module_reexports_the_three_card_modules():
    """`hf_segmodels.model_card` keeps its public names: the same objects as rendering, zoo and validation modules."""
    import hf_segmodels.model_card as model_card
    from hf_segmodels.cards import render, validation, zoo

    for module in (render, validation, zoo):
        for name in module.__all__:
            assert getattr(model_card, name) is getattr(module, name), name
    assert set(model_card.__all__) <= set(render.__all__) | set(validation.__all__) | set(zoo.__all__)
    # the template and the zoo are package data next to the modules' package, not files of the repository root
    package = Path(render.__file__).resolve().parents[1]
    assert Path(str(model_card.TEMPLATE_PATH)).parent == Path(str(model_card.ZOO_PATH)).parent == package / "zoo"
