"""A non-editable install (a wheel of this repository) carries what the converters read at run time: the model-card
template, the zoo of released checkpoints (their test protocols) and the evaluate modules."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
GOLDEN = ROOT.parent / "shared" / "golden"


def test_a_wheel_install_converts_a_release_with_its_card_and_protocol(tmp_path):
    wheels, site = tmp_path / "wheels", tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation", "-w",
                    str(wheels), str(ROOT)], check=True, cwd=tmp_path)
    wheel = next(wheels.glob("hf_segmodels-*.whl"))
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target", str(site), str(wheel)],
                   check=True, cwd=tmp_path)
    for name in ("zoo/zoo.json", "zoo/model_card_template.md", "evaluate_modules/mean_iou/mean_iou.py"):
        assert (site / "hf_segmodels" / name).is_file(), name

    # the golden SegFormer checkpoint under the file name of the B0 ADE20K release, converted from outside the
    # repository with only the installed copy on the path
    release = tmp_path / "segformer.b0.512x512.ade.160k.pth"
    shutil.copy(GOLDEN / "segformer" / "segformer_original_tiny" / "checkpoint.pth", release)
    script = tmp_path / "convert.py"
    shutil.copy(ROOT / "conversion_scripts" / "convert_segformer.py", script)
    env = {**os.environ, "PYTHONPATH": str(site)}
    result = subprocess.run([sys.executable, str(script), "--checkpoint", str(release), "--output_dir",
                             str(tmp_path / "out"), "--model_card"], capture_output=True, text=True, cwd=tmp_path,
                            env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    located = subprocess.run([sys.executable, "-c", "import hf_segmodels; print(hf_segmodels.__file__)"],
                             capture_output=True, text=True, cwd=tmp_path, env=env).stdout
    assert located.startswith(str(site))
    card = (tmp_path / "out" / "README.md").read_text()
    assert "segformer" in card.lower() and "license" in card.lower()
    protocol = json.loads((tmp_path / "out" / "config.json").read_text())["test_protocol"]
    assert protocol["mode"] == "whole" and protocol["resize"] == {"shortest_edge": 512, "longest_edge": 2048}
    assert "NVlabs/SegFormer" in protocol["source"]
