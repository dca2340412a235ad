"""Publishing: the conversion CLIs' Hub flags (dry run, never a real or faked upload), convert_zoo.py, and loading a
converted repository the way users do, from an offline Hub cache laid out exactly as huggingface_hub lays it out."""

import hashlib
import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from huggingface_hub import HfApi
from tiny import tiny_transformers_model
from transformers import AutoImageProcessor, AutoModelForSemanticSegmentation

from hf_segmodels.hub import plan_upload
from hf_segmodels.cards.validation import usage_snippet, validate_model_card
from hf_segmodels.cards.zoo import ZOO_PATH, load_zoo, render_zoo_card


@pytest.fixture
def no_network(monkeypatch):
    """Any Hub call fails the test: the dry run must not touch the network."""

    def forbidden(*args, **kwargs):
        raise AssertionError("the dry run called the Hub")

    for name in ("create_repo", "create_branch", "create_commit", "upload_folder", "whoami"):
        monkeypatch.setattr(HfApi, name, forbidden)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _dry_run_files(output: str) -> dict[str, tuple[int, str]]:
    files = {}
    for line in output.splitlines():
        if "sha256:" in line:
            name, size, _, digest = line.split()
            files[name] = (int(size.replace(",", "")), digest.removeprefix("sha256:"))
    return files


def _segmenter_args(golden_dir, output):
    case = golden_dir / "segmenter" / "mask_tiny"
    return ["--checkpoint", str(case / "checkpoint.pth"), "--config", str(case / "variant.yml"), "--output_dir", str(output)]


def _setr_args(golden_dir, output):
    case = golden_dir / "setr" / "setr_original_pup_tiny"
    return ["--checkpoint", str(case / "checkpoint.pth"), "--config", str(case / "config.py"), "--output_dir", str(output)]


def _segformer_args(golden_dir, output):
    case = golden_dir / "segformer" / "segformer_original_tiny"
    return ["--checkpoint", str(case / "checkpoint.pth"), "--output_dir", str(output)]


def _maskformer_args(golden_dir, output):
    source = output.parent / "maskformer_source"
    if not source.exists():
        tiny_transformers_model("resnet").save_pretrained(source)
    return ["--source", "transformers", "--checkpoint", str(source), "--output_dir", str(output)]


CLIS = {"segmenter": _segmenter_args, "setr": _setr_args, "segformer": _segformer_args, "maskformer": _maskformer_args}


@pytest.mark.parametrize("architecture", sorted(CLIS))
def test_every_cli_dry_run_prints_exactly_the_commit(architecture, golden_dir, tmp_path, capsys, no_network):
    main = __import__(f"conversion_scripts.convert_{architecture}", fromlist=["main"]).main
    output = tmp_path / "converted"
    main(CLIS[architecture](golden_dir, output) + [
        "--push_to_hub", f"my-org/{architecture}-tiny", "--dry_run", "--private", "--revision", "v1",
        "--commit_message", "Add converted weights"])
    printed = capsys.readouterr().out
    on_disk = {p.name: (p.stat().st_size, _sha256(p)) for p in output.iterdir()}
    assert set(on_disk) == {"README.md", "config.json", "model.safetensors", "preprocessor_config.json"}
    assert _dry_run_files(printed) == on_disk
    assert f"create_repo('my-org/{architecture}-tiny', private=True, exist_ok=True)" in printed
    assert f"create_branch('my-org/{architecture}-tiny', branch='v1', exist_ok=True)" in printed
    assert f"create_commit('my-org/{architecture}-tiny', revision='v1', commit_message='Add converted weights') " \
           "with 4 file(s)" in printed
    card = (output / "README.md").read_text()
    assert f'repo_id = "my-org/{architecture}-tiny"' in card and "--dry_run" in card
    assert validate_model_card(card) == ["metadata lacks `datasets`"]  # a file outside the zoo: dataset unknown
    model = AutoModelForSemanticSegmentation.from_pretrained(output)
    assert type(model).__module__.startswith("hf_segmodels." + architecture)


