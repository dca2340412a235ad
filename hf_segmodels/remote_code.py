"""`trust_remote_code` support: save_pretrained writes an `auto_map` and a flat copy of the code it needs.

transformers' own `custom_object_save` only follows imports from the same folder (`from .x import y`), while our
architectures import shared modules from the parent package (`from ..layers import ...`). The mixins below save the
class's module and every module of this package it imports (recursively) side by side, rewriting `from ..x` to
`from .x`, so a repository loads with `trust_remote_code=True` where `hf_segmodels` is not installed.
"""

import json
import re
import sys
from pathlib import Path

_PACKAGE_ROOT = Path(__file__).resolve().parent
_OUR_MODULES = {path.stem for path in _PACKAGE_ROOT.rglob("*.py")} - {"__init__"}
_RELATIVE_IMPORT = re.compile(r"^(\s*from\s+)(\.+)([\w.]*)(\s+import\b)", flags=re.MULTILINE)


def _module_file(module_name: str) -> Path:
    return Path(sys.modules[module_name].__file__).resolve()


def _resolve(source: Path, dots: str, name: str) -> Path:
    base = source.parent
    for _ in range(len(dots) - 1):
        base = base.parent
    target = base.joinpath(*name.split("."))
    return target / "__init__.py" if target.is_dir() else target.with_suffix(".py")


def write_flat_code(module_name: str, save_directory: str | Path) -> None:
    """Copies the module `module_name` of this package, and every package module it imports relatively, into
    `save_directory` as flat sibling files."""
    pending, seen = [_module_file(module_name)], set()
    while pending:
        source = pending.pop()
        if source in seen:
            continue
        seen.add(source)
        text = source.read_text(encoding="utf-8")

        def rewrite(match: re.Match) -> str:
            target = _resolve(source, match.group(2), match.group(3))
            if _PACKAGE_ROOT not in target.parents or target.name == "__init__.py":
                raise ValueError(f"{source.name} imports {target}, which cannot be shipped as remote code.")
            pending.append(target)
            return f"{match.group(1)}.{target.stem}{match.group(4)}"

        text = _RELATIVE_IMPORT.sub(rewrite, text)
        (Path(save_directory) / source.name).write_text(text, encoding="utf-8")


def _add_auto_map(json_path: Path, auto_map: dict[str, str]) -> None:
    data = json.loads(json_path.read_text(encoding="utf-8"))
    data["auto_map"] = {**data.get("auto_map", {}), **auto_map}
    json_path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def _reference(cls) -> str:
    return f"{cls.__module__.rsplit('.', 1)[-1]}.{cls.__name__}"


class _WithoutTransformersCodeCopy:
    """Hides the classes' `_auto_class` from transformers' `custom_object_save` while saving (it cannot copy our
    code); the class attribute is swapped because transformers reads it through a classmethod."""

    def __init__(self, *objects):
        self.saved = {type(obj): type(obj).__dict__.get("_auto_class") for obj in objects if obj is not None}

    def __enter__(self):
        for cls in self.saved:
            cls._auto_class = None

    def __exit__(self, *exc_info):
        for cls, value in self.saved.items():
            if value is None:
                del cls._auto_class
            else:
                cls._auto_class = value


def _auto_class(obj) -> str | None:
    return type(obj)._auto_class


class RemoteCodeModelMixin:
    """For `PreTrainedModel` subclasses registered with `register_for_auto_class`."""

    def save_pretrained(self, save_directory, *args, **kwargs):
        model_auto_class, config_auto_class = _auto_class(self), _auto_class(self.config)
        with _WithoutTransformersCodeCopy(self, self.config):
            result = super().save_pretrained(save_directory, *args, **kwargs)
        if model_auto_class is not None and kwargs.get("is_main_process", True):
            config_class = type(self.config)
            auto_map = {model_auto_class: _reference(type(self))}
            if config_auto_class is not None:
                auto_map[config_auto_class] = _reference(config_class)
                write_flat_code(config_class.__module__, save_directory)
            write_flat_code(type(self).__module__, save_directory)
            _add_auto_map(Path(save_directory) / "config.json", auto_map)
        return result


class _RemoteCodeJsonMixin:
    """Saves the flat code of the object's class and adds its `auto_map` entry to `_remote_code_json`."""

    _remote_code_json = "config.json"

    def save_pretrained(self, save_directory, *args, **kwargs):
        auto_class = _auto_class(self)
        with _WithoutTransformersCodeCopy(self):
            result = super().save_pretrained(save_directory, *args, **kwargs)
        if auto_class is not None:
            write_flat_code(type(self).__module__, save_directory)
            _add_auto_map(Path(save_directory) / self._remote_code_json, {auto_class: _reference(type(self))})
        return result


def _is_our_reference(reference) -> bool:
    """True for an `auto_map` value that names a class of a module of this package (as `save_pretrained` writes it)."""
    if not isinstance(reference, str) or "--" in reference or "." not in reference:
        return False
    return reference.rsplit(".", 1)[0] in _OUR_MODULES


def without_our_auto_map(output: dict) -> dict:
    """`to_dict()` without the `auto_map` entries that `save_pretrained` writes for our own classes: they describe the
    saved folder (the code copied beside the JSON), not the object, so a loaded object equals the one that was saved
    (`from_pretrained(save_pretrained(x)).to_dict() == x.to_dict()`). The attribute itself is kept: transformers' Auto
    classes read `config.auto_map` when the package is not installed (`trust_remote_code=True`)."""
    auto_map = output.get("auto_map")
    if isinstance(auto_map, dict):
        kept = {key: value for key, value in auto_map.items() if not _is_our_reference(value)}
        if kept:
            output["auto_map"] = kept
        else:
            del output["auto_map"]
    return output


class RemoteCodeConfigMixin(_RemoteCodeJsonMixin):
    """For `PreTrainedConfig` subclasses registered with `register_for_auto_class`."""

    def to_dict(self) -> dict:
        return without_our_auto_map(super().to_dict())


class RemoteCodeImageProcessorMixin(_RemoteCodeJsonMixin):
    """For image processors registered with `register_for_auto_class`."""

    _remote_code_json = "preprocessor_config.json"

    def to_dict(self) -> dict:
        output = without_our_auto_map(super().to_dict())
        # An instance of a legacy-name alias class (`_auto.register_architecture`) saves under the current name.
        output["image_processor_type"] = getattr(type(self), "_legacy_name_of", type(self)).__name__
        return output
