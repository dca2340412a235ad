#!/usr/bin/env python
"""Convert (and optionally publish) every released original checkpoint found in a folder.

    python conversion_scripts/convert_zoo.py --source_dir DOWNLOADS --org ORG [--output_dir converted] \
        [--push_to_hub [--dry_run] [--private] [--revision REV]] [--remote_code] [--only NAME ...]
    python conversion_scripts/convert_zoo.py --write_cards [--org ORG]     # re-render model_cards/<arch>/<name>.md

For each entry of `hf_segmodels/zoo/zoo.json` the checkpoint is looked up in `--source_dir` (recursively) by its file
name, or, for names several releases share (Segmenter's `checkpoint.pth`), by its trailing folders
(`ade20k/seg_tiny_mask/checkpoint.pth`). Each found checkpoint is checked against the hashes the zoo records (the md5
prefix in MaskFormer's file names, a sha256 where one is recorded), converted with its architecture's converter (side
file: `variant.yml` / flattened `.py` config, looked up next to the checkpoint, then anywhere in `--source_dir`),
given the release's test protocol (`original_test_cfg` in the zoo: recorded in the config, resize in the processor),
checked (number of classes as released, a forward pass that gives finite logits of the right shape), written with its
model card to `<output_dir>/<name>` and, with `--push_to_hub`, uploaded to `<org>/<name>` in one commit (`--dry_run`:
printed, no network). A summary table ends the run; the exit status is 1 when an entry that was found could not be
converted.
"""

import argparse
import hashlib
import sys
from pathlib import Path

import torch

REPOSITORY_ROOT = Path(__file__).resolve().parents[1]
if str(REPOSITORY_ROOT) not in sys.path:  # running the script from a checkout without installing the package
    sys.path.insert(0, str(REPOSITORY_ROOT))

from hf_segmodels.cards.zoo import (  # noqa: E402
    MODEL_CARDS_DIR,
    ZOO_PATH,
    find_zoo_entry,
    load_zoo,
    render_zoo_card,
    render_zoo_cards,
    zoo_repo_id,
    zoo_test_protocol,
)
from hf_segmodels.conversion_utils import ConversionError, save_converted  # noqa: E402
from hf_segmodels.hub import plan_upload, push_plan  # noqa: E402
from hf_segmodels.protocol import apply_test_protocol  # noqa: E402


def _convert(entry: dict, checkpoint: Path, config: Path | None, allow_unsafe_pickle: bool):
    architecture, source = entry["architecture"], entry["source_format"]
    if architecture == "segmenter":
        from hf_segmodels.segmenter.convert_segmenter import convert_segmenter_checkpoint

        return convert_segmenter_checkpoint(checkpoint, config, source=source, allow_unsafe_pickle=allow_unsafe_pickle)
    if architecture == "setr":
        from hf_segmodels.setr.convert_setr import convert_setr_checkpoint

        return convert_setr_checkpoint(checkpoint, config, source=source, allow_unsafe_pickle=allow_unsafe_pickle)
    if architecture == "segformer":
        from hf_segmodels.segformer.convert_segformer import convert_segformer_checkpoint

        return convert_segformer_checkpoint(checkpoint, config, source=source, allow_unsafe_pickle=allow_unsafe_pickle)
    if architecture == "maskformer":
        from hf_segmodels.maskformer.convert_maskformer import convert_original_checkpoint

        return convert_original_checkpoint(checkpoint, config, allow_unsafe_pickle=allow_unsafe_pickle)
    raise ConversionError(f"No converter for architecture {architecture!r}.")


def file_digest(path: Path, algorithm: str) -> str:
    digest = hashlib.new(algorithm)
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def check_hashes(entry: dict, checkpoint: Path) -> None:
    """The md5 prefix that MaskFormer puts in its file names, and a full sha256 where the zoo records one."""
    prefix, sha256 = entry["checkpoint"].get("md5_prefix"), entry["checkpoint"].get("sha256")
    if prefix and not file_digest(checkpoint, "md5").startswith(prefix):
        raise ConversionError(f"md5 of {checkpoint.name} does not start with {prefix} (corrupt or different file)")
    if sha256 and file_digest(checkpoint, "sha256") != sha256:
        raise ConversionError(f"sha256 of {checkpoint.name} is not the zoo's {sha256} (corrupt or different file)")


def verify_runs(model, num_labels: int, size: int = 64) -> None:
    """A forward pass on a small random image must give finite (1, num_labels, h, w) logits."""
    if model.config.num_labels != num_labels:
        raise ConversionError(
            f"the converted model has {model.config.num_labels} classes, the release has {num_labels}: "
            "is this the right file?"
        )
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        logits = model(pixel_values=torch.randn(1, 3, size, size, generator=generator)).logits
    if logits.ndim != 4 or logits.shape[:2] != (1, num_labels) or not torch.isfinite(logits).all():
        raise ConversionError(f"the converted model gives logits of shape {tuple(logits.shape)} or non-finite values")


def find_checkpoints(source_dir: Path, zoo: dict) -> dict[str, Path]:
    """Zoo entry name -> checkpoint file found under `source_dir` (first match in sorted order)."""
    found: dict[str, Path] = {}
    for path in sorted(p for p in source_dir.rglob("*") if p.is_file()):
        entry = find_zoo_entry(path, zoo)
        if entry is not None:
            found.setdefault(entry["name"], path)
    return found


