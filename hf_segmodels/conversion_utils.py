"""Shared machinery of the checkpoint converters: safe loading, strict key mapping, atomic output, the CLI."""

import argparse
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path

import torch

from .safe_config import ConfigSyntaxError, parse_python_config


class ConversionError(ValueError):
    """A checkpoint cannot be converted: missing file, unknown or missing keys, or shapes that do not match."""


def _require_file(path: str | os.PathLike, what: str) -> Path:
    path = Path(path)
    if not path.is_file():
        raise ConversionError(f"{what} not found: {str(path)!r} does not exist or is not a file.")
    return path


def load_checkpoint(path: str | os.PathLike, *, allow_unsafe_pickle: bool = False) -> dict:
    """Loads a `torch.save`d checkpoint with `weights_only=True` (no arbitrary code from untrusted pickles).

    `allow_unsafe_pickle=True` (the CLI's `--allow_unsafe_pickle`) falls back to full unpickling for old checkpoints
    that hold non-tensor Python objects; only use it for files you trust.
    """
    path = _require_file(path, "Checkpoint")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        if not allow_unsafe_pickle:
            raise ConversionError(
                f"Could not load {str(path)!r} with torch.load(weights_only=True): {error}. If you trust this file, "
                "pass --allow_unsafe_pickle (allow_unsafe_pickle=True) to unpickle it fully."
            ) from error
        checkpoint = torch.load(path, map_location="cpu", weights_only=False)
    if not isinstance(checkpoint, dict):
        raise ConversionError(
            f"{str(path)!r} holds a {type(checkpoint).__name__}, not a checkpoint: expected a dict (a state dict of "
            "tensors, or a dict with 'state_dict' / 'model' holding one)."
        )
    for key in ("state_dict", "model"):
        if key in checkpoint and not isinstance(checkpoint[key], dict) and not isinstance(checkpoint[key], str):
            raise ConversionError(
                f"{str(path)!r}: checkpoint[{key!r}] is a {type(checkpoint[key]).__name__}, expected a state dict."
            )
    return checkpoint


def load_python_config(path: str | os.PathLike) -> dict:
    """Reads an mmsegmentation / mmcv `.py` config into a dict WITHOUT executing it (see `safe_config`): literals,
    `dict(...)` calls, names assigned earlier, arithmetic on literals and `_base_` files relative to the config."""
    path = _require_file(path, "Config file")
    try:
        return parse_python_config(path.read_text(), str(path), base_dir=path.parent)
    except (ConfigSyntaxError, UnicodeDecodeError) as error:
        raise ConversionError(f"Could not read the config {str(path)!r}: {error}") from error


def load_python_config_text(text: str, what: str) -> dict:
    """Reads config text embedded in a checkpoint (e.g. `meta["config"]`) without executing it; no `_base_` files."""
    try:
        return parse_python_config(text, what, base_dir=None)
    except ConfigSyntaxError as error:
        raise ConversionError(f"Could not read the config stored in {what}: {error}") from error


def rename_keys(
    state_dict: dict[str, torch.Tensor],
    rules: Iterable[tuple[str, str | Callable]],
    drop: Iterable[str] = (),
    source_name: str = "checkpoint",
) -> dict[str, torch.Tensor]:
    """Maps every source key with the first matching `(regex, replacement)` rule (`re.fullmatch`; the replacement
    is a template for `Match.expand` or a callable `(match, tensor) -> dict[new_key, tensor]` for keys that split
    or change layout). Keys fully matching a `drop` regex are discarded on purpose.

    Raises `ConversionError` listing every key that neither a rule nor a drop pattern accounts for.
    """
    rules = [(re.compile(pattern), target) for pattern, target in rules]
    drop = [re.compile(pattern) for pattern in drop]
    converted: dict[str, torch.Tensor] = {}
    unmapped = []
    for key, tensor in state_dict.items():
        if any(pattern.fullmatch(key) for pattern in drop):
            continue
        for pattern, target in rules:
            match = pattern.fullmatch(key)
            if match is None:
                continue
            if callable(target):
                converted.update(target(match, tensor))
            else:
                converted[match.expand(target)] = tensor
            break
        else:
            unmapped.append(key)
    if unmapped:
        raise ConversionError(
            f"{len(unmapped)} key(s) of the {source_name} are not known to this converter (wrong --source or "
            f"--config, or a different architecture?): {sorted(unmapped)}"
        )
    return converted


