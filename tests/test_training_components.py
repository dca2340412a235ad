"""In-process tests of the training building blocks: augmentation, recipes and schedules, the architecture registry
(presets, pretrained backbones, SyncBatchNorm), dataset checks and checkpoint resolution."""

import json

import numpy as np
import pytest
import torch
from datasets import DatasetDict

from hf_segmodels.training import augmentation as aug
from hf_segmodels.training.checkpointing import latest_checkpoint, resolve_checkpoint
from hf_segmodels.training.data import (
    EpochSampler,
    SegmentationSamples,
    TrainSamples,
    get_split,
    load_splits,
    resolve_id2label,
)
from hf_segmodels.training.recipes import PAPER_RECIPES, build_optimizer, build_scheduler, parameter_groups, poly_factor
from hf_segmodels.training.registry import (
    ARCHITECTURE_NAMES,
    build_config,
    convert_sync_batch_norm,
    get_architecture,
)
from hf_segmodels.training.synthetic import make_dataset

ID2LABEL = {0: "background", 1: "disc", 2: "square", 3: "triangle"}


# ------------------------------------------------------------------------------------------------------------------
# Augmentation
# ------------------------------------------------------------------------------------------------------------------


def test_random_resize_keeps_ratio_within_the_range():
    image, label = np.zeros((40, 80, 3), np.uint8), np.zeros((40, 80), np.int64)
    for seed in range(20):
        resized, resized_label = aug.random_resize(image, label, (128, 32), (0.5, 2.0), np.random.default_rng(seed))
        assert resized.shape[:2] == resized_label.shape
        # base scale (128, 32) fits the 40x80 image to short side 32 (long 64 < 128): ratio 0.5-2 -> short 16-64
        assert 16 <= resized.shape[0] <= 64 and abs(resized.shape[1] - 2 * resized.shape[0]) <= 1
    assert aug.rescale_size(512, 683, (2048, 512)) == (512, 683)
    assert aug.rescale_size(1024, 2048, (2048, 512)) == (512, 1024)


def test_random_crop_respects_cat_max_ratio_and_falls_back():
    label = np.zeros((64, 64), np.int64)
    label[:, 48:] = 1  # class 1 covers a quarter; most 32x32 crops are pure background
    image = np.zeros((64, 64, 3), np.uint8)
    for seed in range(10):
        _, crop = aug.random_crop(image, label, (32, 32), 0.75, 255, np.random.default_rng(seed))
        _, counts = np.unique(crop, return_counts=True)
        assert crop.shape == (32, 32) and len(counts) > 1 and counts.max() / counts.sum() < 0.75
    # one class only: after 10 retries the last draw is kept
    _, crop = aug.random_crop(image, np.zeros_like(label), (32, 32), 0.75, 255, np.random.default_rng(0))
    assert crop.shape == (32, 32)
    # ignored pixels do not count
    ignored = np.full((8, 8), 255, np.int64)
    ignored[0, 0] = 1
    ignored[0, 1] = 2
    _, crop = aug.random_crop(np.zeros((8, 8, 3), np.uint8), ignored, (8, 8), 0.75, 255, np.random.default_rng(0))
    assert crop.shape == (8, 8)


def test_photometric_distortion_is_seeded_and_hsv_round_trips():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (16, 16, 3)).astype(np.uint8)
    hsv = aug._rgb_to_hsv(image.astype(np.float64))
    np.testing.assert_allclose(aug._hsv_to_rgb(hsv), image, atol=1e-9)
    first = aug.photometric_distortion(image, np.random.default_rng(5))
    assert first.dtype == np.uint8 and first.shape == image.shape
    assert np.array_equal(first, aug.photometric_distortion(image, np.random.default_rng(5)))
    assert any(not np.array_equal(image, aug.photometric_distortion(image, np.random.default_rng(s))) for s in range(4))


def test_train_augmentation_pads_labels_with_255_and_flips_consistently():
    pipeline = aug.TrainAugmentation(crop_size=(48, 48), scale=(64, 16), image_mean=(0.5,) * 3, image_std=(0.5,) * 3,
                                     ratio_range=(1.0, 1.0), photometric=False, flip_prob=1.0)
    image = np.zeros((16, 32, 3), np.uint8)
    image[:, :16] = 255
    label = np.zeros((16, 32), np.int64)
    label[:, :16] = 1
    pixel_values, labels = pipeline(image, label, np.random.default_rng(0))
    assert pixel_values.shape == (3, 48, 48) and labels.shape == (48, 48)
    assert (labels[16:] == 255).all() and (labels[:, 32:] == 255).all()  # padded with the ignore index
    assert (pixel_values[:, 16:] == 0).all()  # the image is padded with 0 after normalisation
    # flipped: class 1 (white) is now on the right half, in the image and the label alike
    assert (labels[:16, 16:32] == 1).all() and (labels[:16, :16] == 0).all()
    assert np.allclose(pixel_values[:, :16, 16:32], 1.0) and np.allclose(pixel_values[:, :16, :16], -1.0)


