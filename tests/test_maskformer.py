"""MaskFormer: identity with transformers' MaskFormer on identical weights, loss, targets, errors, Auto API."""

import pytest
import tiny
import torch
import torch.nn.functional as F
from tiny import NUM_LABELS, STAGES, tiny_maskformer_backbone, tiny_transformers_model
from transformers import AutoModelForInstanceSegmentation
from transformers import AutoModelForUniversalSegmentation

import hf_segmodels
from hf_segmodels import MaskFormerConfig, MaskFormerForUniversalSegmentation, infer_logits

REPO = __import__("pathlib").Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module", params=["resnet", "swin"])
def pair(request, tmp_path_factory):
    """(transformers model, our model converted with the CLI from its saved directory), both in eval mode."""
    from conversion_scripts.convert_maskformer import main

    reference = tiny_transformers_model(request.param)
    source = tmp_path_factory.mktemp(f"hf_{request.param}")
    reference.save_pretrained(source)
    output = tmp_path_factory.mktemp(f"ours_{request.param}") / "converted"
    main(["--source", "transformers", "--checkpoint", str(source), "--output_dir", str(output)])
    ours = AutoModelForUniversalSegmentation.from_pretrained(output).eval()
    return reference, ours


def random_targets(batch, height, width, generator):
    mask_labels, class_labels = [], []
    for count in (3, 1, 2)[:batch]:
        ids = torch.randint(0, count + 1, (height, width), generator=generator)
        mask_labels.append(torch.stack([(ids == i).float() for i in range(count)]))
        class_labels.append(torch.randperm(NUM_LABELS, generator=generator)[:count])
    return mask_labels, class_labels


def test_outputs_equal_transformers(pair):
    reference, ours = pair
    pixel_values = torch.randn(2, 3, 70, 90)
    with torch.no_grad():
        expected = reference(pixel_values=pixel_values)
        actual = ours(pixel_values=pixel_values)
    assert isinstance(ours, MaskFormerForUniversalSegmentation)
    assert actual.class_queries_logits.shape == (2, 8, NUM_LABELS + 1)
    assert actual.masks_queries_logits.shape == expected.masks_queries_logits.shape == (2, 8, 18, 23)
    torch.testing.assert_close(actual.class_queries_logits, expected.class_queries_logits, atol=1e-4, rtol=0)
    torch.testing.assert_close(actual.masks_queries_logits, expected.masks_queries_logits, atol=1e-4, rtol=0)
    # logits: sum over queries of class probability (without "no object") x mask probability
    semantic = torch.einsum(
        "bqc,bqhw->bchw", expected.class_queries_logits.softmax(-1)[..., :-1], expected.masks_queries_logits.sigmoid()
    )
    assert actual.logits.shape == (2, NUM_LABELS, 18, 23)
    torch.testing.assert_close(actual.logits, semantic, atol=1e-4, rtol=0)


def test_loss_equals_transformers(pair):
    reference, ours = pair
    generator = torch.Generator().manual_seed(3)
    pixel_values = torch.randn(2, 3, 64, 64, generator=generator)
    mask_labels, class_labels = random_targets(2, 64, 64, generator)
    ours.config.use_auxiliary_loss = False
    try:
        with torch.no_grad():
            expected = reference(pixel_values=pixel_values, mask_labels=mask_labels, class_labels=class_labels).loss
            actual = ours(pixel_values=pixel_values, mask_labels=mask_labels, class_labels=class_labels).loss
    finally:
        ours.config.use_auxiliary_loss = True
    torch.testing.assert_close(actual, expected, rtol=1e-4, atol=0)


def test_auxiliary_loss_is_the_loss_of_every_decoder_layer(pair):
    # transformers' own auxiliary path skips the decoder LayerNorm, unlike the original; its criterion is used as an
    # independent reference on our per-layer predictions instead.
    reference, ours = pair
    generator = torch.Generator().manual_seed(4)
    pixel_values = torch.randn(2, 3, 64, 64, generator=generator)
    mask_labels, class_labels = random_targets(2, 64, 64, generator)
    with torch.no_grad():
        outputs = ours(pixel_values=pixel_values, mask_labels=mask_labels, class_labels=class_labels)
    assert len(outputs.auxiliary_outputs) == ours.config.decoder_config.decoder_layers - 1
    layers = outputs.auxiliary_outputs + [
        {"class_queries_logits": outputs.class_queries_logits, "masks_queries_logits": outputs.masks_queries_logits}
    ]
    expected = 0
    for layer in layers:
        losses = reference.criterion(
            layer["masks_queries_logits"], layer["class_queries_logits"], mask_labels, class_labels
        )
        expected += losses["loss_cross_entropy"] + 20 * losses["loss_mask"] + losses["loss_dice"]
    torch.testing.assert_close(outputs.loss, expected, rtol=1e-4, atol=0)
    # the last layer's predictions are the main outputs
    with torch.no_grad():
        plain = ours(pixel_values=pixel_values)
    torch.testing.assert_close(plain.class_queries_logits, outputs.class_queries_logits)