def test_publishing_flags_are_checked_before_converting(golden_dir, tmp_path, capsys):
    from conversion_scripts.convert_segmenter import main

    output = tmp_path / "out"
    for extra, message in [
        (["--private"], "--private: publishing options take effect only with --push_to_hub"),
        (["--dry_run", "--revision", "dev"], "--revision, --dry_run: publishing options"),
        (["--push_to_hub", "no slash"], "is not a valid repo id"),
        (["--push_to_hub", "just-a-name"], "expects ORG_OR_USER/NAME"),
    ]:
        with pytest.raises(SystemExit) as exit_info:
            main(_segmenter_args(golden_dir, output) + extra)
        assert exit_info.value.code == 2 and message in capsys.readouterr().err
    assert not output.exists()
    with pytest.raises(ValueError, match="lacks"):
        plan_upload(tmp_path, "org/name")


def test_known_release_gets_the_zoo_card_and_remote_code_is_opt_in(golden_dir, tmp_path, capsys, no_network):
    from conversion_scripts.convert_segmenter import main

    # The golden tiny checkpoint laid out like the Seg-T-Mask/16 download (ade20k/seg_tiny_mask/).
    case, release = golden_dir / "segmenter" / "mask_tiny", tmp_path / "downloads" / "ade20k" / "seg_tiny_mask"
    release.mkdir(parents=True)
    for name in ("checkpoint.pth", "variant.yml"):
        shutil.copy(case / name, release / name)
    main(["--checkpoint", str(release / "checkpoint.pth"), "--config", str(release / "variant.yml"),
          "--output_dir", str(tmp_path / "out"), "--push_to_hub", "org/segmenter-t16-ade", "--dry_run", "--remote_code"])
    printed = capsys.readouterr().out
    card = (tmp_path / "out" / "README.md").read_text()
    assert validate_model_card(card) == []
    assert "value: 38.1" in card and "value: 38.8" in card and "rstrudel/segmenter README" in card
    assert "seg_tiny_mask/checkpoint.pth" in card and "trust_remote_code=True" in card
    files = _dry_run_files(printed)
    assert {"modeling_segmenter.py", "configuration_segmenter.py", "image_processing_segmenter.py", "layers.py"} <= set(files)
    assert "auto_map" in json.loads((tmp_path / "out" / "config.json").read_text())


def _zoo_for_golden(tmp_path: Path, golden_dir: Path) -> Path:
    zoo = load_zoo()
    for entry in zoo["models"]:
        if entry["name"] in ("segmenter-t16-ade", "segformer-b0-ade", "setr-pup-ade"):
            entry["num_labels"] = 5  # the golden checkpoints are tiny 5-class models
        if entry["name"] == "segformer-b0-ade":
            entry["checkpoint"]["sha256"] = _sha256(golden_dir / "segformer" / "segformer_original_tiny" / "checkpoint.pth")
        if entry["name"] == "segmenter-l16-cityscapes":
            entry["checkpoint"]["sha256"] = "0" * 64
        if entry["name"] == "maskformer-r50-ade-panoptic":
            # every release is convertible now: one is marked otherwise to exercise that path of convert_zoo
            entry["supported"] = False
            entry["unsupported_reason"] = "marked unsupported by the test"
    path = tmp_path / "zoo.json"
    path.write_text(json.dumps(zoo))
    return path


