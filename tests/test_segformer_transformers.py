"""SegFormer identity with transformers: a transformers `SegformerForSemanticSegmentation` with random weights, saved
locally and converted with `conversion_scripts/convert_segformer.py --source transformers`, gives the same logits,
loss and hidden states as our model; our post-processing equals `SegformerImageProcessorPil`'s."""

import importlib.util
from pathlib import Path

import pytest
import torch
import transformers
from transformers import AutoModelForSemanticSegmentation
from transformers.modeling_outputs import SemanticSegmenterOutput

import hf_segmodels  # noqa: F401
from hf_segmodels import SegformerForSemanticSegmentation, SegformerImageProcessor

REPO = Path(__file__).resolve().parents[1]

CONFIGS = {
    "tiny": dict(hidden_sizes=[8, 16, 24, 32], num_attention_heads=[1, 2, 3, 4], depths=[1, 2, 1, 1],
                 decoder_hidden_size=16, num_labels=5),
    "tiny-odd": dict(hidden_sizes=[12, 20, 24, 40], num_attention_heads=[2, 4, 3, 5], depths=[2, 1, 1, 2],
                     mlp_ratios=[2, 3, 4, 4], sr_ratios=[4, 2, 2, 1], decoder_hidden_size=24, num_labels=7),
    "b0": dict(hidden_sizes=[32, 64, 160, 256], depths=[2, 2, 2, 2], decoder_hidden_size=256, num_labels=150),
    "b2": dict(hidden_sizes=[64, 128, 320, 512], depths=[3, 4, 6, 3], decoder_hidden_size=768, num_labels=150),
}  # fmt: skip
INPUT_SIZES = {"tiny": (53, 70), "tiny-odd": (45, 38), "b0": (64, 96), "b2": (64, 64)}


def randomized_transformers_model(name: str) -> transformers.SegformerForSemanticSegmentation:
    torch.manual_seed(0)
    config = transformers.SegformerConfig(**CONFIGS[name])
    model = transformers.SegformerForSemanticSegmentation._from_config(config, attn_implementation="sdpa").eval()
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for parameter in model.parameters():  # non-trivial biases and norms everywhere
            parameter.add_(torch.randn(parameter.shape, generator=generator) * 0.02)
        batch_norm = model.decode_head.batch_norm
        batch_norm.running_mean.normal_(0, 0.1, generator=generator)
        batch_norm.running_var.uniform_(0.5, 1.5, generator=generator)
    return model