def test_semantic_labels_give_the_loss_of_their_class_masks(pair):
    from transformers import MaskFormerImageProcessorPil

    _, ours = pair
    generator = torch.Generator().manual_seed(5)
    pixel_values = torch.randn(2, 3, 32, 48, generator=generator)
    labels = torch.randint(0, NUM_LABELS, (2, 32, 48), generator=generator)
    labels[0, :10] = 255
    labels[1, labels[1] == 2] = 255
    # transformers' processor turns the same maps into per-class masks
    processor = MaskFormerImageProcessorPil(do_resize=False, do_rescale=False, do_normalize=False, ignore_index=255)
    encoded = processor(
        [torch.zeros(3, 32, 48)] * 2, segmentation_maps=[m.numpy() for m in labels], return_tensors="pt"
    )
    with torch.no_grad():
        from_labels = ours(pixel_values=pixel_values, labels=labels).loss
        from_masks = ours(
            pixel_values=pixel_values, mask_labels=encoded["mask_labels"], class_labels=encoded["class_labels"]
        ).loss
    torch.testing.assert_close(from_labels, from_masks, rtol=1e-6, atol=1e-6)


def test_unannotated_image_gives_a_finite_no_object_loss(pair):
    _, ours = pair
    ours.train()
    try:
        pixel_values = torch.randn(2, 3, 32, 32)
        labels = torch.full((2, 32, 32), 255)
        outputs = ours(pixel_values=pixel_values, labels=labels)
        assert torch.isfinite(outputs.loss) and outputs.loss > 0
        outputs.loss.backward()
        assert ours.class_predictor.weight.grad is not None and torch.isfinite(ours.class_predictor.weight.grad).all()
        # one annotated, one empty image
        labels[0, :5] = 1
        assert torch.isfinite(ours(pixel_values=pixel_values, labels=labels).loss)
    finally:
        ours.zero_grad()
        ours.eval()


def test_bad_targets_raise_clear_errors(pair):
    _, ours = pair
    pixel_values = torch.randn(1, 3, 32, 32)
    with pytest.raises(ValueError, match=r"class ids \[7, 9\]"):
        labels = torch.zeros(1, 32, 32, dtype=torch.long)
        labels[0, 0, :2] = torch.tensor([7, 9])
        ours(pixel_values=pixel_values, labels=labels)
    with pytest.raises(ValueError, match="holds 2 masks but `class_labels\\[0\\]` has shape \\(3,\\)"):
        ours(pixel_values=pixel_values, mask_labels=[torch.zeros(2, 32, 32)], class_labels=[torch.tensor([0, 1, 2])])
    with pytest.raises(ValueError, match="together"):
        ours(pixel_values=pixel_values, mask_labels=[torch.zeros(2, 32, 32)])
    with pytest.raises(ValueError, match=r"class ids \[5\]"):
        ours(pixel_values=pixel_values, mask_labels=[torch.zeros(1, 32, 32)], class_labels=[torch.tensor([5])])
    with pytest.raises(ValueError, match="for a batch of 1"):
        ours(pixel_values=pixel_values, mask_labels=[torch.zeros(1, 32, 32)] * 2, class_labels=[torch.tensor([0])] * 2)
    with pytest.raises(ValueError, match=r"\(num_segments, 32, 32\)"):
        ours(pixel_values=pixel_values, mask_labels=[torch.zeros(1, 16, 16)], class_labels=[torch.tensor([0])])
    with pytest.raises(ValueError, match="3 channels"):
        ours(pixel_values=torch.randn(1, 4, 32, 32))
    with pytest.raises(ValueError, match="4 dimensions|dimensions"):
        ours(pixel_values=torch.randn(3, 32, 32))


def tiny_config(**overrides) -> MaskFormerConfig:
    return tiny.tiny_config("maskformer", num_labels=NUM_LABELS, **overrides)


