"""Everyday transformers paths on all four architectures: Trainer (train, evaluate with compute_metrics, predict),
every Auto class, saved processors without the package, config / processor round trips, MaskFormer's targets."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
import transformers
from tiny import model_class, tiny_config, tiny_image_processor
from transformers import AutoConfig, AutoImageProcessor, Trainer, TrainingArguments

import hf_segmodels
from hf_segmodels import MaskFormerImageProcessor, SegformerImageProcessor
from hf_segmodels.metrics import SegmentationMetric

NUM_LABELS = 3
# (smaller than the shared tiny configs where that keeps Trainer runs short)
OVERRIDES = {
    "segmenter": dict(decoder_num_hidden_layers=1),
    "setr": dict(num_hidden_layers=2, decoder_type="naive", auxiliary_layer_indices=[0]),
    "segformer": dict(depths=[1, 1, 1, 1], hidden_sizes=[8, 8, 16, 16], num_attention_heads=[1, 1, 2, 2]),
}


def tiny(architecture: str, num_labels: int = NUM_LABELS):
    """(config, model class, processor) of a tiny model of `architecture`."""
    config = tiny_config(architecture, num_labels, **OVERRIDES.get(architecture, {}))
    return config, model_class(architecture), tiny_image_processor(architecture)


ARCHITECTURES = ["segmenter", "setr", "segformer", "maskformer"]


class SyntheticSegmentation(torch.utils.data.Dataset):
    """Images whose label is given by the brightness of their quadrants, processed one at a time (as
    `datasets.Dataset.with_transform(processor)` would), so Trainer's default collator batches them."""

    def __init__(self, processor, size: int = 6, seed: int = 0):
        rng = np.random.default_rng(seed)
        self.items = []
        for _ in range(size):
            label = rng.integers(0, NUM_LABELS, (4, 4)).repeat(12, 0).repeat(12, 1)
            image = (label[..., None] * 100 + rng.integers(0, 30, (48, 48, 3))).astype(np.uint8)
            label[:2] = 255
            encoded = processor(image, segmentation_maps=label, return_tensors="pt")
            self.items.append({key: value[0] for key, value in encoded.items()})

    def __len__(self):
        return len(self.items)

    def __getitem__(self, index):
        return self.items[index]


def compute_metrics(eval_pred):
    """The compute_metrics of transformers' semantic-segmentation guide, for all four models."""
    logits, labels = eval_pred
    logits = torch.nn.functional.interpolate(torch.from_numpy(logits), size=labels.shape[-2:], mode="bilinear")
    metric = SegmentationMetric(num_labels=NUM_LABELS)
    metric.update(logits.argmax(1).numpy(), labels)
    return {"mean_iou": metric.compute()["mean_iou"]}


@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_trainer_trains_evaluates_and_predicts(architecture, tmp_path):
    config, model_class, processor = tiny(architecture)
    torch.manual_seed(0)
    model = model_class(config)
    dataset = SyntheticSegmentation(processor)
    args = TrainingArguments(
        output_dir=str(tmp_path), max_steps=2, per_device_train_batch_size=2, per_device_eval_batch_size=4,
        learning_rate=1e-3, report_to=[], save_strategy="no", use_cpu=True, dataloader_num_workers=0,
        logging_steps=1, disable_tqdm=True,
    )  # fmt: skip
    trainer = Trainer(model=model, args=args, train_dataset=dataset, eval_dataset=dataset,
                      compute_metrics=compute_metrics)  # fmt: skip
    losses = [log["loss"] for log in trainer.train() and trainer.state.log_history if "loss" in log]
    assert len(losses) == 2 and all(np.isfinite(losses))
    metrics = trainer.evaluate()
    assert np.isfinite(metrics["eval_loss"]) and 0.0 <= metrics["eval_mean_iou"] <= 1.0, metrics
    prediction = trainer.predict(dataset)
    assert prediction.predictions.shape[:2] == (len(dataset), NUM_LABELS)
    assert np.isfinite(prediction.metrics["test_loss"])


@pytest.mark.parametrize("architecture", ["segmenter", "setr", "segformer"])
def test_binary_segmentation_uses_sigmoid_and_bce(architecture):
    config, model_class, processor = tiny(architecture, num_labels=1)
    model = model_class(config).eval()
    size = 64 if architecture == "segformer" else 32
    pixel_values = torch.randn(2, 3, size, size)
    labels = torch.randint(0, 2, (2, size, size))
    labels[:, :4] = 255
    outputs = model(pixel_values, labels=labels)
    logits = torch.nn.functional.interpolate(outputs.logits, size=(size, size), mode="bilinear", align_corners=False)
    valid = (labels != 255).float()
    expected = torch.nn.functional.binary_cross_entropy_with_logits(logits[:, 0], labels.float(), reduction="none")
    if architecture != "setr":  # SETR adds its auxiliary head's loss
        torch.testing.assert_close(outputs.loss, (expected * valid).mean())
    assert outputs.loss > 0
    segmentation = processor.post_process_semantic_segmentation(outputs)[0]
    assert torch.equal(segmentation, (outputs.logits[0, 0] > 0).long())


def test_every_auto_class_gives_ours_or_a_clean_error(tmp_path):
    """No Auto class resolves our configs to transformers' classes (by their shared name) with random weights."""
    auto_classes = [getattr(transformers, name) for name in dir(transformers)
                    if name.startswith("AutoModel") and hasattr(getattr(transformers, name), "_model_mapping")]  # fmt: skip
    for architecture in ARCHITECTURES:
        config, model_class, _ = tiny(architecture)
        folder = tmp_path / architecture
        model_class(config).save_pretrained(folder)
        for auto_class in auto_classes:
            try:
                model = auto_class.from_pretrained(folder)
            except ValueError as error:
                assert "Unrecognized configuration class" in str(error), (auto_class, error)
                continue
            except (OSError, TypeError, AttributeError) as error:
                pytest.fail(f"{auto_class.__name__} on {architecture}: {type(error).__name__}: {error}")
            assert type(model).__module__.startswith("hf_segmodels."), (auto_class, type(model))
    assert type(transformers.AutoModel.from_pretrained(tmp_path / "segformer")).__name__ == "SegformerModel"