def find_config(entry: dict, checkpoint: Path, source_dir: Path) -> Path | None:
    side = entry.get("config")
    if not side:
        return None
    sibling = checkpoint.parent / side["file_name"]
    if sibling.is_file():
        return sibling
    parts = Path(side["match"]).parts
    for path in sorted(source_dir.rglob(side["file_name"])):
        if path.resolve().parts[-len(parts):] == parts:
            return path
    if side.get("required"):
        raise ConversionError(f"its config {side['match']} was not found next to the checkpoint or in --source_dir")
    return None


def convert_entry(entry: dict, checkpoint: Path, args, zoo: dict) -> str:
    """Converts, checks, writes (and pushes) one release; returns its status line. Raises on failure."""
    check_hashes(entry, checkpoint)
    config = find_config(entry, checkpoint, args.source_dir)
    model, processor = _convert(entry, checkpoint, config, args.allow_unsafe_pickle)
    apply_test_protocol(model, processor, zoo_test_protocol(entry))
    verify_runs(model.eval(), entry["num_labels"])
    card = render_zoo_card(entry, zoo, args.org, remote_code=args.remote_code).content
    output = save_converted(args.output_dir / entry["name"], model, processor, card, remote_code=args.remote_code)
    if not args.push_to_hub:
        return f"converted -> {output}"
    plan = plan_upload(
        output, zoo_repo_id(entry, args.org), private=args.private, revision=args.revision,
        commit_message=args.commit_message,
    )
    if args.dry_run:
        print(plan.describe())
        return f"converted -> {output}; push planned (dry run)"
    return f"converted -> {output}; pushed {push_plan(plan).commit_url}"


def summary_table(rows: list[tuple[str, str, str]]) -> str:
    header = ("release", "hub repo", "status")
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(3)]
    lines = [" | ".join(cell.ljust(width) for cell, width in zip(header, widths))]
    lines.append("-+-".join("-" * width for width in widths))
    lines += [" | ".join(cell.ljust(width) for cell, width in zip(row, widths)) for row in rows]
    return "\n".join(lines)


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--source_dir", type=Path, help="Folder holding downloaded original checkpoints (+ side files).")
    parser.add_argument("--org", default=None, help="Hub organisation / user of the repos (default: the zoo's).")
    parser.add_argument("--output_dir", type=Path, default=Path("converted"), help="Where converted folders go.")
    parser.add_argument("--zoo", type=Path, default=ZOO_PATH, help="The zoo file (default hf_segmodels/zoo/zoo.json).")
    parser.add_argument("--only", nargs="+", default=None, metavar="NAME", help="Only these zoo entries.")
    parser.add_argument("--push_to_hub", action="store_true", help="Upload each converted folder to <org>/<name>.")
    parser.add_argument("--dry_run", action="store_true", help="With --push_to_hub: print the commits, no network.")
    parser.add_argument("--private", action="store_true", help="Create the Hub repos as private.")
    parser.add_argument("--revision", default=None, help="Branch to commit to (default main).")
    parser.add_argument("--commit_message", default=None, help="Message of the upload commits.")
    parser.add_argument("--remote_code", action="store_true", help="Ship the modeling code and an auto_map.")
    parser.add_argument("--allow_unsafe_pickle", action="store_true", help="Only for checkpoints you trust.")
    parser.add_argument("--write_cards", action="store_true", help="Only re-render model_cards/<arch>/<name>.md.")
    parser.add_argument("--cards_dir", type=Path, default=MODEL_CARDS_DIR, help="Where --write_cards writes.")
    args = parser.parse_args(argv)
    if not args.write_cards and args.source_dir is None:
        parser.error("--source_dir is required (or pass --write_cards).")
    if args.source_dir is not None and not args.source_dir.is_dir():
        parser.error(f"--source_dir {str(args.source_dir)!r} is not a folder.")
    if not args.push_to_hub and (args.dry_run or args.private or args.revision or args.commit_message):
        parser.error("--dry_run, --private, --revision and --commit_message only apply with --push_to_hub.")
    return args


def main(argv=None) -> int:
    from tqdm.auto import tqdm

    args = parse_args(argv)
    zoo = load_zoo(args.zoo)
    args.org = args.org or zoo["org"]
    if args.write_cards:
        for path in render_zoo_cards(zoo, args.cards_dir, args.org):
            print(path)
        return 0
    entries = [entry for entry in zoo["models"] if args.only is None or entry["name"] in args.only]
    unknown = sorted(set(args.only or ()) - {entry["name"] for entry in entries})
    if unknown:
        print(f"error: unknown zoo entries {unknown}", file=sys.stderr)
        return 2
    found = find_checkpoints(args.source_dir, zoo)
    rows, failed = [], False
    todo = [entry for entry in entries if entry["name"] in found]
    statuses = {}
    for entry in tqdm(todo, desc="converting", unit="checkpoint", file=sys.stderr):
        checkpoint = found[entry["name"]]
        if not entry["supported"]:
            statuses[entry["name"]] = f"found {checkpoint.name}, not convertible yet: {entry['unsupported_reason']}"
            continue
        try:
            statuses[entry["name"]] = convert_entry(entry, checkpoint, args, zoo)
        except (ConversionError, ValueError, OSError) as error:
            statuses[entry["name"]] = f"FAILED: {error}"
            failed = True
    for entry in entries:
        status = statuses.get(entry["name"], f"not found in {args.source_dir} ({entry['checkpoint']['match']})")
        rows.append((entry["name"], zoo_repo_id(entry, args.org), status))
    print(summary_table(rows))
    converted = sum(status.startswith("converted") for status in statuses.values())
    print(f"{converted} converted, {len(todo) - converted} found but not converted, {len(entries) - len(todo)} not found.")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