def load_state_dict_strict(model: torch.nn.Module, state_dict: dict[str, torch.Tensor]) -> None:
    """Loads `state_dict` into `model`, raising `ConversionError` that lists missing keys, unexpected keys and
    shape mismatches (source vs model shape) instead of loading partially."""
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(expected))
    mismatched = sorted(
        f"{key}: checkpoint {tuple(state_dict[key].shape)} vs model {tuple(expected[key].shape)}"
        for key in set(expected) & set(state_dict)
        if state_dict[key].shape != expected[key].shape
    )
    problems = []
    if mismatched:
        problems.append(f"shape mismatches (does --config match the checkpoint?): {mismatched}")
    if missing:
        problems.append(f"keys the model needs but the checkpoint lacks: {missing}")
    if unexpected:
        problems.append(f"converted keys the model does not have: {unexpected}")
    if problems:
        raise ConversionError("Cannot load the converted weights; " + "; ".join(problems))
    model.load_state_dict({key: tensor.to(expected[key].dtype) for key, tensor in state_dict.items()}, strict=True)


def save_converted(
    output_dir: str | os.PathLike,
    model,
    image_processor,
    model_card: str | None = None,
    *,
    remote_code: bool = True,
) -> Path:
    """Writes `config.json`, `model.safetensors`, `preprocessor_config.json` and (optionally) `README.md` into
    `output_dir` atomically: everything is written to a temporary sibling folder first and moved into place only
    once complete, so a failure never leaves a half-written output directory (nor destroys an existing one).

    `remote_code=False` leaves out what `save_pretrained` writes for `trust_remote_code` users (the flat copy of our
    code and the `auto_map` entries); the conversion CLI keeps them only with `--remote_code`.
    """
    output_dir = Path(output_dir).resolve()
    if output_dir.exists() and not output_dir.is_dir():
        raise ConversionError(f"Output directory {str(output_dir)!r} is a file; choose a new folder.")
    try:
        output_dir.parent.mkdir(parents=True, exist_ok=True)
        if output_dir.exists() and any(output_dir.iterdir()):
            raise ConversionError(f"Output directory {str(output_dir)!r} exists and is not empty; choose a new one.")
        staging = Path(tempfile.mkdtemp(prefix=f".{output_dir.name}.tmp-", dir=output_dir.parent))
    except (FileExistsError, NotADirectoryError):
        raise ConversionError(
            f"Cannot create the output directory {str(output_dir)!r}: a parent path is a file, not a folder."
        ) from None
    except OSError as error:
        raise ConversionError(
            f"Cannot write the output directory {str(output_dir)!r}: {error.strerror or error} (read-only file "
            "system or no permission?)."
        ) from None
    # mkdtemp creates the folder private (0700); the result follows the umask like any folder the user creates.
    umask = os.umask(0)
    os.umask(umask)
    staging.chmod(0o777 & ~umask)
    try:
        model.save_pretrained(staging, safe_serialization=True)
        image_processor.save_pretrained(staging)
        if not remote_code:
            from .hub import strip_remote_code

            strip_remote_code(staging)
        if model_card is not None:
            (staging / "README.md").write_text(model_card)
        if output_dir.exists():
            output_dir.rmdir()
        staging.rename(output_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return output_dir


def conversion_argument_parser(architecture: str, sources: Iterable[str]) -> argparse.ArgumentParser:
    """The fixed conversion CLI (README, "Converting original checkpoints"), shared by every
    `conversion_scripts/convert_<arch>.py`, with the Hub publishing options."""
    parser = argparse.ArgumentParser(
        description=f"Convert a {architecture} checkpoint into an hf_segmodels (safetensors) model directory."
    )
    parser.add_argument("--checkpoint", required=True, help="Path to the source checkpoint (or directory).")
    parser.add_argument("--config", default=None, help="The side file of the source format (variant.yml, .py, ...).")
    parser.add_argument("--output_dir", required=True, help="Directory to write the converted model to (new/empty).")
    parser.add_argument("--source", default="original", choices=list(sources), help="Format of --checkpoint.")
    parser.add_argument("--model_card", action="store_true", help="Write a model card (README.md) next to the weights.")
    parser.add_argument(
        "--allow_unsafe_pickle",
        action="store_true",
        help="Fully unpickle checkpoints that torch.load(weights_only=True) rejects. Only for files you trust.",
    )
    hub = parser.add_argument_group("Hub publishing")
    hub.add_argument(
        "--push_to_hub",
        default=None,
        metavar="REPO_ID",
        help="Create ORG/NAME on the Hub (if needed) and upload the converted folder, card included, in one commit.",
    )
    hub.add_argument("--private", action="store_true", help="Create the Hub repository as private.")
    hub.add_argument("--revision", default=None, help="Branch to commit to (created if missing; default main).")
    hub.add_argument("--commit_message", default=None, help="Message of the upload commit.")
    hub.add_argument(
        "--dry_run",
        action="store_true",
        help="Convert and write --output_dir, then print the files and the commit a push would make; no network.",
    )
    hub.add_argument(
        "--remote_code",
        action="store_true",
        help="Also ship the modeling / configuration / image-processing code and an auto_map, so that the result "
        "loads with trust_remote_code=True where hf_segmodels is not installed.",
    )
    return parser


def check_publishing_arguments(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Rejects publishing options that would silently do nothing, and a malformed `--push_to_hub` repo id, before any
    conversion work."""
    if args.push_to_hub is None:
        given = [flag for flag in ("private", "revision", "commit_message", "dry_run") if getattr(args, flag)]
        if given:
            parser.error(f"--{', --'.join(given)}: publishing options take effect only with --push_to_hub REPO_ID.")
        return
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(args.push_to_hub)
    except HFValidationError as error:
        parser.error(f"--push_to_hub {args.push_to_hub!r} is not a valid repo id: {error}")
    if args.push_to_hub.count("/") != 1:
        parser.error(f"--push_to_hub expects ORG_OR_USER/NAME, got {args.push_to_hub!r}.")


def push_converted(
    output_dir: str | os.PathLike,
    repo_id: str,
    *,
    private: bool = False,
    revision: str | None = None,
    commit_message: str | None = None,
    dry_run: bool = False,
) -> str:
    """Creates `repo_id` on the Hub (if needed) and uploads the converted folder in ONE commit; returns the commit URL.
    Needs network access and a token (`hf auth login`). `dry_run=True` returns the description of the commit instead,
    without any network access."""
    from .hub import plan_upload, push_plan

    plan = plan_upload(output_dir, repo_id, private=private, revision=revision, commit_message=commit_message)
    if dry_run:
        return plan.describe()
    return str(push_plan(plan).commit_url)


def _command_line(argv: list[str] | None) -> str:
    import shlex
    import sys

    script = Path(sys.argv[0])
    if script.suffix == ".py" and "conversion_scripts" in script.parts:
        script = Path("conversion_scripts") / script.name
    arguments = argv if argv is not None else sys.argv[1:]
    return "python " + " ".join(shlex.quote(str(a)) for a in [script.as_posix(), *arguments])


def run_conversion_cli(
    architecture: str,
    sources: Iterable[str],
    convert: Callable[[argparse.Namespace], tuple],
    argv: list[str] | None = None,
    add_arguments: Callable[[argparse.ArgumentParser], None] | None = None,
    card_kwargs: Callable[[argparse.Namespace], dict] | None = None,
) -> Path:
    """Parses the fixed conversion flags, converts with `convert(args) -> (model, image_processor)`, writes the output
    directory atomically (with a model card when `--model_card` or `--push_to_hub`; the card takes the download URL,
    protocol and published numbers from `hf_segmodels/zoo/zoo.json` when the checkpoint is a known release, whose
    original test protocol is also recorded in the config and the image processor's resize), and pushes
    (or, with `--dry_run`, prints the push) if asked."""
    from .cards.render import render_model_card
    from .cards.zoo import ZOO_PATH, find_zoo_entry, load_zoo, zoo_card_kwargs, zoo_test_protocol
    from .protocol import apply_test_protocol

    parser = conversion_argument_parser(architecture, sources)
    if add_arguments is not None:
        add_arguments(parser)
    args = parser.parse_args(argv)
    check_publishing_arguments(parser, args)
    try:
        model, image_processor = convert(args)
        # A known release (see hf_segmodels/zoo/zoo.json) records its original test protocol in the converted config and
        # gets its download URL, protocol and published numbers in the card.
        entry = find_zoo_entry(args.checkpoint, load_zoo(), architecture) if ZOO_PATH.is_file() else None
        if entry is not None and entry["source_format"] != args.source:
            entry = None
        if entry is not None:
            apply_test_protocol(model, image_processor, zoo_test_protocol(entry))
        card = None
        if args.model_card or args.push_to_hub:
            kwargs = {"checkpoint": Path(args.checkpoint).name, "source": args.source}
            kwargs.update(card_kwargs(args) if card_kwargs else {})
            if entry is not None:
                kwargs.update(zoo_card_kwargs(entry))
            kwargs["architecture"] = architecture
            card = render_model_card(
                model.config,
                repo_id=args.push_to_hub or f"<org>/{Path(args.output_dir).name}",
                command=_command_line(argv),
                remote_code=args.remote_code,
                **kwargs,
            ).content
        output_dir = save_converted(
            args.output_dir, model, image_processor, model_card=card, remote_code=args.remote_code
        )
    except ConversionError as error:
        parser.exit(2, f"error: {error}\n")
    print(f"Converted {args.checkpoint} -> {output_dir}")
    if args.push_to_hub:
        result = push_converted(
            output_dir,
            args.push_to_hub,
            private=args.private,
            revision=args.revision,
            commit_message=args.commit_message,
            dry_run=args.dry_run,
        )
        print(result if args.dry_run else f"Pushed to {result}")
    return output_dir