# ------------------------------------------------------------------------------------------------------------------
# Recipes
# ------------------------------------------------------------------------------------------------------------------


def test_poly_schedule_with_min_lr_and_warmup():
    segmenter = PAPER_RECIPES["segmenter"]
    assert poly_factor(0, 100, 1e-3, segmenter) == pytest.approx(1.0)
    assert poly_factor(50, 100, 1e-3, segmenter) * 1e-3 == pytest.approx((1e-3 - 1e-5) * 0.5**0.9 + 1e-5)
    assert poly_factor(100, 100, 1e-3, segmenter) * 1e-3 == pytest.approx(1e-5)
    segformer = PAPER_RECIPES["segformer"]
    assert poly_factor(0, 160000, 6e-5, segformer) == pytest.approx(1e-6)
    assert poly_factor(750, 160000, 6e-5, segformer) == pytest.approx((1 - 750 / 160000) * (1 - 0.5 * (1 - 1e-6)))
    assert poly_factor(1500, 160000, 6e-5, segformer) == pytest.approx(1 - 1500 / 160000)
    assert PAPER_RECIPES["setr"].for_dataset("cityscapes").learning_rate == 1e-2
    assert PAPER_RECIPES["setr"].for_dataset("scene_parse_150").learning_rate == 1e-3


def test_parameter_groups_apply_the_papers_multipliers():
    for name, expected in (("segformer", {"backbone": 6e-5, "head": 6e-4}), ("maskformer", {"backbone": 1e-5,
                                                                                             "head": 1e-4})):
        architecture = get_architecture(name)
        model = architecture.model_class(build_config(architecture, "tiny", 32, ID2LABEL))
        groups = parameter_groups(model, architecture.recipe, architecture.backbone_prefixes)
        lrs = {group["name"].removesuffix("_no_decay"): group["lr"] for group in groups}
        assert lrs == pytest.approx(expected)
        # no weight decay on norms / embeddings; every trainable parameter in exactly one group
        assert {g["weight_decay"] for g in groups if g["name"].endswith("_no_decay")} == {0.0}
        assert sum(len(g["params"]) for g in groups) == sum(1 for p in model.parameters() if p.requires_grad)
    setr = get_architecture("setr")
    model = setr.model_class(build_config(setr, "tiny", 32, ID2LABEL))
    optimizer = build_optimizer(model, setr.recipe, setr.backbone_prefixes)
    assert isinstance(optimizer, torch.optim.SGD) and optimizer.defaults["momentum"] == 0.9
    assert {g["name"]: g["lr"] for g in optimizer.param_groups} == pytest.approx({"backbone": 1e-3, "head": 1e-2})
    scheduler = build_scheduler(optimizer, setr.recipe, total_steps=10)
    for _ in range(10):
        optimizer.step()
        scheduler.step()
    assert [g["lr"] for g in optimizer.param_groups] == pytest.approx([1e-4, 1e-4])  # both end at min_lr


# ------------------------------------------------------------------------------------------------------------------
# Registry
# ------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ARCHITECTURE_NAMES)
def test_tiny_presets_train_one_step(name):
    architecture = get_architecture(name)
    config = build_config(architecture, "tiny", 64, ID2LABEL)
    assert config.num_labels == 4 and config.id2label[3] == "triangle"
    model = architecture.model_class(config).train()
    labels = torch.randint(0, 4, (2, 64, 64))
    loss = model(pixel_values=torch.randn(2, 3, 64, 64), labels=labels).loss
    loss.backward()
    assert torch.isfinite(loss)


def test_registry_errors():
    with pytest.raises(ValueError, match="Unknown model type 'unet'"):
        get_architecture("unet")
    with pytest.raises(ValueError, match="Unknown SETR preset"):
        build_config(get_architecture("setr"), "setr_huge", 32, ID2LABEL)
    with pytest.raises(ValueError, match="needs --config_name"):
        build_config(get_architecture("segformer"), None, 32, ID2LABEL)


def test_config_directory_must_match_the_model_type(tmp_path):
    segformer = get_architecture("segformer")
    build_config(segformer, "tiny", 32, ID2LABEL).save_pretrained(tmp_path)
    assert build_config(segformer, tmp_path, 32, {0: "a", 1: "b"}).num_labels == 2
    with pytest.raises(ValueError, match="not a SegmenterConfig"):
        build_config(get_architecture("segmenter"), tmp_path, 32, ID2LABEL)