def convert_with_cli(source_dir: Path, output_dir: Path) -> None:
    spec = importlib.util.spec_from_file_location("convert_segformer_cli", REPO / "conversion_scripts" / "convert_segformer.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.main(["--source", "transformers", "--checkpoint", str(source_dir), "--output_dir", str(output_dir)])


@pytest.fixture(scope="module")
def model_pairs(tmp_path_factory):
    """`get(name)` -> (transformers model, our converted model), each pair built once per module."""
    pairs = {}

    def get(name):
        if name not in pairs:
            theirs = randomized_transformers_model(name)
            folder = tmp_path_factory.mktemp(f"segformer-{name}")
            theirs.save_pretrained(folder / "transformers")
            convert_with_cli(folder / "transformers", folder / "converted")
            ours = AutoModelForSemanticSegmentation.from_pretrained(folder / "converted").eval()
            assert isinstance(ours, SegformerForSemanticSegmentation)
            pairs[name] = (theirs, ours)
        return pairs[name]

    return get


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_logits_loss_and_hidden_states_match(name, model_pairs):
    theirs, ours = model_pairs(name)
    torch.manual_seed(2)
    height, width = INPUT_SIZES[name]
    pixel_values = torch.randn(2, 3, height, width)
    labels = torch.randint(0, theirs.config.num_labels, (2, height, width))
    labels[0, : height // 3] = 255
    with torch.no_grad():
        expected = theirs(pixel_values, labels=labels, output_hidden_states=True)
        actual = ours(pixel_values, labels=labels, output_hidden_states=True)
    assert actual.logits.shape == expected.logits.shape
    torch.testing.assert_close(actual.logits, expected.logits, atol=1e-5, rtol=0)
    torch.testing.assert_close(actual.loss, expected.loss, rtol=1e-5, atol=0)
    assert len(actual.hidden_states) == len(expected.hidden_states) == 4
    for ours_hidden, their_hidden in zip(actual.hidden_states, expected.hidden_states):
        torch.testing.assert_close(ours_hidden, their_hidden, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", ["tiny", "tiny-odd"])
def test_eager_attention_matches_too(name, model_pairs):
    theirs, ours = model_pairs(name)
    pixel_values = torch.randn(1, 3, *INPUT_SIZES[name])
    ours.config._attn_implementation = "eager"
    try:
        with torch.no_grad():
            torch.testing.assert_close(ours(pixel_values).logits, theirs(pixel_values).logits, atol=1e-5, rtol=0)
    finally:
        ours.config._attn_implementation = "sdpa"


def test_training_mode_loss_and_gradients_match(model_pairs):
    theirs, ours = model_pairs("tiny")
    theirs, ours = theirs.train(), ours.train()
    try:
        theirs.decode_head.dropout.p = ours.decode_head.dropout.p = 0.0
        for module in (*theirs.modules(), *ours.modules()):
            if hasattr(module, "drop_prob"):
                module.drop_prob = 0.0
        pixel_values, labels = torch.randn(2, 3, 48, 48), torch.randint(0, 5, (2, 48, 48))
        expected, actual = theirs(pixel_values, labels=labels).loss, ours(pixel_values, labels=labels).loss
        torch.testing.assert_close(actual, expected, rtol=1e-5, atol=0)
        expected.backward()
        actual.backward()
        torch.testing.assert_close(ours.decode_head.linear_fuse.weight.grad, theirs.decode_head.linear_fuse.weight.grad,
                                   rtol=1e-4, atol=1e-6)  # fmt: skip
        torch.testing.assert_close(ours.segformer.stages[0].patch_embed.proj.weight.grad,
                                   theirs.segformer.stages[0].patch_embeddings.proj.weight.grad, rtol=1e-4, atol=1e-6)  # fmt: skip
    finally:
        theirs.eval()
        ours.eval()


@pytest.mark.parametrize("target_sizes", [None, [(45, 61), (30, 17)]])
def test_semantic_post_processing_equals_transformers(target_sizes):
    from transformers.models.segformer.image_processing_pil_segformer import SegformerImageProcessorPil

    torch.manual_seed(3)
    outputs = SemanticSegmenterOutput(logits=torch.randn(2, 6, 12, 16))
    expected = SegformerImageProcessorPil().post_process_semantic_segmentation(outputs, target_sizes=target_sizes)
    actual = SegformerImageProcessor().post_process_semantic_segmentation(outputs, target_sizes=target_sizes)
    assert len(actual) == len(expected) == 2
    for ours, theirs in zip(actual, expected):
        assert ours.dtype == theirs.dtype and torch.equal(ours, theirs)


def test_pytorch_bin_with_transformers5_module_names(tmp_path):
    """A `pytorch_model.bin` holding the module names of transformers >= 5 (`stages.*.attention.q_proj`, ...)
    converts as well as the Hub layout that `save_pretrained` writes."""
    from hf_segmodels.segformer.convert_segformer import convert_segformer_checkpoint

    theirs = randomized_transformers_model("tiny")
    state_dict = theirs.state_dict()
    assert any(".attention.q_proj." in key for key in state_dict)
    (tmp_path / "model").mkdir()
    torch.save(state_dict, tmp_path / "model" / "pytorch_model.bin")
    theirs.config.to_json_file(tmp_path / "model" / "config.json")
    ours, _ = convert_segformer_checkpoint(tmp_path / "model", source="transformers")
    pixel_values = torch.randn(1, 3, 40, 40)
    with torch.no_grad():
        torch.testing.assert_close(ours(pixel_values).logits, theirs(pixel_values).logits, atol=1e-5, rtol=0)
