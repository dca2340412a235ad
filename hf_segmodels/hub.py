"""Publishing converted checkpoints on the Hugging Face Hub.

A converted folder is uploaded as ONE commit (`HfApi.create_commit` with one `CommitOperationAdd` per file) after
`create_repo(exist_ok=True)` (and `create_branch` when a revision other than `main` is asked for). The same
`UploadPlan` drives the dry run, so `--dry_run` prints exactly the files and the commit that a real push makes,
without any network access.

Converted folders carry the flat copy of our modeling code and an `auto_map` (for `trust_remote_code=True` users
without the package) only when asked for (`--remote_code`); `strip_remote_code` removes them otherwise.
"""

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

# Files of a converted checkpoint that the hub push must carry (README.md only when a card was rendered).
REQUIRED_FILES = ("config.json", "model.safetensors", "preprocessor_config.json")
_AUTO_MAP_FILES = ("config.json", "preprocessor_config.json")

@dataclass(frozen=True)
class UploadFile:
    path_in_repo: str
    size: int
    sha256: str


@dataclass
class UploadPlan:
    """What a push of `folder` to `repo_id` does: create the repo (if missing), the branch (if `revision` is given and
    is not `main`), then one commit adding `files`."""

    folder: Path
    repo_id: str
    private: bool
    revision: str | None
    commit_message: str
    files: list[UploadFile] = field(default_factory=list)

    def describe(self) -> str:
        """Human-readable description of the plan (what `--dry_run` prints)."""
        visibility = "private" if self.private else "public"
        branch = self.revision or "main"
        lines = [
            "[dry run] no network access; a push would:",
            f"  1. create_repo({self.repo_id!r}, private={self.private}, exist_ok=True)  ({visibility} model repo)",
        ]
        step = 2
        if self.revision not in (None, "main"):
            lines.append(f"  {step}. create_branch({self.repo_id!r}, branch={self.revision!r}, exist_ok=True)")
            step += 1
        lines.append(
            f"  {step}. create_commit({self.repo_id!r}, revision={branch!r}, commit_message={self.commit_message!r}) "
            f"with {len(self.files)} file(s):"
        )
        width = max((len(f.path_in_repo) for f in self.files), default=0)
        for file in self.files:
            lines.append(f"       {file.path_in_repo:<{width}}  {file.size:>12,d} bytes  sha256:{file.sha256}")
        return "\n".join(lines)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


# What examples/train.py leaves in its output folder besides the model: resumable training state (optimizer states,
# RNG pickles) and logs. Never published, as `train.py --push_to_hub` leaves them out too.
TRAINING_STATE_PATTERNS = ("step_*", ".tmp_step_*", ".old_step_*", "train_log.jsonl", "*.pkl")


def _is_training_state(relative: Path) -> bool:
    import fnmatch

    return any(fnmatch.fnmatch(part, pattern) for part in relative.parts for pattern in TRAINING_STATE_PATTERNS)


def plan_upload(
    folder: str | os.PathLike,
    repo_id: str,
    *,
    private: bool = False,
    revision: str | None = None,
    commit_message: str | None = None,
) -> UploadPlan:
    """Lists every file of the converted (or trained) `folder` (recursively, sorted) as the operations of one commit,
    leaving out training state (`step_*/` checkpoints with optimizer states and RNG pickles, `train_log.jsonl`).

    Raises `ValueError` for a malformed `repo_id` or a folder that lacks a file every converted checkpoint has.
    """
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(repo_id)
    except HFValidationError as error:
        raise ValueError(f"Invalid --push_to_hub repo id {repo_id!r}: {error}") from error
    if "/" not in repo_id:
        raise ValueError(f"--push_to_hub expects 'ORG_OR_USER/NAME', got {repo_id!r}.")
    folder = Path(folder)
    missing = [name for name in REQUIRED_FILES if not (folder / name).is_file()]
    if missing:
        raise ValueError(f"{str(folder)!r} is not a converted checkpoint folder: it lacks {missing}.")
    files = [
        UploadFile(path.relative_to(folder).as_posix(), path.stat().st_size, _sha256(path))
        for path in sorted(folder.rglob("*"))
        if path.is_file() and not _is_training_state(path.relative_to(folder))
    ]
    return UploadPlan(
        folder=folder,
        repo_id=repo_id,
        private=private,
        revision=revision,
        commit_message=commit_message or f"Upload {repo_id.split('/')[-1]} converted with hf_segmodels",
        files=files,
    )


def push_plan(plan: UploadPlan, api=None):
    """Executes `plan` against the Hub (needs network access and a token): returns the `CommitInfo` of the single
    commit. `api` defaults to a fresh `huggingface_hub.HfApi()`."""
    from huggingface_hub import CommitOperationAdd, HfApi

    api = api or HfApi()
    api.create_repo(plan.repo_id, private=plan.private, exist_ok=True)
    if plan.revision not in (None, "main"):
        api.create_branch(plan.repo_id, branch=plan.revision, exist_ok=True)
    operations = [
        CommitOperationAdd(path_in_repo=file.path_in_repo, path_or_fileobj=str(plan.folder / file.path_in_repo))
        for file in plan.files
    ]
    return api.create_commit(
        plan.repo_id, operations=operations, commit_message=plan.commit_message, revision=plan.revision
    )


def strip_remote_code(folder: str | os.PathLike) -> None:
    """Removes what `save_pretrained` adds for `trust_remote_code` users: the `auto_map` entries of `config.json` /
    `preprocessor_config.json` and the flat `.py` copies of our code."""
    folder = Path(folder)
    for name in _AUTO_MAP_FILES:
        path = folder / name
        if not path.is_file():
            continue
        data = json.loads(path.read_text(encoding="utf-8"))
        if data.pop("auto_map", None) is not None:
            path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    for path in folder.glob("*.py"):
        path.unlink()


__all__ = [
    "REQUIRED_FILES",
    "UploadFile",
    "UploadPlan",
    "plan_upload",
    "push_plan",
    "strip_remote_code",
]
