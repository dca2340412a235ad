"""End-to-end tests of examples/train.py under `accelerate launch` on a tiny synthetic dataset written with
`DatasetDict.save_to_disk`: every architecture trains, resuming gives the uninterrupted run's weights, a SIGKILLed run
resumes from its last complete checkpoint, two processes match one, and bad input fails with clear errors."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from datasets import Dataset, DatasetDict, Features, Image
from transformers import AutoModelForSemanticSegmentation

from test_training_utils import (
    ARCHITECTURE_ARGS,
    LAUNCH,
    ROOT,
    SEGMENTER_ARGS,
    TRAIN,
    dataset_dir,
    launch,
    load_train_module,
    losses,
    run_evaluate,
    trained,
    weights,
)


def assert_same_weights(first, second, atol=1e-6):
    assert first.keys() == second.keys()
    for key in first:
        torch.testing.assert_close(first[key], second[key], atol=atol, rtol=0, msg=key)


@pytest.mark.parametrize("name", list(ARCHITECTURE_ARGS))
def test_each_architecture_trains_saves_and_evaluates(name, tmp_path_factory, tmp_path):
    output = trained(name, tmp_path_factory)
    history = losses(output)
    assert len(history) == 8
    assert sum(history[-2:]) < sum(history[:2]), f"{name} loss did not decrease: {history}"
    for file in ("config.json", "model.safetensors", "preprocessor_config.json", "README.md", "all_results.json"):
        assert (output / file).is_file(), file
    assert sorted(p.name for p in output.glob("step_*")) == (
        ["step_2", "step_4", "step_6", "step_8"] if name == "segmenter" else ["step_8"]
    )
    results = json.loads((output / "all_results.json").read_text())
    card = (output / "README.md").read_text()
    assert "mean_iou" in card and f"{100 * results['eval_mean_iou']:.2f}" in card
    model = AutoModelForSemanticSegmentation.from_pretrained(output)
    assert model.config.model_type == f"segmodels_{name}" and model.config.id2label[3] == "triangle"

    # evaluate.py reads the result and, on the same data, finds the same numbers as train.py's final evaluation
    evaluated = run_evaluate(["--model_name_or_path", str(output), "--dataset_name",
                              str(dataset_dir(tmp_path_factory)), "--output_json", str(tmp_path / "eval.json")])
    assert evaluated["mean_iou"] == pytest.approx(results["eval_mean_iou"], abs=1e-12)
    assert evaluated["per_category_iou"] == pytest.approx(results["eval_per_category_iou"], abs=1e-12)


def test_resume_from_a_step_checkpoint_gives_the_uninterrupted_weights(tmp_path_factory, tmp_path):
    uninterrupted = trained("segmenter", tmp_path_factory)
    data = str(dataset_dir(tmp_path_factory))
    # step_2 is mid-epoch (batches are skipped); the resumed run writes into another output folder
    launch([*SEGMENTER_ARGS, "--dataset_name", data, "--output_dir", str(tmp_path / "resumed"),
            "--resume_from_checkpoint", str(uninterrupted / "step_2")])
    assert_same_weights(weights(uninterrupted), weights(tmp_path / "resumed"))
    assert losses(tmp_path / "resumed") == losses(uninterrupted)[2:]


def test_sigkilled_run_resumes_from_its_last_complete_checkpoint(tmp_path_factory, tmp_path):
    uninterrupted = trained("segmenter", tmp_path_factory)
    output = tmp_path / "killed"
    command = [sys.executable, "-m", "accelerate.commands.launch", "--cpu", "--num_processes", "1", *LAUNCH,
               str(TRAIN), *SEGMENTER_ARGS, "--dataset_name", str(dataset_dir(tmp_path_factory)),
               "--output_dir", str(output)]
    process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               start_new_session=True)
    try:
        deadline = time.monotonic() + 240
        while not (output / "step_2" / "training_state.json").is_file():
            assert process.poll() is None, "the run ended before it could be killed"
            assert time.monotonic() < deadline, "no checkpoint appeared"
            time.sleep(0.02)
    finally:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    assert not (output / "model.safetensors").exists(), "the run finished before SIGKILL"
    # a save interrupted at its worst moments: a half-written temporary folder and a step folder without its state
    (output / ".tmp_step_6").mkdir(exist_ok=True)
    (output / ".tmp_step_6" / "model.safetensors").write_bytes(b"truncated")
    (output / "step_7").mkdir()
    launch([*SEGMENTER_ARGS, "--dataset_name", str(dataset_dir(tmp_path_factory)), "--output_dir", str(output),
            "--resume_from_checkpoint", "latest"])
    assert_same_weights(weights(uninterrupted), weights(output))
    assert not (output / ".tmp_step_6").exists()


def test_two_processes_train_and_evaluate_like_one(tmp_path_factory, tmp_path):
    data = str(dataset_dir(tmp_path_factory))
    output = tmp_path / "two"
    args = [*SEGMENTER_ARGS, "--dataset_name", data, "--output_dir", str(output), "--per_device_train_batch_size", "2"]
    launch(args, num_processes=2)
    results = json.loads((output / "all_results.json").read_text())
    assert results["num_processes"] == 2
    assert (output / "step_8" / "random_states_1.pkl").is_file()
    # the distributed evaluation (4 images per process, per-image counts gathered) equals a one-process evaluation
    single = run_evaluate(["--model_name_or_path", str(output), "--dataset_name", data,
                           "--output_json", str(tmp_path / "single.json")])
    assert single["mean_iou"] == pytest.approx(results["eval_mean_iou"], abs=1e-12)
    assert single["overall_accuracy"] == pytest.approx(results["eval_overall_accuracy"], abs=1e-12)
    assert single["per_category_iou"] == pytest.approx(results["eval_per_category_iou"], abs=1e-12)
    history = losses(output)
    assert len(history) == 8 and sum(history[-2:]) < sum(history[:2])


# ------------------------------------------------------------------------------------------------------------------
# Bad input (in-process)
# ------------------------------------------------------------------------------------------------------------------


def run_train(argv):
    load_train_module().main(argv)


def test_bad_input_fails_with_clear_errors(tmp_path_factory, tmp_path):
    data = str(dataset_dir(tmp_path_factory))
    base = ["--model_type", "segmenter", "--config_name", "tiny", "--crop_size", "32", "--max_train_steps", "1",
            "--per_device_train_batch_size", "2", "--report_to", "none", "--dataset_name", data]
    with pytest.raises(ValueError, match=r"no column\(s\) \['label'\]; available columns: \['image', 'annotation'\]"):
        run_train([*base, "--label_column", "label", "--output_dir", str(tmp_path / "a")])
    with pytest.raises(FileNotFoundError, match="does not exist"):
        run_train([*base, "--output_dir", str(tmp_path / "b"), "--resume_from_checkpoint", str(tmp_path / "nothing")])
    with pytest.raises(FileNotFoundError, match="no complete checkpoint"):
        run_train([*base, "--output_dir", str(tmp_path / "c"), "--resume_from_checkpoint", "latest"])
    with pytest.raises(ValueError, match=r"Example \d+ of the 'train' split has label values \[3\] outside \[0, 3\)"):
        run_train([*base, "--output_dir", str(tmp_path / "d"), "--id2label", '["a", "b", "c"]'])
    with pytest.raises(ValueError, match="no split 'valid'; available splits"):
        run_train([*base, "--output_dir", str(tmp_path / "e"), "--validation_split", "valid"])
    empty = tmp_path / "empty"
    features = Features({"image": Image(), "annotation": Image()})
    DatasetDict({"train": Dataset.from_dict({"image": [], "annotation": []}, features=features)}).save_to_disk(
        str(empty)
    )
    with pytest.raises(ValueError, match=r"has empty split\(s\) \['train'\] \(0 examples\)"):
        run_train([*base[:-1], str(empty), "--output_dir", str(tmp_path / "f"), "--id2label", '["a", "b", "c", "d"]'])


# ------------------------------------------------------------------------------------------------------------------
# Convergence (slow)
# ------------------------------------------------------------------------------------------------------------------

# The papers' recipes are tuned for 160k-step schedules; a few hundred CPU steps need AdamW at a higher rate.
CONVERGENCE = {
    "segmenter": ["--model_type", "segmenter", "--config_name", "tiny", "--optimizer", "adamw", "--learning_rate",
                  "2e-3", "--weight_decay", "0.01", "--max_train_steps", "600"],
    "setr": ["--model_type", "setr", "--config_name", "tiny", "--optimizer", "adamw", "--learning_rate", "2e-3",
             "--weight_decay", "0.01", "--head_lr_multiplier", "1", "--max_train_steps", "600"],
    "segformer": ["--model_type", "segformer", "--config_name", "tiny", "--learning_rate", "2e-3",
                  "--max_train_steps", "1000"],
    "maskformer": ["--model_type", "maskformer", "--config_name", "tiny", "--learning_rate", "1e-3",
                   "--backbone_lr_multiplier", "1", "--max_grad_norm", "1.0", "--max_train_steps", "2000"],
}


@pytest.mark.slow
@pytest.mark.parametrize("name", list(CONVERGENCE))
def test_tiny_model_converges_on_synthetic_data(name, tmp_path):
    from hf_segmodels.training.synthetic import CLASSES, make_dataset

    data = tmp_path / "data"
    make_dataset(num_train=400, num_validation=50, size=64, seed=0).save_to_disk(str(data))
    (data / "id2label.json").write_text(json.dumps(dict(enumerate(CLASSES))))
    output = tmp_path / "out"
    launch([*CONVERGENCE[name], "--dataset_name", str(data), "--output_dir", str(output), "--crop_size", "64",
            "--per_device_train_batch_size", "8", "--ratio_range", "0.75", "1.5", "--report_to", "none",
            "--seed", "0"], timeout=1800)
    results = json.loads((output / "all_results.json").read_text())
    assert results["eval_mean_iou"] >= 0.80, results
