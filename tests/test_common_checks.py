"""Checks every architecture passes, on the tiny model of each (`tests/tiny.py`): SDPA and eager attention give the
same outputs, gradient checkpointing gives the same loss and gradients, the Auto classes round-trip a saved model,
`return_dict=False` gives the output fields as a tuple; and checks of several: `pipeline("image-segmentation")` gives
one mask per class present and bad labels are named (per-pixel models; MaskFormer's pipeline, panoptic by default,
and its targets are tested in its own files), a few training steps lower the loss (the ViT models).
What only one architecture has (merged decoder weights, auxiliary heads, query outputs) stays in its own file."""

import numpy as np
import PIL.Image
import pytest
import torch
from tiny import ARCHITECTURES, model_class, tiny_image_processor, tiny_maskformer_decoder, tiny_model
from transformers import AutoConfig, AutoImageProcessor, AutoModelForSemanticSegmentation, pipeline
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import SemanticSegmenterOutput

import hf_segmodels  # noqa: F401  (registers the architectures with the Auto classes)
from hf_segmodels import infer_logits

# SETR with its MLA decoder: the encoder without a CLS token, and four streams of intermediate layers.
OVERRIDES = {"setr": {"decoder_type": "mla"}}
# Dropout and stochastic depth off, so that a second forward pass computes the same function.
NO_DROPOUT = {
    "segformer": dict(drop_path_rate=0.0, classifier_dropout_prob=0.0),
    "segmenter": dict(drop_path_rate=0.0, decoder_dropout=0.0),
    "setr": dict(drop_path_rate=0.0),
    "maskformer": dict(
        decoder_config=tiny_maskformer_decoder(dropout=0.0, attention_dropout=0.0, activation_dropout=0.0)
    ),
}
PER_PIXEL = ("segformer", "segmenter", "setr")


def model_of(architecture: str, **overrides) -> torch.nn.Module:
    return tiny_model(architecture, **{**OVERRIDES.get(architecture, {}), **overrides})


def labels_for(model, pixel_values: torch.Tensor) -> torch.Tensor:
    labels = torch.randint(0, model.config.num_labels, (pixel_values.shape[0], *pixel_values.shape[2:]))
    labels[0, :5] = 255  # ignored pixels
    return labels


@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_sdpa_and_eager_give_the_same_outputs(architecture, monkeypatch):
    model = model_of(architecture)
    sdpa_calls = []
    scaled_dot_product_attention = torch.nn.functional.scaled_dot_product_attention
    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention",
                        lambda *args, **kwargs: sdpa_calls.append(1) or scaled_dot_product_attention(*args, **kwargs))
    pixel_values = torch.randn(2, 3, 40, 56)  # not multiples of the patch size / output stride
    outputs, calls = {}, {}
    with torch.no_grad():
        # (switched on the top-level config: MaskFormer's ResNet backbone has no attention to switch)
        for implementation in ("sdpa", "eager"):
            model.config._attn_implementation = implementation
            sdpa_calls.clear()
            outputs[implementation] = model(pixel_values=pixel_values, output_hidden_states=True)
            calls[implementation] = len(sdpa_calls)
    assert calls["sdpa"] > 0 and calls["eager"] == 0, calls  # each run took the path it asked for
    if architecture != "maskformer":  # (MaskFormer's ResNet backbone refuses to be built with "sdpa")
        for implementation in ("sdpa", "eager"):
            built = model_of(architecture, attn_implementation=implementation)
            assert built.config._attn_implementation == implementation
    expected, actual = outputs["eager"], outputs["sdpa"]
    assert list(actual.keys()) == list(expected.keys()) and "hidden_states" in expected
    for key in expected.keys():  # logits (MaskFormer: its query logits), then every hidden state
        torch.testing.assert_close(actual[key], expected[key], atol=1e-5, rtol=0, msg=key)


# The tolerances of the former per-model tests (SegFormer's: absolute 1e-6, relative 1e-4; the others' fp32 defaults).
GRADIENT_TOLERANCES = {"segformer": dict(atol=1e-6, rtol=1e-4)}


@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_gradient_checkpointing_gives_the_same_loss_and_gradients(architecture):
    model = model_of(architecture, **NO_DROPOUT[architecture]).train()
    pixel_values = torch.randn(2, 3, 64, 64)
    labels = labels_for(model, pixel_values)
    loss = model(pixel_values=pixel_values, labels=labels).loss
    loss.backward()
    expected = {name: parameter.grad.clone() for name, parameter in model.named_parameters()}
    model.zero_grad()
    model.activation_checkpointing_enable()
    layers = [module for module in model.modules() if isinstance(module, GradientCheckpointingLayer)]
    assert layers and all(layer.gradient_checkpointing for layer in layers)
    checkpointed = model(pixel_values=pixel_values, labels=labels).loss
    checkpointed.backward()
    assert torch.isfinite(checkpointed)
    torch.testing.assert_close(checkpointed, loss)
    for name, parameter in model.named_parameters():
        tolerance = GRADIENT_TOLERANCES.get(architecture, {})
        torch.testing.assert_close(parameter.grad, expected[name], msg=name, **tolerance)


