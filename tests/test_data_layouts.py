"""The data layouts examples/train.py reads without code: a folder of images and a folder of masks (optionally per
split folder), a dataset without a validation split, streamed data (with exact resume), and what a published training
folder leaves out."""

import json

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from hf_segmodels.hub import plan_upload
from hf_segmodels.training.data import load_image_mask_folders, load_splits, load_streaming_splits
from hf_segmodels.training.synthetic import CLASSES, make_dataset
from test_training_utils import load_train_module

TINY = ["--model_type", "segformer", "--config_name", "tiny", "--crop_size", "32", "--per_device_train_batch_size",
        "2", "--report_to", "none", "--seed", "0", "--learning_rate", "1e-3", "--id2label", json.dumps(CLASSES)]


def write_folders(root, splits=("train", "validation"), count=4, image_suffix=".jpg", nested=True):
    """images/ + masks/ (inside each split folder when `nested`) from the synthetic dataset."""
    data = make_dataset(num_train=count, num_validation=count, size=64, seed=0)
    for split in splits:
        base = root / split if nested else root
        (base / "images").mkdir(parents=True, exist_ok=True)
        (base / "masks").mkdir(parents=True, exist_ok=True)
        for index, example in enumerate(data[split]):
            example["image"].save(base / "images" / f"{split}_{index}{image_suffix}")
            example["annotation"].save(base / "masks" / f"{split}_{index}.png")
    return data


def test_images_and_masks_folders_load_as_splits(tmp_path):
    data = write_folders(tmp_path / "nested", image_suffix=".png")
    splits = load_splits(str(tmp_path / "nested"))
    assert sorted(splits) == ["train", "validation"] and len(splits["train"]) == 4
    example = splits["validation"][2]
    assert np.array_equal(np.asarray(example["image"]), np.asarray(data["validation"][2]["image"]))
    assert np.array_equal(np.asarray(example["annotation"]), np.asarray(data["validation"][2]["annotation"]))

    write_folders(tmp_path / "flat", splits=("train",), nested=False)
    assert list(load_splits(str(tmp_path / "flat"))) == ["train"]
    assert load_image_mask_folders(tmp_path / "flat" / "images") is None  # no images/ + masks/ inside


def test_unmatched_names_are_a_clear_error(tmp_path):
    write_folders(tmp_path, splits=("train",), nested=False)
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "images" / "extra.jpg")
    (tmp_path / "masks" / "train_1.png").rename(tmp_path / "masks" / "renamed.png")
    with pytest.raises(ValueError, match=r"2 image\(s\) in .* without a mask: \['extra', 'train_1'\]; 1 mask\(s\) .* "
                                         r"without an image: \['renamed'\]"):
        load_splits(str(tmp_path))


def test_train_on_image_and_mask_folders_without_a_validation_split(tmp_path, capsys):
    write_folders(tmp_path / "data", splits=("train",))
    output = tmp_path / "out"
    load_train_module().main([*TINY, "--dataset_name", str(tmp_path / "data"), "--output_dir", str(output),
                              "--max_train_steps", "2"])
    assert "no validation runs" in capsys.readouterr().out
    assert (output / "model.safetensors").is_file()
    assert "eval_mean_iou" not in json.loads((output / "all_results.json").read_text())
    # an explicitly named split that does not exist is still an error
    with pytest.raises(ValueError, match="no split 'validation'"):
        load_train_module().main([*TINY, "--dataset_name", str(tmp_path / "data"), "--output_dir",
                                  str(tmp_path / "out2"), "--max_train_steps", "1", "--validation_split", "validation"])


def test_streaming_trains_and_resumes_exactly(tmp_path):
    make_dataset(num_train=8, num_validation=2, size=64, seed=0).save_to_disk(str(tmp_path / "data"))
    args = [*TINY, "--dataset_name", str(tmp_path / "data"), "--streaming", "--shuffle_buffer_size", "4",
            "--max_train_steps", "6", "--checkpointing_steps", "2"]
    assert sorted(load_streaming_splits(str(tmp_path / "data"))) == ["train", "validation"]
    load_train_module().main([*args, "--output_dir", str(tmp_path / "full")])
    full = [json.loads(line) for line in (tmp_path / "full" / "train_log.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in full] == [0, 0, 0, 0, 1, 1]  # 8 examples = 4 batches per pass over the stream
    assert "eval_mean_iou" in json.loads((tmp_path / "full" / "all_results.json").read_text())
    # resumed mid-epoch (step 2) and at an epoch's end (step 4): the same losses and weights
    for step in (2, 4):
        resumed = tmp_path / f"resumed_{step}"
        load_train_module().main([*args, "--output_dir", str(resumed), "--resume_from_checkpoint",
                                  str(tmp_path / "full" / f"step_{step}")])
        losses = [json.loads(line)["loss"] for line in (resumed / "train_log.jsonl").read_text().splitlines()]
        assert losses == [r["loss"] for r in full[step:]]
        first, second = load_file(tmp_path / "full" / "model.safetensors"), load_file(resumed / "model.safetensors")
        assert all(torch.equal(first[key], second[key]) for key in first)


def test_streaming_needs_max_train_steps(tmp_path):
    with pytest.raises(SystemExit):
        load_train_module().main([*TINY, "--dataset_name", str(tmp_path), "--output_dir", str(tmp_path / "o"),
                                  "--streaming"])


def test_upload_of_a_training_folder_leaves_out_its_training_state(tmp_path):
    for name in ("config.json", "model.safetensors", "preprocessor_config.json", "README.md", "all_results.json",
                 "train_log.jsonl", "step_4/optimizer.bin", "step_4/random_states_0.pkl", ".tmp_step_6/model.safetensors"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text("x")
    plan = plan_upload(tmp_path, "org/model")
    assert sorted(f.path_in_repo for f in plan.files) == ["README.md", "all_results.json", "config.json", "model.safetensors",
                                                   "preprocessor_config.json"]
