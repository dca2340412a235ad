"""Saved models load with `trust_remote_code=True` in a process where `hf_segmodels` cannot be imported, for all four
architectures and for converted repositories written with `--remote_code`; without the package and without
`trust_remote_code`, loading fails with a message that says what to do."""

import json
import re
from pathlib import Path

import numpy as np
import torch
from tiny import run_without_package, tiny_transformers_model
from transformers import AutoImageProcessor, AutoModelForSemanticSegmentation

import hf_segmodels  # noqa: F401  (registers the architectures in this process)


def _cli_arguments(architecture: str, golden_dir: Path, workdir: Path) -> list[str]:
    """Arguments of `conversion_scripts/convert_<architecture>.py` for a small source checkpoint."""
    if architecture == "segmenter":
        case = golden_dir / "segmenter" / "mask_distilled_tiny"
        return ["--checkpoint", str(case / "checkpoint.pth"), "--config", str(case / "variant.yml")]
    if architecture == "setr":
        case = golden_dir / "setr" / "setr_original_pup_tiny"
        return ["--checkpoint", str(case / "checkpoint.pth"), "--config", str(case / "config.py")]
    if architecture == "segformer":
        return ["--checkpoint", str(golden_dir / "segformer" / "segformer_original_tiny" / "checkpoint.pth")]
    # MaskFormer with a Swin backbone, whose code lives in transformers: the flat copy must import it from there.
    source = workdir / "maskformer_source"
    tiny_transformers_model("swin").save_pretrained(source)
    (source / "preprocessor_config.json").write_text(json.dumps({"size": {"shortest_edge": 64, "longest_edge": 96}}))
    return ["--source", "transformers", "--checkpoint", str(source)]


ARCHITECTURES = ("segmenter", "setr", "segformer", "maskformer")


def test_converted_repos_with_remote_code_load_without_the_package(tmp_path, golden_dir):
    """`convert_<arch>.py --remote_code` writes a repository that loads with trust_remote_code=True where hf_segmodels
    is not importable, and gives the outputs of the package's own classes."""
    image = np.random.RandomState(0).randint(0, 256, (40, 48, 3), dtype=np.uint8)
    np.save(tmp_path / "image.npy", image)
    for architecture in ARCHITECTURES:
        main = __import__(f"conversion_scripts.convert_{architecture}", fromlist=["main"]).main
        folder = tmp_path / architecture
        main(_cli_arguments(architecture, golden_dir, tmp_path) + ["--output_dir", str(folder), "--remote_code"])
        config = json.loads((folder / "config.json").read_text())
        assert set(config["auto_map"]) == {"AutoConfig", "AutoModelForSemanticSegmentation"}, architecture
        assert "AutoImageProcessor" in json.loads((folder / "preprocessor_config.json").read_text())["auto_map"]
        assert not [p for p in folder.glob("*.py") if re.search(r"^\s*from \.\.", p.read_text(), re.MULTILINE)]
        model = AutoModelForSemanticSegmentation.from_pretrained(folder).eval()
        assert type(model).__module__.startswith(f"hf_segmodels.{architecture}")
        inputs = AutoImageProcessor.from_pretrained(folder)(image, return_tensors="pt")
        with torch.no_grad():
            np.save(folder / "expected.npy", model(**inputs).logits.numpy())

    done = run_without_package(f"""
        import numpy as np, torch
        from transformers import AutoImageProcessor, AutoModelForSemanticSegmentation
        try:
            import hf_segmodels
            raise SystemExit("package still importable")
        except ImportError:
            pass
        root = {str(tmp_path)!r}
        image = np.load(root + "/image.npy")
        for name in {list(ARCHITECTURES)!r}:
            folder = root + "/" + name
            model = AutoModelForSemanticSegmentation.from_pretrained(folder, trust_remote_code=True).eval()
            processor = AutoImageProcessor.from_pretrained(folder, trust_remote_code=True)
            assert type(model).__module__.startswith("transformers_modules"), type(model).__module__
            assert type(processor).__module__.startswith("transformers_modules"), type(processor).__module__
            with torch.no_grad():
                logits = model(**processor(image, return_tensors="pt")).logits.numpy()
            np.testing.assert_allclose(logits, np.load(folder + "/expected.npy"), rtol=0, atol=1e-5, err_msg=name)
            print("REMOTE_OK", name)
    """, tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert [line.split()[1] for line in done.stdout.splitlines() if line.startswith("REMOTE_OK")] == list(ARCHITECTURES)


def test_without_package_or_trust_remote_code_the_error_says_what_to_do(tmp_path, golden_dir):
    from conversion_scripts.convert_segmenter import main

    case = golden_dir / "segmenter" / "linear_tiny"
    plain, with_code = tmp_path / "plain", tmp_path / "with_code"
    for folder, extra in ((plain, []), (with_code, ["--remote_code"])):
        main(["--checkpoint", str(case / "checkpoint.pth"), "--config", str(case / "variant.yml"),
              "--output_dir", str(folder), "--model_card", *extra])
    # Converted repositories carry code and auto_map only when asked for.
    assert "auto_map" not in json.loads((plain / "config.json").read_text())
    assert "auto_map" not in json.loads((plain / "preprocessor_config.json").read_text())
    assert not list(plain.glob("*.py"))
    assert {"modeling_segmenter.py", "configuration_segmenter.py", "layers.py"} <= {p.name for p in with_code.glob("*.py")}
    # ... and their cards say how to load them.
    assert "`pip install hf-segmodels`" in (plain / "README.md").read_text()
    assert "trust_remote_code=True" in (with_code / "README.md").read_text()
    assert "trust_remote_code=True" not in (plain / "README.md").read_text()

    done = run_without_package(f"""
        from transformers import AutoModelForSemanticSegmentation
        for folder in ({str(plain)!r}, {str(with_code)!r}):
            try:
                AutoModelForSemanticSegmentation.from_pretrained(folder, trust_remote_code=False)
            except Exception as error:
                print("ERROR", folder, "::", str(error).replace("\\n", " "))
            else:
                print("LOADED", folder)
    """, tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    errors = dict(line.split(" ", 1)[1].split(" :: ", 1) for line in done.stdout.splitlines() if line.startswith("ERROR"))
    assert set(errors) == {str(plain), str(with_code)}, done.stdout
    # transformers names the unknown model type (which names the package) for plain repositories ...
    assert "model type `segmodels_segmenter`" in errors[str(plain)]
    # ... and asks for trust_remote_code=True when the repository ships its code.
    assert "trust_remote_code=True" in errors[str(with_code)]
