"""Atomic training checkpoints: `accelerator.save_state` into a hidden temporary folder, a `training_state.json`
written last, then one `rename` to `<output_dir>/step_<N>/` (the name transformers' no_trainer examples use). A crash
at any point leaves either the previous checkpoints untouched or a complete new one; `latest` only ever picks folders
holding `training_state.json`."""

import json
import os
import re
import shutil
from pathlib import Path

STATE_FILE = "training_state.json"
_STEP_DIR = re.compile(r"step_(\d+)")


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def save_checkpoint(accelerator, output_dir: str | os.PathLike, step: int, state: dict) -> Path:
    """Saves model, optimiser, registered objects (scheduler) and RNG states of every process plus `state` to
    `<output_dir>/step_<step>/`. Call on every process."""
    output_dir = Path(output_dir)
    final = output_dir / f"step_{step}"
    temporary = output_dir / f".tmp_step_{step}"
    if accelerator.is_main_process:
        shutil.rmtree(temporary, ignore_errors=True)
        temporary.mkdir(parents=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(temporary))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        with open(temporary / STATE_FILE, "w") as handle:
            json.dump(state, handle, indent=2)
            handle.flush()
            os.fsync(handle.fileno())
        _fsync_dir(temporary)
        if final.exists():
            # A checkpoint of the same step from an earlier run is replaced only once the new one is complete.
            stale = output_dir / f".old_step_{step}"
            shutil.rmtree(stale, ignore_errors=True)
            final.rename(stale)
            temporary.rename(final)
            shutil.rmtree(stale, ignore_errors=True)
        else:
            temporary.rename(final)
        _fsync_dir(output_dir)
    accelerator.wait_for_everyone()
    return final


def is_checkpoint(path: str | os.PathLike) -> bool:
    return (Path(path) / STATE_FILE).is_file()


def latest_checkpoint(output_dir: str | os.PathLike) -> Path | None:
    """The complete `step_<N>` folder with the largest N in `output_dir`, or None."""
    output_dir = Path(output_dir)
    if not output_dir.is_dir():
        return None
    found = []
    for child in output_dir.iterdir():
        match = _STEP_DIR.fullmatch(child.name)
        if match and child.is_dir() and is_checkpoint(child):
            found.append((int(match.group(1)), child))
    return max(found)[1] if found else None


def resolve_checkpoint(resume_from_checkpoint: str, output_dir: str | os.PathLike) -> Path:
    """`latest` -> the newest complete checkpoint of `output_dir`; otherwise the given folder, which must be a
    complete checkpoint written by `save_checkpoint`."""
    if resume_from_checkpoint == "latest":
        path = latest_checkpoint(output_dir)
        if path is None:
            raise FileNotFoundError(
                f"--resume_from_checkpoint latest: no complete checkpoint (step_<N>/ with {STATE_FILE}) in "
                f"{str(output_dir)!r}."
            )
        return path
    path = Path(resume_from_checkpoint)
    if not path.exists():
        raise FileNotFoundError(f"--resume_from_checkpoint {str(path)!r} does not exist.")
    if not is_checkpoint(path):
        raise FileNotFoundError(
            f"--resume_from_checkpoint {str(path)!r} is not a complete training checkpoint (no {STATE_FILE}); pass a "
            "step_<N> folder written by examples/train.py, or 'latest'."
        )
    return path


def read_state(path: str | os.PathLike) -> dict:
    return json.loads((Path(path) / STATE_FILE).read_text())


def remove_temporary(output_dir: str | os.PathLike) -> None:
    """Deletes leftovers of interrupted saves (`.tmp_step_*`, `.old_step_*`)."""
    output_dir = Path(output_dir)
    if output_dir.is_dir():
        for child in output_dir.iterdir():
            if child.name.startswith((".tmp_step_", ".old_step_")):
                shutil.rmtree(child, ignore_errors=True)
