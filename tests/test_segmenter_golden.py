"""Converted Segmenter checkpoints reproduce the outputs of the original implementations (../shared/golden)."""

import numpy as np
import pytest
import torch

from hf_segmodels import infer_logits
from hf_segmodels.segmenter.convert_segmenter import convert_segmenter_checkpoint, read_variant

ORIGINAL_CASES = ["linear_tiny", "mask_tiny", "mask_distilled_tiny"]


@pytest.mark.parametrize("case", ORIGINAL_CASES)
def test_original_release_whole_and_sliding(golden_dir, case):
    folder = golden_dir / "segmenter" / case
    model, _ = convert_segmenter_checkpoint(folder / "checkpoint.pth", folder / "variant.yml", source="original")

    # whole image: the converted checkpoint records variant.yml's windows as its default protocol
    logits = infer_logits(model, torch.from_numpy(np.load(folder / "input.npy")), protocol=False)
    np.testing.assert_allclose(logits.numpy(), np.load(folder / "logits.npy"), rtol=0, atol=1e-4)

    inference = read_variant(folder / "variant.yml")["inference_kwargs"]
    window, stride = inference["window_size"], inference["window_stride"]
    scores = infer_logits(
        model, torch.from_numpy(np.load(folder / "sliding_input.npy")), window=(window, window), stride=(stride, stride)
    )
    # The original averages window logits, then takes a softmax over classes (batch item 0, no batch axis).
    np.testing.assert_allclose(
        scores.softmax(dim=1)[0].numpy(), np.load(folder / "sliding_logits.npy"), rtol=0, atol=1e-4
    )


@pytest.mark.parametrize("case", ORIGINAL_CASES)
def test_original_release_intermediates(golden_dir, case):
    folder = golden_dir / "segmenter" / case
    model, _ = convert_segmenter_checkpoint(folder / "checkpoint.pth", folder / "variant.yml")
    pixel_values = torch.from_numpy(np.load(folder / "input.npy"))
    with torch.no_grad():
        encoder = model.encoder(pixel_values)
        outputs = model(pixel_values)
    np.testing.assert_allclose(
        encoder.last_hidden_state.numpy(), np.load(folder / "encoder_features.npy"), rtol=0, atol=1e-4
    )
    np.testing.assert_allclose(outputs.logits.numpy(), np.load(folder / "decoder_masks.npy"), rtol=0, atol=1e-4)


def test_mmseg_port_whole_and_sliding(golden_dir):
    folder = golden_dir / "segmenter" / "segmenter_mask_tiny"
    model, processor = convert_segmenter_checkpoint(folder / "checkpoint.pth", folder / "config.py", source="mmseg")
    # Class names come from the checkpoint's dataset_meta.
    classes = torch.load(folder / "checkpoint.pth", weights_only=True)["meta"]["dataset_meta"]["classes"]
    assert [model.config.id2label[i] for i in range(len(classes))] == list(classes)

    pixel_values = torch.from_numpy(np.load(folder / "input.npy"))
    with torch.no_grad():
        head_logits = model(pixel_values).logits
    np.testing.assert_allclose(head_logits.numpy(), np.load(folder / "head_logits.npy"), rtol=0, atol=1e-4)
    np.testing.assert_allclose(
        infer_logits(model, pixel_values, protocol=False).numpy(), np.load(folder / "logits.npy"), rtol=0, atol=1e-4
    )
    slide = infer_logits(model, torch.from_numpy(np.load(folder / "slide_input.npy")), window=(64, 64), stride=(48, 48))
    np.testing.assert_allclose(slide.numpy(), np.load(folder / "slide_logits.npy"), rtol=0, atol=1e-4)
    # mmseg's data preprocessor normalises 0-255 RGB with mean = std = 127.5.
    np.testing.assert_allclose(processor.image_mean, [0.5, 0.5, 0.5])