def test_pretrained_vit_backbone_for_segmenter(tmp_path):
    from tiny import transformers_vit_config
    from transformers import ViTModel

    architecture = get_architecture("segmenter")
    config = build_config(architecture, "tiny", 32, ID2LABEL)
    vit = ViTModel(transformers_vit_config(config, layer_norm_eps=1e-5), add_pooling_layer=False).eval()
    vit.save_pretrained(tmp_path)
    model = architecture.model_class(config).eval()
    architecture.load_backbone(model, str(tmp_path))
    pixel_values = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        ours = model.encoder(pixel_values).last_hidden_state
        theirs = vit(pixel_values).last_hidden_state
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-5)


def test_pretrained_mit_backbone_from_transformers_and_original_layouts(tmp_path):
    from transformers import SegformerConfig as HFSegformerConfig
    from transformers import SegformerForImageClassification

    architecture = get_architecture("segformer")
    config = build_config(architecture, "tiny", 32, ID2LABEL)
    model = architecture.model_class(config).eval()
    encoder = {name: getattr(config, name) for name in ("hidden_sizes", "num_attention_heads", "depths")}
    reference = SegformerForImageClassification(HFSegformerConfig(**encoder, num_labels=10, layer_norm_eps=1e-6)).eval()
    reference.save_pretrained(tmp_path / "hf")
    architecture.load_backbone(model, str(tmp_path / "hf"))
    pixel_values = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        ours = model.segformer(pixel_values, output_hidden_states=True).feature_maps[-1]
        theirs = reference.segformer(pixel_values, output_hidden_states=True).hidden_states[-1]
    torch.testing.assert_close(ours, theirs, atol=1e-4, rtol=1e-4)

    # the authors' mit_b*.pth layout: patch_embed{i}, block{i}.{j}, norm{i} and an ImageNet head
    original = {"head.weight": torch.zeros(1000, 64), "head.bias": torch.zeros(1000)}
    for key, tensor in model.segformer.state_dict().items():
        parts = key.split(".")
        stage = int(parts[1]) + 1
        if parts[2] == "patch_embed":
            name = f"patch_embed{stage}." + ".".join(parts[3:])
        elif parts[2] == "norm":
            name = f"norm{stage}." + ".".join(parts[3:])
        else:
            rest = ".".join(parts[4:]).replace("mlp.dwconv.", "mlp.dwconv.dwconv.")
            name = f"block{stage}.{parts[3]}.{rest}"
        original[name] = tensor + 1.0
    torch.save(original, tmp_path / "mit.pth")
    fresh = architecture.model_class(build_config(architecture, "tiny", 32, ID2LABEL))
    architecture.load_backbone(fresh, str(tmp_path / "mit.pth"))
    for key, tensor in model.segformer.state_dict().items():
        torch.testing.assert_close(fresh.segformer.state_dict()[key], tensor + 1.0)


def test_pretrained_resnet_backbone_for_maskformer(tmp_path):
    from transformers import ResNetBackbone

    architecture = get_architecture("maskformer")
    model = architecture.model_class(build_config(architecture, "tiny", 64, ID2LABEL))
    reference = ResNetBackbone(model.config.backbone_config)
    with torch.no_grad():
        for parameter in reference.parameters():
            parameter.add_(0.5)
    reference.save_pretrained(tmp_path)
    architecture.load_backbone(model, str(tmp_path))
    for key, tensor in reference.state_dict().items():
        torch.testing.assert_close(model.backbone.state_dict()[key], tensor)


def test_sync_batch_norm_conversion_only_for_multi_gpu_setr_and_segformer():
    setr = get_architecture("setr")
    model = setr.model_class(build_config(setr, "tiny", 32, ID2LABEL))
    assert convert_sync_batch_norm(model, setr, num_processes=2, device="cpu") == 0
    assert convert_sync_batch_norm(model, setr, num_processes=1, device="cuda") == 0
    converted = convert_sync_batch_norm(model, setr, num_processes=2, device="cuda")
    assert converted > 0
    assert sum(isinstance(m, torch.nn.SyncBatchNorm) for m in model.modules()) == converted
    segmenter = get_architecture("segmenter")
    assert convert_sync_batch_norm(torch.nn.BatchNorm2d(3), segmenter, 2, "cuda") == 0


# ------------------------------------------------------------------------------------------------------------------
# Data
# ------------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_splits():
    return make_dataset(num_train=6, num_validation=2, size=32)


