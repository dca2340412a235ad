"""MaskFormer on our own encoders: SegFormer's MiT and the plain ViT of Segmenter / SETR with a simple feature
pyramid. Feature maps equal the source encoders' on the same weights; training, saving and loading work."""

import pytest
import torch
from tiny import NUM_LABELS, tiny_config
from transformers import AutoModelForUniversalSegmentation

import hf_segmodels  # noqa: F401
from hf_segmodels import MaskFormerForUniversalSegmentation, SegformerForSemanticSegmentation
from hf_segmodels import SegmenterForSemanticSegmentation
from hf_segmodels.maskformer.backbones import SimpleFeaturePyramid, backbone_feature_maps


def mit_config():
    return tiny_config("segformer", NUM_LABELS)


def vit_config(architecture="segmenter"):
    return tiny_config(architecture, NUM_LABELS, num_hidden_layers=2, image_size=64, patch_size=16)


def maskformer(backbone_config):
    torch.manual_seed(0)
    config = tiny_config("maskformer", NUM_LABELS, backbone_config=backbone_config)
    return MaskFormerForUniversalSegmentation(config).eval()


def test_mit_backbone_gives_the_segformer_encoder_maps():
    torch.manual_seed(1)
    segformer = SegformerForSemanticSegmentation(mit_config()).eval()
    model = maskformer(mit_config())
    model.backbone.model.load_state_dict(segformer.segformer.state_dict())
    pixel_values = torch.randn(2, 3, 96, 64)
    with torch.no_grad():
        expected = segformer.segformer(pixel_values).feature_maps
        actual = backbone_feature_maps(model.backbone, pixel_values)
        outputs = model(pixel_values=pixel_values)
    assert [tuple(m.shape) for m in actual] == [(2, 8, 24, 16), (2, 16, 12, 8), (2, 24, 6, 4), (2, 32, 3, 2)]
    for a, b in zip(actual, expected):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert outputs.masks_queries_logits.shape == (2, 8, 24, 16) and outputs.logits.shape == (2, NUM_LABELS, 24, 16)


@pytest.mark.parametrize("architecture", ["segmenter", "setr"])
def test_vit_backbone_is_the_encoder_plus_a_simple_feature_pyramid(architecture):
    model = maskformer(vit_config(architecture))
    assert model.backbone.channels == [8, 16, 32, 32]
    pixel_values = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        maps = backbone_feature_maps(model.backbone, pixel_values)
        encoder = model.backbone.encoder(pixel_values)
    assert [tuple(m.shape) for m in maps] == [(1, 8, 16, 24), (1, 16, 8, 12), (1, 32, 4, 6), (1, 32, 2, 3)]
    tokens = encoder.last_hidden_state[:, model.backbone.encoder.num_extra_tokens :]
    grid = tokens.transpose(1, 2).reshape(1, 32, 4, 6)
    torch.testing.assert_close(maps[2], grid, rtol=0, atol=0)  # stride 16: the patch grid itself
    torch.testing.assert_close(maps[3], torch.nn.functional.max_pool2d(grid, 2), rtol=0, atol=0)


def test_vit_backbone_loads_a_segmenter_encoder():
    torch.manual_seed(2)
    segmenter = SegmenterForSemanticSegmentation(vit_config()).eval()
    model = maskformer(vit_config())
    model.backbone.encoder.load_state_dict(segmenter.encoder.state_dict())
    pixel_values = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        expected = segmenter.encoder(pixel_values).last_hidden_state
        actual = model.backbone.encoder(pixel_values).last_hidden_state
    # (same weights; the two models may run different attention implementations: equal up to float rounding)
    torch.testing.assert_close(actual, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kind", ["mit", "vit"])
def test_own_backbones_follow_the_models_attention_implementation(kind):
    model = maskformer(mit_config() if kind == "mit" else vit_config())
    pixel_values = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        model.config._attn_implementation = "sdpa"
        sdpa = model(pixel_values=pixel_values).masks_queries_logits
        model.config._attn_implementation = "eager"
        eager = model(pixel_values=pixel_values).masks_queries_logits
    attention = next(m for m in model.backbone.modules() if hasattr(m, "scaling") and hasattr(m, "config"))
    assert attention.config is model.config
    torch.testing.assert_close(sdpa, eager, rtol=1e-5, atol=1e-5)


def test_simple_feature_pyramid_strides_and_errors():
    for patch_size, channels in ((8, [16, 32, 32, 32]), (16, [8, 16, 32, 32]), (32, [4, 8, 16, 32])):
        pyramid = SimpleFeaturePyramid(32, patch_size)
        assert pyramid.channels == channels
        maps = pyramid(torch.randn(1, 32, 256 // patch_size, 256 // patch_size))
        assert [m.shape[-1] for m in maps] == [64, 32, 16, 8]
    with pytest.raises(ValueError, match="power-of-two patch size"):
        SimpleFeaturePyramid(32, 12)


@pytest.mark.parametrize("kind", ["mit", "vit"])
def test_own_backbones_train_save_and_load(kind, tmp_path):
    model = maskformer(mit_config() if kind == "mit" else vit_config()).train()
    pixel_values = torch.randn(2, 3, 64, 64)
    labels = torch.randint(0, NUM_LABELS, (2, 64, 64))
    labels[0, :8] = 255
    loss = model(pixel_values=pixel_values, labels=labels).loss
    loss.backward()
    assert torch.isfinite(loss)
    backbone_grads = [p.grad for p in model.backbone.parameters() if p.requires_grad]
    assert backbone_grads and all(g is not None for g in backbone_grads)
    assert any(g.abs().sum() > 0 for g in backbone_grads)

    model.eval().save_pretrained(tmp_path)
    reloaded = AutoModelForUniversalSegmentation.from_pretrained(tmp_path).eval()
    assert type(reloaded.backbone) is type(model.backbone)
    with torch.no_grad():
        torch.testing.assert_close(reloaded(pixel_values=pixel_values).logits, model(pixel_values=pixel_values).logits)