def test_folded_mask_projection_equals_per_pixel_embeddings():
    """The inference paths that need only the masks (`full_resolution_logits`, `infer_logits`) fold the mask
    projection into the mask embeddings (no per-pixel embeddings); `forward` computes them the long way and always
    returns them (transformers' contract), whatever is cheaper. Both must agree, batch > 1 included."""
    torch.manual_seed(0)
    model = MaskFormerForUniversalSegmentation(tiny_config()).eval()
    pixel_values = torch.randn(3, 3, 64, 96)
    with torch.no_grad():
        _, fpn_outputs, queries, _ = model._decode(pixel_values, output_intermediate=False)
        folded_classes, folded_masks, folded_embeddings = model.mask_classification(
            queries, fpn_outputs[-1], fold_projection=True
        )
        long_way = model(pixel_values=pixel_values)
        scores = model.full_resolution_logits(pixel_values)
        embeddings = long_way.pixel_decoder_last_hidden_state
        direct = torch.einsum("bqc,bchw->bqhw", model.mask_embedder(long_way.transformer_decoder_last_hidden_state),
                              embeddings)
    assert folded_embeddings is None and embeddings.shape == (3, 32, 16, 24)
    assert model.pixel_decoder.folding_is_cheaper(model.config.num_queries)
    assert not model.pixel_decoder.folding_is_cheaper(10 * model.config.mask_feature_size)
    torch.testing.assert_close(folded_classes, long_way.class_queries_logits, atol=0, rtol=0)
    torch.testing.assert_close(folded_masks, long_way.masks_queries_logits, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(folded_masks, direct, atol=1e-5, rtol=1e-5)
    masks = F.interpolate(long_way.masks_queries_logits, size=(64, 96), mode="bilinear", align_corners=False)
    expected = torch.einsum("bqc,bqhw->bchw", long_way.class_queries_logits.softmax(-1)[..., :-1], masks.sigmoid())
    torch.testing.assert_close(scores, expected, atol=1e-5, rtol=1e-5)


def test_fpn_broadcast_upsampling_equals_nearest_interpolation(monkeypatch):
    """The FPN adds the coarser map to a lateral exactly twice its size as a broadcast (no upsampled copy); with a
    graph capture (or odd sizes) it interpolates. Same values bit for bit, and the same gradients, batch > 1."""
    from hf_segmodels.maskformer import modeling_maskformer

    torch.manual_seed(0)
    model = MaskFormerForUniversalSegmentation(tiny_config())
    features = [f.detach().requires_grad_() for f in model.backbone(torch.randn(2, 3, 64, 96)).feature_maps]
    results = []
    for capture in (False, True):
        monkeypatch.setattr(modeling_maskformer, "capturing", lambda capture=capture: capture)
        outputs, _ = model.pixel_decoder.fpn(features)
        gradients = torch.autograd.grad(sum((o * torch.randn_like(o, generator=torch.Generator().manual_seed(i))).sum()
                                            for i, o in enumerate(outputs)), features)  # fmt: skip
        results.append((outputs, gradients))
    (broadcast, broadcast_gradients), (interpolated, interpolated_gradients) = results
    assert len(broadcast) == 4 and [o.shape[-2:] for o in broadcast][-1] == (16, 24)
    assert all(torch.equal(a, b) for a, b in zip(broadcast, interpolated, strict=True))
    for a, b in zip(broadcast_gradients, interpolated_gradients, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)  # (sums over each 2x2 block in another order)


def test_decoder_attentions_and_hidden_states():
    torch.manual_seed(0)
    model = MaskFormerForUniversalSegmentation(tiny_config()).eval()
    pixel_values = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        model.config._attn_implementation = "eager"
        eager = model(pixel_values=pixel_values, output_attentions=True, output_hidden_states=True)
    assert len(eager.attentions) == 3 and eager.attentions[0].shape == (1, 4, 8, 8)
    assert eager.cross_attentions[0].shape == (1, 4, 8, 2 * 2)
    assert len(eager.transformer_decoder_hidden_states) == 3 + 1  # the decoder input, then every layer
    assert [h.shape[1] for h in eager.encoder_hidden_states] == [16, 32, 48, 64]
    assert eager.pixel_decoder_last_hidden_state.shape == (1, 32, 16, 16)


def test_config_defaults_are_the_papers():
    config = MaskFormerConfig()
    assert config.num_queries == 100 and config.decoder_config.num_queries == 100
    decoder = config.decoder_config
    assert (decoder.d_model, decoder.decoder_layers, decoder.decoder_attention_heads, decoder.decoder_ffn_dim) == (
        256, 6, 8, 2048)
    assert (config.fpn_feature_size, config.mask_feature_size, config.no_object_weight) == (256, 256, 0.1)
    assert (config.mask_weight, config.dice_weight, config.cross_entropy_weight) == (20.0, 1.0, 1.0)
    assert config.use_auxiliary_loss and config.model_type == "segmodels_maskformer"
    assert config.backbone_config.model_type == "maskformer-swin"
    # a plain Swin config becomes the original's padded Swin; a single output stage is widened to all stages
    swin = MaskFormerConfig(backbone_config=tiny_maskformer_backbone("swin"))
    assert swin.backbone_config.model_type == "maskformer-swin"
    from transformers import ResNetConfig

    assert MaskFormerConfig(backbone_config=ResNetConfig()).backbone_config.out_features == STAGES
    from huggingface_hub.errors import StrictDataclassClassValidationError

    with pytest.raises(StrictDataclassClassValidationError, match="multiple of 32"):
        MaskFormerConfig(fpn_feature_size=48)


def test_universal_and_instance_auto_classes_and_infer_logits(tmp_path):
    torch.manual_seed(0)
    model = MaskFormerForUniversalSegmentation(tiny_config(id2label={i: f"c{i}" for i in range(NUM_LABELS)})).eval()
    model.save_pretrained(tmp_path)
    pixel_values = torch.randn(1, 3, 50, 70)
    for auto in (AutoModelForUniversalSegmentation, AutoModelForInstanceSegmentation):  # (Semantic: common checks)
        loaded = auto.from_pretrained(tmp_path).eval()
        assert type(loaded) is MaskFormerForUniversalSegmentation
    with torch.no_grad():
        torch.testing.assert_close(loaded(pixel_values=pixel_values).logits, model(pixel_values=pixel_values).logits)
        scores = infer_logits(loaded, pixel_values)
        # the original pads to a multiple of 32, upsamples the mask logits to the padded size and crops
        padded = torch.nn.functional.pad(pixel_values, (0, 26, 0, 14))
        outputs = loaded(pixel_values=padded)
        masks = torch.nn.functional.interpolate(outputs.masks_queries_logits, size=(64, 96), mode="bilinear")
        expected = torch.einsum("bqc,bqhw->bchw", outputs.class_queries_logits.softmax(-1)[..., :-1],
                                masks[..., :50, :70].sigmoid())
    assert scores.shape == (1, NUM_LABELS, 50, 70)
    torch.testing.assert_close(scores, expected)
    # Windows of at least 33 px: a 32-px window is a single 1x1 map at stride 32, and GroupNorm over this tiny
    # config's one-channel groups has nothing to normalise there when windows run one at a time.
    sliding = infer_logits(loaded, pixel_values, window=(40, 48), stride=(24, 24), flip=True)
    assert sliding.shape == (1, NUM_LABELS, 50, 70) and torch.isfinite(sliding).all()


@pytest.mark.parametrize("batch, mask_size, size", [(1, (16, 16), (64, 64)), (2, (10, 14), (37, 50)), (1, (3, 40), (9, 160))])
def test_banded_full_resolution_semantic_equals_the_whole_computation(batch, mask_size, size, monkeypatch):
    """`upsampled_semantic` computes the upsampled masks and scores band by band (channels-last); scores and their
    argmax must be those of the whole computation (upsample to the padded size, crop, combine), batch and crops
    included, and `labels=True` the argmax of the banded scores exactly."""
    from hf_segmodels.image_processing import class_argmax
    from hf_segmodels.maskformer import modeling_maskformer
    from hf_segmodels.maskformer.modeling_maskformer import upsampled_semantic

    monkeypatch.setattr(modeling_maskformer, "_BAND_PIXELS", 300)  # bands of a few rows: many bands, a partial last
    generator = torch.Generator().manual_seed(0)
    class_logits = torch.randn(batch, 7, NUM_LABELS + 1, generator=generator)
    mask_logits = 4 * torch.randn(batch, 7, *mask_size, generator=generator)
    padded = (4 * mask_size[0], 4 * mask_size[1])
    masks = F.interpolate(mask_logits, size=padded, mode="bilinear", align_corners=False)[..., : size[0], : size[1]]
    whole = torch.einsum("bqc,bqhw->bchw", class_logits.softmax(-1)[..., :-1], masks.sigmoid())
    with torch.no_grad():
        scores = upsampled_semantic(class_logits, mask_logits, padded, size)
        labels = upsampled_semantic(class_logits, mask_logits, padded, size, labels=True)
    torch.testing.assert_close(scores, whole, atol=1e-6, rtol=0)
    assert labels.dtype == torch.long and labels.shape == (batch, *size)
    assert torch.equal(labels, torch.stack([class_argmax(item) for item in scores]))
    assert torch.equal(labels, whole.argmax(1))
    with torch.enable_grad():  # with autograd: the whole computation, differentiable
        leaf = mask_logits.clone().requires_grad_()
        upsampled_semantic(class_logits, leaf, padded, size).sum().backward()
    assert leaf.grad is not None and torch.isfinite(leaf.grad).all()


def test_full_resolution_semantic_map_is_the_argmax_of_the_scores():
    torch.manual_seed(0)
    model = MaskFormerForUniversalSegmentation(tiny_config()).eval()
    pixel_values = torch.randn(2, 3, 70, 90)  # padded to 96 x 96 (size_divisibility 32) and cropped back
    with torch.no_grad():
        scores = model.full_resolution_logits(pixel_values)
        labels = model.full_resolution_semantic_map(pixel_values)
    assert scores.shape == (2, NUM_LABELS, 70, 90) and labels.shape == (2, 70, 90)
    assert torch.equal(labels, scores.argmax(1))
