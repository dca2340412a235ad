"""transformers' own common testers (`ModelTesterMixin`, `ConfigTester`, `ImageProcessingTestMixin`), taken from the
source distribution of the installed transformers version.

They are a test dependency, never copied into this repository: `ensure_transformers_tests()` downloads the sdist
once (`pip download --no-binary :all: --no-deps transformers==<installed>`) into a cache folder, unpacks its
`tests/` folder as the package `transformers_tests` and puts that folder on `sys.path`. `.ci/run` calls
`python tests/transformers_common.py` to fill the cache before pytest. Without the sdist (offline, no cache) the
tests that need it skip with one line saying so.

The sdist holds the common test modules but not four modules they import (`tests/utils/test_configuration_utils.py`,
`tests/exporters/test_export.py`, `tests/generation/test_utils.py`, `utils/fetch_hub_objects_for_ci.py`); small
stand-ins for those are written beside them (`_STAND_INS`, `_UTILS_STAND_INS`): none of our models generates text,
and `torch.export` is tested in our own files.
"""

import importlib
import os
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

import transformers

VERSION = transformers.__version__
CACHE_DIR = Path(
    os.environ.get("HF_SEGMODELS_TRANSFORMERS_TESTS_CACHE", Path.home() / ".cache" / "hf_segmodels" / "transformers-tests")
) / VERSION
PACKAGE = "transformers_tests"

_STAND_INS = {
    # The keyword arguments that `ConfigTester.check_config_arguments_init` passes to a config and reads back: every
    # attribute of transformers 5's `PreTrainedConfig`, each with a non-default value.
    "utils/test_configuration_utils.py": '''config_common_kwargs = {
    "return_dict": False,
    "output_hidden_states": True,
    "output_attentions": True,
    "dtype": "float16",
    "chunk_size_feed_forward": 5,
    "architectures": ["BertModel"],
    "id2label": {0: "label"},
    "label2id": {"label": "0"},
    "problem_type": "regression",
}
''',
    # `ModelTesterMixin` inherits this; an empty mixin means that the export tests of transformers' full test tree
    # are not run here (tests/test_transformers_conformance.py exports our models itself).
    "exporters/test_export.py": "class ExportTesterMixin:\n    pass\n",
    # Only consulted to check that a generative model's tester inherits it; none of ours generates.
    "generation/test_utils.py": "class GenerationTesterMixin:\n    pass\n",
}
# test_image_processing_common.py imports this from `<sdist>/utils/` (not in the sdist): it maps the URL of a Hub
# fixture image to a local copy in transformers' CI. Here the URL stays a URL (those tests need the Hub).
_UTILS_STAND_INS = {"fetch_hub_objects_for_ci.py": "def url_to_local_path(url, **kwargs):\n    return url\n"}


def _download_sdist(target: Path) -> Path:
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "--quiet", "--disable-pip-version-check", "--no-binary",
             ":all:", "--no-deps", f"transformers=={VERSION}", "-d", tmp],
            check=True, capture_output=True, timeout=600,
        )  # fmt: skip
        archive = next(Path(tmp).glob("transformers-*.tar.gz"))
        staging = Path(tempfile.mkdtemp(dir=target.parent))
        prefix = f"transformers-{VERSION}/tests/"
        with tarfile.open(archive) as tar:
            members = [m for m in tar.getmembers() if m.name.startswith(prefix) and m.isfile()]
            for member in members:
                member.name = member.name[len(prefix):]
            tar.extractall(staging / PACKAGE, members=members, filter="data")
    return staging


def ensure_transformers_tests() -> Path | None:
    """Returns the folder to put on `sys.path` for `import transformers_tests`, downloading it if needed; None if the
    sdist cannot be obtained."""
    if (CACHE_DIR / PACKAGE / "test_modeling_common.py").is_file():
        return CACHE_DIR
    CACHE_DIR.parent.mkdir(parents=True, exist_ok=True)
    try:
        staging = _download_sdist(CACHE_DIR)
    except (subprocess.SubprocessError, OSError, StopIteration):
        return None
    package = staging / PACKAGE
    (package / "__init__.py").touch()
    for relative, text in _STAND_INS.items():
        path = package / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        (path.parent / "__init__.py").touch()
        if not path.exists():
            path.write_text(text, encoding="utf-8")
    (staging / "utils").mkdir()
    for name, text in _UTILS_STAND_INS.items():
        (staging / "utils" / name).write_text(text, encoding="utf-8")
    try:
        staging.rename(CACHE_DIR)  # atomic: a concurrent run either sees the whole folder or none
    except OSError:
        pass
    return CACHE_DIR if CACHE_DIR.is_dir() else None


SKIP_REASON = (
    f"transformers {VERSION}'s common tests are unavailable (its sdist could not be downloaded from PyPI into "
    f"{CACHE_DIR}; run `python tests/transformers_common.py` online)"
)


def import_common(module: str):
    """`transformers_tests.<module>`; skips the calling test module (one line saying why) when it is unavailable."""
    import pytest

    root = ensure_transformers_tests()
    if root is None:
        pytest.skip(SKIP_REASON, allow_module_level=True)
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))
    try:
        return importlib.import_module(f"{PACKAGE}.{module}")
    except ImportError as error:
        pytest.skip(f"transformers' common tests need {error.name!r} (pip install -e '.[dev]')", allow_module_level=True)


if __name__ == "__main__":
    folder = ensure_transformers_tests()
    if folder is None:
        sys.exit(SKIP_REASON)
    print(f"transformers {VERSION} common tests in {folder / PACKAGE}")
