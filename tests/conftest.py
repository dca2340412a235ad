from pathlib import Path

import pytest
import torch

GOLDEN_DIR = Path(__file__).resolve().parents[2] / "shared" / "golden"


@pytest.fixture(scope="session")
def golden_dir() -> Path:
    if not GOLDEN_DIR.is_dir():
        raise FileNotFoundError(f"Golden fixtures not found at {GOLDEN_DIR} (expected ../shared/golden beside the repo).")
    return GOLDEN_DIR


@pytest.fixture(autouse=True)
def _deterministic():
    """Same seed for every test, and plain eager kernels after a test that used `hf_segmodels.fastest` (which lets
    linear products pick their kernel by measurement for the rest of the process)."""
    from hf_segmodels import onednn

    torch.manual_seed(0)
    measuring = onednn.measuring
    yield
    onednn.measuring = measuring
