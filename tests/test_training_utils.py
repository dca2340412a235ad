"""Helpers shared by the end-to-end training / evaluation tests (no tests here): the synthetic dataset on disk,
`accelerate launch` of examples/train.py, runs memoised for the whole session, in-process evaluate.py."""

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

from safetensors.torch import load_file

from hf_segmodels.training.synthetic import CLASSES, make_dataset

ROOT = Path(__file__).resolve().parents[1]
TRAIN = ROOT / "examples" / "train.py"
EVALUATE = ROOT / "examples" / "evaluate.py"

# 16 training images of 64 x 64 = 4 batches of 4 per epoch: 8 steps are 2 epochs, so resuming crosses an epoch.
SEGMENTER_ARGS = [
    "--model_type", "segmenter", "--config_name", "tiny", "--crop_size", "32", "--max_train_steps", "8",
    "--per_device_train_batch_size", "4", "--checkpointing_steps", "2", "--learning_rate", "0.01", "--seed", "0",
    "--report_to", "none",
]
ARCHITECTURE_ARGS = {
    "segmenter": SEGMENTER_ARGS,
    "setr": ["--model_type", "setr", "--config_name", "tiny", "--crop_size", "32", "--learning_rate", "0.01"],
    "segformer": ["--model_type", "segformer", "--config_name", "tiny", "--crop_size", "32", "--learning_rate", "1e-3"],
    # MaskFormer's tiny ResNet reaches stride 32: it needs 64 x 64 inputs for its GroupNorms.
    "maskformer": ["--model_type", "maskformer", "--config_name", "tiny", "--crop_size", "64", "--learning_rate", "1e-3",
                   "--max_grad_norm", "1.0"],
}
COMMON = ["--max_train_steps", "8", "--per_device_train_batch_size", "4", "--seed", "0", "--report_to", "none"]
LAUNCH = ["--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]

_RUNS: dict = {}


def dataset_dir(tmp_path_factory) -> Path:
    """The synthetic dataset (train 16, validation 8, 64 x 64) saved with `DatasetDict.save_to_disk`, plus its
    id2label.json."""
    if "dataset" not in _RUNS:
        path = tmp_path_factory.mktemp("synthetic") / "data"
        make_dataset(num_train=16, num_validation=8, size=64, seed=0).save_to_disk(str(path))
        (path / "id2label.json").write_text(json.dumps(dict(enumerate(CLASSES))))
        _RUNS["dataset"] = path
    return _RUNS["dataset"]


def launch(args: list[str], num_processes: int = 1, timeout: float = 300, **popen) -> subprocess.CompletedProcess:
    """`accelerate launch ... examples/train.py args`; several CPU processes go through torchrun (`--multi_gpu`),
    which train.py joins into a gloo group (accelerate's `--cpu` launcher starts a single process)."""
    mode = ["--cpu", "--num_processes", "1"] if num_processes == 1 else ["--multi_gpu", "--num_processes",
                                                                          str(num_processes)]
    command = [sys.executable, "-m", "accelerate.commands.launch", *mode, *LAUNCH, str(TRAIN), *args]
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", "HF_DATASETS_DISABLE_PROGRESS_BARS": "1"}
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=timeout, env=env, **popen)
    if result.returncode != 0:
        raise AssertionError(f"train.py failed ({result.returncode}):\n{result.stdout[-3000:]}\n{result.stderr[-6000:]}")
    return result


def trained(name: str, tmp_path_factory) -> Path:
    """Output folder of a (memoised) single-process run of `name` ("segmenter", "setr", ...)."""
    if name not in _RUNS:
        output = tmp_path_factory.mktemp(f"train_{name}")
        args = ARCHITECTURE_ARGS[name] if name == "segmenter" else ARCHITECTURE_ARGS[name] + COMMON
        launch([*args, "--dataset_name", str(dataset_dir(tmp_path_factory)), "--output_dir", str(output)])
        _RUNS[name] = output
    return _RUNS[name]


def losses(output_dir: Path) -> list[float]:
    return [json.loads(line)["loss"] for line in (output_dir / "train_log.jsonl").read_text().splitlines()]


def weights(output_dir: Path) -> dict:
    return load_file(output_dir / "model.safetensors")


def run_evaluate(argv: list[str]) -> dict:
    """examples/evaluate.py in this process; returns its JSON output."""
    spec = importlib.util.spec_from_file_location("evaluate_example", EVALUATE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.main(argv)
    output = argv[argv.index("--output_json") + 1]
    return json.loads(Path(output).read_text())


def load_train_module():
    spec = importlib.util.spec_from_file_location("train_example", TRAIN)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
