"""Security and failure modes: no code runs from a config or checkpoint, no silent NaN, no lost model, and a clear
error for every bad input (issue "Security and failure modes")."""

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from datasets import Dataset, DatasetDict, Features, Image
from huggingface_hub.errors import StrictDataclassError
from PIL import Image as PILImage

from hf_segmodels import (
    MaskFormerConfig,
    SegformerConfig,
    SegformerForSemanticSegmentation,
    SegformerImageProcessor,
    SegmenterConfig,
    SetrConfig,
    infer_logits,
)
from hf_segmodels.conversion_utils import ConversionError, load_python_config, save_converted
from hf_segmodels.metrics import PanopticQualityMetric, SegmentationMetric
from hf_segmodels.safe_config import ConfigSyntaxError, parse_python_config
from hf_segmodels.training.evaluation import metrics_to_json
from hf_segmodels.training.registry import build_config, get_architecture
from hf_segmodels.training.synthetic import CLASSES, make_dataset
from test_training_utils import ROOT, TRAIN, load_train_module, run_evaluate

GOLDEN = ROOT.parent / "shared" / "golden"
ARCHITECTURES = ("segmenter", "setr", "segformer", "maskformer")


# ------------------------------------------------------------------------------------------------------------------
# 1. No code runs from a config (a .py file, or the text embedded in a checkpoint)
# ------------------------------------------------------------------------------------------------------------------


def hostile_configs(marker: Path) -> dict[str, str]:
    """Configs that would create `marker` (or reach the interpreter's internals) if they were executed."""
    walk = "().__class__.__base__.__subclasses__()"
    return {
        "subclass walk": f"x = [c for c in {walk} if c.__name__ == '_wrap_close'][0].__init__.__globals__"
                         f"['system']('touch {marker}')",
        "subclass walk, no comprehension": f"x = {walk}",
        "__import__": f"x = __import__('os').system('touch {marker}')",
        "dunder attribute": "x = dict.__class__",
        "plain attribute": "norm = dict(type='BN').copy()",
        "lambda": f"f = lambda: __import__('os').system('touch {marker}')",
        "open()": f"handle = open('{marker}', 'w')",
        "getattr()": "x = getattr(dict, 'mro')",
        "import statement": "import os",
        "from import": "from os import system",
        "function definition": f"def f():\n    open('{marker}', 'w')\nx = 1",
        "if statement": "if True:\n    x = 1",
        "comprehension": "x = [i for i in range(3)]",
        "walrus": "x = (y := 3)",
        "huge repetition": "x = 'a' * 10 ** 9",
        "huge power": "x = 9 ** 9 ** 9",
        "%-format": "x = '%s' % 'a'",
        "dunder name": "__builtins__ = dict()",
    }


@pytest.mark.parametrize("case", list(hostile_configs(Path("/nonexistent"))))
def test_config_files_are_never_executed(case, tmp_path):
    marker = tmp_path / "pwned"
    config = tmp_path / "config.py"
    config.write_text(hostile_configs(marker)[case])
    with pytest.raises(ConversionError, match=r"config\.py:\d+: .*never executed"):
        load_python_config(config)
    assert not marker.exists()


