"""Converted SETR checkpoints reproduce the outputs of the reference implementations (../shared/golden/setr):
mmsegmentation 1.x for the naive / PUP / MLA cases, the authors' fudan-zvg/SETR code for the original-format case."""

import json

import numpy as np
import pytest
import torch

from hf_segmodels import infer_logits
from hf_segmodels.layers import tokens_to_feature_map
from hf_segmodels.setr.convert_setr import convert_setr_checkpoint

CASES = {
    "setr_naive_tiny": "mmseg",
    "setr_pup_tiny": "mmseg",
    "setr_mla_tiny": "mmseg",
    "setr_original_pup_tiny": "original",
}


@pytest.fixture(scope="module")
def converted(golden_dir):
    """Each case converted once (with its auxiliary heads)."""
    models = {}
    for case, source in CASES.items():
        folder = golden_dir / "setr" / case
        models[case] = convert_setr_checkpoint(folder / "checkpoint.pth", folder / "config.py", source=source)
    return models


def _load(golden_dir, case, name):
    return np.load(golden_dir / "setr" / case / name)


@pytest.mark.parametrize("case", list(CASES))
def test_whole_image_logits(golden_dir, converted, case):
    model, _ = converted[case]
    pixel_values = torch.from_numpy(_load(golden_dir, case, "input.npy"))
    with torch.no_grad():
        head_logits = model(pixel_values).logits
    np.testing.assert_allclose(head_logits.numpy(), _load(golden_dir, case, "head_logits.npy"), rtol=0, atol=1e-4)
    logits = infer_logits(model, pixel_values, protocol=False)  # whole image (the side file says slide)
    np.testing.assert_allclose(logits.numpy(), _load(golden_dir, case, "logits.npy"), rtol=0, atol=1e-4)


@pytest.mark.parametrize("case", list(CASES))
def test_sliding_window_logits(golden_dir, converted, case):
    model, _ = converted[case]
    calls = json.loads((golden_dir / "setr" / case / "meta.json").read_text())["calls"]
    window, stride = calls["slide_crop_size"], calls["slide_stride"]
    assert (window, stride) == ([64, 64], [48, 48])
    scores = infer_logits(model, torch.from_numpy(_load(golden_dir, case, "slide_input.npy")), window=window,
                          stride=stride)
    np.testing.assert_allclose(scores.numpy(), _load(golden_dir, case, "slide_logits.npy"), rtol=0, atol=1e-4)


def _encoder_outputs_and_features(golden_dir, converted, case, layers=(0, 1, 2, 3)):
    """(converted model, its encoder's outputs with the layers `layers` on the case's input, the reference features)."""
    model, _ = converted[case]
    pixel_values = torch.from_numpy(_load(golden_dir, case, "input.npy"))
    layers = tuple(model.config.mla_layer_indices) if layers is None else layers
    with torch.no_grad():
        outputs = model.encoder(pixel_values, return_layers=layers)
    return model, outputs, _load(golden_dir, case, "features.npz")


@pytest.mark.parametrize("case", ["setr_naive_tiny", "setr_pup_tiny"])
def test_encoder_features_mmseg(golden_dir, converted, case):
    _, outputs, features = _encoder_outputs_and_features(golden_dir, converted, case)
    for index in range(4):  # out_indices (0, 1, 2, 3); the cls token is dropped
        ours = tokens_to_feature_map(outputs.layer_outputs[index][:, 1:], outputs.grid_size)
        np.testing.assert_allclose(ours.numpy(), features[f"feat_{index}"], rtol=0, atol=1e-4)


def test_mla_streams_match_mmseg_neck_outputs(golden_dir, converted):
    model, outputs, features = _encoder_outputs_and_features(golden_dir, converted, "setr_mla_tiny", layers=None)
    with torch.no_grad():
        streams = model.decode_head.aggregation(list(outputs.layer_outputs), outputs.grid_size)
    # mmseg's neck returns the deepest-only stream first; ours are shallowest first.
    for index in range(4):
        np.testing.assert_allclose(streams[3 - index].numpy(), features[f"feat_{index}"], rtol=0, atol=1e-4)