@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_auto_classes_reload_a_saved_model_and_processor(architecture, tmp_path):
    model = model_of(architecture)
    processor = tiny_image_processor(architecture)
    model.save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").is_file()
    config = AutoConfig.from_pretrained(tmp_path)
    assert type(config) is type(model.config) and config.model_type == f"segmodels_{architecture}"
    reloaded = AutoModelForSemanticSegmentation.from_pretrained(tmp_path).eval()
    assert type(reloaded) is model_class(architecture)
    assert isinstance(AutoImageProcessor.from_pretrained(tmp_path), type(processor))
    pixel_values = torch.randn(1, 3, 45, 61)
    with torch.no_grad():
        torch.testing.assert_close(reloaded(pixel_values=pixel_values).logits, model(pixel_values=pixel_values).logits,
                                   atol=0, rtol=0)  # fmt: skip


@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_return_dict_false_gives_the_output_fields_as_a_tuple(architecture):
    model = model_of(architecture)
    pixel_values = torch.randn(2, 3, 32, 40)
    labels = labels_for(model, pixel_values)
    with torch.no_grad():
        outputs = model(pixel_values=pixel_values, labels=labels)
        as_tuple = model(pixel_values=pixel_values, labels=labels, return_dict=False)
    assert isinstance(as_tuple, tuple) and len(as_tuple) == len(outputs.to_tuple())
    torch.testing.assert_close(as_tuple[0], outputs.loss)  # the loss first, as in transformers
    for index, (field, expected) in enumerate(zip(as_tuple, outputs.to_tuple())):
        torch.testing.assert_close(field, expected, msg=f"field {index}")


@pytest.mark.parametrize("architecture", PER_PIXEL)
def test_pipeline_returns_one_mask_per_class_present(architecture, tmp_path):
    """pipeline() = the classes present in the argmax of `infer_logits` resized to the image, one mask each: without
    a score by default (semantic, as transformers' pipeline answers for semantic models), scored by the class's mean
    probability for `subtask="panoptic"`."""
    model = model_of(architecture)
    model.config.id2label = {0: "sky", 1: "road", 2: "car", 3: "tree"}
    model.config.label2id = {name: index for index, name in model.config.id2label.items()}
    processor = tiny_image_processor(architecture)
    model.save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)
    image = PIL.Image.fromarray(np.random.RandomState(0).randint(0, 256, (40, 50, 3), dtype=np.uint8))
    segmenter = pipeline("image-segmentation", model=str(tmp_path))
    results = segmenter(image)
    panoptic = segmenter(image, subtask="panoptic")

    with torch.no_grad():
        scores = infer_logits(model, processor(image, return_tensors="pt")["pixel_values"])
    semantic = processor.post_process_semantic_segmentation(SemanticSegmenterOutput(logits=scores),
                                                            target_sizes=[(40, 50)])[0]  # fmt: skip
    present = sorted(torch.unique(semantic).tolist())
    assert sorted(model.config.label2id[result["label"]] for result in results) == present
    assert [result["label"] for result in panoptic] == [result["label"] for result in results]
    for result, derived in zip(results, panoptic):
        assert result["score"] is None and isinstance(derived["score"], float) and 0 < derived["score"] <= 1
        assert result["mask"].size == (50, 40)
        expected = (semantic == model.config.label2id[result["label"]]).numpy()
        np.testing.assert_array_equal(np.array(result["mask"]) == 255, expected)
        np.testing.assert_array_equal(np.array(derived["mask"]), np.array(result["mask"]))


@pytest.mark.parametrize("architecture", PER_PIXEL)
def test_labels_outside_the_classes_or_of_another_size_are_named(architecture):
    model = model_of(architecture)
    classes = model.config.num_labels
    labels = torch.zeros(1, 32, 32, dtype=torch.long)
    labels[0, 0, :3] = torch.tensor([classes, 7, -1])
    with pytest.raises(ValueError, match=rf"\[-1, {classes}, 7\].*outside \[0, {classes}\)"):
        model(torch.randn(1, 3, 32, 32), labels=labels)
    if architecture != "segformer":  # (SegFormer's loss resizes its logits to labels of any size, as the original)
        with pytest.raises(ValueError, match="do not match"):
            model(torch.randn(1, 3, 32, 32), labels=torch.zeros(1, 16, 16, dtype=torch.long))


# (config overrides, learning rate, steps) of the ViT models, which learn class-coloured patches in a few steps
TRAINING = {
    "segmenter": (dict(drop_path_rate=0.0, decoder_dropout=0.0), 3e-3, 15),
    "setr": (dict(decoder_type="naive"), 1e-2, 12),
}


@pytest.mark.parametrize("architecture", sorted(TRAINING))
def test_training_steps_lower_the_loss(architecture):
    overrides, learning_rate, steps = TRAINING[architecture]
    model = model_of(architecture, **overrides).train()
    # Class-coloured 8x8 blocks: learnable from patch tokens.
    labels = torch.randint(0, 4, (4, 4, 4)).repeat_interleave(8, 1).repeat_interleave(8, 2)
    colours = torch.tensor([[1.0, -1, -1], [-1, 1, -1], [-1, -1, 1], [1, 1, -1]])
    pixel_values = colours[labels].permute(0, 3, 1, 2) + 0.1 * torch.randn(4, 3, 32, 32)
    optimizer = torch.optim.AdamW(model.parameters(), lr=learning_rate)
    losses = []
    for _ in range(steps):
        loss = model(pixel_values, labels=labels).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.7 * losses[0], losses