def test_config_reader_accepts_what_mmcv_configs_hold(tmp_path):
    (tmp_path / "_base_").mkdir()
    (tmp_path / "_base_" / "model.py").write_text(
        "norm_cfg = dict(type='SyncBN', requires_grad=True)\n"
        "model = dict(type='EncoderDecoder', backbone=dict(type='MiT', depths=[2, 2, 2, 2], eps=1e-6),\n"
        "             decode_head=dict(num_classes=150, norm_cfg=norm_cfg, loss=dict(type='CE', weight=1.0)))\n"
    )
    (tmp_path / "config.py").write_text(
        "_base_ = ['./_base_/model.py']\n"
        "data_root = 'data/ade'\n"
        "crop_size = (512, 512)\n"
        "model = dict(decode_head=dict(num_classes=19, loss=dict(_delete_=True, type='Focal')),\n"
        "             test_cfg=dict(mode='slide', crop_size=crop_size, stride=(crop_size[0] * 2 // 3, 341)))\n"
        "scales = [0.5, 0.75] + [1.0]\n"
        "lr = 6e-05 * 2 ** 2\n"
        "ann = f'{data_root}/annotations'\n"
        "neg = -1\n"
        "more = dict(**dict(a=1), b={'c': (1, 2)})\n"
    )
    cfg = load_python_config(tmp_path / "config.py")
    assert cfg["model"]["backbone"] == {"type": "MiT", "depths": [2, 2, 2, 2], "eps": 1e-6}
    assert cfg["model"]["decode_head"] == {
        "num_classes": 19, "norm_cfg": {"type": "SyncBN", "requires_grad": True}, "loss": {"type": "Focal"}
    }
    assert cfg["model"]["test_cfg"] == {"mode": "slide", "crop_size": (512, 512), "stride": (341, 341)}
    assert cfg["scales"] == [0.5, 0.75, 1.0] and cfg["lr"] == pytest.approx(2.4e-4)
    assert cfg["ann"] == "data/ade/annotations" and cfg["neg"] == -1 and cfg["more"] == {"a": 1, "b": {"c": (1, 2)}}
    assert "_base_" not in cfg and "norm_cfg" in cfg  # base variables merge in, as mmcv does


def test_config_reader_errors_name_the_line():
    with pytest.raises(ConfigSyntaxError, match=r"cfg\.py:3: name 'undefined' is not assigned"):
        parse_python_config("a = 1\nb = a\nc = undefined\n", "cfg.py")
    with pytest.raises(ConfigSyntaxError, match="_base_.*not read from a file"):
        parse_python_config("_base_ = ['x.py']\n", "embedded")


def _segformer_checkpoint_with_meta(tmp_path, text: str) -> Path:
    checkpoint = torch.load(GOLDEN / "segformer" / "segformer_original_tiny" / "checkpoint.pth", weights_only=True)
    checkpoint["meta"]["config"] = text
    path = tmp_path / "hostile.pth"
    torch.save(checkpoint, path)
    return path


def test_config_embedded_in_a_checkpoint_is_never_executed(tmp_path):
    from hf_segmodels.segformer.convert_segformer import convert_segformer_checkpoint

    marker = tmp_path / "pwned"
    for case, text in hostile_configs(marker).items():
        path = _segformer_checkpoint_with_meta(tmp_path, text)
        with pytest.raises(ConversionError, match="never executed"):
            convert_segformer_checkpoint(path)
        assert not marker.exists(), case
    # and through the command line with default flags
    path = _segformer_checkpoint_with_meta(tmp_path, hostile_configs(marker)["subclass walk"])
    result = subprocess.run(
        [sys.executable, str(ROOT / "conversion_scripts" / "convert_segformer.py"), "--checkpoint", str(path),
         "--output_dir", str(tmp_path / "out")], capture_output=True, text=True, cwd=ROOT,
    )
    assert result.returncode == 2 and "never executed" in result.stderr
    assert not marker.exists() and not (tmp_path / "out").exists()


def test_golden_configs_read_as_before():
    """The reader gives the golden fixtures' flattened mmseg configs the same values a Python evaluation gives."""
    import ast

    for path in sorted(GOLDEN.glob("*/*/config.py")):
        cfg = load_python_config(path)
        # every top-level assignment of these flattened configs is a literal expression once dict(...) is spelt {...}
        tree = ast.parse(path.read_text())
        assert sorted(cfg) == sorted(node.targets[0].id for node in tree.body if isinstance(node, ast.Assign))
        assert isinstance(cfg["model"], dict) and cfg["crop_size"] == tuple(cfg["crop_size"])


# ------------------------------------------------------------------------------------------------------------------
# 2-4. Training: a non-finite loss stops the run; a late error never loses the trained model
# ------------------------------------------------------------------------------------------------------------------


def _dataset(tmp_path, bad_validation_index: int | None = None, bad_value: int = 9) -> Path:
    data = make_dataset(num_train=8, num_validation=4, size=64, seed=0)
    if bad_validation_index is not None:
        validation = data["validation"]
        images = [validation[i]["image"] for i in range(len(validation))]
        labels = [validation[i]["annotation"] for i in range(len(validation))]
        corrupt = np.array(labels[bad_validation_index])
        corrupt[:4, :4] = bad_value
        labels[bad_validation_index] = PILImage.fromarray(corrupt)
        features = Features({"image": Image(), "annotation": Image()})
        data = DatasetDict({"train": data["train"],
                            "validation": Dataset.from_dict({"image": images, "annotation": labels},
                                                            features=features)})
    path = tmp_path / "data"
    data.save_to_disk(str(path))
    (path / "id2label.json").write_text(json.dumps(dict(enumerate(CLASSES))))
    return path