def test_convert_zoo_converts_what_it_finds(golden_dir, tmp_path, capsys, no_network):
    from conversion_scripts.convert_zoo import main

    source = tmp_path / "downloads"
    (source / "ade20k" / "seg_tiny_mask").mkdir(parents=True)
    for name in ("checkpoint.pth", "variant.yml"):
        shutil.copy(golden_dir / "segmenter" / "mask_tiny" / name, source / "ade20k" / "seg_tiny_mask" / name)
    shutil.copy(golden_dir / "segformer" / "segformer_original_tiny" / "checkpoint.pth",
                source / "segformer.b0.512x512.ade.160k.pth")
    shutil.copy(golden_dir / "setr" / "setr_original_pup_tiny" / "checkpoint.pth",
                source / "SETR_PUP_512x512_160k_ade20k_bs_16.pth")  # its flattened .py config is missing
    (source / "model_final_d8dbeb.pkl").write_bytes(b"not the MaskFormer R50 ADE20K release")
    (source / "model_final_7aa977.pkl").write_bytes(b"panoptic R50: found, marked not convertible in the test zoo")
    (source / "cityscapes" / "seg_large_mask").mkdir(parents=True)  # a file whose sha256 is not the recorded one
    for name in ("checkpoint.pth", "variant.yml"):
        shutil.copy(golden_dir / "segmenter" / "mask_tiny" / name, source / "cityscapes" / "seg_large_mask" / name)
    output = tmp_path / "converted"
    status = main(["--source_dir", str(source), "--org", "test-org", "--output_dir", str(output), "--zoo",
                   str(_zoo_for_golden(tmp_path, golden_dir)), "--push_to_hub", "--dry_run"])
    captured = capsys.readouterr()
    assert status == 1  # three found releases failed
    rows = {line.split(" | ")[0].strip(): line.split(" | ")[2] for line in captured.out.splitlines() if " | " in line}
    assert rows["segmenter-t16-ade"].startswith("converted") and "dry run" in rows["segmenter-t16-ade"]
    assert rows["segformer-b0-ade"].startswith("converted")
    assert "FAILED" in rows["setr-pup-ade"] and "SETR_PUP_512x512_160k_ade20k_bs_16.py was not found" in rows["setr-pup-ade"]
    assert "FAILED" in rows["maskformer-r50-ade"] and "md5" in rows["maskformer-r50-ade"]
    assert "not convertible yet" in rows["maskformer-r50-ade-panoptic"]
    assert "FAILED" in rows["segmenter-l16-cityscapes"] and "sha256" in rows["segmenter-l16-cityscapes"]
    assert rows["segmenter-l16-ade"].startswith("not found")
    assert "2 converted, 4 found but not converted, 57 not found." in captured.out
    assert "converting" in captured.err  # the progress bar
    assert "create_commit('test-org/segmenter-t16-ade'" in captured.out

    converted = output / "segmenter-t16-ade"
    card = (converted / "README.md").read_text()
    assert validate_model_card(card) == [] and 'repo_id = "test-org/segmenter-t16-ade"' in card
    assert "--push_to_hub test-org/segmenter-t16-ade" in card
    assert sorted(p.name for p in converted.iterdir()) == [
        "README.md", "config.json", "model.safetensors", "preprocessor_config.json"]
    assert not (output / "setr-pup-ade").exists() and not (output / "maskformer-r50-ade").exists()

    # Only the convertible releases: success.
    status = main(["--source_dir", str(source), "--output_dir", str(tmp_path / "again"), "--zoo",
                   str(_zoo_for_golden(tmp_path, golden_dir)), "--only", "segformer-b0-ade", "segmenter-l16-ade"])
    assert status == 0 and (tmp_path / "again" / "segformer-b0-ade" / "model.safetensors").is_file()