def test_dataset_errors_name_the_problem(tiny_splits, tmp_path):
    with pytest.raises(ValueError, match=r"no column\(s\) \['label'\]; available columns: \['image', 'annotation'\]"):
        get_split(tiny_splits, "train", ("image", "label"))
    with pytest.raises(ValueError, match=r"no split 'test'; available splits: \['train', 'validation'\]"):
        get_split(tiny_splits, "test", ("image", "annotation"))
    empty = DatasetDict({"train": tiny_splits["train"].select([])})
    with pytest.raises(ValueError, match="'train' split of the dataset is empty"):
        get_split(empty, "train", ("image", "annotation"))


def test_label_values_outside_id2label_name_the_example(tiny_splits):
    samples = SegmentationSamples(tiny_splits["train"], "image", "annotation", num_labels=3, do_reduce_labels=False,
                                  split="train")
    bad = [i for i in range(len(samples)) if 3 in np.asarray(tiny_splits["train"].with_format(None)[i]["annotation"])]
    assert bad
    with pytest.raises(ValueError, match=rf"Example {bad[0]} of the 'train' split has label values \[3\] outside"):
        samples.sample(bad[0])
    # reduce_labels: 0 -> ignored, k -> k - 1
    reduced = SegmentationSamples(tiny_splits["validation"], "image", "annotation", 3, True, "validation")
    _, label = reduced.sample(0)
    assert set(np.unique(label)) <= {0, 1, 2, 255} and 255 in label


def test_epoch_sampler_and_train_samples_are_deterministic(tiny_splits):
    sampler = EpochSampler(6, seed=1)
    first = list(sampler)
    sampler.set_epoch(1)
    second = list(sampler)
    assert sorted(i for _, i in first) == list(range(6)) and {e for e, _ in second} == {1}
    assert [i for _, i in first] != [i for _, i in second]
    sampler.set_epoch(0)
    assert list(sampler) == first
    samples = SegmentationSamples(tiny_splits["train"], "image", "annotation", 4, False, "train")
    pipeline = aug.TrainAugmentation(crop_size=(32, 32), scale=(128, 32), image_mean=(0.5,) * 3, image_std=(0.5,) * 3)
    dataset = TrainSamples(samples, pipeline, seed=0)
    a, b, c = dataset[(0, 2)], dataset[(0, 2)], dataset[(1, 2)]
    assert torch.equal(a["pixel_values"], b["pixel_values"]) and torch.equal(a["labels"], b["labels"])
    assert not torch.equal(a["pixel_values"], c["pixel_values"])
    assert a["pixel_values"].shape == (3, 32, 32) and a["labels"].dtype == torch.int64


def test_loading_local_datasets_and_id2label(tiny_splits, tmp_path):
    tiny_splits.save_to_disk(tmp_path / "disk")
    assert load_splits(str(tmp_path / "disk"))["validation"].num_rows == 2
    tiny_splits["train"].to_parquet(tmp_path / "train.parquet")
    loaded = load_splits(str(tmp_path / "train.parquet"))
    assert list(loaded) == ["train"] and loaded["train"].num_rows == 6
    (tmp_path / "disk" / "id2label.json").write_text(json.dumps({"0": "a", "1": "b"}))
    assert resolve_id2label(None, str(tmp_path / "disk")) == {0: "a", 1: "b"}
    assert resolve_id2label('{"0": "x", "1": "y", "2": "z"}', None) == {0: "x", 1: "y", 2: "z"}
    with pytest.raises(ValueError, match="without gaps"):
        resolve_id2label('{"0": "x", "2": "z"}', None)
    with pytest.raises(ValueError, match="No class names"):
        resolve_id2label(None, str(tmp_path / "elsewhere"))


# ------------------------------------------------------------------------------------------------------------------
# Checkpoints
# ------------------------------------------------------------------------------------------------------------------


def test_latest_skips_incomplete_checkpoints_and_bad_paths_fail_clearly(tmp_path):
    for step, complete in ((2, True), (4, True), (6, False)):
        (tmp_path / f"step_{step}").mkdir()
        if complete:
            (tmp_path / f"step_{step}" / "training_state.json").write_text("{}")
    (tmp_path / ".tmp_step_8").mkdir()
    assert latest_checkpoint(tmp_path) == tmp_path / "step_4"
    assert resolve_checkpoint("latest", tmp_path) == tmp_path / "step_4"
    with pytest.raises(FileNotFoundError, match="does not exist"):
        resolve_checkpoint(str(tmp_path / "step_99"), tmp_path)
    with pytest.raises(FileNotFoundError, match="not a complete training checkpoint"):
        resolve_checkpoint(str(tmp_path / "step_6"), tmp_path)
    with pytest.raises(FileNotFoundError, match="no complete checkpoint"):
        resolve_checkpoint("latest", tmp_path / "empty")