TINY_RUN = ["--model_type", "segformer", "--config_name", "tiny", "--crop_size", "32", "--per_device_train_batch_size",
            "2", "--report_to", "none", "--seed", "0"]


def test_training_through_nan_stops_and_keeps_the_last_good_checkpoint(tmp_path):
    data, output = _dataset(tmp_path), tmp_path / "out"
    with pytest.raises(RuntimeError, match=r"not finite \(NaN or Inf\) at step 2;.*last good checkpoint is .*step_1"):
        load_train_module().main([*TINY_RUN, "--dataset_name", str(data), "--output_dir", str(output),
                                  "--learning_rate", "1e10", "--max_train_steps", "6", "--checkpointing_steps", "1"])
    assert sorted(p.name for p in output.glob("step_*")) == ["step_1"]
    assert not (output / "model.safetensors").exists() and not (output / "README.md").exists()
    assert not (output / "all_results.json").exists()
    from safetensors.torch import load_file

    weights = load_file(output / "step_1" / "model.safetensors")
    assert all(torch.isfinite(tensor).all() for tensor in weights.values())


def test_a_bad_validation_label_never_loses_the_trained_model(tmp_path):
    data, output = _dataset(tmp_path, bad_validation_index=3), tmp_path / "out"
    with pytest.raises(ValueError, match=r"Example 3 of the 'validation' split has label values \[9\]"):
        load_train_module().main([*TINY_RUN, "--dataset_name", str(data), "--output_dir", str(output),
                                  "--max_train_steps", "2", "--learning_rate", "1e-3"])
    assert (output / "model.safetensors").is_file() and (output / "preprocessor_config.json").is_file()
    assert (output / "step_2").is_dir()


def test_a_bad_first_validation_example_fails_before_training(tmp_path):
    data, output = _dataset(tmp_path, bad_validation_index=0), tmp_path / "out"
    with pytest.raises(ValueError, match=r"Example 0 of the 'validation' split has label values \[9\]"):
        load_train_module().main([*TINY_RUN, "--dataset_name", str(data), "--output_dir", str(output),
                                  "--max_train_steps", "2"])
    assert not list(output.glob("step_*")) and not (output / "train_log.jsonl").exists()