def _populate_hub_cache(cache_dir: Path, repo_id: str, folder: Path) -> str:
    """Puts `folder` into `cache_dir` the way `hf_hub_download` leaves a downloaded repo: blobs named by their etag
    (sha256 for LFS files, git blob sha1 otherwise), `snapshots/<commit>/` links created with huggingface_hub's own
    helper, and `refs/main` naming the commit."""
    from huggingface_hub.file_download import _create_symlink, repo_folder_name
    from huggingface_hub.utils.sha import git_hash

    storage = cache_dir / repo_folder_name(repo_id=repo_id, repo_type="model")
    files = sorted(p for p in folder.rglob("*") if p.is_file())
    commit = hashlib.sha1("".join(f"{p.relative_to(folder)}{_sha256(p)}" for p in files).encode()).hexdigest()
    (storage / "blobs").mkdir(parents=True)
    for path in files:
        data = path.read_bytes()
        etag = hashlib.sha256(data).hexdigest() if path.suffix == ".safetensors" else git_hash(data)
        (storage / "blobs" / etag).write_bytes(data)
        pointer = storage / "snapshots" / commit / path.relative_to(folder)
        pointer.parent.mkdir(parents=True, exist_ok=True)
        _create_symlink(str(storage / "blobs" / etag), str(pointer), new_blob=False)
    (storage / "refs").mkdir()
    (storage / "refs" / "main").write_text(commit)
    return commit


def test_offline_hub_cache_loads_as_users_do(golden_dir, tmp_path):
    from conversion_scripts.convert_segmenter import main

    converted = tmp_path / "converted"
    main(_segmenter_args(golden_dir, converted))
    zoo = load_zoo(ZOO_PATH)
    entry = next(e for e in zoo["models"] if e["name"] == "segmenter-l16-ade")
    card = render_zoo_card(entry, zoo, org="org").content
    (converted / "README.md").write_text(card)
    cache = tmp_path / "hub_cache"
    commit = _populate_hub_cache(cache, "org/segmenter-l16-ade", converted)

    image = np.random.RandomState(0).randint(0, 256, (48, 80, 3), dtype=np.uint8)
    np.save(tmp_path / "image.npy", image)
    model = AutoModelForSemanticSegmentation.from_pretrained(converted).eval()
    with torch.no_grad():
        expected = model(**AutoImageProcessor.from_pretrained(converted)(image, return_tensors="pt")).logits
    np.save(tmp_path / "expected.npy", expected.numpy())
    (tmp_path / "snippet.py").write_text(usage_snippet(card))

    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(cache), "HF_HOME": str(tmp_path / "hf_home")}
    env.pop("TRANSFORMERS_CACHE", None)
    code = textwrap.dedent(f"""
        import numpy as np, torch
        from PIL import Image
        from huggingface_hub import ModelCard, scan_cache_dir
        import hf_segmodels
        from transformers import AutoImageProcessor, AutoModelForSemanticSegmentation, pipeline

        repo = next(r for r in scan_cache_dir().repos if r.repo_id == "org/segmenter-l16-ade")
        assert [(rev.commit_hash, sorted(rev.refs)) for rev in repo.revisions] == [({commit!r}, ["main"])]
        model = AutoModelForSemanticSegmentation.from_pretrained("org/segmenter-l16-ade").eval()
        processor = AutoImageProcessor.from_pretrained("org/segmenter-l16-ade")
        assert type(model).__name__ == "SegmenterForSemanticSegmentation", type(model)
        assert type(processor).__name__ == "SegmodelsSegmenterImageProcessor", type(processor)
        image = np.load("image.npy")
        with torch.no_grad():
            logits = model(**processor(image, return_tensors="pt")).logits.numpy()
        np.testing.assert_allclose(logits, np.load("expected.npy"), rtol=0, atol=1e-6)
        segments = pipeline("image-segmentation", model="org/segmenter-l16-ade")(Image.fromarray(image))
        assert segments and all(set(s) >= {{"label", "score", "mask"}} for s in segments), segments
        assert ModelCard.load("org/segmenter-l16-ade").data.license == "mit"
        try:
            AutoModelForSemanticSegmentation.from_pretrained("org/not-in-the-cache")
        except OSError:
            pass
        else:
            raise SystemExit("offline mode is not in effect")
        print("LOADED_OK")
        exec(open("snippet.py").read())  # the card's usage snippet, verbatim
        assert semantic_map.shape == (240, 320) and len(masks) >= 1
        print("SNIPPET_OK")
    """)
    done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0 and "LOADED_OK" in done.stdout and "SNIPPET_OK" in done.stdout, done.stderr[-3000:]