@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_config_and_processor_round_trips(architecture, tmp_path):
    config, _, processor = tiny(architecture)
    config.save_pretrained(tmp_path)
    assert type(config).from_pretrained(tmp_path).to_dict() == config.to_dict()
    loaded = AutoConfig.from_pretrained(tmp_path).to_dict()
    loaded.pop("_name_or_path")  # (AutoConfig records where it loaded from, for every model type)
    assert loaded == {key: value for key, value in config.to_dict().items() if key != "_name_or_path"}
    processor.save_pretrained(tmp_path)
    assert type(processor).from_pretrained(tmp_path).to_dict() == processor.to_dict()
    assert AutoImageProcessor.from_pretrained(tmp_path).to_dict() == processor.to_dict()
    saved = json.loads((tmp_path / "preprocessor_config.json").read_text())
    assert saved["image_processor_type"] == type(processor).__name__ and type(processor).__name__.startswith("Segmodels")
    assert "auto_map" in saved and "auto_map" in json.loads((tmp_path / "config.json").read_text())


def test_saved_processors_never_load_as_transformers_classes(tmp_path):
    """Without hf_segmodels imported, a folder we wrote either needs trust_remote_code (our code, via auto_map) or
    fails; it never loads as transformers' SegformerImageProcessor / MaskFormerImageProcessor."""
    for architecture in ARCHITECTURES:
        config, model_class, processor = tiny(architecture)
        processor.save_pretrained(tmp_path / architecture)
        config.save_pretrained(tmp_path / architecture)
    script = (
        "import sys\nfrom transformers import AutoImageProcessor\n"
        "for folder in sys.argv[1:]:\n"
        "    try:\n"
        "        processor = AutoImageProcessor.from_pretrained(folder)\n"
        "    except ValueError as error:\n"
        "        assert 'trust_remote_code' in str(error), error\n"
        "        processor = AutoImageProcessor.from_pretrained(folder, trust_remote_code=True)\n"
        "    assert type(processor).__name__.startswith('Segmodels'), type(processor)\n"
        "    assert 'hf_segmodels' not in sys.modules\n"
        "print('OK')\n"
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": ""}
    result = subprocess.run([sys.executable, "-c", script, *[str(tmp_path / a) for a in ARCHITECTURES]],
                            capture_output=True, text=True, cwd=tmp_path, env=env, timeout=300)  # fmt: skip
    assert result.returncode == 0 and "OK" in result.stdout, result.stderr[-3000:]


def test_folders_saved_with_the_former_processor_names_still_load(tmp_path):
    for architecture in ARCHITECTURES:
        config, _, processor = tiny(architecture)
        folder = tmp_path / architecture
        processor.save_pretrained(folder)
        config.save_pretrained(folder)
        path = folder / "preprocessor_config.json"
        saved = json.loads(path.read_text())
        saved["image_processor_type"] = saved["image_processor_type"].removeprefix("Segmodels")
        path.write_text(json.dumps(saved))
        loaded = AutoImageProcessor.from_pretrained(folder)
        assert type(loaded) is type(processor), type(loaded)
        assert loaded.to_dict()["image_processor_type"] == type(processor).__name__


def test_integer_size_means_what_transformers_means():
    assert SegformerImageProcessor(size=64).size == {"height": 64, "width": 64}  # as transformers' SegFormer
    assert MaskFormerImageProcessor(size=64).size == {"shortest_edge": 64}  # as transformers' MaskFormer


def test_maskformer_processor_targets_from_semantic_and_panoptic_maps():
    processor = MaskFormerImageProcessor(size={"height": 64, "width": 64}, size_divisor=0)
    image = np.zeros((64, 64, 3), np.uint8)
    image[::2] = 200
    semantic = np.full((64, 64), 2)
    semantic[:16] = 0
    semantic[-8:] = 255
    encoded = processor([image], segmentation_maps=[semantic], return_mask_labels=True, return_tensors="pt")
    assert encoded["labels"].shape == (1, 64, 64)
    assert encoded["class_labels"][0].tolist() == [0, 2]
    assert torch.equal(encoded["mask_labels"][0][1].bool(), torch.from_numpy(semantic == 2))
    assert "mask_labels" not in processor([image], segmentation_maps=[semantic], return_tensors="pt")

    panoptic = np.zeros((64, 64), np.int64)
    panoptic[:, 32:] = 7
    panoptic[:8] = 9
    encoded = processor([image], segmentation_maps=[panoptic], instance_id_to_semantic_id={0: 1, 7: 1, 9: 2},
                        return_tensors="pt")  # fmt: skip
    assert encoded["class_labels"][0].tolist() == [1, 1, 2] and encoded["mask_labels"][0].shape == (3, 64, 64)
    assert encoded["labels"][0][20].tolist() == [1] * 64 and encoded["labels"][0][0].tolist() == [2] * 64
    # the model trains on the instance targets (they take precedence over the semantic `labels`)
    config, model_class, _ = tiny("maskformer")
    model = model_class(config).eval()  # (eval: a batch of one image)
    loss = model(**encoded).loss
    assert torch.isfinite(loss)
    assert processor.ignore_index == 255
