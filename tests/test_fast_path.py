"""`hf_segmodels.fastest(model)`: the model's outputs, cached, the model's attributes, and the HF_SEGMODELS_FASTEST
switch through `infer_logits`, `pipeline()` and `examples/evaluate.py`."""

import numpy as np
import PIL.Image
import pytest
import torch
from tiny import ARCHITECTURES, tiny_image_processor, tiny_model
from transformers import pipeline

import hf_segmodels
from hf_segmodels import onednn
from hf_segmodels.fast_path import ENVIRONMENT_VARIABLE, FastestModel

SIZES = {"segformer": 64, "segmenter": 32, "setr": 32, "maskformer": 64}


@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_fastest_gives_the_models_outputs_and_is_cached(architecture):
    model = tiny_model(architecture).train()  # fastest runs it in eval mode
    fast = hf_segmodels.fastest(model)
    assert isinstance(fast, FastestModel) and hf_segmodels.fastest(model) is fast and hf_segmodels.fastest(fast) is fast
    assert not model.training and fast.config is model.config
    assert onednn.measuring  # the fastest path measures the linear kernels (tests/conftest.py restores the default)
    size = SIZES[architecture]
    pixel_values = torch.randn(2, 3, size, size + 16, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = model(pixel_values=pixel_values)
        scores = model.full_resolution_logits(pixel_values)
    outputs = fast(pixel_values=pixel_values)
    assert type(outputs) is type(expected)
    torch.testing.assert_close(outputs.logits, expected.logits, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(fast.full_resolution_logits(pixel_values), scores, rtol=1e-4, atol=1e-4)
    # sliding windows, flips and scales through infer_logits
    window, stride = (size, size), (size // 2, size // 2)
    reference = hf_segmodels.infer_logits(model, pixel_values, window=window, stride=stride, scales=(1.0, 1.25),
                                          flip=True)  # fmt: skip
    actual = hf_segmodels.infer_logits(fast, pixel_values, window=window, stride=stride, scales=(1.0, 1.25), flip=True)
    torch.testing.assert_close(actual, reference, rtol=1e-4, atol=1e-4)


def test_fastest_rejects_other_models():
    with pytest.raises(TypeError, match="takes a model of hf_segmodels, got Linear"):
        hf_segmodels.fastest(torch.nn.Linear(2, 2))


def test_the_environment_switch_reaches_infer_logits_and_the_pipeline(tmp_path, monkeypatch):
    model = tiny_model("segformer")
    processor = tiny_image_processor("segformer")
    model.save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)
    pixel_values = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    image = PIL.Image.fromarray(np.random.default_rng(2).integers(0, 256, (40, 50, 3), dtype=np.uint8))
    segmenter = pipeline("image-segmentation", model=str(tmp_path))
    plain_scores, plain_segments = hf_segmodels.infer_logits(model, pixel_values), segmenter(image)
    assert "_hf_segmodels_fastest" not in model.__dict__ and "_hf_segmodels_fastest" not in segmenter.model.__dict__

    monkeypatch.setenv(ENVIRONMENT_VARIABLE, "1")
    torch.testing.assert_close(hf_segmodels.infer_logits(model, pixel_values), plain_scores, rtol=1e-4, atol=1e-4)
    assert "_hf_segmodels_fastest" in model.__dict__
    segments = segmenter(image)
    assert "_hf_segmodels_fastest" in segmenter.model.__dict__
    assert [s["label"] for s in segments] == [s["label"] for s in plain_segments]
    for segment, plain in zip(segments, plain_segments):
        np.testing.assert_array_equal(np.array(segment["mask"]), np.array(plain["mask"]))


def test_memory_tuning_applies_on_glibc_and_is_idempotent():
    import platform

    from hf_segmodels.fast_path import tune_memory

    glibc = platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"
    assert tune_memory() is glibc and tune_memory() is glibc


def test_compiled_fastest_is_its_own_cached_path_and_the_switch_parses(monkeypatch):
    from hf_segmodels.fast_path import compile_requested, requested

    model = tiny_model("segformer")
    fast = hf_segmodels.fastest(model)
    compiled = hf_segmodels.fastest(model, compile=True)
    assert compiled is not fast and compiled.compile and not fast.compile
    assert hf_segmodels.fastest(model, compile=True) is compiled and hf_segmodels.fastest(fast, compile=True) is compiled
    assert hf_segmodels.fastest(compiled) is fast and "compile=True" in repr(compiled)
    for value, expected in (("1", (True, False)), ("compile", (True, True)), ("", (False, False)), ("0", (False, False))):
        monkeypatch.setenv(ENVIRONMENT_VARIABLE, value)
        assert (requested(), compile_requested()) == expected


@pytest.mark.slow
def test_compiled_fastest_gives_the_models_outputs_and_follows_weight_changes():
    """`fastest(model, compile=True)`: inductor with frozen weights; the same logits as eager, one compilation per
    input size, and a new compilation when the weights change (frozen constants would be stale)."""
    model = tiny_model("segformer")
    compiled = hf_segmodels.fastest(model, compile=True)
    pixel_values = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = model(pixel_values=pixel_values).logits
    torch.testing.assert_close(compiled(pixel_values=pixel_values).logits, expected, rtol=1e-4, atol=1e-4)
    first = compiled._compiled["forward"][0]
    torch.testing.assert_close(compiled(pixel_values=pixel_values).logits, expected, rtol=1e-4, atol=1e-4)
    assert compiled._compiled["forward"][0] is first  # same weights: no recompilation
    with torch.no_grad():
        model.decode_head.classifier.bias.add_(1.0)
        changed = model(pixel_values=pixel_values).logits
    torch.testing.assert_close(compiled(pixel_values=pixel_values).logits, changed, rtol=1e-4, atol=1e-4)
    assert compiled._compiled["forward"][0] is not first
    # infer_logits (sliding windows) runs the compiled full_resolution_logits
    image = torch.randn(1, 3, 64, 96, generator=torch.Generator().manual_seed(1))
    reference = hf_segmodels.infer_logits(model, image, window=(64, 64), stride=(32, 32))
    windows = hf_segmodels.infer_logits(compiled, image, window=(64, 64), stride=(32, 32))
    assert "full_resolution_logits" in compiled._compiled
    torch.testing.assert_close(windows, reference, rtol=1e-4, atol=1e-4)


@pytest.mark.slow
def test_the_compile_switch_reaches_the_pipeline(tmp_path, monkeypatch):
    model, processor = tiny_model("maskformer"), tiny_image_processor("maskformer")
    model.save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)
    image = PIL.Image.fromarray(np.random.default_rng(2).integers(0, 256, (64, 80, 3), dtype=np.uint8))
    segmenter = pipeline("image-segmentation", model=str(tmp_path))
    plain = segmenter(image, subtask="semantic")
    monkeypatch.setenv(ENVIRONMENT_VARIABLE, "compile")
    compiled_segments = segmenter(image, subtask="semantic")
    assert segmenter.model.__dict__["_hf_segmodels_fastest_compiled"]._compiled  # the compiled path ran
    assert [s["label"] for s in compiled_segments] == [s["label"] for s in plain]
    for segment, reference in zip(compiled_segments, plain, strict=True):
        np.testing.assert_array_equal(np.array(segment["mask"]), np.array(reference["mask"]))