def test_train_log_has_each_step_once_after_a_resume(tmp_path):
    data, output = _dataset(tmp_path), tmp_path / "out"
    args = [*TINY_RUN, "--dataset_name", str(data), "--output_dir", str(output), "--max_train_steps", "4",
            "--checkpointing_steps", "2", "--validation_split", "none", "--learning_rate", "1e-3"]
    load_train_module().main(args)
    first = (output / "train_log.jsonl").read_text().splitlines()
    load_train_module().main([*args, "--resume_from_checkpoint", str(output / "step_2")])
    steps = [json.loads(line)["step"] for line in (output / "train_log.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4]
    assert (output / "train_log.jsonl").read_text().splitlines()[:2] == first[:2]


def test_train_error_is_the_last_line_of_output(tmp_path):
    data = _dataset(tmp_path)
    result = subprocess.run(
        [sys.executable, str(TRAIN), *TINY_RUN, "--dataset_name", str(data), "--output_dir", str(tmp_path / "out"),
         "--label_column", "label"], capture_output=True, text=True, cwd=ROOT,
        env={**os.environ, "HF_DATASETS_DISABLE_PROGRESS_BARS": "1"},
    )
    assert result.returncode == 1
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("train.py: error: The 'train' split has no column(s) ['label']"), result.stderr[-2000:]


def test_unwritable_training_output_dir_is_a_clear_error(tmp_path):
    data = _dataset(tmp_path)
    (tmp_path / "file").write_text("")
    with pytest.raises(RuntimeError, match=r"--output_dir .*file/out.* cannot be written to"):
        load_train_module().main([*TINY_RUN, "--dataset_name", str(data), "--output_dir", str(tmp_path / "file" / "out"),
                                  "--max_train_steps", "1"])


# ------------------------------------------------------------------------------------------------------------------
# 3. Sliding windows that leave pixels uncovered
# ------------------------------------------------------------------------------------------------------------------


def tiny_model(name: str, num_labels: int = 3):
    architecture = get_architecture(name)
    config = build_config(architecture, "tiny", 64, {i: f"c{i}" for i in range(num_labels)})
    torch.manual_seed(0)
    return architecture.model_class(config).eval()


def test_stride_larger_than_window_is_rejected(tmp_path):
    model = tiny_model("segformer")
    with pytest.raises(ValueError, match=r"`stride` \(40, 40\) is larger than `window` \(16, 16\)"):
        infer_logits(model, torch.randn(1, 3, 64, 64), window=16, stride=40)
    with pytest.raises(SystemExit):
        run_evaluate(["--model_name_or_path", "unused", "--dataset_name", "unused", "--mode", "slide", "--window", "16",
                      "--stride", "40", "--output_json", str(tmp_path / "x.json")])


# ------------------------------------------------------------------------------------------------------------------
# 5. Non-finite, empty and wrongly typed input
# ------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ARCHITECTURES)
def test_non_finite_and_empty_input_is_rejected(name):
    model = tiny_model(name)
    for bad in (float("nan"), float("inf"), -float("inf")):
        pixel_values = torch.randn(1, 3, 64, 64)
        pixel_values[0, 1, 5, 7] = bad
        with pytest.raises(ValueError, match=r"1 non-finite value\(s\) \(NaN or Inf\)"):
            model(pixel_values=pixel_values)
        with pytest.raises(ValueError, match="non-finite"):
            infer_logits(model, pixel_values)
    with pytest.raises(ValueError, match="batch size 0"):
        model(pixel_values=torch.randn(0, 3, 64, 64))
    with pytest.raises(ValueError, match=r"empty image size \(0, 0\)"):
        model(pixel_values=torch.randn(1, 3, 0, 0))


@pytest.mark.parametrize("name", ARCHITECTURES)
def test_other_float_dtypes_are_cast_to_the_models(name):
    model = tiny_model(name)
    pixel_values = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        expected = model(pixel_values=pixel_values).logits
        for dtype in (torch.float64, torch.float16, torch.bfloat16):
            rounded = pixel_values.to(dtype)
            logits = model(pixel_values=rounded).logits
            assert logits.dtype == torch.float32
            torch.testing.assert_close(logits, model(pixel_values=rounded.float()).logits, rtol=0, atol=0)
        torch.testing.assert_close(model(pixel_values=pixel_values.double()).logits, expected, rtol=0, atol=0)


def test_infer_logits_rejects_numpy_and_bad_scales():
    model = tiny_model("segformer")
    with pytest.raises(ValueError, match=r"must be a torch.Tensor, got ndarray.*torch.from_numpy"):
        infer_logits(model, np.zeros((1, 3, 32, 32), np.float32))
    for scales in ([float("nan")], [float("inf")], [1.0, -0.5], [0.0], []):
        with pytest.raises(ValueError, match="finite positive ratios"):
            infer_logits(model, torch.randn(1, 3, 32, 32), scales=scales)
    with pytest.raises(ValueError, match="less than one pixel"):
        infer_logits(model, torch.randn(1, 3, 32, 32), scales=[1e-3])


def test_the_non_finite_check_finds_values_that_cancel_out_and_passes_huge_finite_ones():
    model = tiny_model("segformer")
    pixel_values = torch.randn(1, 3, 64, 64)
    pixel_values[0, 0, 0, 0], pixel_values[0, 2, 9, 9] = float("inf"), -float("inf")
    with pytest.raises(ValueError, match=r"2 non-finite value\(s\)"):
        model(pixel_values=pixel_values)
    huge = torch.full((1, 3, 64, 64), 3e38)  # the sum overflows, every value is finite
    with torch.no_grad():
        model(pixel_values=huge)
    half = torch.full((1, 3, 64, 64), 60000.0, dtype=torch.float16)  # a float16 sum would overflow
    with torch.no_grad():
        assert model(pixel_values=half).logits.dtype == torch.float32


def test_processor_rejects_empty_input_and_warns_on_rescaled_images(caplog):
    processor = SegformerImageProcessor()
    with pytest.raises(ValueError, match="empty list"):
        processor([], return_tensors="pt")
    with pytest.raises(ValueError, match=r"Image 0 is empty \(shape \(0, 0, 3\)\)"):
        processor(np.zeros((0, 0, 3), np.uint8), return_tensors="pt")
    from transformers.utils import logging as hf_logging

    logger = hf_logging.get_logger("hf_segmodels.image_processing")
    logger.warning_once.cache_clear()
    hf_logging.enable_propagation()
    try:
        with caplog.at_level(logging.WARNING):
            processor(np.random.rand(3, 40, 50).astype(np.float32), return_tensors="pt")
        assert "already rescaled images" in caplog.text
    finally:
        hf_logging.disable_propagation()


def test_zero_target_sizes_are_rejected():
    model, processor = tiny_model("segformer"), SegformerImageProcessor()
    with torch.no_grad():
        outputs = model(pixel_values=torch.randn(1, 3, 64, 64))
    with pytest.raises(ValueError, match=r"target_sizes\[0\] = \(0, 0\)"):
        processor.post_process_semantic_segmentation(outputs, target_sizes=[(0, 0)])
    with pytest.raises(ValueError, match=r"target_sizes\[0\] = \(0, 5\)"):
        processor.post_process_panoptic_segmentation(outputs, target_sizes=[(0, 5)])


# ------------------------------------------------------------------------------------------------------------------
# 6. id2label with gaps
# ------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("config_class", [SegmenterConfig, SetrConfig, SegformerConfig, MaskFormerConfig])
def test_id2label_with_gaps_is_rejected_when_created_and_loaded(config_class, tmp_path):
    gaps = {0: "a", 1: "b", 2: "c", 3: "d", 7: "e"}
    # transformers' strict configs wrap the ValueError of a class validator in their own error type
    invalid = (ValueError, StrictDataclassError)
    with pytest.raises(invalid, match=r"keys 0 \.\. 4 .* without gaps, got \[0, 1, 2, 3, 7\]; missing \[4\]"):
        config_class(id2label=gaps)
    config_class(num_labels=5).save_pretrained(tmp_path)
    data = json.loads((tmp_path / "config.json").read_text())
    data["id2label"] = {str(k): v for k, v in gaps.items()}
    data["label2id"] = {v: k for k, v in gaps.items()}
    (tmp_path / "config.json").write_text(json.dumps(data))
    from transformers import AutoConfig

    with pytest.raises(invalid, match="without gaps"):
        AutoConfig.from_pretrained(tmp_path)


# ------------------------------------------------------------------------------------------------------------------
# Checkpoints and output folders
# ------------------------------------------------------------------------------------------------------------------


def _converters():
    from hf_segmodels.segformer.convert_segformer import convert_segformer_checkpoint
    from hf_segmodels.segmenter.convert_segmenter import convert_segmenter_checkpoint
    from hf_segmodels.setr.convert_setr import convert_setr_checkpoint

    return {
        "segmenter": lambda path: convert_segmenter_checkpoint(path, GOLDEN / "segmenter" / "mask_tiny" / "variant.yml"),
        "setr": lambda path: convert_setr_checkpoint(path, GOLDEN / "setr" / "setr_pup_tiny" / "config.py", "mmseg"),
        "segformer": lambda path: convert_segformer_checkpoint(path),
    }


@pytest.mark.parametrize("content", ["list", "tensor", "none_state_dict"])
def test_checkpoints_that_are_not_dicts_are_clear_errors(content, tmp_path):
    value = {"list": [torch.zeros(2)], "tensor": torch.zeros(2), "none_state_dict": {"state_dict": None}}[content]
    path = tmp_path / "bad.pth"
    torch.save(value, path)
    for name, convert in _converters().items():
        with pytest.raises(ConversionError, match=r"bad\.pth.*(not a checkpoint|expected a state dict)"):
            convert(path)


def test_segformer_checkpoint_of_another_source_names_it():
    from hf_segmodels.segformer.convert_segformer import convert_segformer_checkpoint

    with pytest.raises(ConversionError, match="looks like an mmsegmentation 1.x checkpoint.*--source mmseg"):
        convert_segformer_checkpoint(GOLDEN / "segformer" / "segformer_mitb0ish_tiny" / "checkpoint.pth")
    with pytest.raises(ConversionError, match=r"looks like an NVlabs/SegFormer \(original\).*--source original"):
        convert_segformer_checkpoint(GOLDEN / "segformer" / "segformer_original_tiny" / "checkpoint.pth",
                                     source="mmseg")


def test_unwritable_conversion_output_is_a_clear_error(tmp_path, monkeypatch):
    model = SegformerForSemanticSegmentation(SegformerConfig(num_labels=2, depths=[1, 1, 1, 1]))
    processor = SegformerImageProcessor()
    (tmp_path / "file").write_text("")
    with pytest.raises(ConversionError, match="a parent path is a file"):
        save_converted(tmp_path / "file" / "out", model, processor)
    with pytest.raises(ConversionError, match="is a file"):
        save_converted(tmp_path / "file", model, processor)

    import errno
    import tempfile

    def read_only(*args, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(tempfile, "mkdtemp", read_only)
    with pytest.raises(ConversionError, match="Read-only file system"):
        save_converted(tmp_path / "new", model, processor)


def test_converted_folders_follow_the_umask(tmp_path):
    model = SegformerForSemanticSegmentation(SegformerConfig(num_labels=2, depths=[1, 1, 1, 1]))
    previous = os.umask(0o022)
    try:
        output = save_converted(tmp_path / "out", model, SegformerImageProcessor())
    finally:
        os.umask(previous)
    assert output.stat().st_mode & 0o777 == 0o755


# ------------------------------------------------------------------------------------------------------------------
# Metrics with nothing to measure
# ------------------------------------------------------------------------------------------------------------------


def test_metrics_without_valid_pixels_warn_and_write_null_with_the_reason():
    metric = SegmentationMetric(num_labels=3)
    metric.update(torch.zeros(1, 4, 4, dtype=torch.long), torch.full((1, 4, 4), 255))
    with pytest.warns(RuntimeWarning, match="no valid pixel"):
        results = metric.compute()
    assert np.isnan(results["mean_iou"])
    data = metrics_to_json(results, {0: "a", 1: "b", 2: "c"})
    assert data["mean_iou"] is None and "no valid pixel" in data["warning"]
    json.dumps(data, allow_nan=False)

    panoptic = PanopticQualityMetric(num_labels=3)
    with pytest.warns(RuntimeWarning, match="no segment"):
        assert np.isnan(panoptic.compute()["pq"])


# ------------------------------------------------------------------------------------------------------------------
# MaskFormer
# ------------------------------------------------------------------------------------------------------------------


def test_maskformer_input_too_small_for_its_group_norms_is_a_clear_error():
    model = tiny_model("maskformer")
    with torch.no_grad():
        model(pixel_values=torch.randn(1, 3, 33, 64))  # a 2 x 2 coarsest map is enough
        with pytest.raises(ValueError, match=r"input of size \(32, 32\) is too small .* coarsest feature map is 1x1"):
            model(pixel_values=torch.randn(1, 3, 32, 32))


def test_maskformer_post_processing_rejects_zero_target_sizes():
    from hf_segmodels import MaskFormerImageProcessor

    model, processor = tiny_model("maskformer"), MaskFormerImageProcessor()
    with torch.no_grad():
        outputs = model(pixel_values=torch.randn(1, 3, 64, 64))
    for method in ("semantic", "panoptic", "instance"):
        with pytest.raises(ValueError, match=r"target_sizes\[0\] = \(0, 0\)"):
            getattr(processor, f"post_process_{method}_segmentation")(outputs, target_sizes=[(0, 0)])


@pytest.mark.parametrize("content", ["list", "tensor"])
def test_maskformer_checkpoint_that_is_not_a_dict_is_a_clear_error(content, tmp_path):
    from hf_segmodels.maskformer.convert_maskformer import convert_original_checkpoint

    path = tmp_path / "bad.pth"
    torch.save([torch.zeros(2)] if content == "list" else torch.zeros(2), path)
    with pytest.raises(ConversionError, match=r"bad\.pth.* not a checkpoint"):
        convert_original_checkpoint(path, GOLDEN / "maskformer" / "r50_base" / "config.yaml")