def test_original_encoder_features(golden_dir, converted):
    _, outputs, features = _encoder_outputs_and_features(golden_dir, converted, "setr_original_pup_tiny")
    for index in range(4):  # every block's tokens, cls token included
        np.testing.assert_allclose(outputs.layer_outputs[index].numpy(), features[f"feat_{index}"], atol=1e-4, rtol=0)


def test_converted_configs_and_auxiliary_heads(golden_dir, converted):
    naive = converted["setr_naive_tiny"][0].config
    assert (naive.decoder_type, naive.decoder_num_convs, naive.decoder_kernel_size, naive.decoder_up_scale) == (
        "naive", 1, 1, 4)
    assert naive.auxiliary_layer_indices == [0, 1, 2] and naive.auxiliary_loss_weight == pytest.approx(0.4)
    pup = converted["setr_pup_tiny"][0].config
    assert (pup.decoder_type, pup.decoder_num_convs, pup.auxiliary_num_convs) == ("pup", 4, 2)
    assert not pup.patch_embeddings_bias and not pup.decoder_conv_bias and pup.use_cls_token
    mla = converted["setr_mla_tiny"][0].config
    assert (mla.decoder_type, mla.mla_layer_indices, mla.use_cls_token) == ("mla", [0, 1, 2, 3], False)
    assert mla.auxiliary_layer_indices == [3, 2, 1, 0]  # mmseg's neck output k is the stream of layer 3 - k
    original = converted["setr_original_pup_tiny"][0].config
    assert original.decoder_classifier_before_last_upsample and original.decoder_conv_bias
    assert original.patch_embeddings_bias and original.decoder_hidden_size == 256
    assert original.auxiliary_layer_indices == [0, 1, 2, 3] and original.auxiliary_up_scale == 4

    # Auxiliary weights are converted as stored: mmseg's auxiliary_head.1 is our auxiliary_heads.1.
    state = torch.load(golden_dir / "setr" / "setr_pup_tiny" / "checkpoint.pth", weights_only=True)["state_dict"]
    model = converted["setr_pup_tiny"][0]
    torch.testing.assert_close(model.auxiliary_heads[1].stages[1].conv.weight,
                               state["auxiliary_head.1.up_convs.1.0.conv.weight"])
    torch.testing.assert_close(model.auxiliary_heads[2].stages[0].norm.running_var,
                               state["auxiliary_head.2.up_convs.0.0.bn.running_var"])
    # Class names come from the checkpoint's metadata.
    assert [naive.id2label[i] for i in range(5)] == [f"class_{i}" for i in range(5)]


@pytest.mark.parametrize("case", ["setr_mla_tiny", "setr_original_pup_tiny"])
def test_dropping_auxiliary_heads_keeps_the_prediction(golden_dir, converted, case):
    folder = golden_dir / "setr" / case
    model, _ = convert_setr_checkpoint(folder / "checkpoint.pth", folder / "config.py", source=CASES[case],
                                       keep_auxiliary_heads=False)
    assert model.config.auxiliary_layer_indices == [] and len(model.auxiliary_heads) == 0
    assert not any(name.startswith("auxiliary_heads") for name in model.state_dict())
    pixel_values = torch.from_numpy(_load(golden_dir, case, "input.npy"))
    np.testing.assert_allclose(infer_logits(model, pixel_values, protocol=False).numpy(), _load(golden_dir, case, "logits.npy"),
                               rtol=0, atol=1e-4)
    with_heads = converted[case][0]
    labels = torch.randint(0, 5, (2, *pixel_values.shape[-2:]))
    with torch.no_grad():
        assert with_heads(pixel_values, labels=labels).loss > model(pixel_values, labels=labels).loss
