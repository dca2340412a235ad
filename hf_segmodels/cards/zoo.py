"""The zoo: every released original checkpoint (`hf_segmodels/zoo/zoo.json`, package data), its schema, the lookup
of a checkpoint file among its entries, and the card of an entry (its Hub name, download URL, exact conversion
command and published numbers with their source)."""

import json
import os
import re
from importlib.resources import files
from pathlib import Path

from huggingface_hub import ModelCard

from .render import ARCHITECTURES, DATASETS, DEFAULT_LIMITATIONS, DEFAULT_PROTOCOL, METRICS, render_model_card

# Package data (ships with non-editable installs): a `Traversable`, a `pathlib.Path` for an installed folder.
ZOO_DIR = files("hf_segmodels") / "zoo"
ZOO_PATH = ZOO_DIR / "zoo.json"
# The rendered cards of the releases live in the repository's model_cards/ folder (a checkout, not the package).
MODEL_CARDS_DIR = Path(__file__).resolve().parents[2] / "model_cards"

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
    from ..protocol import protocol_from_original_test_cfg

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


__all__ = [
    "MODEL_CARDS_DIR",
    "ZOO_DIR",
    "ZOO_PATH",
    "find_zoo_entry",
    "load_zoo",
    "render_zoo_card",
    "render_zoo_cards",
    "validate_zoo",
    "zoo_card_kwargs",
    "zoo_card_path",
    "zoo_command",
    "zoo_entries",
    "zoo_repo_id",
    "zoo_test_protocol",
]
