"""Saved models load with `trust_remote_code=True` in a process where `hf_segmodels` cannot be imported."""

import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

from hf_segmodels import SegmenterConfig, SegmenterForSemanticSegmentation, SegmenterImageProcessor

_BLOCK_PACKAGE = """
import sys

class _BlockHfSegmodels:
    def find_spec(self, name, path=None, target=None):
        if name == "hf_segmodels" or name.startswith("hf_segmodels."):
            raise ImportError("hf_segmodels is hidden in this process")

sys.meta_path.insert(0, _BlockHfSegmodels())
"""


def _run_without_package(code: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", _BLOCK_PACKAGE + textwrap.dedent(code)], capture_output=True, text=True, timeout=300
    )


def _save_segmenter(directory):
    torch.manual_seed(0)
    config = SegmenterConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
                             image_size=32, patch_size=8, num_labels=3, decoder_num_hidden_layers=1)
    model = SegmenterForSemanticSegmentation(config).eval()
    model.save_pretrained(directory)
    SegmenterImageProcessor(size={"height": 32, "width": 32}).save_pretrained(directory)
    return model


@pytest.mark.parametrize("save", [_save_segmenter], ids=["segmenter"])
def test_trust_remote_code_without_the_package(tmp_path, save):
    model = save(tmp_path)
    image = np.random.RandomState(0).randint(0, 256, (32, 32, 3), dtype=np.uint8)
    np.save(tmp_path / "image.npy", image)
    from transformers import AutoImageProcessor

    expected = model(**AutoImageProcessor.from_pretrained(tmp_path)(image, return_tensors="pt")).logits
    np.save(tmp_path / "expected.npy", expected.detach().numpy())

    done = _run_without_package(f"""
        import numpy as np, torch
        from transformers import AutoImageProcessor, AutoModelForSemanticSegmentation
        try:
            import hf_segmodels
            raise SystemExit("package still importable")
        except ImportError:
            pass
        folder = {str(tmp_path)!r}
        model = AutoModelForSemanticSegmentation.from_pretrained(folder, trust_remote_code=True).eval()
        processor = AutoImageProcessor.from_pretrained(folder, trust_remote_code=True)
        assert type(model).__module__.startswith("transformers_modules"), type(model).__module__
        inputs = processor(np.load(folder + "/image.npy"), return_tensors="pt")
        with torch.no_grad():
            logits = model(**inputs).logits.numpy()
        np.testing.assert_allclose(logits, np.load(folder + "/expected.npy"), rtol=0, atol=1e-5)
        print("REMOTE_OK")
    """)
    assert done.returncode == 0 and "REMOTE_OK" in done.stdout, done.stderr[-3000:]


def test_without_package_or_trust_remote_code_the_error_says_what_to_do(tmp_path):
    _save_segmenter(tmp_path)
    done = _run_without_package(f"""
        from transformers import AutoModelForSemanticSegmentation
        AutoModelForSemanticSegmentation.from_pretrained({str(tmp_path)!r}, trust_remote_code=False)
    """)
    assert done.returncode != 0
    assert "trust_remote_code=True" in done.stderr
